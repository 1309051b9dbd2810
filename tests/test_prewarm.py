"""aws.prewarm: the AMI's boot reads the weights and the venv's large libraries in parallel before the service starts,
and the AMI verification reports how long that took."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from imagekit.names import prewarm_paths
from imagekit.plan import ami_settings
from imagekit.render.service_unit import render_prewarm_script, render_service_install, render_service_unit
from imagekit.spec import LoadedSpec, load_spec
from imagekit.verify import vmcheck
from imagekit.verify.ec2_host import check_config, vm_report

SPEC = """\
version: 1
name: pw
layers:
  base:
    from: {{docker: "debian:bookworm-slim"}}
  app:
    parent: base
    models:
      - {{src: w1.bin, dest: /opt/ik22-test/models/w1.bin, sha256: "{sha1}"}}
      - {{src: w2.bin, dest: /opt/ik22-test/models/w2.bin, sha256: "{sha2}"}}
    command: ["python3", "server.py"]
    port: 7860
images:
  app: {{leaf: app, targets: [ami]}}
{aws}
"""


def _spec(tmp_path: Path, *, prewarm: bool) -> LoadedSpec:
    import hashlib

    shas = []
    for i, size in ((1, 3 << 20), (2, 2 << 20)):
        data = os.urandom(size)
        (tmp_path / f"w{i}.bin").write_bytes(data)
        shas.append(hashlib.sha256(data).hexdigest())
    aws = "aws: {prewarm: true}" if prewarm else ""
    text = SPEC.format(sha1=shas[0], sha2=shas[1], aws=aws)
    (tmp_path / "imagekit.yaml").write_text(text)
    return load_spec(tmp_path / "imagekit.yaml")


def test_the_unit_runs_the_pre_read_first_only_when_asked(tmp_path: Path) -> None:
    off = _spec(tmp_path, prewarm=False)
    assert render_prewarm_script(off, "app") is None
    assert "ExecStartPre" not in (render_service_unit(off, "app") or "")
    on = _spec(tmp_path, prewarm=True)
    script, result = prewarm_paths("app")
    unit = render_service_unit(on, "app") or ""
    assert f"ExecStartPre=+/bin/sh {script}\nExecStart=" in unit
    install = render_service_install(on, "app") or ""
    assert f"cat > {script} <<'IMAGEKIT_PREWARM'" in install and f"chmod 0755 {script}" in install
    # an AMI built with the step is another AMI: its hash moves; specs without it keep theirs
    assert ami_settings(on)["aws.prewarm"] == "true" and "aws.prewarm" not in ami_settings(off)
    assert check_config(on, "app")["prewarm"] == {"script": script, "result": result}
    assert "prewarm" not in check_config(off, "app")


def test_the_pre_read_reads_every_large_file_and_says_how_long(tmp_path: Path) -> None:
    loaded = _spec(tmp_path, prewarm=True)
    models = tmp_path / "vm" / "models"
    models.mkdir(parents=True)
    for name in ("w1.bin", "w2.bin"):
        (models / name).write_bytes((tmp_path / name).read_bytes())
    script = tmp_path / "prewarm.sh"
    # the rendered text, pointed at this test's folder instead of /opt (where a test must not write)
    text = render_prewarm_script(loaded, "app") or ""
    assert "find /opt/ik22-test/models/w1.bin /opt/ik22-test/models/w2.bin /opt/venv -type f -size +1M" in text
    script.write_text(text.replace("/opt/ik22-test/models/", f"{models}/"))
    out = tmp_path / "state" / "prewarm.json"
    proc = subprocess.run(["sh", str(script), str(out)], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(out.read_text())
    # /opt/venv is not on this machine (find skips it); the two weights are read
    assert found["files"] == 2 and found["bytes"] == (3 << 20) + (2 << 20) and found["seconds"] >= 0
    # vmcheck runs it itself where no systemd started the service, and the verification report carries it
    step = {"script": str(script), "result": str(tmp_path / "state2" / "prewarm.json")}
    got = vmcheck.prewarm(step, run=True)
    assert got is not None and got["files"] == 2 and got["by"] == "vmcheck before the service"
    started = datetime.now(timezone.utc)
    report = vm_report({"failures": [], "prewarm": got}, loaded, "app", image_ref="aws:r:ami-1", host="ec2",
                       started=started)  # fmt: skip
    assert report.prewarm == {k: got[k] for k in ("seconds", "files", "bytes", "by")}
    assert not any("prewarm" in f for f in report.failures)
    missing = vm_report({"failures": []}, loaded, "app", image_ref="aws:r:ami-1", host="ec2", started=started)
    assert "prewarm: aws.prewarm is on but no pre-read result came back from the instance" in missing.failures
