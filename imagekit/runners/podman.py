"""The one wrapper around podman: the daemonless container runtime the verify host boots images on.

`PodmanRuntime` is a peer of runners/docker.DockerRuntime (the same few operations: an image's id, a container
created, started, waited on, read and always removed). Every container gets the rlimits explicitly
(`--ulimit nofile=16384:16384 --ulimit nproc=8192:8192`: where root lacks CAP_SYS_RESOURCE, podman's defaults
fail with "error setting rlimit type 7"), GPUs through CDI (`--device nvidia.com/gpu=all`), and its output in a
k8s-file log of its own, so stdout (the probe's JSON) and stderr stay apart.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from imagekit.errors import ImagekitError, ToolMissing
from imagekit.runners import process
from imagekit.runners.buildah import storage_flags

PODMAN = "podman"
ULIMITS = ("--ulimit", "nofile=16384:16384", "--ulimit", "nproc=8192:8192")
CDI_GPUS = "nvidia.com/gpu=all"


class PodmanError(ImagekitError):
    """podman refused or failed a container operation (the message is podman's own)."""

    exit_code = 1


def podman_path() -> str:
    """The podman binary on PATH; ToolMissing (with the apt line) when it is not installed."""
    found = shutil.which(PODMAN)
    if found is None:
        raise ToolMissing("podman is not installed (apt-get install podman; see scripts/setup-host.sh)")
    return found


def podman(*args: str, timeout: float | None = 120, cleanup: bool = False) -> process.Result:
    """Run one podman command with this environment's storage flags (output captured)."""
    argv = [podman_path(), *storage_flags(), *args]
    return process.run(argv, capture=True, timeout=timeout, cancellable=not cleanup)


def _fail(what: str, res: process.Result) -> PodmanError:
    last = next((ln for ln in reversed(res.tail) if ln.strip()), f"exit {res.returncode}")
    return PodmanError(f"podman {what}: {last.strip()[:500]}")


def create_argv(
    name: str,
    image: str,
    *,
    labels: Mapping[str, str],
    log_path: Path,
    entrypoint: Sequence[str] | None = None,
    command: Sequence[str] = (),
    ro_mounts: Mapping[str, str] | None = None,
    gpu: bool = False,
    network: bool = True,
    ports: Mapping[int, str] | None = None,
) -> list[str]:
    """The `podman create` arguments (after `podman create`) for one verify container."""
    argv = ["--name", name, *ULIMITS, "--log-driver", "k8s-file", "--log-opt", f"path={log_path}"]
    for key, value in sorted(labels.items()):
        argv += ["--label", f"{key}={value}"]
    if entrypoint is not None:
        argv += ["--entrypoint", json.dumps(list(entrypoint))]
    for src, dest in sorted((ro_mounts or {}).items()):
        argv += ["--volume", f"{src}:{dest}:ro"]
    if gpu:
        argv += ["--device", CDI_GPUS]
    if not network:
        argv += ["--network", "none"]
    for port, bind in sorted((ports or {}).items()):
        argv += ["--publish", f"{bind}::{port}/tcp"]
    return [*argv, image, *command]


def read_k8s_log(path: Path, *, stdout: bool = True, stderr: bool = True) -> str:
    """A k8s-file log's text for the wanted streams (`TIME STREAM F|P TEXT` lines; P marks a partial line)."""
    try:
        raw = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    out: list[str] = []
    pending = ""
    for line in raw.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue
        stream, tag = parts[1], parts[2]
        text = parts[3] if len(parts) > 3 else ""
        if (stream == "stdout" and not stdout) or (stream == "stderr" and not stderr):
            continue
        pending += text
        if tag != "P":
            out.append(pending)
            pending = ""
    if pending:
        out.append(pending)
    return "\n".join(out) + ("\n" if out else "")


def read_k8s_log_bytes(path: Path, *, stdout: bool = True, stderr: bool = False, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the wanted streams, read line by line (the image under test may print without end:
    memory stays bounded by `limit`); True when there was more."""
    out = bytearray()
    try:
        with path.open("rb") as fh:
            while raw := fh.readline(1 << 20):
                parts = raw.rstrip(b"\n").split(b" ", 3)
                if len(parts) < 3:
                    continue
                if (parts[1] == b"stdout" and not stdout) or (parts[1] == b"stderr" and not stderr):
                    continue
                out += (parts[3] if len(parts) > 3 else b"") + (b"" if parts[2] == b"P" else b"\n")
                if len(out) > limit:
                    return bytes(out[:limit]), True
    except OSError:
        return b"", False
    return bytes(out), False


class PodmanContainer:
    """A created podman container with the operations the verify host uses (as runners/docker.Container)."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._status = "created"

    @property
    def status(self) -> str:
        """The status podman last reported (created, running, exited)."""
        return self._status

    def start(self) -> None:
        """Start it; PodmanError with podman's message when it cannot (a refused GPU device, rlimits)."""
        res = podman("start", self.name)
        if not res.ok:
            raise _fail(f"start {self.name}", res)
        self._status = "running"

    def wait(self, timeout: float) -> int:
        """Wait for it to exit; its exit code. PodmanError when it runs past `timeout`."""
        try:
            res = podman("wait", self.name, timeout=timeout)
        except process.CommandTimeout:
            raise PodmanError(f"container {self.name} still running after {timeout:g}s") from None
        if not res.ok:
            raise _fail(f"wait {self.name}", res)
        self._status = "exited"
        try:
            return int(res.output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return -1

    def output(self, *, stdout: bool = True, stderr: bool = True, tail: int | None = None) -> str:
        """What it printed (from its own log file; `tail` lines at most)."""
        text = read_k8s_log(self.log_path, stdout=stdout, stderr=stderr)
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    def output_bytes(self, *, stdout: bool = True, stderr: bool = False, limit: int) -> tuple[bytes, bool]:
        """At most `limit` bytes of what it printed, and whether there was more (as runners/docker.Container)."""
        return read_k8s_log_bytes(self.log_path, stdout=stdout, stderr=stderr, limit=limit)

    def running(self) -> bool:
        """Whether it is still running (False when podman no longer knows it)."""
        res = podman("inspect", "--format", "{{.State.Status}}", self.name)
        self._status = res.output.strip() if res.ok else "gone"
        return self._status == "running"

    def published_port(self, port: int) -> int | None:
        """The host port `port/tcp` is published on (None until bound).

        In a pod podman runs containers in the pod's own network namespace (containers.conf `netns = "host"`:
        a bridge needs sysctls a pod cannot write), where nothing is published: the service listens on `port`
        itself.
        """
        res = podman("port", self.name, f"{port}/tcp")
        if not res.ok or not res.output.strip():
            mode = podman("inspect", "--format", "{{.HostConfig.NetworkMode}}", self.name)
            return port if mode.ok and mode.output.strip() == "host" else None
        try:
            return int(res.output.strip().splitlines()[0].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            return None


class PodmanRuntime:
    """The verify host's container runtime on this machine's containers-storage, through podman."""

    kind = "podman"
    address = "podman (local containers-storage)"

    def image_id(self, ref: str) -> str | None:
        """The local image id of `ref`, or None when containers-storage does not have it."""
        res = podman("image", "inspect", "--format", "{{.Id}}", ref)
        if not res.ok and not any("image not known" in line for line in res.tail):
            # podman itself failed (a runroot over its 50-character limit, a storage it cannot open): say so, rather
            # than "not on the podman host" with the cause hidden
            raise _fail(f"image inspect {ref}", res)
        if not res.ok or not res.output.strip():
            return None
        found = res.output.strip().splitlines()[0]
        return found if found.startswith("sha256:") else f"sha256:{found}"

    def errors(self) -> tuple[type[Exception], ...]:
        """What a refused or failed container operation raises."""
        return (PodmanError,)

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
    ) -> Iterator[PodmanContainer]:
        """Create a container (not started) and always remove it, with its volumes and log, also on Ctrl-C."""
        logs = Path(tempfile.mkdtemp(prefix="imagekit-podman-"))
        log_path = logs / "container.log"
        argv = create_argv(
            name, image, labels=labels, log_path=log_path, entrypoint=entrypoint, command=command,
            ro_mounts=ro_mounts, gpu=gpu, network=network, ports=ports,
        )  # fmt: skip
        try:
            res = podman("create", *argv)
            if not res.ok:
                raise _fail(f"create {name}", res)
            yield PodmanContainer(name, log_path)
        finally:
            podman("rm", "--force", "--volumes", "--ignore", name, cleanup=True)
            shutil.rmtree(logs, ignore_errors=True)


def leftover(label: str) -> list[str]:
    """Names of containers carrying `label` (what a verify run must not leave behind)."""
    res = podman("ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}")
    return [ln.strip() for ln in res.output.splitlines() if ln.strip()] if res.ok else []


def version() -> str:
    """podman's version ("" when it cannot say)."""
    try:
        res = process.capture([podman_path(), "--version"], timeout=30)
    except (ToolMissing, process.CommandTimeout):
        return ""
    return res.output.strip().rsplit(" ", 1)[-1] if res.ok else ""
