"""verify: boot an image, probe it, compare with the pins, check health and the smoke request, write a report."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from imagekit.errors import Interrupted, UsageError, VerifyFailed
from imagekit.events import Event, Reporter, silent
from imagekit.paths import work_dir
from imagekit.runners.process import forward_sigterm
from imagekit.spec import LoadedSpec, load_spec
from imagekit.verify.docker_host import (
    DockerHost,
    ProbeFailed,
    ServiceHandle,
    client_from_env,
    engine_errors,
    smoke,
    wait_ready,
)
from imagekit.verify.report import GPU_HINT, Report, check_health, check_smoke, compare, gpu_visible


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
    path: Path | str | None,
    image_ref: str,
    image: str | None = None,
    reporter: Reporter = silent,
    *,
    client: Any = None,
) -> VerifyResult:
    """Boot `image_ref` on the Docker host and verify it against the spec; returns the report and its path.

    Raises VerifyFailed (after writing the report) when anything does not match, Interrupted on Ctrl-C.
    """
    loaded = load_spec(path)
    name = pick_image(loaded, image)
    policy = loaded.verify_for(name)
    res = loaded.resolved(name)
    host = DockerHost(client if client is not None else client_from_env(), reporter)
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    report = Report(
        spec=str(loaded.path),
        image=name,
        image_ref=image_ref,
        host=host.name,
        started_at=started.isoformat(),
        gpu_policy=policy.gpu,
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
            want_gpu = policy.gpu == "required"
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
            if report.probe:
                report.gpu_visible = gpu_visible(report.probe)
                report.failures += compare(report.probe, loaded, name, target="docker")
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
        report.failures.append(f"service: the container did not start: {str(exc).strip()[:500]}")


def _health_and_smoke(svc: ServiceHandle, loaded: LoadedSpec, name: str, report: Report, reporter: Reporter) -> None:
    policy = loaded.verify_for(name)
    health = policy.health
    assert health is not None
    report.health = wait_ready(svc, health.path, health.timeout, interval=health.interval, reporter=reporter)
    report.failures += check_health(health, report.health)
    sm = policy.smoke
    if not report.health.ready or sm is None:
        return
    reporter(Event("step", f"smoke {sm.method} {sm.path}", image=name, target="docker"))
    result, body = smoke(svc, sm.method, sm.path, sm.json_, sm.headers)
    report.smoke = result
    report.failures += check_smoke(loaded, sm, result, body)
