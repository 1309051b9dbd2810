"""Boot-and-verify on a Docker Engine (local, or remote through DOCKER_HOST), through imagekit's docker wrapper.

Every container started here carries the label `imagekit.verify=1` and is removed in a `finally`, also when the
run is interrupted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from imagekit.errors import ImagekitError, Interrupted, UsageError, VerifyFailed
from imagekit.events import Event, Reporter, silent
from imagekit.inputs import clip
from imagekit.paths import work_dir
from imagekit.runners.docker import (
    Container,
    client_from_env,
    container,
    engine_address,
    engine_errors,
    gpu_requests,
    local_image_id,
)
from imagekit.runners.process import Process, check_cancel, forward_sigterm
from imagekit.spec import LoadedSpec
from imagekit.verify import http as service_http
from imagekit.verify.policy import effective_gpu, service_device_failures
from imagekit.verify.probe_input import MAX_PROBE_BYTES, ProbeInputError, parse_probe
from imagekit.verify.report import (
    GPU_HINT,
    HealthResult,
    Report,
    SmokeResult,
    check_health,
    check_smoke,
    compare,
    excepted_packages,
    gpu_visible,
)
from imagekit.verify.unasked import layer_finder

PROBE_PATH = Path(__file__).resolve().parent / "probe.py"
PROBE_MOUNT = "/run/imagekit/probe.py"
LABEL = "imagekit.verify"
# The service's own python first (what `python -m app.server` runs), then the usual venv, then the system one.
_FIND_PYTHON = (
    'for p in "$(command -v python)" /opt/venv/bin/python "$(command -v python3)"; do '
    '[ -n "$p" ] && [ -x "$p" ] && exec "$p" "$@"; done; echo "no python in the image" >&2; exit 127'
)


@dataclass
class DockerHost:
    """One Docker Engine that images are booted on; `client` is a docker SDK client (or a test fake)."""

    client: Any
    reporter: Reporter = silent

    docker_host: str = field(default_factory=lambda: os.environ.get("DOCKER_HOST", ""))
    created: list[str] = field(default_factory=list)  # names of the containers this host started (all removed)
    probe_problems: list[str] = field(default_factory=list)  # what the probe boundary dropped or cut (failures)

    @property
    def name(self) -> str:
        """The engine's address as the report shows it."""
        return self.docker_host or engine_address(self.client)

    @property
    def is_local(self) -> bool:
        """True when the engine shares this machine's filesystem and loopback (unix socket or localhost)."""
        url = self.docker_host
        if not url or url.startswith(("unix://", "npipe://")):
            return True
        host = urllib.parse.urlsplit(url).hostname or ""
        return host in ("localhost", "127.0.0.1", "::1")

    def image_id(self, ref: str) -> str:
        """The local image id of `ref`; UsageError when the engine does not have it."""
        found = local_image_id(self.client, ref)
        if found is None:
            raise UsageError(
                f"image {ref!r} is not on the Docker host {self.name}; build it first (imagekit build --target docker)"
            )
        return found

    @contextlib.contextmanager
    def _container(self, **kwargs: Any) -> Iterator[Container]:
        labels = {LABEL: "1", **kwargs.pop("labels", {})}
        name = f"imagekit-verify-{uuid.uuid4().hex[:12]}"
        self.created.append(name)
        # removed on the way out, also on KeyboardInterrupt: never leave a verify container behind
        with container(self.client, name=name, labels=labels, **kwargs) as made:
            yield made

    def probe(self, ref: str, model_paths: list[str], *, gpu: bool, timeout: float = 300) -> dict[str, Any]:
        """Run the probe inside the image (its own Python) and return its JSON."""
        volumes: dict[str, dict[str, str]] | None = None
        if self.is_local:
            # Mounted read-only at verify time: the probe is never part of the image.
            volumes = {str(PROBE_PATH): {"bind": PROBE_MOUNT, "mode": "ro"}}
            argv = [PROBE_MOUNT, *model_paths]
        else:
            # A remote engine cannot see this machine's files: hand the probe over as `python -c` text instead.
            argv = ["-c", PROBE_PATH.read_text(encoding="utf-8"), *model_paths]
        with self._container(
            image=ref,
            entrypoint=["/bin/sh", "-c", _FIND_PYTHON, "sh"],
            command=argv,
            volumes=volumes,
            device_requests=gpu_requests(gpu),
            network_disabled=True,
            labels={f"{LABEL}.role": "probe"},
        ) as made:
            made.start()
            try:
                code = made.wait(timeout=timeout)
            except engine_errors() as exc:
                raise ProbeFailed(f"the probe did not finish within {timeout:g}s ({type(exc).__name__})") from None
            out, more = made.output_bytes(stdout=True, limit=MAX_PROBE_BYTES)
            err_raw, _ = made.output_bytes(stdout=False, stderr=True, limit=64 * 1024)
        err = clip(err_raw.decode("utf-8", "replace").strip()[-800:], 800)
        if more:
            raise ProbeFailed(f"the probe printed over {MAX_PROBE_BYTES} bytes (exit {code}); imagekit reads no more")
        try:
            data, self.probe_problems = parse_probe(out, last_line=True)
        except ProbeInputError as exc:
            shown = err or clip(out[-800:].decode("utf-8", "replace"), 800)
            raise ProbeFailed(f"the probe printed no probe JSON ({exc}; exit {code}): {shown}") from None
        return data

    @contextlib.contextmanager
    def service(self, ref: str, port: int, *, gpu: bool) -> Iterator[ServiceHandle]:
        """Start the image's own command with `port` published at a random host port; removed on exit.

        Local and ssh:// engines publish on the engine host's 127.0.0.1 (over ssh through a tunnel); a tcp://
        engine publishes on all its interfaces, since this machine can reach it only by its address.
        """
        remote_tcp = not self.is_local and not self.docker_host.startswith("ssh://")
        bind = "0.0.0.0" if remote_tcp else "127.0.0.1"  # noqa: S104 (see the docstring)
        with self._container(
            image=ref,
            ports={f"{port}/tcp": (bind, None)},
            device_requests=gpu_requests(gpu),
            labels={f"{LABEL}.role": "service"},
        ) as made:
            made.start()
            started = time.monotonic()
            host_port = _published_port(made, port)
            with self._endpoint(host_port) as base_url:
                yield ServiceHandle(container=made, base_url=base_url, started=started)

    @contextlib.contextmanager
    def _endpoint(self, host_port: int) -> Iterator[str]:
        if self.is_local:
            yield f"http://127.0.0.1:{host_port}"
        elif self.docker_host.startswith("ssh://"):
            with ssh_tunnel(self.docker_host, host_port) as local_port:
                yield f"http://127.0.0.1:{local_port}"
        else:
            yield f"http://{urllib.parse.urlsplit(self.docker_host).hostname}:{host_port}"


