"""The strict GPU policy and `imagekit verify --probe-file`, judged on saved probes.

No GPU was at hand where these tests were written, so there is no real GPU probe here. The GPU cases are
CONSTRUCTED TEST INPUTS, built in code below from a real probe: `probe-tts-cpu-host.json`, the probe that
`imagekit verify` ran inside the GPU example image (torch 2.5.1+cu124 with its nvidia-* wheels) on this CPU-only
host. Only the sections a GPU host would change (nvidia_smi, torch's device fields, cuda_check) are replaced, with
H200-shaped values (compute capability 9.0, torch 2.5.1's published arch list). Nothing constructed is written to
tests/fixtures/: a real GPU probe belongs there only from a real GPU host (tests/fixtures/README.md).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from stack_specs import CU124, CU124_LOCK, spec_on_stack

from imagekit.spec import load_spec
from imagekit.verify.policy import (
    GPU_HINT,
    arch_covers,
    capability_sm,
    cuda_runtime_version,
    gpu_failures,
    looks_like_probe,
    min_driver,
    service_device_failures,
)
from imagekit.verify.report import compare

FIXTURES = REPO / "tests" / "fixtures"
REAL_CPU_HOST = FIXTURES / "probe-tts-cpu-host.json"  # real: the GPU example image on this CPU host
REAL_CPU_IMAGE = FIXTURES / "probe-cpu.json"  # real: the CPU example image
# the GPU example's spec pinned to the stack the real CPU-host probe came from (torch 2.5.1+cu124; the example itself
# has moved on to a current torch): written once per module by the fixture below
GPU_SPEC = Path("/nonexistent")


@pytest.fixture(autouse=True, scope="module")
def _cu124_spec(tmp_path_factory: pytest.TempPathFactory) -> None:
    global GPU_SPEC  # noqa: PLW0603 (module constant of every test here, written once)
    GPU_SPEC = spec_on_stack(tmp_path_factory.mktemp("cu124"), CU124, CU124_LOCK)


# torch.cuda.get_arch_list() of the torch 2.5.1 cu124 wheels, as PyTorch builds them (TORCH_CUDA_ARCH_LIST)
ARCH_LIST_251_CU124 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


def real_cpu_host() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REAL_CPU_HOST.read_text(encoding="utf-8"))
    return data


def constructed_gpu_probe(
    *,
    gpus: int = 1,
    name: str = "NVIDIA H200",
    capability: str = "9.0",
    driver: str = "550.127.05",
    torch_sees: bool = True,
    arch_list: list[str] | None = None,
) -> dict[str, Any]:
    """CONSTRUCTED: the real CPU-host probe of the GPU example, with H200-shaped GPU sections put in."""
    probe = copy.deepcopy(real_cpu_host())
    probe["nvidia_smi"] = {
        "gpus": [{"name": name, "driver": driver, "capability": capability, "memory": "143771 MiB"}] * gpus,
        "driver": driver,
        "count": gpus,
    }
    torch = probe["torch"]
    torch["cuda_available"] = torch_sees
    torch["device_count"] = gpus if torch_sees else 0
    torch["devices"] = [{"name": name, "capability": capability}] * gpus if torch_sees else []
    torch["arch_list"] = (ARCH_LIST_251_CU124 if arch_list is None else arch_list) if torch_sees else []
    devices = [
        {
            "index": i,
            "name": name,
            "ok": True,
            "matmul_max_abs_diff": 0.0,
            "conv1d_max_abs_diff": 0.0001,
            "seconds": 0.4,
        }
        for i in range(gpus if torch_sees else 0)
    ]
    probe["cuda_check"] = {"device_count": len(devices), "devices": devices, "tolerance": 0.5}
    return probe


def _write(tmp_path: Path, doc: Any, name: str = "probe.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def _judge(probe_file: Path, *extra: str) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-m", "imagekit", "verify", "--probe-file", str(probe_file), "-f", str(GPU_SPEC), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=probe_file.parent,
    )
    return out.returncode, out.stderr


# --- the real probes these cases start from ---------------------------------------------------------------------


def test_the_real_cpu_host_probe_is_the_cu124_image_without_a_gpu() -> None:
    probe = real_cpu_host()
    assert probe["probe_version"] == 2
    assert probe["torch"]["version"] == "2.5.1+cu124"
    assert probe["torch"]["cuda"] == "12.4"
    assert probe["torch"]["cudnn"] == 90100
    assert probe["torch"]["cuda_available"] is False
    assert probe["nvidia_smi"]["gpus"] == []
    # the libraries found and loaded in the image, from the nvidia-* wheels, with the versions they report
    libs = probe["cuda_libs"]
    assert libs["cudart"]["version"] == 12040 and libs["cudart"]["from_wheel"] is True
    assert "/nvidia/cuda_runtime/lib/libcudart.so.12" in libs["cudart"]["path"]
    assert libs["cudnn"]["version"] == 90100 and libs["cudnn"]["from_wheel"] is True
    assert libs["cudnn"]["loaded_by_torch"] is True
    assert libs["cudart"]["driver_cuda"] == 0  # no driver on this host


def test_the_real_cpu_host_probe_passes_the_gpu_spec_with_gpu_optional_only() -> None:
    loaded = load_spec(GPU_SPEC)
    assert compare(real_cpu_host(), loaded, "tts-inference", gpu="optional") == []
    assert compare(real_cpu_host(), loaded, "tts-inference") == [GPU_HINT]  # the spec says required


# --- the rules, on constructed GPU probes ------------------------------------------------------------------------


def test_constructed_healthy_h200_passes_every_rule() -> None:
    assert gpu_failures(constructed_gpu_probe(), "required") == []
    assert compare(constructed_gpu_probe(gpus=8), load_spec(GPU_SPEC), "tts-inference") == []


def test_nvidia_smi_sees_a_gpu_but_torch_does_not() -> None:
    failures = gpu_failures(constructed_gpu_probe(torch_sees=False), "required")
    assert len(failures) == 1, failures
    assert "nvidia-smi lists 1 GPU(s) (NVIDIA H200) but torch sees none" in failures[0]
    assert "torch 2.5.1+cu124, CUDA build 12.4" in failures[0]
    # optional does not excuse a GPU that is there but unusable
    assert gpu_failures(constructed_gpu_probe(torch_sees=False), "optional") == failures


def test_torch_sees_fewer_gpus_than_nvidia_smi_lists() -> None:
    probe = constructed_gpu_probe(gpus=8)
    probe["torch"]["device_count"] = 7
    failures = gpu_failures(probe, "required")
    assert any("expected torch to see the 8 GPU(s) nvidia-smi lists" in f and "found 7" in f for f in failures)


def test_no_sm_90_in_torchs_arch_list() -> None:
    cu117_arches = ["sm_37", "sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"]  # torch 1.13.1 cu117
    failures = gpu_failures(constructed_gpu_probe(arch_list=cu117_arches), "required")
    assert len(failures) == 1, failures
    assert "compute capability 9.0 (sm_90) is not in torch 2.5.1+cu124's arch list" in failures[0]
    assert "found sm_37 sm_50 sm_60 sm_70 sm_75 sm_80 sm_86" in failures[0]
    assert "CUDA 11.8+, torch 2.0+" in failures[0]  # the fix, from gpus.yaml


def test_driver_470_under_a_cu124_build() -> None:
    failures = gpu_failures(constructed_gpu_probe(driver="470.182.03"), "required")
    assert failures == [
        "driver 470.182.03 is older than CUDA 12.4 (minor-version compatibility) needs (>= 525.60.13; source: "
        "https://docs.nvidia.com/deploy/cuda-compatibility/ (minor version compatibility: 11.x >= 450.80.02, "
        "12.x >= 525.60.13, 13.x >= 580)): upgrade the host driver or pin a cu118 build"
    ]


def test_a_driver_too_old_for_every_build_says_upgrade_only() -> None:
    failures = gpu_failures(constructed_gpu_probe(driver="418.67"), "required")
    assert len(failures) == 1 and failures[0].endswith("needs (>= 525.60.13; source: "
        "https://docs.nvidia.com/deploy/cuda-compatibility/ (minor version compatibility: 11.x >= 450.80.02, "
        "12.x >= 525.60.13, 13.x >= 580)): upgrade the host driver")  # fmt: skip


def test_a_failed_cuda_computation_names_the_gpu_and_the_error() -> None:
    probe = constructed_gpu_probe(gpus=2)
    probe["cuda_check"]["devices"][1] = {
        "index": 1,
        "name": "NVIDIA H200",
        "ok": False,
        "error": "RuntimeError: CUDA error: no kernel image is available for execution on the device",
    }
    failures = gpu_failures(probe, "required")
    assert failures == [
        "cuda check on gpu 1 NVIDIA H200: failed (RuntimeError: CUDA error: no kernel image is available for "
        "execution on the device) with torch 2.5.1+cu124"
    ]
    probe["cuda_check"]["devices"][1] = {"index": 1, "name": "X", "ok": False, "matmul_max_abs_diff": 9.5}
    assert "expected matmul and conv1d within 0.5 of the CPU, found 9.5 and None" in gpu_failures(probe, "required")[0]


def test_a_version_1_probe_has_no_cuda_computation_and_fails_on_a_gpu() -> None:
    probe = constructed_gpu_probe()
    del probe["cuda_check"], probe["cuda_libs"]
    probe["probe_version"] = 1
    assert gpu_failures(probe, "required") == [
        "cuda check: this probe (version 1) ran no CUDA computation; rerun the current probe"
    ]


def test_a_second_cuda_runtime_on_the_library_path_is_named() -> None:
    probe = constructed_gpu_probe()
    probe["cuda_libs"]["cudart"] = {"path": "/usr/local/cuda-11.8/lib64/libcudart.so.11.0", "version": 11080}
    failures = gpu_failures(probe, "required")
    assert failures == [
        "cuda runtime: torch is the CUDA 12.4 build but the process loaded /usr/local/cuda-11.8/lib64/"
        "libcudart.so.11.0 (CUDA 11.8): remove the other CUDA runtime from the library path or match the lock's "
        "nvidia-* wheels"
    ]


def test_the_real_cpu_probes_pass_optional_and_fail_required() -> None:
    for path in (REAL_CPU_HOST, REAL_CPU_IMAGE):
        probe = json.loads(path.read_text(encoding="utf-8"))
        assert gpu_failures(probe, "optional") == []
        assert gpu_failures(probe, "required") == [GPU_HINT]


def test_service_device_from_the_readiness_body() -> None:
    gpu = constructed_gpu_probe()
    assert service_device_failures('{"device": "cuda:0", "status": "ok"}', gpu, "required", "/ready") == []
    cpu = service_device_failures('{"device": "cpu"}', gpu, "optional", "/ready")
    assert cpu == [
        "service: expected the model on the GPU (device cuda), found 'cpu' in /ready: the service fell back to "
        "the CPU; check its device selection and its log"
    ]
    assert "does not say where the model runs" in service_device_failures("ok", gpu, "required", "/ready")[0]
    assert service_device_failures("ok", gpu, "optional", "/ready") == []
    assert service_device_failures('{"device": "cpu"}', real_cpu_host(), "required", "/ready") == []


def test_helpers() -> None:
    assert capability_sm("9.0") == (9, 0) and capability_sm("x") is None
    assert arch_covers(["sm_80"], (8, 6)) and arch_covers(["sm_86"], (8, 9))  # same major, lower minor cubins run
    assert not arch_covers(["sm_86"], (9, 0)) and not arch_covers(["sm_90"], (8, 6))
    assert arch_covers(["sm_80", "compute_80"], (9, 0))  # PTX is compiled by the driver for newer GPUs
    assert arch_covers(["sm_90a"], (9, 0))
    assert cuda_runtime_version(12040) == "12.4" and cuda_runtime_version(11080) == "11.8"
    assert cuda_runtime_version(0) is None
    need = min_driver("12.4")
    assert need is not None and need[0] == "525.60.13" and "cuda-compatibility" in need[2]
    assert looks_like_probe(real_cpu_host()) == ""
    assert looks_like_probe([]) == "expected a JSON object, found list"
    assert looks_like_probe({"probe_version": 7}) == "expected probe_version 1 or 2, found 7"


# --- imagekit verify --probe-file: exit codes -------------------------------------------------------------------


def test_probe_file_constructed_healthy_h200_exits_0(tmp_path: Path) -> None:
    code, err = _judge(_write(tmp_path, constructed_gpu_probe()))
    assert code == 0, err
    assert "verified probe-file:" in err and "gpu required" in err


@pytest.mark.parametrize(
    ("probe_kwargs", "expected"),
    [
        ({"torch_sees": False}, "nvidia-smi lists 1 GPU(s) (NVIDIA H200) but torch sees none"),
        ({"arch_list": ["sm_50", "sm_80", "sm_86"]}, "compute capability 9.0 (sm_90) is not in torch"),
        ({"driver": "470.182.03"}, "driver 470.182.03 is older than CUDA 12.4"),
    ],
    ids=["torch-unavailable", "no-sm_90", "driver-470"],
)
def test_probe_file_failures_exit_1_with_the_values(
    tmp_path: Path, probe_kwargs: dict[str, Any], expected: str
) -> None:
    code, err = _judge(_write(tmp_path, constructed_gpu_probe(**probe_kwargs)))
    assert code == 1, err
    assert expected in " ".join(err.split()), err


def test_probe_file_cpu_host_exits_1_naming_the_gpu_unless_optional(tmp_path: Path) -> None:
    path = _write(tmp_path, real_cpu_host())
    code, err = _judge(path)
    assert code == 1 and "verify.gpu is required but the host shows no GPU" in " ".join(err.split())
    code, err = _judge(path, "--gpu", "optional")
    assert code == 0, err


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("", "not a probe (not JSON"),
        ('{"kind": "Deployment", "apiVersion": "apps/v1"}', "expected probe_version 1 or 2, found None"),
        ("[1, 2]", "expected a JSON object, found list"),
        ('{"probe_version": 1}', "lacks python, torch, nvidia_smi"),
    ],
    ids=["empty", "foreign", "array", "sections-missing"],
)
def test_probe_file_that_is_not_a_probe_exits_2(tmp_path: Path, content: str, why: str) -> None:
    code, err = _judge(_write(tmp_path, content))
    assert code == 2, err
    assert why in err and "Traceback" not in err


def test_probe_file_missing_exits_2(tmp_path: Path) -> None:
    code, err = _judge(tmp_path / "nope.json")
    assert code == 2 and "cannot read it" in err


def test_probe_file_and_image_ref_together_is_a_usage_error(tmp_path: Path) -> None:
    path = _write(tmp_path, real_cpu_host())
    out = subprocess.run(
        [sys.executable, "-m", "imagekit", "verify", "img:1", "--probe-file", str(path), "-f", str(GPU_SPEC)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2 and "not both" in out.stderr


def test_a_cuda_11_runtime_without_a_version_is_judged_by_its_wheel() -> None:
    probe = constructed_gpu_probe()
    probe["cuda_libs"]["cudart"] = {
        "path": "/opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.11.0",
        "error": "RuntimeError: cudaRuntimeGetVersion returned status 35",
        "wheel": {"name": "nvidia-cuda-runtime-cu11", "version": "11.8.89"},
    }
    (failure,) = gpu_failures(probe, "required")
    assert "torch is the CUDA 12.4 build but the process loaded" in failure and "(CUDA 11.8)" in failure
