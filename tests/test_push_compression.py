"""push.compression / --compression: the image pushed through skopeo with zstd layers, on the real engine and a
local registry; the signed subject is what the registry stores and podman (an engine that reads zstd) pulls it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from conftest import copy_example, require_docker, require_tool
from typer.testing import CliRunner

from imagekit.cli import app
from imagekit.errors import SpecError
from imagekit.spec import parse_spec

MINIMAL = """\
version: 1
name: p
layers:
  only: {{from: {{docker: "debian:bookworm"}}}}
images:
  app: {{leaf: only}}
{push}
"""


def _spec(tmp_path: Path, push: str) -> Path:
    path = tmp_path / "imagekit.yaml"
    path.write_text(MINIMAL.format(push=push))
    return path


def test_push_compression_in_the_spec(tmp_path: Path) -> None:
    loaded = parse_spec(MINIMAL.format(push="push: {compression: zstd, level: 19}"), tmp_path / "imagekit.yaml")
    assert loaded.spec.push.compression == "zstd" and loaded.spec.push.level == 19
    assert parse_spec(MINIMAL.format(push=""), tmp_path / "imagekit.yaml").spec.push.compression is None
    with pytest.raises(SpecError, match="gzip levels are 1-9"):
        parse_spec(MINIMAL.format(push="push: {compression: gzip, level: 12}"), tmp_path / "imagekit.yaml")
    with pytest.raises(SpecError, match="compression"):
        parse_spec(MINIMAL.format(push="push: {compression: brotli}"), tmp_path / "imagekit.yaml")


def test_compression_flag_needs_push_and_a_known_format(tmp_path: Path) -> None:
    spec = str(_spec(tmp_path, ""))
    alone = CliRunner().invoke(app, ["build", "-f", spec, "--target", "docker", "--compression", "zstd"])
    assert alone.exit_code == 2 and "--push" in alone.output
    bad = CliRunner().invoke(app, ["build", "-f", spec, "--target", "docker", "--push", "r/x", "--compression", "lz4"])
    assert bad.exit_code == 2 and "gzip, zstd, zstd:chunked" in bad.output


def _some_tools(name: str) -> str | None:
    return f"/opt/fake/{name}" if name in ("podman", "skopeo", "unpigz") else None


def test_doctor_says_which_engine_can_pull_zstd_and_whether_unpigz_is_there(tmp_path: Path) -> None:
    from test_doctor import FakeTools

    from imagekit import doctor
    from imagekit.spec import load_spec

    loaded = load_spec(_spec(tmp_path, "push: {compression: zstd}"))
    for server, ok in (("20.10.24", False), ("23.0.1", True)):
        fake = FakeTools({("docker", "version"): (0, server), ("podman", "--version"): (0, "podman version 4.3.1"),
                          ("skopeo", "--version"): (0, "skopeo version 1.9.3"), ("debootstrap", "--version"): (0, "1.0")})  # fmt: skip
        checks = doctor.check_pull(fake, lambda _n: None, "/usr/bin/docker", "zstd")
        assert [c.name for c in checks] == ["pull (docker)", "pull (podman)", "unpigz"]
        assert checks[0].ok is ok and (ok or "reads gzip layers only" in checks[0].detail), checks[0]
        report = doctor.diagnose(loaded, capture=fake, which=_some_tools, build=False)
        found = {c.name: c for c in report.checks}
        assert found["pull (podman)"].ok and "zstd layers: podman version 4.3.1" in found["pull (podman)"].detail
        assert found["skopeo"].ok and found["skopeo"].needed and "push.compression: zstd" in found["skopeo"].needed_for
        assert found["unpigz"].ok
    gzip = doctor.check_pull(FakeTools({("docker", "version"): (0, "20.10.24")}), lambda _n: None, "docker", "gzip")
    assert gzip[0].ok and not gzip[1].ok and not gzip[2].ok and "apt-get install pigz" in gzip[2].fix


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit", *args], check=False, capture_output=True, text=True, timeout=1800
    )


def _get(url: str, accept: str) -> tuple[dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(resp.headers), resp.read()


@pytest.mark.docker
@pytest.mark.slow
def test_zstd_push_is_zstd_signed_by_its_registry_digest_and_podman_pulls_it(
    tmp_path: Path, docker_registry: str
) -> None:
    from tts_image import tts_cpu_image

    require_docker()
    skopeo, podman = require_tool("skopeo"), require_tool("podman")
    assert skopeo
    tts_cpu_image()
    folder = copy_example(tmp_path / "tts")
    spec = str(folder / "imagekit-cpu.yaml")
    dest = f"{docker_registry}/imagekit-i22/tts-cpu"
    built = _cli("build", "-f", spec, "--target", "docker", "--push", dest, "--compression", "zstd", "--json")
    assert built.returncode == 0, built.stderr[-3000:]
    (img,) = json.loads(built.stdout)["images"]
    mid, digest, tag = img["manifest_id"], img["repo_digest"], img["ref"].rsplit(":", 1)[1]
    assert img["manifest_passed"] is True

    # what the registry holds: an OCI manifest whose every layer is zstd, under the digest that was recorded
    headers, body = _get(
        f"http://{docker_registry}/v2/imagekit-i22/tts-cpu/manifests/{tag}",
        "application/vnd.oci.image.manifest.v1+json",
    )
    manifest = json.loads(body)
    assert headers["Docker-Content-Digest"] == digest
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    types = {layer["mediaType"] for layer in manifest["layers"]}
    assert types == {"application/vnd.oci.image.layer.v1.tar+zstd"}, types
    statement = json.loads(_cli("manifest", "show", mid, "-f", spec, "--json").stdout)
    assert statement["subjects"] == [f"oci:{dest}@{digest}"]
    with urllib.request.urlopen(f"http://{docker_registry}/v2/imagekit-i22/tts-cpu/tags/list", timeout=10) as resp:
        assert "sha256-" + digest.split(":", 1)[1] + ".att" in json.loads(resp.read())["tags"]
    verified = _cli("manifest", "verify", mid, "-f", spec, "--image", f"{dest}:{tag}")
    assert verified.returncode == 0, verified.stderr

    # an empty podman store pulls it by the signed digest, and the image runs
    # podman refuses a runroot longer than 50 characters
    root, run = tmp_path / "podman-root", Path(tempfile.mkdtemp(prefix="ik22-", dir="/tmp"))
    pod = [podman, "--root", str(root), "--runroot", str(run), "--storage-driver", "overlay"]
    try:
        pulled = subprocess.run([*pod, "pull", "--tls-verify=false", f"{dest}@{digest}"], capture_output=True,
                                text=True, check=False, timeout=900)  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr[-2000:]
        out = subprocess.run([*pod, "run", "--rm", "--network", "none", "--ulimit", "nofile=16384:16384",
                              "--ulimit", "nproc=8192:8192", f"{dest}@{digest}", "python", "-c",
                              "import torch; print('torch', torch.__version__)"],
                             capture_output=True, text=True, check=False, timeout=300)  # fmt: skip
        assert out.returncode == 0 and out.stdout.startswith("torch 2.13.0"), out.stderr[-2000:]
    finally:
        subprocess.run([*pod, "rmi", "-af"], capture_output=True, check=False, timeout=300)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