def ssh_tunnel_argv(docker_host: str, remote_port: int, local_port: int) -> list[str]:
    """The ssh command forwarding 127.0.0.1:local_port here to 127.0.0.1:remote_port on the ssh:// engine host."""
    parts = urllib.parse.urlsplit(docker_host)
    target = f"{parts.username}@{parts.hostname}" if parts.username else str(parts.hostname)
    argv = ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes"]
    if parts.port:
        argv += ["-p", str(parts.port)]
    return [*argv, "-L", f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}", target]


@contextlib.contextmanager
def ssh_tunnel(docker_host: str, remote_port: int, wait: float = 20.0) -> Iterator[int]:
    """Forward a local port to the engine host's loopback for as long as the block runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        local_port = int(sock.getsockname()[1])
    proc = Process(ssh_tunnel_argv(docker_host, remote_port, local_port))
    try:
        deadline = time.monotonic() + wait
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local_port), timeout=1):
                break
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise ImagekitError(
                    f"could not open an ssh tunnel to {docker_host} for the service port: {' | '.join(proc.tail)}"
                )
            time.sleep(0.2)
        yield local_port
    finally:
        proc.cancel(grace=2.0)


class ProbeFailed(ImagekitError):
    """The probe could not run inside the image (no Python, no shell)."""

    exit_code = 1


class ServiceDidNotStart(ImagekitError):
    """The service container exited or never published its port."""

    exit_code = 1


@dataclass
class ServiceHandle:
    """A started service container and where to reach it."""

    container: Container
    base_url: str
    started: float

    def running(self) -> bool:
        """Whether the container is still running."""
        return self.container.running()

    def logs_tail(self, lines: int = 20) -> list[str]:
        """The last lines of the container's output."""
        try:
            text = self.container.output(tail=lines)
        except Exception as exc:
            return [f"(no logs: {exc})"]
        return list(text.rstrip().splitlines()[-lines:])


def _published_port(made: Container, port: int, wait: float = 10.0) -> int:
    deadline = time.monotonic() + wait
    while True:
        host_port = made.published_port(port)
        if host_port is not None:
            return host_port
        if time.monotonic() > deadline or made.status == "exited":
            # the image under test decides whether its container lives: a failed check, not a crash
            raise ServiceDidNotStart(f"the container did not publish port {port} (status {made.status})")
        time.sleep(0.1)


