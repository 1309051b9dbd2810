"""The one wrapper around the Docker Engine: the docker SDK for the engine API, the Debian CLI for BuildKit builds.

The engine is found the way docker itself finds it: DOCKER_HOST (``unix://``, ``tcp://``, ``ssh://gpu-host``),
DOCKER_TLS_VERIFY and DOCKER_CERT_PATH are honoured by both the SDK and the CLI, so a remote engine needs no
imagekit setting. The socket is never hardcoded.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from imagekit.errors import BuildFailed, ToolMissing
from imagekit.runners import process

# Debian's client drives BuildKit (DOCKER_BUILDKIT=1); a newer client earlier on PATH may have no buildx.
DEFAULT_CLI = "/usr/bin/docker"

# BuildKit --progress=plain lines: "#7 [runtime 2/5] RUN ...", "#7 DONE 1.2s", "#7 CACHED", "#7 ERROR: ..."
_STEP_RE = re.compile(r"^#(\d+) \[(?:(?P<stage>[^\]\s]+) )?(?P<step>\d+/\d+)\] (?P<what>.*)$")
_ERROR_RE = re.compile(r"^(#\d+ )?ERROR[: ]|^error: |^failed to solve", re.IGNORECASE)


def cli_path() -> str:
    """The docker client that runs BuildKit builds: $IMAGEKIT_DOCKER_CLI, else Debian's /usr/bin/docker."""
    return os.environ.get("IMAGEKIT_DOCKER_CLI") or DEFAULT_CLI


@dataclass(frozen=True)
class BuildStep:
    """One BuildKit step parsed from plain progress output."""

    number: int
    stage: str
    step: str
    what: str

    def __str__(self) -> str:
        return f"[{self.step}] {self.what}"


def parse_step(line: str) -> BuildStep | None:
    """The build step a `--progress=plain` line announces, or None for other lines."""
    m = _STEP_RE.match(line.strip())
    if not m:
        return None
    return BuildStep(int(m.group(1)), m.group("stage") or "", m.group("step"), m.group("what").strip())


def is_error_line(line: str) -> bool:
    """True for BuildKit lines that report a failure."""
    return bool(_ERROR_RE.search(line.strip()))


@dataclass
class ImageInfo:
    """What the engine knows about a local image."""

    id: str
    tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    size: int = 0
    user: str = ""


def client_from_env(*, timeout: int | None = None, ping: bool = False) -> Any:
    """A docker SDK client for DOCKER_HOST (or the local socket); ToolMissing when the engine cannot be reached.

    ssh:// goes through the system ssh client (keys, agent, ~/.ssh/config) rather than paramiko.
    """
    import docker

    from imagekit.extras import require_docker_host

    host = os.environ.get("DOCKER_HOST", "")
    require_docker_host(host)
    kwargs: dict[str, Any] = {"use_ssh_client": host.startswith("ssh://")}
    if timeout is not None:
        kwargs["timeout"] = timeout
    try:
        client = docker.from_env(**kwargs)
        if ping:
            client.ping()
    except Exception as exc:  # the SDK raises DockerException, requests' errors or OSError for the same problem
        where = host or "the default socket"
        raise ToolMissing(
            f"cannot reach a Docker Engine at {where}: {type(exc).__name__}: {exc} "
            "(start dockerd, or set DOCKER_HOST, e.g. ssh://gpu-host)"
        ) from None
    return client


def engine_errors() -> tuple[type[Exception], ...]:
    """The exceptions a docker SDK call raises when the engine refuses or cannot be reached."""
    import docker.errors
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def gpu_requests(gpu: bool) -> list[Any] | None:
    """The device request that asks the engine for every GPU, or None."""
    if not gpu:
        return None
    from docker.types import DeviceRequest

    return [DeviceRequest(count=-1, capabilities=[["gpu"]])]


