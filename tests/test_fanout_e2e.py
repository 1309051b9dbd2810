"""Fan-out end to end on the real engine and a moto S3 store: `plan --matrix`, one `imagekit build` process per
job, `nightly --collect`, against one `imagekit nightly` run of the same spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import test_nightly
from conftest import REPO
from test_nightly import write_spec

from imagekit.api.nightly import nightly
from imagekit.manifest.channels import channel_log
from imagekit.manifest.ledger import spec_store
from imagekit.spec import load_spec
from imagekit.timefmt import iso_utc

pytestmark = [pytest.mark.docker, pytest.mark.aws, pytest.mark.slow]
spec_name = test_nightly.spec_name  # the fixture: unique image names, removed afterwards


def _imagekit(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagekit", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ), check=False)  # fmt: skip


def _build_job(spec: Path, job: dict[str, str]) -> subprocess.Popen[str]:
    """One CI matrix job: its own `imagekit build` process."""
    argv = ["build", "-f", str(spec), "--image", job["image"], "--target", job["target"], "--force-layer", job["force"]]
    return subprocess.Popen([sys.executable, "-m", "imagekit", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))  # fmt: skip


def _on_s3(folder: Path, name: str, bucket: str) -> Path:
    spec = write_spec(folder, name)
    spec.write_text(spec.read_text() + f"store: s3://{bucket}/{folder.name}\n")
    return spec


def _shape(report: dict[str, Any]) -> dict[str, Any]:
    """What a nightly report says, without ids, times, paths and which image a shared layer was counted under."""
    runs = {
        (r["image"], r["target"]): {
            "status": r["status"],
            "channels": r["channels"],
            "checks": sorted((c["name"], c["passed"]) for c in r["checks"]),
        }
        for r in report["runs"]
    }
    built = sorted((b["target"], b["layer"], b["reason"].split(" (")[0]) for b in report["built"])
    return {"ok": report["ok"], "runs": runs, "built": built}


def test_matrix_jobs_in_separate_processes_then_collect_equal_one_nightly_run(
    tmp_path: Path, spec_name: str, moto_server: str
) -> None:
    import boto3

    bucket = f"imagekit-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    one_run = _on_s3(tmp_path / "nightly", spec_name, bucket)
    fanned = _on_s3(tmp_path / "fanout", f"{spec_name}-f", bucket)

    whole = nightly(one_run, target="docker", jobs=2, report_dir=tmp_path / "r-nightly")
    assert not whole.failed, whole.runs

    since = iso_utc(datetime.now(timezone.utc))
    planned = _imagekit("plan", "-f", str(fanned), "--matrix", "--target", "docker")
    assert planned.returncode == 0, planned.stderr
    jobs = json.loads(planned.stdout)["include"]
    assert sorted((j["image"], j["target"]) for j in jobs) == [("one", "docker"), ("two", "docker")]
    procs = [_build_job(fanned, j) for j in jobs]
    for p in procs:
        _out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    collected = _imagekit("nightly", "-f", str(fanned), "--collect", "--since", since, "--target", "docker",
                          "--report", str(tmp_path / "r-collect"))  # fmt: skip
    assert collected.returncode == 0, collected.stdout + collected.stderr

    a = json.loads((tmp_path / "r-nightly" / "report.json").read_text())
    b = json.loads((tmp_path / "r-collect" / "report.json").read_text())
    assert _shape(b) == _shape(a)
    assert _shape(b)["runs"][("one", "docker")]["channels"] == ["nightly"]
    for spec in (one_run, fanned):
        store = spec_store(load_spec(spec))
        for image in ("one", "two"):
            assert len(store.read_log(channel_log(image, "nightly"))) == 1
    assert (tmp_path / "r-collect" / "junit.xml").is_file() and "one" in (
        tmp_path / "r-collect" / "report.md"
    ).read_text()

    # a job that never recorded (failed or cancelled before its record) fails the collect and moves nothing
    (tmp_path / "fanout" / "app2" / "hello.txt").write_text("app2 v2\n")
    since = iso_utc(datetime.now(timezone.utc))
    planned = _imagekit("plan", "-f", str(fanned), "--matrix", "--target", "docker")
    assert json.loads(planned.stdout)["include"] == [
        {"image": "two", "target": "docker", "layers": "app2", "force": ""}
    ]
    collected = _imagekit("nightly", "-f", str(fanned), "--collect", "--since", since, "--target", "docker",
                          "--report", str(tmp_path / "r-missing"), "--json")  # fmt: skip
    assert collected.returncode == 1, collected.stderr
    doc = json.loads(collected.stdout)
    runs = {r["image"]: r for r in doc["runs"]}
    assert runs["one"]["status"] == "unchanged" and runs["two"]["status"] == "failed"
    assert any("no record of this run's build of two/docker" in c["message"] for c in runs["two"]["checks"])
    store = spec_store(load_spec(fanned))
    assert len(store.read_log(channel_log("two", "nightly"))) == 1
