"""Shared test helpers: tool requirements (fail under CI, skip locally) and the --update-golden switch."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite golden files from the current output.")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def _missing(what: str) -> None:
    # Under CI a missing tool is a failure, never a silent skip.
    if IN_CI:
        pytest.fail(f"{what} is required under CI (CI=true) but is not available")
    pytest.skip(f"{what} not available")


def require_docker() -> str:
    """The Debian docker client path, once the engine answers; fails under CI, skips locally."""
    try:
        ok = subprocess.run([DOCKER, "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        _missing("a Docker Engine (dockerd)")
    return DOCKER


def require_packer() -> str:
    """The packer binary path; fails under CI, skips locally."""
    path = shutil.which("packer")
    if not path:
        _missing("packer")
    assert path
    return path


def require_tool(name: str) -> str:
    """Any other binary on PATH; fails under CI, skips locally."""
    path = shutil.which(name)
    if not path:
        _missing(name)
    assert path
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep digest caches and logs of tests out of the user's ~/.cache, one folder per session.
    if "IMAGEKIT_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("IMAGEKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "imagekit-cache"))
