"""The GPU policy over a probe: does CUDA work on the GPUs of the host the probe ran on? Pure: dicts in, failures out.

With `gpu: required` every rule applies and a host without a GPU fails. With `gpu: optional` a host without a GPU
passes, but a GPU that is there must work (the same rules), so a CPU build host and a GPU host are both judged.
Rules: torch sees every GPU nvidia-smi lists; each GPU's compute capability is covered by torch's arch list; the
host driver is new enough for the CUDA build torch carries (the compatibility matrix's minimum, with its source);
the probe's small CUDA computation ran and matched the CPU on each GPU; the CUDA libraries it loaded agree with
torch's CUDA build. Each failure names the expected and the found value and what to try.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from imagekit import compat

GpuPolicy = Literal["required", "optional"]
PROBE_VERSIONS = (1, 2)
GPU_HINT = (
    "verify.gpu is required but the host shows no GPU; run verify on a GPU host, "
    "e.g. DOCKER_HOST=ssh://gpu-host imagekit verify ..."
)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def smi_gpus(probe: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPUs nvidia-smi listed (name, driver, capability)."""
    return [g for g in _dict(probe.get("nvidia_smi")).get("gpus") or [] if isinstance(g, dict)]


def torch_gpu_count(probe: dict[str, Any]) -> int:
    """How many GPUs torch saw (0 when torch.cuda.is_available() was False)."""
    torch = _dict(probe.get("torch"))
    if not torch.get("cuda_available"):
        return 0
    count = torch.get("device_count")
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def gpu_visible(probe: dict[str, Any]) -> bool:
    """Whether the host has a GPU by either signal (nvidia-smi or torch); the rules then check they agree."""
    return bool(smi_gpus(probe)) or torch_gpu_count(probe) > 0


def version_key(text: str) -> tuple[int, ...]:
    """A driver or library version as numbers: '525.60.13' -> (525, 60, 13)."""
    return tuple(int(p) for p in re.findall(r"\d+", text))


def capability_sm(capability: str) -> tuple[int, int] | None:
    """'9.0' -> (9, 0); None when unreadable."""
    m = re.match(r"^\s*(\d+)\.(\d+)\s*$", str(capability))
    return (int(m[1]), int(m[2])) if m else None


def arch_covers(arch_list: list[str], cap: tuple[int, int]) -> bool:
    """Whether torch's arch list runs on a GPU of this capability.

    Cubins (sm_XY) run on the same major with an equal or higher minor; PTX (compute_XY) is compiled by the
    driver for any GPU at or above XY.
    """
    for arch in arch_list:
        m = re.match(r"^(sm|compute)_(\d+)(\d)[a-z]?$", str(arch))
        if m is None:
            continue
        major, minor = int(m[2]), int(m[3])
        if m[1] == "sm" and major == cap[0] and minor <= cap[1]:
            return True
        if m[1] == "compute" and (major, minor) <= cap:
            return True
    return False


def min_driver(cuda: str) -> tuple[str, str, str] | None:
    """(oldest driver, what it is, source) that runs a CUDA build from pip wheels, from the compatibility matrix.

    The wheels bring their own CUDA runtime, so CUDA's minor-version compatibility applies: any driver of the
    major's compatibility floor runs it (12.x: 525.60.13). Without such a floor, the toolkit's own minimum.
    """
    row = compat.cuda_row(cuda)
    if row is None:
        return None
    if row.minor_compat_driver:
        return row.minor_compat_driver, f"CUDA {row.version} (minor-version compatibility)", row.source
    return row.min_driver, f"CUDA {row.version}", row.source


def _driver_fix(driver: str, cuda: str, torch_version: str) -> str:
    """Upgrade the driver, or the newest CUDA build of this torch the found driver runs."""
    found = version_key(driver)
    builds = compat.torch_cuda_builds(torch_version) or compat.cuda_versions()
    runs = [c for c in builds if (m := min_driver(c)) is not None and version_key(m[0]) <= found]
    runs = [c for c in runs if compat.vkey(c) < compat.vkey(compat.cuda_key(cuda) or cuda)]
    if runs:
        return f"upgrade the host driver or pin a cu{runs[-1].replace('.', '')} build"
    return "upgrade the host driver"