def wait_ready(
    svc: ServiceHandle,
    path: str,
    timeout: float,
    *,
    interval: float = 1.0,
    reporter: Reporter = silent,
    clock: Callable[[], float] = time.monotonic,
) -> HealthResult:
    """Poll the health path until it answers 200, the container exits, or `timeout` seconds pass."""
    result = HealthResult(path=path, timeout=timeout)
    deadline = svc.started + timeout
    while True:
        # a cancelled run (nightly --jobs: the signal reached another thread) stops waiting; the container goes
        check_cancel("verify interrupted while waiting for health")
        try:
            # the whole answer within the poll's time and never past the deadline (+1 s): a service dripping a
            # byte at a time is abandoned with the rest
            per_poll = min(max(1.0, min(10.0, interval * 5)), max(1.0, deadline - clock() + 1.0))
            status, _, body = service_http.request(
                svc.base_url, "GET", path, timeout=per_poll, limit=service_http.HEALTH_BODY_LIMIT
            )
            result.last_status = status
            result.last_body = body[:500].decode("utf-8", "replace")
            if status == 200:
                result.ready = True
                result.seconds_to_ready = round(clock() - svc.started, 3)
                reporter(Event("step", f"ready after {result.seconds_to_ready:.1f}s"))
                return result
        except OSError as exc:
            result.last_body = f"{type(exc).__name__}: {exc}"
        if not svc.running():
            result.last_body = f"the container exited; last output: {' | '.join(svc.logs_tail(8))}"
            return result
        if clock() >= deadline:
            return result
        time.sleep(min(interval, max(0.05, deadline - clock())))


def smoke(
    svc: ServiceHandle, method: str, path: str, payload: Any, headers: dict[str, str]
) -> tuple[SmokeResult, bytes]:
    """Send the smoke request; returns what came back and the body."""
    body = None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
    hdrs = {"Content-Type": "application/json", **headers} if body is not None else dict(headers)
    result = SmokeResult(method=method, path=path)
    t0 = time.monotonic()
    try:
        status, resp_headers, data = service_http.request(
            svc.base_url, method, path, body=body, headers=hdrs, timeout=120, limit=service_http.SMOKE_BODY_LIMIT
        )
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result, b""
    result.latency_ms = round(1000 * (time.monotonic() - t0), 2)
    result.status = status
    result.bytes = len(data)
    result.content_type = resp_headers.get("content-type", "")
    result.sha256 = hashlib.sha256(data).hexdigest()
    return result, data


# --- the verification run: probe, pins, health, smoke, report ----------------------------------------------


def _probe_if_present(host: DockerHost, tag: str) -> dict[str, Any] | None:
    """The probe of a layer image on the engine, or None when the engine does not have it or it cannot run."""
    with contextlib.suppress(ImagekitError, *engine_errors()):
        if local_image_id(host.client, tag) is not None:
            return host.probe(tag, [], gpu=False, timeout=300)
    return None


def judged(
    probe: dict[str, Any], loaded: LoadedSpec, name: str, gpu_rule: Any, *, target: str = "docker", layer_of: Any = None
) -> list[str]:
    """compare(), with a shape the boundary let through but a judge did not expect made a failure, not a crash."""
    try:
        return compare(probe, loaded, name, target=target, gpu=gpu_rule or None, layer_of=layer_of)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
        return [f"probe: a value of an unexpected shape ({type(exc).__name__}: {clip(str(exc), 200)})"]


class VerifyResult(NamedTuple):
    """What verify_docker returns: unpacks as (report, path), and has `.path` for callers that want only that."""

    report: Report
    path: Path


def pick_image(loaded: LoadedSpec, image: str | None) -> str:
    """The spec image to verify: the named one, or the only one."""
    names = sorted(loaded.spec.images)
    if image is None:
        if len(names) == 1:
            return names[0]
        raise UsageError(f"{loaded.file} defines several images ({', '.join(names)}); pick one with --image")
    if image not in loaded.spec.images:
        raise UsageError(f"{loaded.file}: no image {image!r} (images: {', '.join(names)})")
    return image


def report_path_for(loaded: LoadedSpec, image: str, when: datetime) -> Path:
    """<spec folder>/.imagekit/reports/<image>-<UTC timestamp>.json."""
    stamp = when.strftime("%Y%m%dT%H%M%S.%fZ")
    return work_dir(loaded.root) / "reports" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', image)}-{stamp}.json"


