"""The GPU example (examples/tts/imagekit.yaml: torch 2.14.1+cu130) built and verified for real on this CPU host.

Its container base is bootstrapped Debian (no registry), its CUDA user space the lock's NVIDIA CUDA 13 wheels
(nvidia-cuda-runtime, nvidia-cublas, ... without a suffix, installed in site-packages/nvidia/cu13/lib). From an
empty engine this is a ~6 GB image and minutes of pip; its layers are tagged by hash, so later runs reuse them.
`--gpu optional` verifies everything but the GPU; without it the spec's `gpu: required` fails naming the GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import copy_example, require_docker

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _imagekit(*args: str, timeout: float = 3000) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_docker()
    copy = copy_example(tmp_path_factory.mktemp("gpu") / "tts")
    spec = copy / "imagekit.yaml"
    out = _imagekit("build", "-f", str(spec), "--target", "docker", "--gpu", "optional", "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.stdout)
    image = result["images"][0]
    report: dict[str, Any] = json.loads(Path(image["verify_report"]).read_text(encoding="utf-8"))
    return {"spec": spec, "image": image, "report": report}


def test_the_gpu_example_builds_and_verifies_here_with_gpu_optional(built: dict[str, Any]) -> None:
    report = built["report"]
    assert report["ok"] is True, report["failures"]
    assert report["gpu_policy"] == "optional"
    assert report["gpu_visible"] is False
    torch = report["probe"]["torch"]
    assert torch["version"] == "2.14.1+cu130"
    assert torch["cuda"] == "13.0"  # torch built for CUDA 13.0
    assert torch["cudnn"] // 10000 == 9
    assert [lr["name"] for lr in built["image"]["layers"]] == ["base", "runtime", "app"]
    assert built["image"]["base"]["kind"] == "bootstrap"


def test_cudnn_9_and_cuda_13_are_loaded_from_the_images_wheels(built: dict[str, Any]) -> None:
    libs = built["report"]["probe"]["cuda_libs"]
    cudnn, cudart, cublas = libs["cudnn"], libs["cudart"], libs["cublas"]
    # what the libraries themselves report once loaded (cudnnGetVersion, cudaRuntimeGetVersion), not torch's word
    assert cudnn["version"] // 10000 == 9, cudnn
    assert cudnn["from_wheel"] and "/site-packages/nvidia/cudnn/lib/libcudnn.so.9" in cudnn["path"]
    assert cudnn["loaded_by_torch"] is True
    assert cudnn["wheel"]["name"] == "nvidia-cudnn-cu13"
    # CUDA 13's wheel layout: one folder for the toolkit's libraries, the wheel named without a suffix
    assert cudart["version"] == 13000 and cudart["from_wheel"], cudart
    assert "/site-packages/nvidia/cu13/lib/libcudart.so.13" in cudart["path"]
    assert cudart["wheel"]["name"] == "nvidia-cuda-runtime"
    assert cudart["driver_cuda"] == 0  # no NVIDIA driver on this host
    assert str(cublas["version"]).startswith("13.") and cublas["from_wheel"], cublas
    assert cublas["wheel"]["name"] == "nvidia-cublas"


def test_the_image_carries_its_cuda_floor_for_the_nvidia_runtime(built: dict[str, Any]) -> None:
    env = subprocess.run(
        ["docker", "image", "inspect", built["image"]["ref"], "--format", "{{json .Config.Env}}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "NVIDIA_REQUIRE_CUDA=cuda>=13.0" in json.loads(env)


def test_without_the_flag_the_specs_gpu_required_exits_1_naming_the_gpu(built: dict[str, Any]) -> None:
    ref = built["image"]["ref"]
    out = _imagekit("verify", ref, "-f", str(built["spec"]), timeout=900)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "verify.gpu is required but the host shows no GPU" in " ".join(out.stderr.split())


def test_gpu_optional_on_verify_passes_the_same_image(built: dict[str, Any]) -> None:
    out = _imagekit("verify", built["image"]["ref"], "-f", str(built["spec"]), "--gpu", "optional", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gpu optional" in out.stderr


def test_an_unknown_gpu_policy_is_a_usage_error(built: dict[str, Any]) -> None:
    out = _imagekit("verify", built["image"]["ref"], "-f", str(built["spec"]), "--gpu", "maybe", timeout=120)
    assert out.returncode == 2 and "--gpu must be required or optional, not 'maybe'" in out.stderr
