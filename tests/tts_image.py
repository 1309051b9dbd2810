"""The CPU example image, built once per test session through the real build (layers cached by hash)."""

from __future__ import annotations

import functools
import os

from conftest import EXAMPLES, require_docker

CPU_SPEC = EXAMPLES / "tts" / "imagekit-cpu.yaml"


@functools.lru_cache(maxsize=1)
def _build() -> str:
    from imagekit.api.build import build

    return build(CPU_SPEC, "docker", images=["tts-cpu"], verify=False).image("tts-cpu").ref


def tts_cpu_image() -> str:
    """The ref of the built CPU example; IMAGEKIT_TEST_TTS_IMAGE names an already built one instead."""
    require_docker()
    return os.environ.get("IMAGEKIT_TEST_TTS_IMAGE") or _build()
