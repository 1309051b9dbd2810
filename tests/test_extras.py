"""Optional dependencies: a feature whose extra is missing exits 2 with the exact pip line, in a real fresh venv too."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, REPO
from typer.testing import CliRunner

from imagekit import extras
from imagekit.cli import app

CPU_SPEC = EXAMPLES / "tts" / "imagekit-cpu.yaml"


def _hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name in names else real(name, *args, **kwargs)

    monkeypatch.setattr(extras.importlib.util, "find_spec", find_spec)


def test_every_extra_is_declared_in_pyproject() -> None:
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.EXTRAS) <= set(declared)
    assert any(d.startswith("moto[server]") for d in declared["rehearsal"])


def test_rehearse_without_moto_exits_2_with_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "moto")
    result = CliRunner().invoke(app, ["build", "--target", "ami", "--rehearse", "-f", str(CPU_SPEC)])
    assert result.exit_code == 2, result.output
    assert "pip install 'imagekit[rehearsal]'" in result.output
    assert "--rehearse needs moto" in result.output
    assert "Traceback" not in result.output


def test_gc_rehearse_without_moto_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "flask_cors")
    result = CliRunner().invoke(app, ["gc", "--rehearse", "--dry-run", "-f", str(CPU_SPEC)])
    assert result.exit_code == 2, result.output
    assert "flask_cors" in result.output and "imagekit[rehearsal]" in result.output


def test_ssh_docker_host_without_paramiko_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "paramiko")
    monkeypatch.setenv("DOCKER_HOST", "ssh://gpu-host.invalid")
    result = CliRunner().invoke(app, ["verify", "imagekit/tts-cpu:latest", "-f", str(CPU_SPEC)])
    assert result.exit_code == 2, result.output
    assert "DOCKER_HOST=ssh://gpu-host.invalid needs paramiko" in result.output
    assert "pip install 'imagekit[ssh]'" in result.output


def test_other_docker_hosts_need_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "paramiko")
    extras.require_docker_host("tcp://127.0.0.1:2375")
    extras.require_docker_host("")
    with pytest.raises(extras.MissingExtra) as info:
        extras.require_docker_host("ssh://x")
    assert info.value.exit_code == 2


@pytest.mark.slow
def test_fresh_venv_with_only_pip_install_dot(tmp_path: Path) -> None:
    """`pip install .` (no extras) in a new venv: --rehearse exits 2 naming imagekit[rehearsal]; ssh:// as well."""
    src = tmp_path / "src"
    src.mkdir()
    # only what the wheel is built from: building in the worktree would leave build/ and egg-info behind
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "imagekit", src / "imagekit", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(src)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    exe = venv / "bin" / "imagekit"
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import moto"], capture_output=True, check=False)
    assert probe.returncode != 0, "moto must not come with the default install"
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    run = subprocess.run(
        [str(exe), "build", "--target", "ami", "--rehearse", "-f", str(CPU_SPEC)],
        capture_output=True, text=True, timeout=120, env=env, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert "pip install 'imagekit[rehearsal]'" in run.stderr
    assert "Traceback" not in run.stderr
    # paramiko comes with the default install (docker[ssh]); without it an ssh:// engine names the ssh extra
    subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-q", "-y", "paramiko"], check=True, timeout=120)
    run = subprocess.run(
        [str(exe), "verify", "imagekit/tts-cpu:latest", "-f", str(CPU_SPEC)],
        capture_output=True, text=True, timeout=120, env={**env, "DOCKER_HOST": "ssh://gpu-host.invalid"},
        check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert "pip install 'imagekit[ssh]'" in run.stderr
