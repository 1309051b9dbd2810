"""Signed model weights (OpenSSF model signing, key-based, offline): a real signature made here by `imagekit
sign-model` verifies; one by another key, or over bytes changed since, stops `build` before any engine is asked."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagekit.errors import BuildFailed, UsageError
from imagekit.manifest.keys import keygen
from imagekit.modelsig import sign_model, verify_model

SPEC = """\
version: 1
name: signed
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
  app:
    parent: base
    models:
      - src: models/w.bin
        dest: /opt/models/w.bin
        sha256: "{sha}"
        signature: {{bundle: models/w.bin.sig, key: keys/{key}/imagekit.pub}}
images:
  app:
    leaf: app
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # an engine that is not there: a build that got past the signature check would fail on it instead
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    return subprocess.run([sys.executable, "-m", "imagekit", *args], check=False, capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)  # fmt: skip


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    for who in ("trainer", "someone-else"):
        keygen(tmp_path / "keys" / who)
    (tmp_path / "models").mkdir()
    weights = tmp_path / "models" / "w.bin"
    weights.write_bytes(os.urandom(4096))
    made = _cli("sign-model", str(weights), "--key", str(tmp_path / "keys" / "trainer" / "imagekit.key"),
                cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "models" / "w.bin.sig").is_file()
    return tmp_path


def _spec(folder: Path, key: str) -> Path:
    sha = hashlib.sha256((folder / "models" / "w.bin").read_bytes()).hexdigest()
    path = folder / "imagekit.yaml"
    path.write_text(SPEC.format(sha=sha, key=key))
    return path


def test_a_good_signature_verifies_and_names_its_signer(signed: Path) -> None:
    got = verify_model(signed / "models" / "w.bin", signed / "models" / "w.bin.sig",
                       signed / "keys" / "trainer" / "imagekit.pub", dest="/opt/models/w.bin",
                       key_name="keys/trainer/imagekit.pub")  # fmt: skip
    from imagekit.manifest.keys import keyid_of, load_public_pem

    assert got.signer == keyid_of(load_public_pem(signed / "keys" / "trainer" / "imagekit.pub"))
    assert got.bundle_sha256 == hashlib.sha256((signed / "models" / "w.bin.sig").read_bytes()).hexdigest()


def test_another_key_stops_the_build_before_the_engine(signed: Path) -> None:
    spec = _spec(signed, "someone-else")
    res = _cli("build", "-f", str(spec), "--target", "docker", cwd=signed)
    assert res.returncode == 1, res.stderr
    assert "model /opt/models/w.bin: the signature w.bin.sig does not verify with keys/someone-else/imagekit.pub" in (
        res.stderr.replace("\n", " ")
    ), res.stderr
    assert "Nothing was built" in res.stderr and "nonexistent" not in res.stderr


def test_bytes_changed_after_signing_stop_the_build(signed: Path) -> None:
    weights = signed / "models" / "w.bin"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    spec = _spec(signed, "trainer")  # the spec's sha256 follows the new bytes: only the signature can tell
    res = _cli("build", "-f", str(spec), "--target", "docker", cwd=signed)
    assert res.returncode == 1, res.stderr
    assert "does not verify with keys/trainer/imagekit.pub" in res.stderr.replace("\n", " ")
    assert "nonexistent" not in res.stderr


def test_the_good_signature_gets_past_the_check(signed: Path) -> None:
    # with the right key the build goes on to the engine, which is not there here: test_scan_gate_docker builds
    res = _cli("build", "-f", str(_spec(signed, "trainer")), "--target", "docker", cwd=signed)
    assert "does not verify" not in res.stderr
    assert res.returncode != 0 and "nonexistent" in res.stderr


def test_sign_model_never_overwrites_and_wants_an_ecdsa_key(signed: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="exists"):
        sign_model(signed / "models" / "w.bin", signed / "keys" / "trainer" / "imagekit.key")
    keygen(tmp_path / "ed", "ed25519")
    with pytest.raises(UsageError, match="ECDSA"):
        sign_model(signed / "models" / "w.bin", tmp_path / "ed" / "imagekit.key", tmp_path / "x.sig")


def test_a_bundle_that_is_not_one_is_refused(signed: Path) -> None:
    bad = signed / "bad.sig"
    bad.write_text("{}")
    with pytest.raises(BuildFailed, match="not a model-signing bundle"):
        verify_model(signed / "models" / "w.bin", bad, signed / "keys" / "trainer" / "imagekit.pub",
                     dest="/opt/models/w.bin", key_name="k")  # fmt: skip