class DockerEngine:
    """Engine operations imagekit needs; the SDK client and CLI path are parameters so tests can swap them."""

    kind = "docker"
    parse_step = staticmethod(parse_step)
    is_error_line = staticmethod(is_error_line)

    def __init__(self, client: Any | None = None, cli: str | None = None) -> None:
        self._client = client
        self.cli = cli or cli_path()

    @property
    def client(self) -> Any:
        """The docker SDK client, created on first use from the environment."""
        if self._client is None:
            self._client = client_from_env()
        return self._client

    # --- images ------------------------------------------------------------------------------------------

    def inspect(self, ref: str) -> ImageInfo | None:
        """The local image a reference names, or None when the engine does not have it."""
        import docker

        try:
            attrs = self.client.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            if getattr(exc, "status_code", None) == 404:
                return None
            raise
        config = attrs.get("Config") or {}
        return ImageInfo(
            id=str(attrs.get("Id", "")),
            tags=list(attrs.get("RepoTags") or []),
            repo_digests=list(attrs.get("RepoDigests") or []),
            labels=dict(config.get("Labels") or {}),
            size=int(attrs.get("Size") or 0),
            user=str(config.get("User") or ""),
        )

    def exists(self, ref: str) -> bool:
        """True when the engine has an image with this reference."""
        return self.inspect(ref) is not None

    def resolve(self, ref: str, *, pull: bool = True, renew: bool = False) -> ImageInfo:
        """A base image reference as the engine has it (pulled if missing and allowed); its Id and RepoDigests.

        renew: pull even when the engine has the reference (a refresh or an upstream that moved), so the build
        starts from what the registry serves now, not from the copy an earlier build pulled.
        """
        import docker

        info = self.inspect(ref)
        if (info is None or renew) and pull:
            repo, tag = split_ref(ref)
            try:
                self.client.images.pull(repo, tag=tag)
            except docker.errors.APIError as exc:
                raise BuildFailed(
                    f"cannot pull base image {ref}: {exc.explanation or exc}",
                    log_tail=[],
                ) from None
            info = self.inspect(ref)
        if info is None:
            raise BuildFailed(f"base image {ref} is not available to the engine")
        return info

    def import_tarball(self, tarball: Path, repository: str, tag: str, changes: Sequence[str] = ()) -> str:
        """`docker import` a root filesystem tarball as repository:tag; returns the image id."""
        self.client.api.import_image_from_file(
            str(tarball), repository=repository, tag=tag, changes=list(changes) or None
        )
        info = self.inspect(f"{repository}:{tag}")
        if info is None:
            raise BuildFailed(f"docker import of {tarball} did not produce {repository}:{tag}")
        return info.id

    def repo_tags(self, repository: str) -> list[str]:
        """Every `repository:tag` the engine holds for this repository."""
        found = self.client.api.images(name=repository) or []
        return sorted({t for img in found for t in (img.get("RepoTags") or []) if t.rsplit(":", 1)[0] == repository})

    def tag(self, source: str, repository: str, tag: str) -> None:
        """Add a tag to a local image."""
        self.client.api.tag(source, repository, tag=tag, force=True)

    def remove_image(self, ref: str) -> None:
        """Remove one image reference (untag; the layers go when nothing else uses them)."""
        import docker

        with contextlib.suppress(docker.errors.ImageNotFound):
            self.client.api.remove_image(ref, force=False, noprune=False)

    def version(self) -> str:
        """The engine's version ("" when it cannot say)."""
        try:
            return str(self.client.version().get("Version", ""))
        except Exception:  # informative only (the record's builder versions)
            return ""

    def sizes(self) -> EngineSizes:
        """The size gate's view of the engine."""
        return EngineSizes(self)

    def registry_digest(self, ref: str) -> str:
        """The manifest digest `ref` resolves to at its registry now (the registry is asked; nothing is pulled)."""
        return str(self.client.images.get_registry_data(ref).id)

    def push(self, repository: str, tag: str, *, on_line: Callable[[str], None] | None = None) -> str:
        """Push repository:tag and return the registry's manifest digest (sha256:...)."""
        digest = ""
        for msg in self._stream(self.client.api.push(repository, tag=tag, stream=True, decode=True)):
            if "error" in msg or "errorDetail" in msg:
                detail = msg.get("errorDetail", {}).get("message") or msg.get("error")
                raise BuildFailed(f"push of {repository}:{tag} failed: {detail}")
            aux = msg.get("aux") or {}
            if aux.get("Digest"):
                digest = str(aux["Digest"])
            status = msg.get("status")
            if on_line and status:
                on_line(" ".join(str(x) for x in (msg.get("id", ""), status, msg.get("progress", "")) if x))
        if not digest:
            info = self.inspect(f"{repository}:{tag}")
            prefix = repository + "@"
            digest = next((d.split("@", 1)[1] for d in (info.repo_digests if info else []) if d.startswith(prefix)), "")
        if not digest:
            raise BuildFailed(f"push of {repository}:{tag} reported no digest")
        return digest

    @staticmethod
    def _stream(messages: Any) -> Iterator[dict[str, Any]]:
        for msg in messages:
            if isinstance(msg, dict):
                yield msg

    # --- BuildKit builds through the CLI -------------------------------------------------------------------

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
        """`docker build --target` with BuildKit (secrets and cache mounts need it); streams plain progress."""
        argv: list[str] = [self.cli, "build", "--progress=plain", "--target", target, "-f", str(dockerfile)]
        for t in tags:
            argv += ["-t", t]
        for key, value in sorted((build_args or {}).items()):
            argv += ["--build-arg", f"{key}={value}"]
        for key, value in sorted((labels or {}).items()):
            argv += ["--label", f"{key}={value}"]
        for sid, src in sorted((secrets or {}).items()):
            argv += ["--secret", f"id={sid},src={src}"]
        # no --no-cache: it empties the cache mounts too (moby/buildkit#1213); a forced rebuild passes REBUILD_ARG
        if iidfile is not None:
            argv += ["--iidfile", str(iidfile)]
        argv.append(str(context))
        if not Path(self.cli).exists():
            raise ToolMissing(f"{self.cli}: the docker client is missing (install docker.io; set IMAGEKIT_DOCKER_CLI)")
        return process.run(argv, env={"DOCKER_BUILDKIT": "1"}, cwd=context, on_line=on_line, log=log)


