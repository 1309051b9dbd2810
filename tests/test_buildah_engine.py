"""The daemonless engine for real: the CPU example built with buildah, verified with podman, signed, pushed with
skopeo, with no Docker Engine reachable (DOCKER_HOST at a socket that does not exist, no docker CLI on PATH).

Cold (an empty containers-storage) this debootstraps the base and builds the runtime layer with buildah (minutes on
the shared machine); later sessions find every layer by its hash tag in containers-storage.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, copy_example, remove_buildah_images, require_tool, running_registry
from test_docker_build import _write_spec

from imagekit.api.build import BuildResult, build
from imagekit.runners.buildah import local_name

pytestmark = [pytest.mark.buildah, pytest.mark.slow]

IMAGEKIT = [sys.executable, "-m", "imagekit"]


def _tools() -> None:
    for tool in ("buildah", "podman", "skopeo", "debootstrap", "docker-registry"):
        require_tool(tool)


def no_docker_path(folder: Path) -> str:
    """A PATH with every tool of this one except docker's (docker, dockerd, docker-*): one folder of links."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin"]:
        base = Path(entry)
        if not base.is_dir():
            continue
        for tool in base.iterdir():
            link = folder / tool.name
            if tool.name.startswith("docker") and tool.name != "docker-registry":
                continue
            if not link.exists() and not link.is_symlink() and os.access(tool, os.X_OK) and tool.is_file():
                link.symlink_to(tool)
    return str(folder)


@pytest.fixture(scope="module")
def daemonless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a machine with no Docker: DOCKER_HOST names a missing socket, no docker on PATH."""
    _tools()
    root = tmp_path_factory.mktemp("nodocker")
    env = dict(os.environ)
    env["DOCKER_HOST"] = f"unix://{root / 'no-such-docker.sock'}"
    env["PATH"] = no_docker_path(root / "bin")
    env.pop("IMAGEKIT_DOCKER_CLI", None)
    env["CI"] = "true"
    env["PYTHONPATH"] = str(REPO)
    yield env


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 2400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMAGEKIT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip


def _registry_digest(address: str, repo: str, tag: str) -> str:
    req = urllib.request.Request(
        f"http://{address}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                           "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.headers["Docker-Content-Digest"])


def test_cpu_example_builds_verifies_signs_and_pushes_with_no_docker(
    daemonless: dict[str, str], tmp_path: Path
) -> None:
    assert not Path(daemonless["PATH"], "docker").exists()
    ex = copy_example(tmp_path / "tts")
    spec = str(ex / "imagekit-cpu.yaml")
    env = {**daemonless, "XDG_CONFIG_HOME": str(tmp_path / "config")}  # the default signing key, made on first use
    first = _run(["build", "-f", spec, "--target", "docker", "--engine", "buildah", "--json"], env, ex)
    assert first.returncode == 0, first.stderr[-4000:]
    out = json.loads(first.stdout)
    img = out["images"][0]
    assert img["verify_report"] and img["manifest_id"], img
    assert "buildah" in out["builders"], out["builders"]
    report = json.loads(Path(img["verify_report"]).read_text())
    assert report["ok"] and report["host"].startswith("podman"), report
    assert report["health"]["ready"] and report["smoke"]["status"] == 200

    with running_registry(tmp_path) as (address, _proc):
        dest = f"{address}/team/tts-cpu"
        second = _run(["build", "-f", spec, "--target", "docker", "--engine", "buildah", "--push", dest, "--json"],
                      env, ex)  # fmt: skip
        assert second.returncode == 0, second.stderr[-4000:]
        again = json.loads(second.stdout)["images"][0]
        assert [lr["status"] for lr in again["layers"]] == ["reused"] * 3, again  # every layer, by its hash
        pushed = again["pushed"]
        repo_digest = pushed.split("@", 1)[1]
        tag = img["ref"].rsplit(":", 1)[1]
        assert repo_digest == _registry_digest(address, "team/tts-cpu", tag)
        shown = _run(["manifest", "show", again["manifest_id"], "-f", spec, "--json"], env, ex)
        assert shown.returncode == 0, shown.stderr
        assert repo_digest.split(":", 1)[1] in shown.stdout
        promote = _run(["promote", "tts-cpu", again["manifest_id"], "--channel", "stable", "-f", spec], env, ex)
        assert promote.returncode == 0, promote.stderr
        resolved = _run(["resolve", "tts-cpu", "--channel", "stable", "-f", spec], env, ex)
        assert resolved.returncode == 0, resolved.stderr
        assert resolved.stdout.strip() == f"{dest}@{repo_digest}"
        verified = _run(["manifest", "verify", again["manifest_id"], "-f", spec, "--image", pushed], env, ex)
        assert verified.returncode == 0, verified.stdout + verified.stderr


def _buildah_containers() -> set[str]:
    out = subprocess.run(["buildah", "containers", "--all", "--quiet", "--notruncate"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return set(out.split())


def _storage_mounts() -> set[str]:
    lines = Path("/proc/mounts").read_text().splitlines()
    return {ln.split()[1] for ln in lines if "/containers/storage/" in ln or "buildah" in ln}


def _temp_dirs() -> set[str]:
    found: set[str] = set()
    for folder in {Path(os.environ.get("TMPDIR", "/var/tmp")), Path("/var/tmp"), Path("/tmp")}:
        # buildah's own, and this engine's (the shared /tmp holds other builds' imagekit-* folders too)
        for pattern in ("buildah*", "imagekit-import-*", "imagekit-skopeo-*", "imagekit-podman-*"):
            found |= {str(p) for p in folder.glob(pattern)}
    return found


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, BuildResult]]:
    """test_docker_build's small spec (pip six through the marked CA secret, a weights file) built with buildah."""
    _tools()
    folder = tmp_path_factory.mktemp("tiny-buildah")
    name = f"ikb-{uuid.uuid4().hex[:8]}"
    marker = f"IMAGEKIT-SECRET-MARKER-{uuid.uuid4().hex}"
    spec = _write_spec(folder, name, marker)
    try:
        yield spec, marker, build(spec, "docker", verify=False, engine_kind="buildah")
    finally:
        remove_buildah_images(name)


