"""What an image really contains, as JSON on stdout. Runs INSIDE the image under test, with its own Python.

Standard library only (it is bind-mounted read-only at verify time, never baked in, and must run on any
Python >= 3.8), and it never crashes: each section that fails records {"error": "..."} instead.

  python probe.py [MODEL_FILE ...]          (or: python -m imagekit.verify.probe ... > probe.json on any host)

Version 2 adds two sections to version 1's (whose keys stay as they were): `cuda_libs`, the CUDA runtime, cuDNN
and cuBLAS libraries found on disk (the nvidia-* wheel folders, the loader's paths) with the version each reports
when loaded with ctypes, and `cuda_check`, a small computation on every GPU torch sees, checked against the CPU.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

PROBE_VERSION = 2
# library -> (file name pattern, the wheel folder under site-packages/nvidia/, the version function)
CUDA_LIBS = {
    "cudart": ("libcudart.so*", "cuda_runtime", "cudaRuntimeGetVersion"),
    "cudnn": ("libcudnn.so*", "cudnn", "cudnnGetVersion"),
    "cublas": ("libcublas.so*", "cublas", "cublasGetProperty"),
}
SYSTEM_LIB_DIRS = (
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
)


def _err(exc: BaseException) -> dict[str, Any]:
    return {"error": f"{type(exc).__name__}: {exc}"}


def _run(argv: list[str], timeout: float = 60) -> str:
    # Argument lists only; a missing tool raises FileNotFoundError, which the section turns into an error string.
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {out.returncode}: {(out.stderr or out.stdout).strip()[-500:]}")
    return out.stdout


def os_release() -> dict[str, Any]:
    """/etc/os-release as a dict, plus kernel and machine."""
    info: dict[str, Any] = {"kernel": platform.release(), "machine": platform.machine()}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as fh:
                for raw in fh:
                    line = raw.strip()
                    if "=" in line and not line.startswith("#"):
                        key, _, val = line.partition("=")
                        info[key.lower()] = val.strip().strip('"').strip("'")
            break
    return info


def python_info() -> dict[str, Any]:
    """The interpreter running the probe (the image's Python)."""
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "prefix": sys.prefix,
    }


def user_info() -> dict[str, Any]:
    """Who the probe (so the image's default user) runs as."""
    info: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid()}
    try:
        import pwd

        info["name"] = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError) as exc:
        info["name"] = None
        info["name_error"] = _err(exc)["error"]
    return info


def torch_info() -> dict[str, Any]:
    """torch's version, CUDA build, cuDNN, and the GPUs it sees."""
    try:
        import torch  # type: ignore[import-not-found]
    except BaseException as exc:  # ImportError, or a broken native library
        return _err(exc)
    info: dict[str, Any] = {"version": str(torch.__version__), "cuda": getattr(torch.version, "cuda", None)}
    try:
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except BaseException as exc:
        info["cudnn"] = None
        info["cudnn_error"] = _err(exc)["error"]
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        count = torch.cuda.device_count() if info["cuda_available"] else 0
        info["device_count"] = count
        info["devices"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "capability": "{}.{}".format(*torch.cuda.get_device_capability(i)),
            }
            for i in range(count)
        ]
        info["arch_list"] = list(torch.cuda.get_arch_list()) if info["cuda_available"] else []
    except BaseException as exc:
        info["cuda_error"] = _err(exc)["error"]
    return info


