"""The one wrapper around buildah: the daemonless image engine, a peer of runners/docker.DockerEngine.

It offers the same operations the docker target and the bootstrap use (inspect, tag, build, import, push, remove,
sizes), over containers-storage instead of a Docker Engine: the rendered Dockerfile is built stage by stage with
`buildah build --layers --format docker --target LAYER` (`--format docker` keeps HEALTHCHECK, `--layers` keeps
each weight COPY its own layer); a push goes through skopeo (runners/skopeo), whose `--digestfile` is the digest
recorded.

Inside an unprivileged pod buildah needs the vfs driver as a flag (the STORAGE_DRIVER variable alone is not
enough) and chroot isolation: `storage_flags()` turns STORAGE_DRIVER, IMAGEKIT_STORAGE_ROOT and
IMAGEKIT_STORAGE_RUNROOT into flags, so buildah, podman and skopeo see the same store.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from imagekit.errors import BuildFailed, ToolMissing
from imagekit.names import LOCK_RUN_ARG
from imagekit.runners import process, skopeo
from imagekit.runners.docker import ImageInfo

BUILDAH = "buildah"
LOCAL_PREFIX = "localhost/"

# buildah's progress: "[2/3] STEP 4/7: RUN ..." in a multi-stage build, "STEP 4/7: RUN ..." otherwise
_STEP_RE = re.compile(r"^(?:\[(?P<stage>\d+/\d+)\] )?STEP (?P<step>\d+/\d+): (?P<what>.*)$")
_ERROR_RE = re.compile(r"^(Error|error)[: ]|^time=\S+ level=(error|fatal)|^ERRO\[", re.IGNORECASE)


def storage_flags() -> list[str]:
    """Global storage flags for buildah and podman from the environment (empty on a host with the defaults)."""
    flags: list[str] = []
    driver = os.environ.get("STORAGE_DRIVER", "")
    if driver:
        flags.append(f"--storage-driver={driver}")
    root = os.environ.get("IMAGEKIT_STORAGE_ROOT", "")
    if root:
        flags.append(f"--root={root}")
    runroot = os.environ.get("IMAGEKIT_STORAGE_RUNROOT", "")
    if runroot:
        flags.append(f"--runroot={runroot}")
    return flags


def storage_spec() -> str:
    """The `[driver@root+runroot]` prefix skopeo's containers-storage transport takes for the same store."""
    driver = os.environ.get("STORAGE_DRIVER", "")
    root = os.environ.get("IMAGEKIT_STORAGE_ROOT", "")
    runroot = os.environ.get("IMAGEKIT_STORAGE_RUNROOT", "")
    if not (driver or root):
        return ""
    if not root:
        root = "/var/lib/containers/storage"
    where = f"{driver}@{root}" if driver else root
    return f"[{where}+{runroot}]" if runroot else f"[{where}]"


def buildah_path() -> str:
    """The buildah binary on PATH; ToolMissing (with the apt line) when it is not installed."""
    found = shutil.which(BUILDAH)
    if found is None:
        raise ToolMissing("buildah is not installed (apt-get install buildah; see scripts/setup-host.sh)")
    return found


@dataclass(frozen=True)
class BuildahStep:
    """One `STEP i/n` line of buildah's output."""

    stage: str
    step: str
    what: str

    def __str__(self) -> str:
        return f"[{self.step}] {self.what}"


def parse_step(line: str) -> BuildahStep | None:
    """The build step a buildah output line announces, or None for other lines."""
    m = _STEP_RE.match(line.strip())
    if not m:
        return None
    return BuildahStep(m.group("stage") or "", m.group("step"), m.group("what").strip())


def is_error_line(line: str) -> bool:
    """True for buildah lines that report a failure (`Error: building at STEP ...`)."""
    return bool(_ERROR_RE.search(line.strip()))


