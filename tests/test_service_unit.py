"""The AMI's systemd unit: rendered from the resolved chain, quoted for systemd, read back the same by vmcheck."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imagekit.names import service_unit_path
from imagekit.render.packer import render_packer
from imagekit.render.service_unit import render_service_install, render_service_unit, service_exec
from imagekit.spec import LoadedSpec, load_spec
from imagekit.verify import vmcheck
from imagekit.verify.report import check_service_unit

VENV_SPEC = """\
version: 1
name: tts
layers:
  base:
    from: {docker: "debian:bookworm-slim"}
  runtime:
    parent: base
    pip: ["numpy==2.1.0"]
  app:
    parent: runtime
    env:
      GREETING: 'say "hi" to $USER at 100% \\ ok'
      SPACED: "two words"
    user: app
    workdir: /opt/app
    command: ["python", "-m", "app.server", "--name", "a b $HOME 50%"]
    port: 7860
images:
  tts: {leaf: app, targets: [docker, ami]}
"""

PLAIN_SPEC = """\
version: 1
name: plain
layers:
  base:
    from: {docker: "debian:bookworm-slim"}
  app:
    parent: base
    command: ["python3", "server.py"]
  idle:
    parent: base
images:
  plain: {leaf: app, targets: [ami]}
  idle: {leaf: idle, targets: [ami]}
"""


def _load(tmp_path: Path, text: str) -> LoadedSpec:
    (tmp_path / "imagekit.yaml").write_text(text)
    return load_spec(tmp_path / "imagekit.yaml")


@pytest.fixture
def venv_spec(tmp_path: Path) -> LoadedSpec:
    return _load(tmp_path, VENV_SPEC)


def test_unit_text_quotes_env_and_uses_the_venv_python(venv_spec: LoadedSpec) -> None:
    unit = render_service_unit(venv_spec, "tts")
    assert unit is not None
    assert unit == render_service_unit(venv_spec, "tts")  # deterministic
    lines = unit.splitlines()
    assert "User=app" in lines and "WorkingDirectory=/opt/app" in lines
    assert [line for line in lines if line.startswith("Environment=")] == [
        # C escapes for \\ and \", %% for systemd specifiers; $ has no meaning in Environment=
        'Environment="GREETING=say \\"hi\\" to $USER at 100%% \\\\ ok"',
        'Environment="PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"',
        'Environment="SPACED=two words"',
        'Environment="VIRTUAL_ENV=/opt/venv"',
    ]
    # $ expands on Exec lines, so it is doubled there; a word with a space is quoted
    assert 'ExecStart=/opt/venv/bin/python -m app.server --name "a b $$HOME 50%%"' in lines
    for line in ("Restart=on-failure", "After=network-online.target", "WantedBy=multi-user.target"):
        assert line in lines
    assert lines.index("[Unit]") < lines.index("[Service]") < lines.index("[Install]")


def test_vmcheck_reads_back_what_was_rendered(venv_spec: LoadedSpec) -> None:
    unit = render_service_unit(venv_spec, "tts")
    assert unit is not None
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert vmcheck.unit_words(exec_line.partition("=")[2], exec_line=True) == service_exec(venv_spec, "tts")
    env = dict(
        word.partition("=")[::2]
        for line in unit.splitlines()
        if line.startswith("Environment=")
        for word in vmcheck.unit_words(line.partition("=")[2], exec_line=False)
    )
    assert env["GREETING"] == 'say "hi" to $USER at 100% \\ ok'
    assert env["SPACED"] == "two words"


def test_install_script_writes_and_enables_the_unit(
    venv_spec: LoadedSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = render_service_install(venv_spec, "tts")
    assert script is not None
    root = tmp_path / "etc-systemd"
    # the same script, pointed at a scratch folder instead of /etc/systemd/system
    subprocess.run(["sh", "-c", script.replace("/etc/systemd/system", str(root))], check=True, capture_output=True)
    unit_path = service_unit_path("tts").replace("/etc/systemd/system", str(root))
    assert Path(unit_path).read_text() == render_service_unit(venv_spec, "tts")
    monkeypatch.setattr(vmcheck, "WANTS_DIR", str(root / "multi-user.target.wants"))
    found = vmcheck.read_unit(unit_path)
    assert found["present"] is True and found["enabled"] is True
    assert found["exec_start"] == service_exec(venv_spec, "tts")
    assert found["user"] == "app" and found["workingdirectory"] == "/opt/app"
    assert found["environment"]["VIRTUAL_ENV"] == "/opt/venv"
    assert check_service_unit(found, venv_spec, "tts", target="ami") == []
    Path(root / "multi-user.target.wants" / "imagekit-tts.service").unlink()
    failures = check_service_unit(vmcheck.read_unit(unit_path), venv_spec, "tts", target="ami")
    assert len(failures) == 1 and "/etc/systemd/system/imagekit-tts.service is not enabled" in failures[0]


def test_no_venv_uses_system_python_and_nonroot_id(tmp_path: Path) -> None:
    loaded = _load(tmp_path, PLAIN_SPEC)
    assert service_exec(loaded, "plain") == ["/usr/bin/python3", "server.py"]
    unit = render_service_unit(loaded, "plain")
    assert unit is not None
    assert "User=65532" in unit.splitlines() and "VIRTUAL_ENV" not in unit and "Environment=" not in unit


def test_no_command_no_unit(tmp_path: Path) -> None:
    loaded = _load(tmp_path, PLAIN_SPEC)
    assert render_service_unit(loaded, "idle") is None and render_service_install(loaded, "idle") is None
    assert "systemd" not in render_packer(loaded, "idle")["idle.pkr.hcl"]
    assert check_service_unit(None, loaded, "idle", target="ami") == []
    # the leaf of an image with a command gets the unit; its parent's template does not
    templates = render_packer(loaded, "plain")
    assert "/etc/systemd/system/imagekit-plain.service" in templates["app.pkr.hcl"]
    assert "systemd" not in templates["base.pkr.hcl"]


def test_missing_unit_fails_only_on_ami_with_a_command(venv_spec: LoadedSpec) -> None:
    missing = {"path": service_unit_path("tts"), "present": False, "enabled": False}
    assert check_service_unit(missing, venv_spec, "tts", target="ami") == [
        "service unit: expected /etc/systemd/system/imagekit-tts.service (starts the service at boot), found none"
    ]
    assert check_service_unit(None, venv_spec, "tts", target="ami") != []
    assert check_service_unit(None, venv_spec, "tts", target="docker") == []


def test_ami_verify_report_fails_without_an_enabled_unit(venv_spec: LoadedSpec) -> None:
    from datetime import datetime, timezone

    from imagekit.verify.ec2_host import check_config, vm_report

    assert check_config(venv_spec, "tts")["unit"] == "/etc/systemd/system/imagekit-tts.service"
    raw = {"failures": [], "service_unit": {"path": service_unit_path("tts"), "present": True, "enabled": False}}
    report = vm_report(
        raw, venv_spec, "tts", image_ref="aws:us-east-1:ami-1", host="ec2", started=datetime.now(timezone.utc)
    )
    assert report.ok is False
    assert any("imagekit-tts.service is not enabled" in f for f in report.failures)
    assert report.service_unit == raw["service_unit"]