def nvidia_smi() -> dict[str, Any]:
    """GPUs and the driver as nvidia-smi reports them (absent on CPU hosts: an error string)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {"error": "nvidia-smi not found", "gpus": []}
    try:
        text = _run([exe, "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"])
    except BaseException as exc:
        return {**_err(exc), "gpus": []}
    gpus: list[dict[str, Any]] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            gpus.append(
                {
                    "name": parts[0],
                    "driver": parts[1],
                    "capability": parts[2],
                    "memory": parts[3] if len(parts) > 3 else "",
                }
            )
    return {"gpus": gpus, "driver": gpus[0]["driver"] if gpus else None, "count": len(gpus)}


def pip_freeze() -> dict[str, Any]:
    """Installed distributions as {name: version} (importlib.metadata: works without pip)."""
    try:
        from importlib import metadata
    except BaseException as exc:
        return _err(exc)
    try:
        packages: dict[str, str] = {}
        # the folder each distribution is installed in: the venv's own packages and the system's differ there
        locations: dict[str, str] = {}
        for dist in metadata.distributions():
            name = dist.metadata["Name"]
            if name:
                packages[str(name)] = str(dist.version)
                try:
                    locations[str(name)] = str(dist.locate_file(""))
                except BaseException:
                    locations[str(name)] = ""
        return {
            "packages": dict(sorted(packages.items(), key=lambda kv: kv[0].lower())),
            "locations": dict(sorted(locations.items(), key=lambda kv: kv[0].lower())),
            "prefix": sys.prefix,
        }
    except BaseException as exc:
        return _err(exc)


def dpkg() -> dict[str, Any]:
    """Installed Debian packages as {name: version}."""
    try:
        text = _run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n"])
    except BaseException as exc:
        return _err(exc)
    packages: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].startswith("ii"):
            packages[parts[0]] = parts[1]
    return {"packages": dict(sorted(packages.items())), "count": len(packages)}


def models(paths: list[str]) -> dict[str, Any]:
    """sha256 and size of each model file given on the command line."""
    out: dict[str, Any] = {}
    for path in paths:
        try:
            digest = hashlib.sha256()
            size = 0
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
                    size += len(block)
            st = os.stat(path)
            out[path] = {
                "sha256": digest.hexdigest(),
                "size": size,
                "writable": os.access(path, os.W_OK),
                "readable": os.access(path, os.R_OK),
                "mode": "0%03o" % (st.st_mode & 0o7777),
                "uid": st.st_uid,
            }
        except BaseException as exc:
            out[path] = _err(exc)
    return out


def _lib_dirs() -> list[str]:
    """Where CUDA user-space libraries live: the nvidia-* wheels' lib folders first, then the loader's paths."""
    dirs: list[str] = []
    for entry in sys.path:
        dirs += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib")))
    dirs += [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs += list(SYSTEM_LIB_DIRS)
    seen: list[str] = []
    for d in dirs:
        real = os.path.realpath(d)
        if os.path.isdir(real) and real not in seen:
            seen.append(real)
    return seen


def _loaded_libs() -> list[str]:
    """Shared objects mapped into this process (torch's, once it was imported), from /proc/self/maps."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            paths = {line.split()[-1] for line in fh if "/" in line and ".so" in line}
    except OSError:
        return []
    return sorted(paths)


def _lib_version(lib: Any, name: str, func: str) -> int | str:
    """The version a loaded library reports about itself (cudart 12040, cuDNN 90100, cuBLAS 120405)."""
    if name == "cudnn":
        fn = lib.cudnnGetVersion
        fn.restype = ctypes.c_size_t
        return int(fn())
    if name == "cublas":
        fn = lib.cublasGetProperty
        parts = []
        for prop in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            value = ctypes.c_int(0)
            status = fn(prop, ctypes.byref(value))
            if status != 0:
                raise RuntimeError(f"{func} returned status {status}")
            parts.append(value.value)
        return "{}.{}.{}".format(*parts)
    value = ctypes.c_int(0)
    status = getattr(lib, func)(ctypes.byref(value))
    if status != 0:
        raise RuntimeError(f"{func} returned status {status}")
    return int(value.value)


def _in_wheel_dir(path: str, wheel_dir: str) -> bool:
    """A library under an NVIDIA wheel's folder: nvidia/<lib>/lib (CUDA 11/12) or nvidia/cu13/lib (CUDA 13 on)."""
    parts = os.path.normpath(path).split(os.sep)
    for i, part in enumerate(parts[:-2]):
        if part == "nvidia" and (parts[i + 1] == wheel_dir or re.fullmatch(r"cu\d+", parts[i + 1])):
            return parts[i + 2] in ("lib", "lib64")
    return False


def _wheel_of(path: str) -> dict[str, str] | None:
    """The installed distribution (name, version) whose files include `path`, e.g. nvidia-cuda-runtime-cu11."""
    try:
        from importlib import metadata

        real = os.path.realpath(path)
        for dist in metadata.distributions():
            name = str(dist.metadata["Name"] or "")
            if not name.lower().startswith("nvidia-"):
                continue
            for f in dist.files or []:
                if os.path.realpath(str(dist.locate_file(f))) == real:
                    return {"name": name, "version": str(dist.version)}
    except BaseException:
        return None
    return None


def cuda_libs() -> dict[str, Any]:
    """The CUDA libraries in the image: every file found, the one this process loads, and its own version.

    A library torch already mapped (after the torch section) is the one reported as loaded; otherwise the first
    found is opened with ctypes. Also the CUDA version the driver supports (cudaDriverGetVersion; 0: no driver).
    """
    dirs = _lib_dirs()
    mapped = _loaded_libs()
    out: dict[str, Any] = {"search_path": dirs}
    for name, (pattern, wheel_dir, func) in CUDA_LIBS.items():
        found: list[str] = []
        for d in dirs:
            found += [p for p in sorted(glob.glob(os.path.join(d, pattern))) if p not in found]
        entry: dict[str, Any] = {"found": found}
        in_process = [p for p in mapped if os.path.basename(p).startswith(pattern.rstrip("*"))]
        candidates = in_process + [p for p in found if os.path.basename(p) != pattern.rstrip("*")] + found
        if not candidates:
            entry["error"] = f"no {pattern} in {', '.join(dirs) or 'any library folder'}"
            out[name] = entry
            continue
        path = candidates[0]
        entry["loaded_by_torch"] = bool(in_process)
        entry["from_wheel"] = _in_wheel_dir(path, wheel_dir)
        if entry["from_wheel"]:
            # the wheel's own version: CUDA 11's cudart reports nothing without a driver (status 35)
            entry["wheel"] = _wheel_of(path)
        try:
            lib = ctypes.CDLL(path)
            entry["path"] = path
            entry["version"] = _lib_version(lib, name, func)
            if name == "cudart":
                driver = ctypes.c_int(0)
                status = lib.cudaDriverGetVersion(ctypes.byref(driver))
                entry["driver_cuda"] = int(driver.value) if status == 0 else None
        except BaseException as exc:
            entry["path"] = path
            entry["error"] = f"{type(exc).__name__}: {exc}"
        out[name] = entry
    return out


def cuda_check() -> dict[str, Any]:
    """A small computation on every GPU torch sees (cuBLAS matmul, cuDNN conv1d), compared with the CPU result."""
    try:
        import torch
    except BaseException as exc:
        return {**_err(exc), "devices": []}
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except BaseException as exc:
        return {**_err(exc), "devices": []}
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 64, generator=gen)
    x = torch.randn(1, 4, 128, generator=gen)
    w = torch.randn(8, 4, 5, generator=gen)
    want_mm = a @ a
    want_conv = torch.nn.functional.conv1d(x, w)
    devices: list[dict[str, Any]] = []
    for i in range(count):
        dev: dict[str, Any] = {"index": i}
        t0 = time.monotonic()
        try:
            dev["name"] = torch.cuda.get_device_name(i)
            got_mm = (a.to(f"cuda:{i}") @ a.to(f"cuda:{i}")).cpu()
            got_conv = torch.nn.functional.conv1d(x.to(f"cuda:{i}"), w.to(f"cuda:{i}")).cpu()
            torch.cuda.synchronize(i)
            dev["matmul_max_abs_diff"] = float((got_mm - want_mm).abs().max())
            dev["conv1d_max_abs_diff"] = float((got_conv - want_conv).abs().max())
            # TF32 and reordered sums differ from the CPU by ~1e-2 at most on these sizes; garbage is far larger
            dev["ok"] = dev["matmul_max_abs_diff"] < 0.5 and dev["conv1d_max_abs_diff"] < 0.5
        except BaseException as exc:
            dev["ok"] = False
            dev["error"] = f"{type(exc).__name__}: {exc}"
        dev["seconds"] = round(time.monotonic() - t0, 3)
        devices.append(dev)
    return {"device_count": count, "devices": devices, "tolerance": 0.5}


def collect(paths: list[str]) -> dict[str, Any]:
    """Every section; a section that raises becomes an error entry, never a crash."""
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("os", os_release),
        ("python", python_info),
        ("user", user_info),
        ("torch", torch_info),
        ("cuda_libs", cuda_libs),  # after torch: reports the libraries torch itself mapped
        ("cuda_check", cuda_check),
        ("nvidia_smi", nvidia_smi),
        ("pip", pip_freeze),
        ("dpkg", dpkg),
        ("models", lambda: models(paths)),
    ]
    result: dict[str, Any] = {"probe_version": PROBE_VERSION}
    for name, fn in sections:
        try:
            result[name] = fn()
        except BaseException as exc:
            result[name] = _err(exc)
    return result


def main(argv: list[str] | None = None) -> int:
    """Print the probe JSON; always exits 0 once it printed."""
    args = list(sys.argv[1:] if argv is None else argv)
    result = collect(args)
    sys.stdout.write(json.dumps(result, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