def _capability_fix(sm: str, cap: str) -> str:
    row = compat.gpu_row(cap)
    if row is None or row.min_torch is None:
        return f"use a torch build whose arch list has {sm}"
    return f"use a torch build with {sm} code ({row.gpus}: CUDA {row.min_cuda}+, torch {row.min_torch}+)"


def gpu_failures(probe: dict[str, Any], gpu: GpuPolicy) -> list[str]:
    """The GPU policy's failures for a probe (empty: CUDA works on every GPU it saw, or optional and none)."""
    smi = smi_gpus(probe)
    torch = _dict(probe.get("torch"))
    seen = torch_gpu_count(probe)
    if not gpu_visible(probe):
        return [GPU_HINT] if gpu == "required" else []
    failures: list[str] = []
    names = ", ".join(str(g.get("name") or "?") for g in smi) or "none"
    cuda_built = str(torch.get("cuda") or "")
    torch_version = str(torch.get("version") or "")

    # 1. torch sees every GPU nvidia-smi lists (either signal alone is not a working GPU)
    if smi and not torch.get("cuda_available"):
        why = torch.get("cuda_error") or torch.get("error") or "torch.cuda.is_available() is False"
        failures.append(
            f"gpu: nvidia-smi lists {len(smi)} GPU(s) ({names}) but torch sees none ({why}; "
            f"torch {torch_version or '?'}, CUDA build {cuda_built or 'none'}): check the driver below, that torch "
            "is a CUDA build, and that the container was started with the GPUs (nvidia-container-toolkit)"
        )
    elif smi and seen != len(smi):
        failures.append(
            f"gpu: expected torch to see the {len(smi)} GPU(s) nvidia-smi lists ({names}), found {seen}: "
            "check CUDA_VISIBLE_DEVICES and the container's device request"
        )
    elif not smi and seen:
        smi_err = _dict(probe.get("nvidia_smi")).get("error") or "no GPUs listed"
        failures.append(
            f"gpu: torch sees {seen} GPU(s) but nvidia-smi lists none ({smi_err}), so the driver cannot be checked: "
            "start the container with the utility capability (NVIDIA_DRIVER_CAPABILITIES=compute,utility)"
        )

    # 2. every GPU's compute capability is covered by torch's arch list
    arch_list = [str(a) for a in torch.get("arch_list") or []]
    caps: list[tuple[str, str]] = [(str(g.get("name") or "?"), str(g.get("capability") or "")) for g in smi]
    if not caps:
        caps = [(str(d.get("name") or "?"), str(d.get("capability") or "")) for d in torch.get("devices") or []]
    for i, (name, cap) in enumerate(caps):
        parsed = capability_sm(cap)
        if parsed is None:
            failures.append(f"gpu {i} {name}: compute capability unreadable ({cap!r})")
            continue
        sm = f"sm_{parsed[0]}{parsed[1]}"
        if not arch_list:
            # with CUDA unavailable torch reports no arch list; rule 1 already failed then
            if torch.get("cuda_available"):
                failures.append(f"gpu {i} {name} ({sm}): torch reported no arch list (torch.cuda.get_arch_list())")
        elif not arch_covers(arch_list, parsed):
            failures.append(
                f"gpu {i} {name}: compute capability {cap} ({sm}) is not in torch {torch_version}'s arch list "
                f"(expected {sm} or an sm_{parsed[0]}x/PTX entry, found {' '.join(arch_list)}): "
                f"{_capability_fix(sm, cap)}"
            )

    # 3. the host driver runs the CUDA build torch carries
    drivers = sorted({str(g.get("driver") or "") for g in smi} - {""})
    if cuda_built and drivers:
        need = min_driver(cuda_built)
        if need is None:
            failures.append(f"driver: CUDA build {cuda_built} is not in the compatibility matrix; cannot check it")
        else:
            least, what, source = need
            for driver in drivers:
                if version_key(driver) < version_key(least):
                    failures.append(
                        f"driver {driver} is older than {what} needs (>= {least}; source: {source.split(' ; ')[-1]}): "
                        f"{_driver_fix(driver, cuda_built, torch_version)}"
                    )
    elif smi and not drivers:
        failures.append("driver: nvidia-smi listed GPUs but no driver version")

    # 4. the small CUDA computation ran and matched the CPU on every GPU torch sees
    failures += _computation_failures(probe, seen, torch_version)

    # 5. the CUDA runtime that was loaded is the one torch was built for
    failures += _library_failures(probe, cuda_built)
    return failures


