"""The saved-probe host: judge a probe that ran elsewhere (an air-gapped GPU host, bare metal without Docker).

The probe JSON (`python -m imagekit.verify.probe MODEL... > probe.json`) is compared with the spec by the same
pin and GPU rules as a boot on Docker; no container starts. Health and smoke need the running service and are
not part of it.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imagekit.errors import UsageError, VerifyFailed
from imagekit.events import Event, Reporter, silent
from imagekit.spec import LoadedSpec
from imagekit.verify.docker_host import VerifyResult, pick_image, report_path_for
from imagekit.verify.policy import effective_gpu, gpu_visible, looks_like_probe
from imagekit.verify.report import Report, compare

HOW = "write one with `python -m imagekit.verify.probe MODEL_FILE... > probe.json`"


def read_probe(probe_file: Path | str) -> dict[str, Any]:
    """A saved probe's JSON; UsageError (exit 2) when the file is missing, not JSON or not a probe."""
    where = Path(probe_file)
    try:
        text = where.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--probe-file {where}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--probe-file {where}: not a probe (not UTF-8 text); {HOW}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--probe-file {where}:{exc.lineno}: not a probe (not JSON: {exc.msg}); {HOW}") from None
    why = looks_like_probe(data)
    if why:
        raise UsageError(f"--probe-file {where}: not a probe ({why}); {HOW}")
    assert isinstance(data, dict)
    return data


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
    probe = read_probe(probe_file)
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
    report.failures += compare(probe, loaded, name, target="docker", gpu=gpu_rule)
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
