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
    assert doc["image"] == "tts-cpu" and doc["image_id"] == img["image_id"] and doc["local_ref"] == img["ref"]

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


def test_build_push_attaches_beside_the_registry_digest(tmp_path: Path, docker_registry: str) -> None:
    """The deploy path: build --push, the subject is the Docker-Content-Digest, the .att tag is listed beside it,
    and `resolve` prints REGISTRY/REPO@sha256:<that digest>."""
    import urllib.request

    require_docker()
    tts_cpu_image()
    folder = copy_example(tmp_path / "tts")
    spec = str(folder / "imagekit-cpu.yaml")
    dest = f"{docker_registry}/imagekit-i11/tts-cpu"
    built = _cli("build", "-f", spec, "--target", "docker", "--push", dest, "--json")
    assert built.returncode == 0, built.stderr[-3000:]
    (img,) = json.loads(built.stdout)["images"]
    mid, digest = img["manifest_id"], img["repo_digest"]
    tag = img["ref"].rsplit(":", 1)[1]
    req = urllib.request.Request(f"http://{docker_registry}/v2/imagekit-i11/tts-cpu/manifests/{tag}", method="HEAD",
                                 headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        served = resp.headers["Docker-Content-Digest"]
    assert served == digest
    statement = json.loads(_cli("manifest", "show", mid, "-f", spec, "--json").stdout)
    assert statement["subjects"] == [f"oci:{dest}@{served}"]

    with urllib.request.urlopen(f"http://{docker_registry}/v2/imagekit-i11/tts-cpu/tags/list", timeout=10) as resp:
        tags = json.loads(resp.read())["tags"]
    att = "sha256-" + served.split(":", 1)[1] + ".att"
    assert att in tags and img["attestations"] == f"{dest}:{att}"

    assert _cli("manifest", "verify", mid, "-f", spec, "--image", f"{dest}:{tag}").returncode == 0
    assert _cli("promote", "tts-cpu", mid, "--channel", "stable", "-f", spec).returncode == 0
    resolved = _cli("resolve", "tts-cpu", "--channel", "stable", "-f", spec)
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout.strip() == f"{dest}@{served}"
    sbom = _cli("manifest", "sbom", mid, "-f", spec, "-o", str(tmp_path / "sbom.json"))
    assert sbom.returncode == 0, sbom.stderr
    names = {c["name"] for c in json.loads((tmp_path / "sbom.json").read_text())["components"]}
    assert {"torch", "libc6", "python3.11"} <= names