def _computation_failures(probe: dict[str, Any], seen: int, torch_version: str) -> list[str]:
    if not seen:
        return []
    if "cuda_check" not in probe:
        version = probe.get("probe_version")
        return [f"cuda check: this probe (version {version}) ran no CUDA computation; rerun the current probe"]
    check = _dict(probe.get("cuda_check"))
    if check.get("error"):
        return [f"cuda check: could not run ({check['error']})"]
    devices = [d for d in check.get("devices") or [] if isinstance(d, dict)]
    out: list[str] = []
    if len(devices) != seen:
        out.append(f"cuda check: expected a computation on each of {seen} GPU(s), found {len(devices)}")
    tol = check.get("tolerance", 0.5)
    for dev in devices:
        if dev.get("ok") is True:
            continue
        where = f"gpu {dev.get('index', '?')} {dev.get('name') or '?'}"
        if dev.get("error"):
            out.append(f"cuda check on {where}: failed ({dev['error']}) with torch {torch_version}")
        else:
            out.append(
                f"cuda check on {where}: expected matmul and conv1d within {tol} of the CPU, found "
                f"{dev.get('matmul_max_abs_diff')} and {dev.get('conv1d_max_abs_diff')}"
            )
    return out


def cuda_runtime_version(value: Any) -> str | None:
    """cudaRuntimeGetVersion's integer as MAJOR.MINOR: 12040 -> '12.4'."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def _library_failures(probe: dict[str, Any], cuda_built: str) -> list[str]:
    cudart = _dict(_dict(probe.get("cuda_libs")).get("cudart"))
    found = cuda_runtime_version(cudart.get("version"))
    if found is None:  # CUDA 11's runtime reports no version without a driver: its wheel's version says it
        found = compat.cuda_key(str(_dict(cudart.get("wheel")).get("version") or ""))
    if not cuda_built or found is None:
        return []
    if compat.cuda_key(found) != compat.cuda_key(cuda_built):
        return [
            f"cuda runtime: torch is the CUDA {cuda_built} build but the process loaded {cudart.get('path')} "
            f"(CUDA {found}): remove the other CUDA runtime from the library path or match the lock's nvidia-* wheels"
        ]
    return []


def looks_like_probe(data: Any) -> str:
    """Why `data` is not a probe this version of imagekit reads (empty: it is one)."""
    if not isinstance(data, dict):
        return f"expected a JSON object, found {type(data).__name__}"
    version = data.get("probe_version")
    if version not in PROBE_VERSIONS:
        return f"expected probe_version {' or '.join(map(str, PROBE_VERSIONS))}, found {version!r}"
    missing = [k for k in ("python", "torch", "nvidia_smi") if k not in data]
    if missing:
        return f"a probe has python, torch and nvidia_smi sections; this one lacks {', '.join(missing)}"
    return ""


def service_device_failures(ready_body: str, probe: dict[str, Any], gpu: str, path: str) -> list[str]:
    """Whether the service put its model on the GPU, from the `device` its readiness body reports.

    Only where torch saw a GPU: then `gpu: required` needs a body that says where the model is (`"device":
    "cuda:0"`), and a reported device that is not CUDA fails under either policy.
    """
    if torch_gpu_count(probe) == 0:
        return []
    try:
        doc = json.loads(ready_body)
    except ValueError:
        doc = None
    device = doc.get("device") if isinstance(doc, dict) else None
    if device is None:
        if gpu != "required":
            return []
        return [
            f'service: {path} does not say where the model runs (expected a JSON body with "device": "cuda:0", '
            f"found {ready_body[:120]!r}): report the model's device in the readiness answer"
        ]
    if not str(device).startswith("cuda"):
        return [
            f"service: expected the model on the GPU (device cuda), found {device!r} in {path}: "
            "the service fell back to the CPU; check its device selection and its log"
        ]
    return []


def effective_gpu(spec_policy: GpuPolicy, override: str | None) -> GpuPolicy:
    """The GPU policy of one run: --gpu when given, else the spec's verify.gpu."""
    from imagekit.errors import UsageError

    if override is None:
        return spec_policy
    if override == "required":
        return "required"
    if override == "optional":
        return "optional"
    raise UsageError(f"--gpu must be required or optional, not {override!r}")
