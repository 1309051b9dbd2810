"""End to end on the real engine: build the CPU example, verify its signed manifest offline, promote it to
`stable`, resolve `stable` to the image digest, and verify with the public key alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_example, require_docker
from tts_image import tts_cpu_image

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit", *args], check=False, capture_output=True, text=True, timeout=1200
    )


def test_build_verify_promote_resolve(tmp_path: Path) -> None:
    require_docker()
    tts_cpu_image()  # the layers exist once per session; this build reuses them and boots the image for real
    folder = copy_example(tmp_path / "tts")
    spec = str(folder / "imagekit-cpu.yaml")

    built = _cli("build", "-f", spec, "--target", "docker", "--json")
    assert built.returncode == 0, built.stderr[-3000:]
    (img,) = json.loads(built.stdout)["images"]
    mid, path = img["manifest_id"], Path(img["manifest_path"])
    assert img["manifest_passed"] is True
    assert path.is_file() and path.parent == folder / "manifests" / "tts-cpu"

    ok = _cli("manifest", "verify", mid, "-f", spec)
    assert ok.returncode == 0, ok.stderr
    assert "cosign verify-blob-attestation" in ok.stdout + ok.stderr

    promoted = _cli("promote", "tts-cpu", mid, "--channel", "stable", "-f", spec)
    assert promoted.returncode == 0, promoted.stderr
    resolved = _cli("resolve", "tts-cpu", "--channel", "stable", "-f", spec, "--json")
    assert resolved.returncode == 0, resolved.stderr
    doc = json.loads(resolved.stdout)
    assert doc["manifest"] == mid
    # not pushed: named for what it is, the engine's image ID (no pullable repo@sha256: lookalike)
    assert "image" not in doc and doc["image_id"] == img["image_id"] and doc["local_ref"] == img["ref"]

    # a deploy host with only the public key and the envelope file
    pub = Path(os.environ["XDG_CONFIG_HOME"]) / "imagekit" / "imagekit.pub"
    assert pub.is_file()
    alone = _cli("manifest", "verify", str(path), "--trust", str(pub))
    assert alone.returncode == 0, alone.stderr

    # one flipped byte in the stored envelope and the same check fails
    tampered = tmp_path / "tampered.intoto.json"
    env = json.loads(path.read_text())
    sig = bytearray(env["signatures"][0]["sig"], "ascii")
    sig[10] = ord("A") if sig[10] != ord("A") else ord("B")
    env["signatures"][0]["sig"] = sig.decode()
    tampered.write_text(json.dumps(env))
    bad = _cli("manifest", "verify", str(tampered), "--trust", str(pub))
    assert bad.returncode == 1
