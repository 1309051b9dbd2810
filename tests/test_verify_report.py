"""Pin/policy comparison, WAV comparison and the probe, against the real probe output of the CPU example image."""

from __future__ import annotations

import ast
import copy
import io
import json
import math
import os
import struct
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, REPO

from imagekit.spec import LoadedSpec, load_spec, parse_spec
from imagekit.verify import probe as probe_mod
from imagekit.verify.report import (
    GPU_HINT,
    Report,
    compare,
    compare_wav,
    cudnn_major,
    parse_lock,
    version_matches,
)

FIXTURE = REPO / "tests" / "fixtures" / "probe-cpu.json"
CPU_SPEC = EXAMPLES / "tts" / "imagekit-cpu.yaml"
TTS_SHA = "4bfe58c56b295277295388d9bef54cab32932c8f79d9f20b987a3fb65289319e"


@pytest.fixture
def probe() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


def _variant(tmp_path: Path, old: str, new: str, spec: Path = CPU_SPEC) -> LoadedSpec:
    """The CPU spec with one text substitution, next to copies of the files it names."""
    text = spec.read_text(encoding="utf-8")
    assert old in text, old
    target = tmp_path / "imagekit.yaml"
    for name in ("requirements-cpu.lock", "requirements.lock"):
        (tmp_path / name).write_bytes((spec.parent / name).read_bytes())
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "tts.pt").write_bytes((spec.parent / "models" / "tts.pt").read_bytes())
    target.write_text(text.replace(old, new), encoding="utf-8")
    return parse_spec(target.read_text(encoding="utf-8"), target)


def test_the_real_cpu_probe_matches_the_cpu_spec(probe: dict[str, Any]) -> None:
    assert compare(probe, load_spec(CPU_SPEC), "tts-cpu") == []


def test_a_different_torch_pin_names_expected_and_found(probe: dict[str, Any], tmp_path: Path) -> None:
    loaded = _variant(tmp_path, 'torch: "2.13.0"', 'torch: "2.12.1"')
    assert compare(probe, loaded, "tts-cpu") == ["torch: expected 2.12.1, found 2.13.0+cpu"]


def test_torch_local_label_pin_must_match_exactly(probe: dict[str, Any], tmp_path: Path) -> None:
    assert compare(probe, _variant(tmp_path, 'torch: "2.13.0"', 'torch: "2.13.0+cpu"'), "tts-cpu") == []
    bad = compare(probe, _variant(tmp_path, 'torch: "2.13.0"', 'torch: "2.13.0+cu124"'), "tts-cpu")
    assert bad == ["torch: expected 2.13.0+cu124, found 2.13.0+cpu"]


def test_torch_missing_in_the_image(probe: dict[str, Any]) -> None:
    probe["torch"] = {"error": "ModuleNotFoundError: No module named 'torch'"}
    failures = compare(probe, load_spec(CPU_SPEC), "tts-cpu")
    assert failures == [
        "torch: expected 2.13.0, found none (import failed: ModuleNotFoundError: No module named 'torch')"
    ]


def test_cuda_pin_against_a_cpu_build(probe: dict[str, Any], tmp_path: Path) -> None:
    loaded = _variant(tmp_path, 'cuda: "none"', 'cuda: "12.4"\n    cudnn: "9"')
    failures = compare(probe, loaded, "tts-cpu")
    assert "torch CUDA build: expected CUDA 12.4, found a CPU-only build" in failures


def test_cpu_spec_against_a_cuda_build(probe: dict[str, Any]) -> None:
    probe["torch"] = {**probe["torch"], "cuda": "12.4"}
    failures = compare(probe, load_spec(CPU_SPEC), "tts-cpu")
    assert failures == ["torch CUDA build: expected none (a CPU build, cuda: none), found CUDA 12.4"]


def test_python_minor_mismatch(probe: dict[str, Any], tmp_path: Path) -> None:
    loaded = _variant(tmp_path, 'python: "3.11"', 'python: "3.12"')
    assert compare(probe, loaded, "tts-cpu") == ["python: expected 3.12, found 3.11.2"]


def test_lock_pins_are_checked_against_the_installed_packages(probe: dict[str, Any], tmp_path: Path) -> None:
    loaded = _variant(tmp_path, "torch:", "torch:")
    lock = tmp_path / "requirements-cpu.lock"
    lock.write_text(lock.read_text().replace("sympy==1.14.0", "sympy==1.13.1") + "numpy==2.1.0\n")
    assert compare(probe, loaded, "tts-cpu") == [
        "pip numpy: expected 2.1.0 (requirements-cpu.lock), found not installed",
        "pip sympy: expected 1.13.1 (requirements-cpu.lock), found 1.14.0",
    ]