def verify_docker(
    loaded: LoadedSpec,
    image_ref: str,
    image: str | None = None,
    reporter: Reporter = silent,
    *,
    client: Any = None,
    gpu: str | None = None,
) -> VerifyResult:
    """Boot `image_ref` on the Docker host and verify it against the spec; returns the report and its path.

    `gpu` (required|optional) overrides the image's verify.gpu for this run. Raises VerifyFailed (after writing
    the report) when anything does not match, Interrupted on Ctrl-C.
    """
    name = pick_image(loaded, image)
    policy = loaded.verify_for(name)
    gpu_rule = effective_gpu(policy.gpu, gpu)
    res = loaded.resolved(name)
    host = DockerHost(client if client is not None else client_from_env(timeout=120, ping=True), reporter)
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    report = Report(
        spec=str(loaded.path),
        image=name,
        image_ref=image_ref,
        host=host.name,
        started_at=started.isoformat(),
        gpu_policy=gpu_rule,
    )
    out_path = report_path_for(loaded, name, started)

    def finish() -> Path:
        report.ok = not report.failures
        report.containers = list(host.created)
        report.finished_at = datetime.now(timezone.utc).isoformat()
        report.seconds = round(time.monotonic() - t0, 3)
        return report.write(out_path)

    # SIGTERM (docker stop, CI cancel) takes the same cleanup path as Ctrl-C.
    with forward_sigterm():
        try:
            report.image_id = host.image_id(image_ref)
            models = [m.dest for _, layer in loaded.chain(name) for m in layer.models]
            # Request GPUs only when they are required: asking for them on a CPU host fails the container start.
            want_gpu = gpu_rule == "required"
            reporter(Event("start", f"probing {image_ref}", image=name, target="docker"))
            gpu_refused = False
            try:
                report.probe = host.probe(image_ref, models, gpu=want_gpu, timeout=min(600.0, policy.timeout))
            except ProbeFailed as exc:
                report.failures.append(f"probe: {exc}")
            except engine_errors() as exc:
                # An engine with no GPU runtime refuses the GPU request itself ("could not select device driver").
                gpu_refused = want_gpu and bool(re.search(r"gpu|device driver", str(exc), re.IGNORECASE))
                if gpu_refused:
                    report.failures.append(f"{GPU_HINT} (the engine said: {str(exc).strip()[:300]})")
                else:
                    report.failures.append(f"probe: the engine could not run the probe container: {exc}")
            report.failures += host.probe_problems
            if report.probe:
                report.gpu_visible = gpu_visible(report.probe)
                layer_of = layer_finder(loaded, name, lambda tag: _probe_if_present(host, tag))
                report.failures += judged(report.probe, loaded, name, gpu_rule, layer_of=layer_of)
                report.excepted_packages = excepted_packages(report.probe, loaded, name)
            if gpu_refused:
                pass  # the service container would be refused the same way
            elif res.port and policy.health:
                _serve_checks(
                    host, loaded, name, image_ref, port=res.port, gpu=want_gpu, report=report, reporter=reporter
                )
            elif policy.health or policy.smoke:
                report.failures.append("verify: health/smoke are set but the image has no `port` to reach the service")
        except KeyboardInterrupt:
            # The containers are already removed by their context managers; leave a report of what was seen.
            report.failures.append("interrupted")
            partial = finish()
            raise Interrupted(f"verify interrupted; its containers were removed (partial report: {partial})") from None
    written = finish()
    if report.failures:
        reporter(Event("fail", f"{len(report.failures)} failure(s); report {written}", image=name, target="docker"))
        raise VerifyFailed(
            f"{name}: verification of {image_ref} failed on {host.name}",
            failures=report.failures,
            report_path=str(written),
        )
    reporter(Event("done", f"verified; report {written}", image=name, target="docker"))
    return VerifyResult(report, written)


def _serve_checks(
    host: DockerHost,
    loaded: LoadedSpec,
    name: str,
    image_ref: str,
    *,
    port: int,
    gpu: bool,
    report: Report,
    reporter: Reporter,
) -> None:
    policy = loaded.verify_for(name)
    health = policy.health
    assert health is not None
    reporter(Event("step", f"starting the service, waiting for {health.path}", image=name, target="docker"))
    try:
        with host.service(image_ref, port, gpu=gpu) as svc:
            _health_and_smoke(svc, loaded, name, report, reporter)
    except engine_errors() as exc:
        report.failures.append(f"service: the container did not start: {clip(str(exc).strip(), 500)}")
    except ServiceDidNotStart as exc:
        report.failures.append(f"service: {exc}")


def _health_and_smoke(svc: ServiceHandle, loaded: LoadedSpec, name: str, report: Report, reporter: Reporter) -> None:
    policy = loaded.verify_for(name)
    health = policy.health
    assert health is not None
    report.health = wait_ready(svc, health.path, health.timeout, interval=health.interval, reporter=reporter)
    report.failures += check_health(health, report.health)
    if report.health.ready:
        # the smoke request must run with the model where the GPU policy says it is
        ready = report.health.last_body
        report.failures += service_device_failures(ready, report.probe, report.gpu_policy, health.path)
    sm = policy.smoke
    if not report.health.ready or sm is None:
        return
    reporter(Event("step", f"smoke {sm.method} {sm.path}", image=name, target="docker"))
    result, body = smoke(svc, sm.method, sm.path, sm.json_, sm.headers)
    report.smoke = result
    report.failures += check_smoke(loaded, sm, result, body)
