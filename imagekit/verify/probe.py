"""What an image really contains, as JSON on stdout. Runs INSIDE the image under test, with its own Python.

Standard library only (it is bind-mounted read-only at verify time, never baked in, and must run on any
Python >= 3.8), and it never crashes: each section that fails records {"error": "..."} instead.

  python probe.py [MODEL_FILE ...]
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

PROBE_VERSION = 1


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
        for dist in metadata.distributions():
            name = dist.metadata["Name"]
            if name:
                packages[str(name)] = str(dist.version)
        return {"packages": dict(sorted(packages.items(), key=lambda kv: kv[0].lower()))}
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
            out[path] = {"sha256": digest.hexdigest(), "size": size, "writable": os.access(path, os.W_OK)}
        except BaseException as exc:
            out[path] = _err(exc)
    return out


def collect(paths: list[str]) -> dict[str, Any]:
    """Every section; a section that raises becomes an error entry, never a crash."""
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("os", os_release),
        ("python", python_info),
        ("user", user_info),
        ("torch", torch_info),
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