def test_lock_names_are_normalized(probe: dict[str, Any]) -> None:
    # the lock says typing-extensions / jinja2, the image's metadata says typing_extensions / Jinja2
    assert "typing_extensions" in probe["pip"]["packages"]
    assert compare(probe, load_spec(CPU_SPEC), "tts-cpu") == []


def test_weights_sha_mismatch_names_both_digests(probe: dict[str, Any]) -> None:
    probe["models"]["/opt/models/tts.pt"]["sha256"] = "ab" * 32
    assert compare(probe, load_spec(CPU_SPEC), "tts-cpu") == [
        f"model /opt/models/tts.pt: expected sha256 {TTS_SHA}, found {'ab' * 32}"
    ]


def test_missing_weights_file(probe: dict[str, Any]) -> None:
    probe["models"]["/opt/models/tts.pt"] = {"error": "FileNotFoundError: [Errno 2] No such file or directory"}
    (failure,) = compare(probe, load_spec(CPU_SPEC), "tts-cpu")
    assert failure.startswith(f"model /opt/models/tts.pt: expected sha256 {TTS_SHA}, found unreadable: FileNotFound")


def test_gpu_required_on_a_host_without_gpu_says_so_and_how_to_fix(probe: dict[str, Any], tmp_path: Path) -> None:
    loaded = _variant(tmp_path, "gpu: optional", "gpu: required")
    assert compare(probe, loaded, "tts-cpu") == [GPU_HINT]
    assert "DOCKER_HOST=ssh://gpu-host imagekit verify" in GPU_HINT


def test_gpu_spec_against_the_cpu_image_lists_every_mismatch(probe: dict[str, Any]) -> None:
    failures = compare(probe, load_spec(EXAMPLES / "tts" / "imagekit.yaml"), "tts-inference")
    assert failures[0] == "torch: expected 2.14.1, found 2.13.0+cpu"
    assert "torch CUDA build: expected CUDA 13.0, found a CPU-only build" in failures
    assert "pip nvidia-cudnn-cu13: expected 9.24.0.43 (requirements.lock), found not installed" in failures
    assert "pip nvidia-cuda-runtime: expected 13.0.96 (requirements.lock), found not installed" in failures
    assert "apt ffmpeg: expected installed, found not installed" in failures
    assert failures[-1] == GPU_HINT


def test_driver_branch_is_checked_on_ami_only(probe: dict[str, Any]) -> None:
    loaded = load_spec(EXAMPLES / "tts" / "imagekit.yaml")
    # A GPU as nvidia-smi would list it: shaped like the probe's output, used only to exercise the branch check.
    probe["nvidia_smi"] = {"gpus": [{"name": "X", "driver": "535.183.01", "capability": "8.6", "memory": ""}]}
    probe["nvidia_smi"]["driver"] = "535.183.01"
    docker_failures = compare(probe, loaded, "tts-inference", target="docker")
    ami_failures = compare(probe, loaded, "tts-inference", target="ami")
    assert not any(f.startswith("driver:") for f in docker_failures)
    assert "driver: expected branch 580, found 535.183.01" in ami_failures
    assert GPU_HINT not in ami_failures


def test_broken_probe_sections_become_failures_not_crashes(probe: dict[str, Any]) -> None:
    broken = {k: {"error": "boom"} for k in probe}
    failures = compare(broken, load_spec(CPU_SPEC), "tts-cpu")
    assert "torch: expected 2.13.0, found none (import failed: boom)" in failures
    assert "python: expected 3.11, found none (boom)" in failures
    assert "pip: cannot list installed packages in the image: boom" in failures
    assert compare({}, load_spec(CPU_SPEC), "tts-cpu")


@pytest.mark.parametrize(
    ("pin", "found", "ok"),
    [
        ("2.13.0", "2.13.0+cpu", True),
        ("2.13.0", "2.13.1", False),
        ("2.13", "2.13.0", True),
        ("3.11", "3.11.2", True),
        ("3.1", "3.11.2", False),
        ("2.5.0", "2.5", True),
        ("12.4", "12.4", True),
        ("12.4", "12.1", False),
        ("2.13.0+cpu", "2.13.0+cpu", True),
        ("2.13.0+cpu", "2.13.0", False),
    ],
)
def test_version_matches(pin: str, found: str, ok: bool) -> None:
    assert version_matches(pin, found) is ok


def test_parse_lock() -> None:
    text = "# c\n--find-links x\nFoo_Bar==1.0  # why\njinja2[i18n]==3.1.6 ; python_version>'3'\nrange>=2\n\nx===7\n"
    assert parse_lock(text) == {"foo-bar": "1.0", "jinja2": "3.1.6", "x": "7"}


