"""Specs pinned to the stack a saved probe came from: the GPU example's spec with that stack's pins put in.

The GPU example moves with current PyTorch (examples/tts/imagekit.yaml); the real probes in tests/fixtures/ stay
what they were when they were made. A test that judges a probe writes the spec of the probe's stack with these.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from conftest import EXAMPLES

GPU_SPEC = EXAMPLES / "tts" / "imagekit.yaml"

# the GPU example image as it was built on 2026-12-01 (tests/fixtures/probe-tts-cpu-host.json): torch 2.5.1+cu124
CU124 = {"cuda": "12.4", "cudnn": "9", "driver": "550", "python": "3.11", "torch": "2.5.1"}
# ... and its lock then (examples/tts/requirements.lock at commit 9b1d764: torch 2.5.1's cu124 closure)
CU124_LOCK = """\
filelock==4.2.11
fsspec==2026.9.0
jinja2==3.1.6
markupsafe==3.0.4
mpmath==1.3.0
networkx==3.6.1
nvidia-cublas-cu12==12.4.5.8
nvidia-cuda-cupti-cu12==12.4.127
nvidia-cuda-nvrtc-cu12==12.4.127
nvidia-cuda-runtime-cu12==12.4.127
nvidia-cudnn-cu12==9.1.0.70
nvidia-cufft-cu12==11.2.1.3
nvidia-curand-cu12==10.3.5.147
nvidia-cusolver-cu12==11.6.1.9
nvidia-cusparse-cu12==12.3.1.170
nvidia-nccl-cu12==2.21.5
nvidia-nvjitlink-cu12==12.4.127
nvidia-nvtx-cu12==12.4.127
sympy==1.13.1
triton==3.1.0
typing-extensions==4.16.0
"""


def spec_on_stack(folder: Path, pins: dict[str, str], lock: str | None = None) -> Path:
    """Write the GPU example's spec with these pins (and this lock text, or none) into `folder`; return its path."""
    text = GPU_SPEC.read_text(encoding="utf-8")
    for key, value in pins.items():
        text, n = re.subn(rf'^(\s+){key}: "[^"]*"$', rf'\g<1>{key}: "{value}"', text, count=1, flags=re.M)
        assert n == 1, key
    if lock is None:
        text, n = re.subn(r"^\s+requirements: requirements.lock\n", "", text, flags=re.M)
        assert n == 1
    else:
        (folder / "requirements.lock").write_text(lock, encoding="utf-8")
    for name in ("models", "app", "reference"):
        shutil.copytree(GPU_SPEC.parent / name, folder / name, dirs_exist_ok=True)
    spec = folder / "imagekit.yaml"
    spec.write_text(text, encoding="utf-8")
    return spec
