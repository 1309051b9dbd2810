"""The saved-probe host: judge a probe that ran elsewhere (an air-gapped GPU host, bare metal without Docker).

The probe JSON (`python -m imagekit.verify.probe MODEL... > probe.json`) is compared with the spec by the same
pin and GPU rules as a boot on Docker; no container starts. Health and smoke need the running service and are
not part of it.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imagekit.errors import UsageError, VerifyFailed
from imagekit.events import Event, Reporter, silent
from imagekit.inputs import clip, read_regular
from imagekit.spec import LoadedSpec
from imagekit.verify.docker_host import VerifyResult, judged, pick_image, report_path_for
from imagekit.verify.policy import effective_gpu, gpu_visible, looks_like_probe
from imagekit.verify.probe_input import MAX_PROBE_BYTES, ProbeInputError, parse_probe
from imagekit.verify.report import Report

HOW = "write one with `python -m imagekit.verify.probe MODEL_FILE... > probe.json`"


def read_probe(probe_file: Path | str) -> tuple[dict[str, Any], list[str]]:
    """A saved probe through the probe boundary: (probe, problems). UsageError (exit 2) when the file is missing,
    not a regular file (a FIFO, /dev/zero), over the size bound, not JSON or not a probe."""
    where = Path(probe_file)
    try:
        raw = read_regular(where, what="--probe-file", limit=MAX_PROBE_BYTES)
    except FileNotFoundError:
        raise UsageError(f"--probe-file {clip(str(where))}: cannot read it (No such file or directory)") from None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--probe-file {clip(str(where))}: not a probe (not UTF-8 text); {HOW}") from None
    try:
        data, problems = parse_probe(raw)
    except ProbeInputError as exc:
        raise UsageError(f"--probe-file {clip(str(where))}: not a probe ({exc}); {HOW}") from None
    why = looks_like_probe(data)
    if why:
        raise UsageError(f"--probe-file {clip(str(where))}: not a probe ({why}); {HOW}")
    return data, problems


def verify_probe_file(
    loaded: LoadedSpec,
    probe_file: Path | str,
    image: str | None = None,
    reporter: Reporter = silent,
    *,
    gpu: str | None = None,
) -> VerifyResult:
    """Judge a saved probe against the spec's image; raises VerifyFailed (after writing the report) on failures."""
    name = pick_image(loaded, image)
    gpu_rule = effective_gpu(loaded.verify_for(name).gpu, gpu)
    probe, problems = read_probe(probe_file)
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    source = Path(probe_file).resolve()
    reporter(Event("start", f"judging the saved probe {source}", image=name, target="probe-file"))
    report = Report(
        spec=str(loaded.path),
        image=name,
        image_ref=f"probe-file:{source}",
        target="probe-file",
        host=str((probe.get("os") or {}).get("pretty_name") or "a saved probe"),
        started_at=started.isoformat(),
        gpu_policy=gpu_rule,
        probe=probe,
    )
    report.gpu_visible = gpu_visible(probe)
    # a probe on a host is judged as on Docker: the driver is the host's, checked against the image's CUDA build
    report.failures += problems + judged(probe, loaded, name, gpu_rule)
    report.ok = not report.failures
    report.finished_at = datetime.now(timezone.utc).isoformat()
    report.seconds = round(time.monotonic() - t0, 3)
    written = report.write(report_path_for(loaded, name, started))
    if report.failures:
        reporter(Event("fail", f"{len(report.failures)} failure(s); report {written}", image=name, target="probe-file"))
        raise VerifyFailed(
            f"{name}: the saved probe {source} fails the spec", failures=report.failures, report_path=str(written)
        )
    reporter(
        Event(
            "done",
            f"the saved probe passes (no health/smoke: no service ran); report {written}",
            image=name,
            target="probe-file",
        )
    )
    return VerifyResult(report, written)
