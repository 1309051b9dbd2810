"""A base image with no registry: debootstrap a distribution suite into a folder, tar it, `docker import` it.

debootstrap needs root and takes minutes, so the result is tagged by a hash of its definition
(`imagekit-base-<layer>:<hash16>`) and reused while that tag exists. A root layer with `refresh: {every_days: N}`
adds its refresh epoch (N-day periods since 1970) to that definition: once a period the base is debootstrapped
again from the mirror as it is then, and builds of the same period (other images, other CI jobs) share it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from imagekit.errors import BuildFailed, ToolMissing
from imagekit.events import Event, Reporter, silent
from imagekit.names import LABEL_PREFIX, apt_sources, base_definition, base_hash, base_repository
from imagekit.runners import process
from imagekit.spec import Bootstrap

if TYPE_CHECKING:
    from imagekit.targets.engines import ImageEngine

IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
)


@dataclass(frozen=True)
class BaseImage:
    """A bootstrapped base: its tag, image id, definition hash and whether this run made it."""

    tag: str
    image_id: str
    hash: str
    built: bool
    seconds: float


def ensure_base(
    engine: ImageEngine,
    layer: str,
    boot: Bootstrap,
    *,
    force: bool = False,
    reporter: Reporter = silent,
    log: IO[str] | None = None,
    image: str = "",
    workdir: Path | None = None,
    epoch: int | None = None,
) -> BaseImage:
    """The bootstrapped base for a root layer: reused when its tag exists, else debootstrapped and imported.

    epoch: the layer's refresh epoch, when it has a refresh; the new base then also takes the plain tag (the
    rendered Dockerfile's default BASE_IMAGE), so a hand-run `docker build` starts from the renewed base too.
    """
    t0 = time.monotonic()
    digest = base_hash(boot, epoch)
    repo, tag = base_repository(layer), digest[:16]
    ref = f"{repo}:{tag}"
    info = engine.inspect(ref)
    if info is not None and not force:
        reporter(Event("cached", f"base {ref} (bootstrap {boot.distro}/{boot.suite})", image, layer, "docker"))
        return BaseImage(ref, info.id, digest, False, 0.0)
    if shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").exists():
        raise ToolMissing("debootstrap is not installed (apt-get install debootstrap; see scripts/setup-host.sh)")
    if os.geteuid() != 0:
        raise BuildFailed(
            f"making base {ref} needs root (debootstrap); run the build as root once, later builds reuse the base",
            image=image,
            layer=layer,
        )
    spec = base_definition(boot, epoch)
    reporter(
        Event(
            "start", f"debootstrap {boot.distro}/{boot.suite} from {spec['mirror']} (minutes)", image, layer, "docker"
        )
    )
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    with scratch_dir(workdir) as tmp:
        rootfs = tmp / "rootfs"
        argv = [
            debootstrap,
            "--variant=minbase",
            f"--include={','.join(spec['packages'])}",  # type: ignore[arg-type]
            boot.suite,
            str(rootfs),
            str(spec["mirror"]),
        ]

        on_line = _progress(reporter, image, layer)

        res = process.run(argv, log=log, on_line=on_line)
        if not res.ok:
            raise BuildFailed(
                f"debootstrap {boot.suite} failed (exit {res.returncode})",
                image=image,
                layer=layer,
                log_tail=res.tail,
                log_path=getattr(log, "name", ""),
            )
        (rootfs / "etc" / "apt" / "sources.list").write_text(apt_sources(boot), encoding="utf-8")
        # apt lists and caches are not part of a base: later layers run apt-get update themselves
        for sub in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for entry in (rootfs / sub).glob("*"):
                if entry.is_file() and entry.name != "lock":
                    entry.unlink()
        tarball = tmp / "rootfs.tar"
        reporter(Event("step", f"tar + {engine.kind} import as {ref}", image, layer, "docker"))
        res = process.run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tarball), "."], log=log)
        if not res.ok:
            raise BuildFailed("tar of the bootstrapped rootfs failed", image=image, layer=layer, log_tail=res.tail)
        changes = [*IMAGE_CHANGES, *(f"LABEL {LABEL_PREFIX}.base.{k}={v}" for k, v in sorted(_labels(spec).items()))]
        image_id = engine.import_tarball(tarball, repo, tag, changes)
        if epoch is not None:
            engine.tag(ref, repo, base_hash(boot)[:16])
    seconds = time.monotonic() - t0
    reporter(Event("done", f"base {ref} in {seconds:.0f}s", image, layer, "docker"))
    return BaseImage(ref, image_id, digest, True, seconds)


def _progress(reporter: Reporter, image: str, layer: str) -> Callable[[str], None]:
    """debootstrap's `I:` lines as progress: packages downloaded (total unknown), then extracted/unpacked/configured.

    debootstrap names every package it retrieves before it extracts any, so once extracting starts the total is
    known: each package is extracted, unpacked and configured once.
    """
    retrieved = 0
    installed = 0

    def on_line(line: str) -> None:
        nonlocal retrieved, installed
        if not line.startswith("I: "):
            return
        text = line[3:].strip()
        verb, _, rest = text.partition(" ")
        phase = rest.endswith(("packages...", "base system...")) or not rest
        if verb == "Retrieving" and not rest.startswith(("InRelease", "Release", "Packages")):
            retrieved += 1
            reporter(Event("progress", f"downloading packages ({rest})", image, layer, "docker", retrieved, None))
        elif verb in ("Extracting", "Unpacking", "Configuring") and not phase and retrieved:
            installed += 1
            total = 3 * retrieved
            msg = f"{verb.lower()} {rest.rstrip('.')}"
            reporter(Event("progress", msg, image, layer, "docker", min(installed, total), total))
        elif verb != "Validating":
            reporter(Event("step", text, image, layer, "docker"))

    return on_line


def _labels(spec: dict[str, object]) -> dict[str, str]:
    labels = {
        "distro": str(spec["distro"]),
        "suite": str(spec["suite"]),
        "recipe": str(spec["recipe"]),
        "hash": hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest(),
    }
    if "refresh_epoch" in spec:
        labels["refresh-epoch"] = str(spec["refresh_epoch"])
    return labels


@contextlib.contextmanager
def scratch_dir(parent: Path | None = None) -> Iterator[Path]:
    """A temporary folder for a rootfs, removed always; mounts debootstrap left behind are undone first."""
    tmp = Path(tempfile.mkdtemp(prefix="imagekit-bootstrap-", dir=str(parent) if parent else None))
    try:
        yield tmp
    finally:
        remove_rootfs(tmp)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]
    # deepest first so nested mounts (proc inside the rootfs) come off before their parents
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def remove_rootfs(root: Path) -> None:
    """Unmount whatever an interrupted debootstrap left mounted under root, then delete root.

    A rmtree through a still-mounted /dev or /sys bind would delete the host's files, so it is refused then.
    """
    for point in _mounts_under(root):
        process.run(["umount", "-l", point], timeout=60, cancellable=False)
    left = _mounts_under(root)
    if left:
        raise BuildFailed(f"cannot remove {root}: still mounted: {', '.join(left)} (unmount them, then delete it)")
    shutil.rmtree(root, ignore_errors=True)
