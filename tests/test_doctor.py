"""`imagekit doctor`: real tools on this machine, AWS config from the environment, fakes for what is not here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, require_docker, require_packer, require_tool
from typer.testing import CliRunner

from imagekit import doctor, doctor_report
from imagekit.cli import app
from imagekit.runners import process
from imagekit.spec import load_spec

NAMES = [
    "docker engine",
    "buildkit",
    "packer",
    "aws credentials",
    "aws region",
    "gpu",
    "debootstrap",
    "moto",
    "paramiko",
    "compat matrix",
    "pull (docker)",
    "pull (podman)",
    "unpigz",
]
CPU_SPEC = REPO / "examples" / "tts" / "imagekit-cpu.yaml"
GPU_SPEC = REPO / "examples" / "tts" / "imagekit.yaml"


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


def by_name(report: doctor_report.Report) -> dict[str, doctor_report.Check]:
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
    assert checks["buildkit"].detail.startswith("built a FROM scratch image with BuildKit")
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
    assert checks["aws region"] == doctor_report.Check("aws region", True, "eu-west-1", "", "AMI builds")
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
    # BuildKit is never reported ok without a build: with the engine down it is not tried
    assert not buildkit.ok and "not tried" in buildkit.detail and "engine" in buildkit.fix


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
    # with no spec, what a docker build needs decides; AWS is reported but not needed
    assert doc["ok"] is True and doc["missing"] == [] and doc["spec"] == ""
    aws = next(c for c in doc["checks"] if c["name"] == "aws credentials")
    assert aws["ok"] is False and aws["needed"] is False
    # Missing items nothing needs are not errors ...
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


def _path_without(tmp_path: Path, tool: str) -> str:
    """PATH as it is, but with the folder holding `tool` replaced by links to everything else in it."""
    found = shutil.which(tool)
    assert found, tool
    hidden = Path(found).parent
    links = tmp_path / f"bin-without-{tool}"
    links.mkdir()
    for entry in hidden.iterdir():
        if entry.name != tool:
            (links / entry.name).symlink_to(entry)
    # /bin is /usr/bin on a merged-/usr system: every folder that resolves to the same place is replaced
    dirs = [str(links) if Path(d).resolve() == hidden.resolve() else d for d in os.environ["PATH"].split(os.pathsep)]
    path = os.pathsep.join(dirs)
    assert shutil.which(tool, path=path) is None
    return path


def _doctor_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("imagekit")
    return subprocess.run(
        [str(exe), "doctor", *args], capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.docker
@pytest.mark.packer
def test_cpu_example_without_packer_exits_1_naming_packer(no_aws: Path, tmp_path: Path) -> None:
    require_docker()
    require_packer()
    proc = _doctor_cli("-f", str(CPU_SPEC), env={"PATH": _path_without(tmp_path, "packer")})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MISS packer" in proc.stdout and "apt-get install packer" in proc.stdout
    assert "missing for " in proc.stderr and proc.stderr.strip().endswith(
        "packer (each fix is above; --json lists them)"
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.docker
@pytest.mark.packer
def test_cpu_example_with_its_tools_exits_0_without_aws_or_gpu(no_aws: Path) -> None:
    """No AWS credentials and no GPU here: the CPU example needs neither (gpu: optional, AMIs only rehearsed)."""
    require_docker()
    require_packer()
    require_tool("debootstrap")
    proc = _doctor_cli("-f", str(CPU_SPEC), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    needed = {c["name"] for c in doc["checks"] if c["needed"]}
    assert {"docker engine", "buildkit", "packer", "moto"} <= needed
    assert "aws credentials" not in needed and "gpu" not in needed
    assert doc["ok"] is True and doc["spec"].endswith("imagekit-cpu.yaml")


def test_gpu_example_needs_aws_and_a_gpu(no_aws: Path) -> None:
    fake = FakeTools(
        {("docker", "version"): (1, "Cannot connect to the Docker daemon"), ("debootstrap", "--version"): (0, "1.0")}
    )
    loaded = load_spec(GPU_SPEC)
    # build=False and a client path that answers nothing: only the needs are looked at here
    report = doctor.diagnose(loaded, capture=fake, which=lambda _n: None, build=False)
    checks = by_name(report)
    assert checks["aws credentials"].needed and "on AWS" in checks["aws credentials"].needed_for
    assert checks["gpu"].needed and "verify.gpu: required" in checks["gpu"].needed_for
    assert checks["debootstrap"].needed  # its docker base is debootstrapped (CUDA user space from wheels)
    assert not checks["moto"].needed
    rehearsed = by_name(doctor.diagnose(loaded, rehearse=True, capture=fake, which=lambda _n: None, build=False))
    assert rehearsed["moto"].needed and not rehearsed["aws credentials"].needed


def test_ssh_docker_host_needs_paramiko(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "ssh://gpu-host")
    needs = doctor.needs_of(None)
    assert needs.why["paramiko"] == "DOCKER_HOST=ssh://gpu-host"
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2376")
    assert "paramiko" not in doctor.needs_of(None).why


def test_registry_login_for_push() -> None:
    check = doctor.check_registry_login("registry.example.com/team/tts", {"auths": {}})
    assert not check.ok and check.fix == "docker login registry.example.com"
    stored = {"auths": {"registry.example.com": {"auth": "x"}}}
    assert doctor.check_registry_login("registry.example.com/team/tts", stored).ok
    assert doctor.check_registry_login("team/tts", {"auths": {"https://index.docker.io/v1/": {}}}).ok
    assert doctor.check_registry_login("localhost:5000/tts", {}).ok
    helper = doctor.check_registry_login("123.dkr.ecr.us-east-1.amazonaws.com/tts", {"credHelpers": {
        "123.dkr.ecr.us-east-1.amazonaws.com": "ecr-login"}})  # fmt: skip
    assert helper.ok and "docker-credential-ecr-login" in helper.detail


@pytest.mark.docker
def test_imagekit_docker_cli_is_honoured_and_buildkit_is_really_tried(no_aws: Path, tmp_path: Path) -> None:
    docker = require_docker()
    calls = tmp_path / "calls"
    wrapper = tmp_path / "my-docker"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexec {docker} "$@"\n')
    wrapper.chmod(0o755)
    proc = _doctor_cli("--json", env={"IMAGEKIT_DOCKER_CLI": str(wrapper)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["docker engine"]["detail"].startswith(f"{wrapper} (IMAGEKIT_DOCKER_CLI)")
    assert "build" in calls.read_text().split()
    # the same client with BuildKit turned off: the real build fails, so BuildKit is reported missing
    legacy = tmp_path / "legacy-docker"
    legacy.write_text(f'#!/bin/sh\nDOCKER_BUILDKIT=0 exec {docker} "$@"\n')
    legacy.chmod(0o755)
    proc = _doctor_cli(env={"IMAGEKIT_DOCKER_CLI": str(legacy)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MISS buildkit" in proc.stdout and "buildkit" in proc.stderr
    proc = _doctor_cli(env={"IMAGEKIT_DOCKER_CLI": str(tmp_path / "nope")})
    assert proc.returncode == 1 and "IMAGEKIT_DOCKER_CLI" in proc.stdout
