"""Real GPU output in the tests: what imagekit's probe and the example services answered on one NVIDIA H200.

tests/fixtures/gpu-h200/ is a copy of the files made on that host (its README says how each was made; the JSON is
never edited). Unlike the CONSTRUCTED cases of test_gpu_policy.py, nothing here is made up: these are real answers,
judged with `imagekit verify --probe-file` against a spec pinned to that host's stack (torch 2.11.0+cu130,
CPython 3.12, driver 580).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, REPO

from imagekit.compat import gpu_problems, pypi_build
from imagekit.verify.policy import gpu_failures
from imagekit.verify.probe import _in_wheel_dir
from imagekit.verify.report import compare, compare_wav

H200_DIR = REPO / "tests" / "fixtures" / "gpu-h200"
HEALTHY = H200_DIR / "probe-h200.json"
BLIND = H200_DIR / "probe-h200-torch-blind.json"
SMOKE_WAV = H200_DIR / "smoke-tts-cuda.wav"
REFERENCE = EXAMPLES / "tts" / "reference" / "smoke.wav"


def _probe(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


H200_SPEC = """\
# a spec pinned to the H200 host's stack (tests/fixtures/gpu-h200/host.txt): what that host ran is what it pins
version: 1
name: h200
layers:
  base:
    from: {bootstrap: {distro: ubuntu, suite: noble}}
    cuda: "13.0"
    cudnn: "9"
    driver: "580"
  runtime:
    parent: base
    python: "3.12"
    torch: "TORCH"
    requirements: requirements.lock
images:
  tts-inference: {leaf: runtime, targets: [docker]}
