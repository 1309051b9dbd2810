"""`imagekit doctor`: real tools on this machine, AWS config from the environment, fakes for what is not here."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import require_docker, require_packer, require_tool
from typer.testing import CliRunner

from imagekit import doctor
from imagekit.cli import app
from imagekit.runners import process

NAMES = ["docker engine", "buildkit", "packer", "aws credentials", "aws region", "gpu", "debootstrap"]


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An AWS environment with nothing configured (and no instance metadata to wait for)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path


def by_name(report: doctor.Report) -> dict[str, doctor.Check]:
    return {c.name: c for c in report.checks}


def test_real_tools_on_this_machine(no_aws: Path) -> None:
    require_docker()
    require_packer()
    require_tool("debootstrap")
    report = doctor.diagnose()
    checks = by_name(report)
    assert [c.name for c in report.checks] == NAMES
    assert checks["docker engine"].ok, checks["docker engine"]
    assert re.search(r"engine \d+\.\d+", checks["docker engine"].detail)
    assert checks["buildkit"].ok, checks["buildkit"]
    assert checks["packer"].ok and re.search(r"packer \d+\.\d+\.\d+$", checks["packer"].detail)
    assert checks["debootstrap"].ok and "debootstrap" in checks["debootstrap"].detail
    gpu = checks["gpu"]
    assert gpu.ok == (shutil.which("nvidia-smi") is not None)
    if not gpu.ok:
        assert "nvidia-smi" in gpu.detail and gpu.fix
    for check in report.checks:
        assert check.ok or check.fix, f"{check.name} is missing but says no fix"


def test_aws_missing_says_how_to_fix(no_aws: Path) -> None:
    t0 = time.monotonic()
    checks = {c.name: c for c in doctor.check_aws()}
    assert time.monotonic() - t0 < 5, "doctor must not wait on AWS"
    assert not checks["aws credentials"].ok
    assert "AWS_PROFILE" in checks["aws credentials"].fix
    assert not checks["aws region"].ok
    assert "AWS_DEFAULT_REGION" in checks["aws region"].fix


def test_aws_from_environment(no_aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIMAGEKITTEST0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    checks = {c.name: c for c in doctor.check_aws()}
    assert checks["aws credentials"].ok and checks["aws credentials"].detail == "found via env"
    assert checks["aws region"] == doctor.Check("aws region", True, "eu-west-1", "", "AMI builds")
    # The key itself is never shown.
    assert "AKIA" not in json.dumps([c.detail for c in checks.values()])


def test_aws_from_profile_files(no_aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (no_aws / "credentials").write_text("[build]\naws_access_key_id = AKIAX\naws_secret_access_key = y\n")
    (no_aws / "config").write_text("[profile build]\nregion = us-west-2\n")
    monkeypatch.setenv("AWS_PROFILE", "build")
    checks = {c.name: c for c in doctor.check_aws()}
    assert checks["aws credentials"].ok and "shared-credentials-file" in checks["aws credentials"].detail
    assert checks["aws region"].detail == "us-west-2"


def test_a_broken_aws_config_is_reported_not_raised(no_aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "does-not-exist")
    checks = doctor.check_aws()
    assert not checks[0].ok
    assert "cannot read the AWS configuration" in checks[0].detail


class FakeTools:
    """Canned answers for the tools doctor runs, keyed by the program's base name and first argument."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, str] | BaseException]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], **_kw: Any) -> process.Result:
        self.calls.append(list(argv))
        answer = self.answers.get((Path(argv[0]).name, argv[1]))
        if answer is None:
            raise AssertionError(f"unexpected call {argv}")
        if isinstance(answer, BaseException):
            raise answer
        code, output = answer
        return process.Result(list(argv), code, output.splitlines()[-3:], output)

    @staticmethod
    def which(name: str) -> str | None:
        return f"/opt/fake/{name}"


def test_gpu_listing_is_parsed() -> None:
    fake = FakeTools(
        {
            ("nvidia-smi", "--query-gpu=name,driver_version,compute_cap"): (
                0,
                "NVIDIA A10G, 550.54.15, 8.6\nNVIDIA H100 80GB HBM3, 550.54.15, 9.0\n",
            )
        }
    )
    check = doctor.check_gpu(fake, fake.which)
    assert check.ok
    assert check.detail == "NVIDIA A10G (sm_86, driver 550.54.15); NVIDIA H100 80GB HBM3 (sm_90, driver 550.54.15)"


def test_gpu_driver_not_loaded() -> None:
    msg = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    fake = FakeTools({("nvidia-smi", "--query-gpu=name,driver_version,compute_cap"): (9, msg)})
    check = doctor.check_gpu(fake, fake.which)
    assert not check.ok and msg in check.detail and check.fix


def test_new_docker_client_without_buildx() -> None:
    version = json.dumps({"Client": {"Version": "28.2.2"}, "Server": {"Version": "28.2.2"}})
    fake = FakeTools(
        {
            ("docker", "version"): (0, version),
            ("docker", "buildx"): (1, "docker: 'buildx' is not a docker command."),
        }
    )
    # The fake answers for any docker path (Debian's is preferred when present): the client version decides.
    engine, buildkit = doctor.check_docker(fake, lambda _n: "/opt/fake/docker")
    assert engine.ok
    assert not buildkit.ok
    assert "needs the buildx plugin" in buildkit.detail and "docker-buildx" in buildkit.fix
    assert [call[1] for call in fake.calls] == ["version", "buildx"]


def test_engine_down() -> None:
    output = (
        json.dumps({"Client": {"Version": "20.10.24"}, "Server": None})
        + "\nCannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
    )
    fake = FakeTools({("docker", "version"): (1, output)})
    engine, buildkit = doctor.check_docker(fake, lambda _n: "/usr/bin/docker")
    assert not engine.ok
    assert "Cannot connect to the Docker daemon" in engine.detail
    assert "dockerd" in engine.fix
    assert buildkit.ok  # the client has it; the engine is the thing to fix


def test_a_tool_that_hangs_is_missing_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real process that never answers: doctor gives up after its timeout and reports it.
    fake_packer = tmp_path / "packer"
    fake_packer.write_text("#!/bin/sh\nexec sleep 60\n")
    fake_packer.chmod(0o755)
    monkeypatch.setattr(doctor, "PROBE_TIMEOUT", 1.0)
    t0 = time.monotonic()
    check = doctor.check_packer(process.capture, lambda _n: str(fake_packer))
    assert time.monotonic() - t0 < 15
    assert not check.ok and "packer version` failed" in check.detail


def test_probe_survives_timeouts_and_missing_binaries() -> None:
    fake = FakeTools({("packer", "version"): process.CommandTimeout("packer did not finish within 1s")})
    assert not doctor.check_packer(fake, fake.which).ok
    assert not doctor.check_packer(process.capture, lambda _n: "/nonexistent/packer").ok
    assert not doctor.check_packer(process.capture, lambda _n: None).ok


def test_cli_json_and_strict(no_aws: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [c["name"] for c in doc["checks"]] == NAMES
    assert doc["ok"] is False  # no AWS credentials in this environment
    # Missing items are not errors ...
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "miss packer" in result.output and "apt-get install packer" in result.output
    # ... unless --strict.
    result = runner.invoke(app, ["doctor", "--strict"])
    assert result.exit_code == 1
    assert "error: missing: " in result.output and "packer" in result.output
    assert "Traceback" not in result.output
