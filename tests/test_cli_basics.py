"""`imagekit --version` and typer's shell completion, through the installed console script."""

from __future__ import annotations

import os
import subprocess

import tomllib
from conftest import REPO

import imagekit

EXE = str(REPO / ".venv" / "bin" / "imagekit")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **(env or {})}
    )


def test_version_is_the_package_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0, proc.stderr
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert proc.stdout == f"imagekit {declared}\n" == f"imagekit {imagekit.__version__}\n"


def test_bash_completion_script_and_answers() -> None:
    script = _run("--show-completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "_IMAGEKIT_COMPLETE=complete_bash" in script.stdout and "complete -o default -F" in script.stdout
    # what bash asks through that script: commands, then a command's options
    words = _run(env={"_IMAGEKIT_COMPLETE": "complete_bash", "COMP_WORDS": "imagekit bui", "COMP_CWORD": "1"})
    assert words.stdout.split() == ["build"]
    opts = _run(env={"_IMAGEKIT_COMPLETE": "complete_bash", "COMP_WORDS": "imagekit doctor --reh", "COMP_CWORD": "2"})
    assert opts.stdout.split() == ["--rehearse"]


def test_help_lists_the_first_use_commands() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    for command in ("init", "schema", "doctor", "validate", "build"):
        assert f"  {command} " in proc.stdout, command
    assert "--install-completion" in proc.stdout and "--version" in proc.stdout