def cli(
    *args: str,
    log: Path | None = None,
    timeout: float | None = 600,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    cleanup: bool = False,
) -> process.Result:
    """Run one docker CLI command (output captured; with `log`, the command and its output are appended there).

    cleanup: a removal that must run also after a run-wide cancel (process.request_cancel)."""
    argv = [cli_path(), *args]
    if log is None:
        return process.run(argv, capture=True, timeout=timeout, env=env, on_line=on_line, cancellable=not cleanup)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"$ docker {' '.join(args)}\n")
        fh.flush()
        return process.run(argv, log=fh, capture=True, timeout=timeout, env=env, on_line=on_line,
                           cancellable=not cleanup)  # fmt: skip


class Container:
    """A container started through the SDK, with the few operations boot-and-verify needs."""

    def __init__(self, sdk: Any) -> None:
        self.sdk = sdk

    @property
    def status(self) -> str:
        """The status the engine last reported (created, running, exited)."""
        return str(self.sdk.status)

    def start(self) -> None:
        """Start it."""
        self.sdk.start()

    def wait(self, timeout: float) -> int:
        """Wait for it to exit; its exit code (-1 when the engine says none). Engine errors on timeout."""
        result = self.sdk.wait(timeout=timeout)
        return int(result.get("StatusCode", -1)) if isinstance(result, dict) else -1

    def output(self, *, stdout: bool = True, stderr: bool = True, tail: int | None = None) -> str:
        """What it printed (decoded; `tail` lines at most)."""
        kwargs: dict[str, Any] = {"stdout": stdout, "stderr": stderr}
        if tail is not None:
            kwargs["tail"] = tail
        return str(self.sdk.logs(**kwargs).decode("utf-8", "replace"))

    def output_bytes(self, *, stdout: bool = True, stderr: bool = False, limit: int) -> tuple[bytes, bool]:
        """At most `limit` bytes of the output, read as a stream (never all of it at once); True when there was
        more. The image under test may print without end: memory stays bounded by `limit`."""
        got = self.sdk.logs(stdout=stdout, stderr=stderr, stream=True, follow=False)
        if isinstance(got, bytes):  # a client that answers with the whole output
            return got[:limit], len(got) > limit
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in got:
                if total + len(chunk) > limit:
                    chunks.append(chunk[: limit - total])
                    return b"".join(chunks), True
                chunks.append(chunk)
                total += len(chunk)
        finally:
            close = getattr(got, "close", None)
            if close is not None:
                close()
        return b"".join(chunks), False

    def running(self) -> bool:
        """Whether it is still running (False when the engine no longer knows it)."""
        try:
            self.sdk.reload()
        except Exception:
            return False
        return self.status == "running"

    def published_port(self, port: int) -> int | None:
        """The host port `port/tcp` is published on, once the engine has bound it."""
        self.sdk.reload()
        bound = ((self.sdk.attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
        return next((int(e["HostPort"]) for e in bound if e.get("HostPort")), None)


@contextlib.contextmanager
def container(client: Any, *, name: str, labels: Mapping[str, str], **kwargs: Any) -> Iterator[Container]:
    """Create a container (not started) and always remove it, with its volumes, also on Ctrl-C."""
    sdk = client.containers.create(name=name, labels=dict(labels), detach=True, **kwargs)
    try:
        yield Container(sdk)
    finally:
        with contextlib.suppress(Exception):
            sdk.remove(force=True, v=True)


def local_image_id(client: Any, ref: str) -> str | None:
    """The id of a local image, or None when the engine does not have it."""
    import docker.errors

    try:
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        return None


def engine_address(client: Any) -> str:
    """Where the SDK client talks to the engine (for reports)."""
    return str(getattr(getattr(client, "api", None), "base_url", "") or "docker")


class EngineSizes:
    """The size gate's view of the engine: an image's size and its `docker history` rows."""

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine

    def size(self, ref: str) -> int | None:
        """The image's size in bytes, or None when the tag is gone."""
        import docker.errors

        try:
            return int(self.engine.client.api.inspect_image(ref).get("Size", 0))
        except docker.errors.ImageNotFound:
            return None

    def history(self, ref: str) -> list[dict[str, Any]]:
        """`docker history` rows, newest first ([] when the tag is gone)."""
        import docker.errors

        try:
            return list(self.engine.client.api.history(ref))
        except docker.errors.ImageNotFound:
            return []


def split_ref(ref: str) -> tuple[str, str | None]:
    """Split an image reference into repository and tag (or digest); None when neither is given."""
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return repo, digest
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, None


class DockerRuntime:
    """The verify host's container runtime on a Docker Engine (a peer of runners/podman.PodmanRuntime)."""

    kind = "docker"

    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def address(self) -> str:
        """Where the engine is (for reports)."""
        return engine_address(self.client)

    def image_id(self, ref: str) -> str | None:
        """The local image id of `ref`, or None when the engine does not have it."""
        return local_image_id(self.client, ref)

    def errors(self) -> tuple[type[Exception], ...]:
        """What the SDK raises when the engine refuses or cannot be reached."""
        return engine_errors()

    @contextlib.contextmanager
    def container(
        self,
        *,
        name: str,
        labels: Mapping[str, str],
        image: str,
        entrypoint: Sequence[str] | None = None,
        command: Sequence[str] = (),
        ro_mounts: Mapping[str, str] | None = None,
        gpu: bool = False,
        network: bool = True,
        ports: Mapping[int, str] | None = None,
    ) -> Iterator[Container]:
        """Create a container (not started) and always remove it, with its volumes, also on Ctrl-C."""
        kwargs: dict[str, Any] = {"image": image, "device_requests": gpu_requests(gpu)}
        if entrypoint is not None:
            kwargs["entrypoint"] = list(entrypoint)
        if command:
            kwargs["command"] = list(command)
        if ro_mounts:
            kwargs["volumes"] = {src: {"bind": dest, "mode": "ro"} for src, dest in ro_mounts.items()}
        if not network:
            kwargs["network_disabled"] = True
        if ports:
            kwargs["ports"] = {f"{port}/tcp": (bind, None) for port, bind in ports.items()}
        with container(self.client, name=name, labels=labels, **kwargs) as made:
            yield made