verify: {gpu: required}
"""


def _spec(folder: Path, torch: str = "2.11.0") -> Path:
    # that host's Python environment as the lock: every package its probe listed, torch pinned by `torch:`
    packages = _probe(HEALTHY)["pip"]["packages"]
    lock = "".join(f"{name}=={version}\n" for name, version in sorted(packages.items()) if name != "torch")
    (folder / "requirements.lock").write_text(lock, encoding="utf-8")
    path = folder / "imagekit.yaml"
    path.write_text(H200_SPEC.replace("TORCH", torch), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def h200_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _spec(tmp_path_factory.mktemp("h200"))


def _verify(spec: Path, probe: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit", "verify", "--probe-file", str(probe), "-f", str(spec), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=spec.parent,
    )


def test_the_fixtures_are_the_h200_files_with_their_provenance() -> None:
    readme = (H200_DIR / "README.md").read_text(encoding="utf-8")
    assert "one NVIDIA H200" in readme and "driver 580.159.04" in readme and "never edit them by hand" in readme
    healthy, blind = _probe(HEALTHY), _probe(BLIND)
    for probe in (healthy, blind):
        assert probe["probe_version"] == 2
        assert probe["nvidia_smi"]["gpus"][0]["name"] == "NVIDIA H200"
        assert probe["nvidia_smi"]["driver"] == "580.159.04"
        assert probe["torch"]["version"] == "2.11.0+cu130"
    assert healthy["torch"]["devices"] == [{"capability": "9.0", "name": "NVIDIA H200"}]
    assert blind["torch"]["cuda_available"] is False and blind["torch"]["device_count"] == 0
    # the smoke answer is the file the service sent (29864 bytes, as smoke.jsonl recorded)
    first = json.loads((H200_DIR / "smoke.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["service"] == "tts" and first["device_arg"] == "cuda" and first["bytes"] == SMOKE_WAV.stat().st_size


def test_the_h200_stack_is_in_the_matrix_and_its_spec_validates(h200_spec: Path) -> None:
    build = pypi_build("2.11.0")
    assert build is not None and (build.cuda, build.cudnn, build.cudnn_version) == ("13.0", "9", "9.19.0.56")
    assert "nvidia-cudnn-cu13" in build.wheels and "cuda-toolkit" in build.wheels
    assert gpu_problems("9.0", "13.0", "2.11.0") == []
    done = subprocess.run(
        [sys.executable, "-m", "imagekit", "validate", "-f", str(h200_spec)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_healthy_h200_probe_passes_every_gpu_rule(h200_spec: Path) -> None:
    assert gpu_failures(_probe(HEALTHY), "required") == []
    from imagekit.spec import load_spec

    assert compare(_probe(HEALTHY), load_spec(h200_spec), "tts-inference") == []
    done = _verify(h200_spec, HEALTHY)
    assert done.returncode == 0, done.stderr
    assert "gpu required" in done.stderr


def test_the_torch_blind_h200_probe_fails_naming_the_h200(h200_spec: Path) -> None:
    failures = gpu_failures(_probe(BLIND), "required")
    assert failures and "NVIDIA H200" in failures[0] and "torch sees none" in failures[0]
    done = _verify(h200_spec, BLIND)
    assert done.returncode == 1, done.stderr
    assert "NVIDIA H200" in done.stderr
    # optional does not excuse a GPU torch cannot use: nvidia-smi lists one
    assert _verify(h200_spec, BLIND, "--gpu", "optional").returncode == 1


def test_the_h200_probe_fails_a_spec_of_another_stack(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "2.12.0")
    done = _verify(spec, HEALTHY)
    assert done.returncode == 1
    assert "torch: expected 2.12.0, found 2.11.0+cu130" in done.stderr


def test_verify_probe_file_refuses_what_validate_refuses(tmp_path: Path) -> None:
    # the same compatibility check as `validate` runs first: a probe never makes a refused spec good (exit 2)
    newer = _verify(_spec(tmp_path, "2.99.0"), HEALTHY)
    assert newer.returncode == 2, newer.stderr
    assert "torch 2.99.0 is newer than the compatibility matrix (newest known: torch 2.15.0" in newer.stderr
    assert "python scripts/gen_compat.py --from-index" in newer.stderr
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    spec = _spec(wrong)
    spec.write_text(spec.read_text(encoding="utf-8").replace('cudnn: "9"', 'cudnn: "8"'), encoding="utf-8")
    done = _verify(spec, HEALTHY)
    assert done.returncode == 2 and "cuDNN 8 is not shipped for CUDA 13.0" in done.stderr, done.stderr


def test_the_h200_smoke_wav_is_within_the_references_tolerance() -> None:
    failures, metrics = compare_wav(SMOKE_WAV.read_bytes(), REFERENCE.read_bytes(), 0.02)
    assert failures == [], failures
    assert metrics["samples"] == metrics["reference_samples"] == 14910
    assert 0 < metrics["rms_diff"] < 0.02  # the README measured 0.0042: a GPU answers close, not bit-equal
    # and the comparison can fail: a tighter tolerance than the GPU's deviation refuses it
    tight, _ = compare_wav(SMOKE_WAV.read_bytes(), REFERENCE.read_bytes(), 0.001)
    assert tight and "normalized RMS difference" in tight[-1]


def test_cuda13_wheel_layout_counts_as_from_a_wheel() -> None:
    # the paths the H200 probe reported (probe version 2 did not know nvidia/cu13/lib, so its from_wheel is false)
    libs = _probe(HEALTHY)["cuda_libs"]
    assert libs["cudart"]["from_wheel"] is False and libs["cublas"]["from_wheel"] is False  # the file, unedited
    assert _in_wheel_dir(libs["cudart"]["path"], "cuda_runtime")
    assert _in_wheel_dir(libs["cublas"]["path"], "cublas")
    assert _in_wheel_dir(libs["cudnn"]["path"], "cudnn")
    # the CUDA 12 layout still counts; the system toolkit does not
    assert _in_wheel_dir(
        "/opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12", "cuda_runtime"
    )
    system = [p for p in libs["cudart"]["found"] if p.startswith("/usr/local/cuda-13.0/")]
    assert system and not any(_in_wheel_dir(p, "cuda_runtime") for p in system)
    assert not _in_wheel_dir("/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib/libcudart.so.12", "cuda_runtime")


def test_the_fixture_json_is_byte_identical_to_the_h200_copy() -> None:
    # pinned digests of the files as copied from the H200 host: a hand edit shows here
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(H200_DIR.glob("*.json"))}
    assert digests == PINNED, digests


PINNED = {
    "probe-h200-torch-blind.json": "4600dcd85e1f338caa99585ccf7bd57a57b097a397f7caa02c0f3c351e6c4451",
    "probe-h200.json": "8c6ed3452fc95a9ce3389c397101de300bf38e98518583b7a15a6261dc0b983b",
}