def test_cudnn_major() -> None:
    assert cudnn_major(8906) == 8
    assert cudnn_major(90100) == 9
    assert cudnn_major(None) is None
    assert cudnn_major(True) is None


def test_report_round_trips_as_json(probe: dict[str, Any]) -> None:
    rep = Report(spec="s", image="i", image_ref="r", probe=probe, failures=["x"])
    doc = json.loads(rep.to_json())
    assert doc["schema"] == "imagekit.verify/v1"
    assert Report.model_validate(doc) == rep


# --- WAV comparison --------------------------------------------------------------------------------------


def _wav(samples: list[float], rate: int = 16000, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 2:
            w.writeframes(struct.pack(f"<{len(samples)}h", *(round(s * 32767) for s in samples)))
        else:
            w.writeframes(bytes(len(samples)))
    return buf.getvalue()


TONE = [0.5 * math.sin(2 * math.pi * 220 * i / 16000) for i in range(8000)]
REFERENCE = EXAMPLES / "tts" / "reference" / "smoke.wav"


def test_identical_audio_passes() -> None:
    failures, metrics = compare_wav(_wav(TONE), _wav(TONE), 0.02)
    assert failures == []
    assert metrics["rms_diff"] == 0.0


def test_the_committed_reference_matches_itself_and_is_long_enough() -> None:
    data = REFERENCE.read_bytes()
    assert len(data) >= 8000
    assert compare_wav(data, data, 0.0)[0] == []


def test_small_noise_is_within_tolerance_but_a_louder_signal_is_not() -> None:
    near = [s * 1.01 for s in TONE]
    assert compare_wav(_wav(near), _wav(TONE), 0.02)[0] == []
    failures, metrics = compare_wav(_wav([s * 1.5 for s in TONE]), _wav(TONE), 0.02)
    assert metrics["rms_diff"] == pytest.approx(0.5, abs=0.01)
    assert failures == ["audio differs from the reference: normalized RMS difference 0.5000 > tolerance 0.02"]


def test_a_shorter_clip_fails_on_length() -> None:
    failures, _ = compare_wav(_wav(TONE[:4000]), _wav(TONE), 0.02)
    assert failures == ["audio length: expected 8000 samples (±2%), found 4000 (50.0% off)"]


def test_format_and_garbage_are_failures() -> None:
    assert compare_wav(_wav(TONE, rate=22050), _wav(TONE), 0.02)[0] == [
        "audio format: expected 1 channel(s) at 16000 Hz, found 1 at 22050 Hz"
    ]
    (garbage,) = compare_wav(b"not a wav", _wav(TONE), 0.02)[0]
    assert garbage.startswith("audio: the response is not a readable 16-bit PCM WAV")
    (eight_bit,) = compare_wav(_wav(TONE, width=1), _wav(TONE), 0.02)[0]
    assert "16-bit" in eight_bit


# --- the probe -------------------------------------------------------------------------------------------


def test_probe_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(probe_mod.__file__).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    names.discard("torch")  # imported inside a try, as the thing being probed
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names - set(sys.stdlib_module_names)


def test_probe_runs_standalone_and_never_crashes(tmp_path: Path) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(b"abc")
    out = subprocess.run(
        [sys.executable, "-I", probe_mod.__file__, str(model), str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    doc = json.loads(out.stdout)
    v1 = {"probe_version", "os", "python", "user", "torch", "nvidia_smi", "pip", "dpkg", "models"}
    assert set(doc) == v1 | {"cuda_libs", "cuda_check"}  # version 2 adds two sections, keeps version 1's
    assert doc["probe_version"] == 2
    assert set(doc["cuda_libs"]) == {"search_path", "cudart", "cudnn", "cublas"}
    for lib in ("cudart", "cudnn", "cublas"):  # a version read from the library, or why there is none
        entry = doc["cuda_libs"][lib]
        assert "version" in entry or entry["error"], entry
    assert doc["models"][str(model)] == {
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "size": 3,
        "writable": True,
        "readable": True,
        "mode": f"0{model.stat().st_mode & 0o7777:03o}",
        "uid": os.getuid(),
    }
    assert doc["models"][str(tmp_path / "missing")]["error"].startswith("FileNotFoundError")
    assert doc["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert "torch" in doc  # a version here, or an error string where torch is not installed


def test_probe_sections_record_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> dict[str, Any]:
        raise RuntimeError("no")

    monkeypatch.setattr(probe_mod, "os_release", boom)
    monkeypatch.setattr(probe_mod.shutil, "which", lambda _name: None)
    doc = probe_mod.collect([])
    assert doc["os"] == {"error": "RuntimeError: no"}
    assert doc["nvidia_smi"] == {"error": "nvidia-smi not found", "gpus": []}


def test_fixture_is_real_cpu_output(probe: dict[str, Any]) -> None:
    # Guard against hand-edits: the committed fixture is what the probe printed inside the CPU example image.
    doc = copy.deepcopy(probe)
    assert doc["torch"]["version"] == "2.13.0+cpu"
    assert doc["torch"]["cuda"] is None
    assert doc["nvidia_smi"]["gpus"] == []
    assert doc["models"]["/opt/models/tts.pt"]["sha256"] == TTS_SHA


def test_the_service_user_must_not_be_root(probe: dict[str, Any]) -> None:
    probe["user"] = {"uid": 0, "gid": 0, "name": "root"}
    assert compare(probe, load_spec(CPU_SPEC), "tts-cpu") == ["user: expected app, found root (uid 0)"]


def test_models_must_not_be_writable_by_the_service_user(probe: dict[str, Any]) -> None:
    probe["models"]["/opt/models/tts.pt"]["writable"] = True
    assert compare(probe, load_spec(CPU_SPEC), "tts-cpu") == [
        "model /opt/models/tts.pt: expected read-only for app, found writable by app (uid 999)"
    ]


def test_ssh_tunnel_command_for_a_remote_engine() -> None:
    from imagekit.verify.docker_host import DockerHost
    from imagekit.verify.ssh_tunnel import ssh_tunnel_argv

    assert ssh_tunnel_argv("ssh://ubuntu@gpu-host:2222", 32768, 40000) == [
        *("ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes", "-p", "2222"),
        *("-L", "127.0.0.1:40000:127.0.0.1:32768", "ubuntu@gpu-host"),
    ]
    assert ssh_tunnel_argv("ssh://gpu-host", 1, 2)[-1] == "gpu-host"
    assert DockerHost(client=None, docker_host="").is_local
    assert DockerHost(client=None, docker_host="unix:///var/run/docker.sock").is_local
    assert DockerHost(client=None, docker_host="tcp://127.0.0.1:2375").is_local
    assert not DockerHost(client=None, docker_host="ssh://gpu-host").is_local
    assert not DockerHost(client=None, docker_host="tcp://10.0.0.5:2376").is_local


def _smoke_result(body: bytes, **kw: Any) -> Any:
    from imagekit.verify.report import SmokeResult

    fields: dict[str, Any] = {
        "method": "POST",
        "path": "/synthesize",
        "status": 200,
        "bytes": len(body),
        "content_type": "audio/wav",
        "latency_ms": 5.0,
    }
    return SmokeResult(**{**fields, **kw})


def test_check_smoke_against_the_cpu_policy() -> None:
    from imagekit.verify.report import check_smoke

    loaded = load_spec(CPU_SPEC)
    sm = loaded.verify_for("tts-cpu").smoke
    assert sm is not None
    ref = REFERENCE.read_bytes()
    good = _smoke_result(ref)
    assert check_smoke(loaded, sm, good, ref) == []
    assert good.audio is not None
    assert good.audio["rms_diff"] == 0.0
    assert check_smoke(loaded, sm, _smoke_result(b"oops", status=500), b"oops") == [
        "smoke status: expected 200, found 500 (oops)",
        "smoke response too short: expected at least 8000 bytes, found 4",
    ]
    assert check_smoke(loaded, sm, _smoke_result(ref, content_type="text/html; charset=utf-8"), ref) == [
        "smoke content type: expected audio/wav, found text/html; charset=utf-8"
    ]
    assert check_smoke(loaded, sm, _smoke_result(b"", error="URLError: refused"), b"") == [
        "smoke POST /synthesize: no response: URLError: refused"
    ]


def test_check_smoke_latency_and_health(tmp_path: Path) -> None:
    from imagekit.verify.report import HealthResult, check_health, check_smoke

    loaded = _variant(tmp_path, "content_type: audio/wav,", "content_type: audio/wav, max_latency_ms: 50,")
    sm = loaded.verify_for("tts-cpu").smoke
    assert sm is not None
    (tmp_path / "reference").mkdir()
    ref = REFERENCE.read_bytes()
    (tmp_path / "reference" / "smoke.wav").write_bytes(ref)
    assert check_smoke(loaded, sm, _smoke_result(ref, latency_ms=75.5), ref) == [
        "smoke latency: expected at most 50 ms, found 75.5 ms"
    ]
    health = loaded.verify_for("tts-cpu").health
    assert health is not None
    assert check_health(health, HealthResult(path="/ready", ready=True)) == []
    assert check_health(health, HealthResult(path="/ready", last_status=503, last_body='{"status": "loading"}')) == [
        'health: /ready did not answer 200 within 300s (last: 503 {"status": "loading"})'
    ]