def local_name(ref: str) -> str:
    """The name containers-storage keeps a short local reference under (`localhost/` prefixed)."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return LOCAL_PREFIX + ref


def command(*args: str) -> list[str]:
    """A buildah argument list with the storage flags of this environment."""
    return [buildah_path(), *storage_flags(), *args]


class BuildahEngine:
    """The engine operations the docker target and the bootstrap need, on containers-storage through buildah."""

    kind = "buildah"
    parse_step = staticmethod(parse_step)
    is_error_line = staticmethod(is_error_line)

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        # BUILDAH_ISOLATION=chroot and the like pass through from the caller's environment; env adds to it
        self.env = dict(env or {})

    def _run(self, *args: str, log: IO[str] | None = None, timeout: float | None = 600) -> process.Result:
        argv = command(*args)
        if log is not None:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
        return process.run(argv, env=self.env, capture=True, log=log, timeout=timeout)

    # --- images ------------------------------------------------------------------------------------------

    def _inspect_json(self, ref: str) -> dict[str, Any] | None:
        res = self._run("inspect", "--type", "image", ref, timeout=120)
        if not res.ok:
            return None
        try:
            data = json.loads(res.output)
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def inspect(self, ref: str) -> ImageInfo | None:
        """The image a reference names in containers-storage, or None when it is not there."""
        data = self._inspect_json(ref)
        if data is None:
            return None
        docker = data.get("Docker") or {}
        config = docker.get("config") or (data.get("OCIv1") or {}).get("config") or {}
        image_id = str(data.get("FromImageID") or "")
        return ImageInfo(
            id=f"sha256:{image_id}" if image_id and not image_id.startswith("sha256:") else image_id,
            labels=dict(config.get("Labels") or {}),
            size=sum(_layer_sizes(data)),
            user=str(config.get("User") or ""),
        )

    def exists(self, ref: str) -> bool:
        """True when containers-storage has an image with this reference."""
        return self.inspect(ref) is not None

    def resolve(self, ref: str, *, pull: bool = True, renew: bool = False) -> ImageInfo:
        """A base image as containers-storage has it (pulled when missing and allowed, or when renew)."""
        info = self.inspect(ref)
        if (info is None or renew) and pull:
            res = self._run("pull", "--quiet", ref, timeout=None)
            if not res.ok:
                raise BuildFailed(f"cannot pull base image {ref}: {_why(res)}", log_tail=res.tail[-10:])
            info = self.inspect(ref)
        if info is None:
            raise BuildFailed(f"base image {ref} is not in containers-storage")
        return info

    def import_tarball(self, tarball: Path, repository: str, tag: str, changes: Sequence[str] = ()) -> str:
        """A root filesystem tarball as repository:tag: `FROM scratch`, `ADD` the tar, the changes as instructions.

        `buildah build` makes the working container and removes it itself, also when it fails."""
        ref = f"{repository}:{tag}"
        with tempfile.TemporaryDirectory(prefix="imagekit-import-", dir=str(tarball.parent)) as tmp:
            ctx = Path(tmp)
            os.link(tarball, ctx / "rootfs.tar")  # the same folder, so the same filesystem: no copy
            (ctx / "Containerfile").write_text(
                "\n".join(["FROM scratch", "ADD rootfs.tar /", *changes]) + "\n", encoding="utf-8"
            )
            res = self._run(
                "build", "--format", "docker", "--layers=false", "--pull=never", "-f", str(ctx / "Containerfile"),
                "-t", ref, str(ctx), timeout=None,
            )  # fmt: skip
        if not res.ok:
            raise BuildFailed(f"importing {tarball} as {ref} failed: {_why(res)}", log_tail=res.tail[-10:])
        info = self.inspect(ref)
        if info is None:
            raise BuildFailed(f"buildah import of {tarball} did not produce {ref}")
        return info.id

    def repo_tags(self, repository: str) -> list[str]:
        """Every `repository:tag` containers-storage holds for this repository, named as the caller names it
        (containers-storage keeps a short name under `localhost/`)."""
        res = self._run("images", "--json", timeout=120)
        if not res.ok:
            raise BuildFailed(f"buildah images failed: {_why(res)}")
        try:
            found = json.loads(res.output or "[]")
        except json.JSONDecodeError as exc:
            raise BuildFailed(f"buildah images printed no JSON: {exc}") from None
        stored = local_name(repository)
        tags = set()
        for img in found if isinstance(found, list) else []:
            for name in (img.get("names") or []) if isinstance(img, dict) else []:
                repo, _, tag = str(name).rpartition(":")
                if repo == stored and tag:
                    tags.add(f"{repository}:{tag}")
        return sorted(tags)

    def tag(self, source: str, repository: str, tag: str) -> None:
        """Add a tag to an image in containers-storage."""
        res = self._run("tag", source, f"{repository}:{tag}", timeout=120)
        if not res.ok:
            raise BuildFailed(f"buildah tag {source} {repository}:{tag} failed: {_why(res)}")

    def remove_image(self, ref: str) -> None:
        """Untag one reference (the image goes when no other name holds it); BuildFailed when buildah refuses (an
        image a container uses), nothing when the reference is not there, as the docker engine does."""
        res = self._run("rmi", ref, timeout=120)
        if not res.ok and not any("image not known" in line for line in res.tail):
            # buildah lists each reason as "\t* REF: why" under "Error: 1 error occurred:"
            reasons = [ln.strip().lstrip("* ") for ln in res.tail if ln.strip().startswith("*")]
            raise BuildFailed(f"buildah rmi {ref} failed: {(reasons[-1] if reasons else _why(res))[:300]}")

    def version(self) -> str:
        """buildah's version ("" when it cannot say)."""
        try:
            res = process.capture([buildah_path(), "--version"], timeout=30)
        except (ToolMissing, process.CommandTimeout):
            return ""
        m = re.search(r"version (\S+)", res.output)
        return m.group(1) if res.ok and m else ""

    def push(self, repository: str, tag: str, *, on_line: Callable[[str], None] | None = None) -> str:
        """Push repository:tag with skopeo; the registry's manifest digest as skopeo wrote it (--digestfile)."""
        src = f"containers-storage:{storage_spec()}{local_name(f'{repository}:{tag}')}"
        return skopeo.copy(src, f"docker://{repository}:{tag}", on_line=on_line)

    def registry_digest(self, ref: str) -> str:
        """The manifest digest `ref` resolves to at its registry now (asked with skopeo; nothing is pulled)."""
        return skopeo.manifest_digest(f"docker://{ref}")

    def sizes(self) -> BuildahSizes:
        """The size gate's view of containers-storage."""
        return BuildahSizes(self)

    # --- builds --------------------------------------------------------------------------------------------

    def build(
        self,
        context: Path,
        *,
        dockerfile: Path,
        target: str,
        tags: Sequence[str],
        build_args: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        secrets: Mapping[str, Path] | None = None,
        iidfile: Path | None = None,
        log: IO[str] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> process.Result:
        """`buildah build --layers --format docker --target` on the rendered Dockerfile; streams `STEP i/n` lines.

        A failing step leaves no working container (--force-rm).
        Interrupted (Ctrl-C, SIGTERM, a run-wide cancel): buildah gets SIGINT and removes its working containers
        and mounts itself; whatever it left (a kill) is removed by `cleanup_build` (see `build_cleanup`)."""
        # --force-rm: a failing step's working container goes too (buildah keeps it by default, a mounted layer each)
        argv = command("build", "--layers", "--force-rm", "--format", "docker", "--pull=never", "--target", target)
        argv += ["-f", str(dockerfile)]
        ignore = Path(f"{dockerfile}.dockerignore")
        if ignore.is_file():
            argv += ["--ignorefile", str(ignore)]
        for t in tags:
            argv += ["-t", t]
        # a new value every build: the `<layer>-lock` stages run again, never taken from cache (names.LOCK_RUN_ARG)
        for key, value in sorted({LOCK_RUN_ARG: uuid.uuid4().hex, **(build_args or {})}.items()):
            argv += ["--build-arg", f"{key}={value}"]
        for key, value in sorted((labels or {}).items()):
            argv += ["--label", f"{key}={value}"]
        for sid, src in sorted((secrets or {}).items()):
            argv += ["--secret", f"id={sid},src={src}"]
        if iidfile is not None:
            argv += ["--iidfile", str(iidfile)]
        argv.append(str(context))
        with build_cleanup(self):
            return process.run(argv, env=self.env, cwd=context, on_line=on_line, log=log, cancel_grace=60.0)

    def containers(self) -> list[dict[str, Any]]:
        """buildah's working containers (`buildah containers --json`)."""
        res = self._run("containers", "--all", "--json", timeout=120)
        try:
            rows = json.loads(res.output or "[]") if res.ok else []
        except json.JSONDecodeError:
            return []
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    def remove_containers(self, ids: Sequence[str]) -> None:
        """Remove working containers (unmounting them); a cleanup step a cancel does not stop."""
        for cid in ids:
            process.run(command("rm", cid), env=self.env, capture=True, timeout=120, cancellable=False)


@contextlib.contextmanager
def build_cleanup(engine: BuildahEngine) -> Iterator[None]:
    """Remove the working containers a build left when it stopped early (those that were not there before)."""
    before = {str(c.get("id", "")) for c in engine.containers()}
    ok = False
    try:
        yield
        ok = True
    finally:
        if not ok:
            left = [str(c.get("id", "")) for c in engine.containers() if str(c.get("id", "")) not in before]
            engine.remove_containers([c for c in left if c])


class BuildahSizes:
    """The size gate's view of containers-storage: an image's size and its history rows (newest first)."""

    def __init__(self, engine: BuildahEngine) -> None:
        self.engine = engine

    def size(self, ref: str) -> int | None:
        """The image's size in bytes, or None when the tag is gone."""
        info = self.engine.inspect(ref)
        return None if info is None else info.size

    def history(self, ref: str) -> list[dict[str, Any]]:
        """Rows like `docker history`'s (CreatedBy, Size), newest first; [] when the tag is gone."""
        data = self.engine._inspect_json(ref)
        if data is None:
            return []
        history = (data.get("Docker") or {}).get("history") or []
        sizes = _layer_sizes(data)
        rows: list[dict[str, Any]] = []
        layer = 0
        for h in history:
            empty = bool(h.get("empty_layer"))
            size = 0 if empty or layer >= len(sizes) else sizes[layer]
            if not empty:
                layer += 1
            rows.append({"CreatedBy": str(h.get("created_by", "")), "Size": size})
        return list(reversed(rows))


def _layer_sizes(data: dict[str, Any]) -> list[int]:
    # containers-storage keeps each layer uncompressed: the manifest's sizes are the bytes on disk
    try:
        manifest = json.loads(str(data.get("Manifest") or "{}"))
    except json.JSONDecodeError:
        return []
    return [int(layer.get("size", 0)) for layer in manifest.get("layers") or [] if isinstance(layer, dict)]


def _why(res: process.Result) -> str:
    errors = [ln for ln in res.tail if is_error_line(ln)]
    last = errors[-1] if errors else next((ln for ln in reversed(res.tail) if ln.strip()), f"exit {res.returncode}")
    return last.strip()[:500]