def _saved(ref: str, folder: Path) -> Path:
    out = folder / "image.tar"
    out.unlink(missing_ok=True)
    subprocess.run(["skopeo", "copy", f"containers-storage:{local_name(ref)}", f"docker-archive:{out}"],
                   capture_output=True, check=True, timeout=600)  # fmt: skip
    return out


def test_no_secret_in_any_layer_of_the_buildah_image(tiny: tuple[Path, str, BuildResult], tmp_path: Path) -> None:
    _spec, marker, res = tiny
    img = res.image("tiny")
    # the runtime layer was built (pip reached the index only through the marked CA secret)
    assert [lr.status for lr in img.layers] == ["built", "built", "built"]
    with tarfile.open(_saved(img.ref, tmp_path)) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        assert len([m for m in members if m.name.endswith(".tar")]) >= 3
        for member in members:
            fh = tar.extractfile(member)
            assert fh is not None
            assert marker.encode() not in fh.read(), f"the CA bundle's marker is in {member.name}"


def _diff_ids(ref: str) -> list[str]:
    out = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return list(json.loads(out)["OCIv1"]["rootfs"]["diff_ids"])


def test_weights_have_their_own_layer(tiny: tuple[Path, str, BuildResult], tmp_path: Path) -> None:
    _spec, _marker, res = tiny
    cold = res.image("tiny")
    parent = _diff_ids(cold.layers[1].tag)
    with tarfile.open(_saved(cold.ref, tmp_path)) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        blob = tar.extractfile(manifest[0]["Layers"][len(parent)]).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(blob)) as inner:
        assert [m.name for m in inner.getmembers() if m.isfile()] == ["opt/models/w.bin"]


def test_an_app_rebuild_keeps_the_weights_layer(tiny: tuple[Path, str, BuildResult]) -> None:
    # buildah 1.28 stamps the folders a COPY creates (/opt, /opt/models) with the build's time, and reruns the COPY
    # here: root-owned weights go in as a tar with fixed times instead (imagekit/weights_tar.py)
    spec, _marker, res = tiny
    cold = res.image("tiny")
    parent = _diff_ids(cold.layers[1].tag)
    (spec.parent / "src" / "main.py").write_text("print('v2')\n")
    again = build(spec, "docker", verify=False, engine_kind="buildah").image("tiny")
    assert [lr.status for lr in again.layers] == ["reused", "reused", "built"]
    before, after = _diff_ids(cold.ref), _diff_ids(again.ref)
    assert before[len(parent) + 1 :] != after[len(parent) + 1 :]  # the code's layer moved
    assert before[: len(parent) + 1] == after[: len(parent) + 1]  # the parent's layers and the weights' layer


FAILING = """\
version: 1
name: {name}
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
  broken:
    parent: base
    run: ["echo imagekit-failing-step", "exit 7"]
images:
  svc: {{leaf: broken, repository: imagekit-test/{name}}}
"""


def test_a_failing_step_leaves_no_working_container(tmp_path: Path) -> None:
    """buildah keeps a failed step's working container (a mounted layer) unless told not to: the last CI's failed
    builds left three behind on the machine. A failure is reported with the step's exit and leaves nothing."""
    from imagekit.errors import BuildFailed

    _tools()
    name = f"ikb-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(FAILING.format(name=name))
    containers, mounts = _buildah_containers(), _storage_mounts()
    try:
        with pytest.raises(BuildFailed, match=r"layer broken failed to build") as failed:
            build(spec, "docker", verify=False, engine_kind="buildah")
    finally:
        remove_buildah_images(name)  # the base layer's tag
    assert "exit status 7" in str(failed.value) or any("exit status 7" in ln for ln in failed.value.log_tail)
    assert _buildah_containers() <= containers
    assert _storage_mounts() <= mounts


def test_sigterm_during_a_buildah_build_leaves_nothing_behind(daemonless: dict[str, str], tmp_path: Path) -> None:
    name = f"ikb-{uuid.uuid4().hex[:8]}"
    spec = _write_spec(tmp_path / "t", name, "no-marker", extra_run="echo imagekit-sleeping; sleep 300")
    containers, mounts, temps = _buildah_containers(), _storage_mounts(), _temp_dirs()
    proc = subprocess.Popen(
        [*IMAGEKIT, "build", "-f", str(spec), "--target", "docker", "--engine", "buildah", "--no-verify", "-v"],
        env=daemonless, cwd=spec.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 1200
    for line in proc.stdout:
        seen.append(line)
        if "imagekit-sleeping" in line and "echo" not in line:
            break
        assert time.monotonic() < deadline, "".join(seen[-20:])
    else:
        pytest.fail("the build ended before its runtime step ran:\n" + "".join(seen[-30:]))
    assert _buildah_containers() - containers, "a working container exists while the step runs"
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, "".join(seen[-10:]) + rest[-3000:]
    assert _buildah_containers() <= containers
    assert _storage_mounts() <= mounts
    assert _temp_dirs() <= temps
    remove_buildah_images(name)  # the base layer's tag (a name alone would ask for :latest and miss it)
