"""The docker target on a real Docker Engine: reuse by layer hash, app-only rebuilds, no secrets in layers, push.

One small spec (sharing the bootstrapped Debian base with the CPU example) is built once per session and the
tests look at that build and cheap follow-ups, because the machine's cores are shared.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI, REPO, copy_example, require_docker
from test_docker_build_unit import https_server  # noqa: F401 (a fixture)

from imagekit.api.build import BuildResult, build
from imagekit.errors import BuildFailed
from imagekit.names import base_tag, layer_tag
from imagekit.runners.docker import DockerEngine
from imagekit.spec import Bootstrap, load_spec

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
WEIGHTS = bytes(range(256)) * 64

SPEC = """\
version: 1
name: {name}
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
  runtime:
    parent: base
    # pip reaches the package index only through the CA bundle given as the BuildKit secret `ca` (on this
    # machine HTTPS goes through an intercepting proxy), so a built runtime layer shows the secret was there
    pip: ["six==1.17.0"]
    run: ["echo runtime-ok > /etc/imagekit-test-runtime"]
  app:
    parent: runtime
    copy: [{{src: src/, dest: /opt/app/src}}]
    models:
      - {{src: models/w.bin, dest: /opt/models/w.bin, sha256: "{sha}"}}
    user: app
    workdir: /opt/app
    command: ["python3", "-c", "print('hello')"]
images:
  tiny:
    leaf: app
    repository: imagekit-test/{name}
build:
  ca_bundle: ca.pem
"""


@dataclass
class Built:
    """The session's spec and its first two builds."""

    spec: Path
    name: str
    marker: str
    cold: BuildResult
    warm: BuildResult


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_docker(), *args], capture_output=True, text=True, check=check, timeout=300)


def _write_spec(folder: Path, name: str, marker: str, *, extra_run: str = "") -> Path:
    (folder / "src").mkdir(parents=True, exist_ok=True)
    (folder / "src" / "main.py").write_text("print('v1')\n")
    (folder / "models").mkdir(exist_ok=True)
    (folder / "models" / "w.bin").write_bytes(WEIGHTS)
    ca = HOST_CA.read_text() if HOST_CA.is_file() else ""
    ca_text = ca + f"\n# {marker}\n"
    (folder / "ca.pem").write_text(ca_text)
    text = SPEC.format(name=name, sha=hashlib.sha256(WEIGHTS).hexdigest())
    if extra_run:
        text = text.replace('run: ["echo runtime-ok', f'run: ["{extra_run}", "echo runtime-ok')
    path = folder / "imagekit.yaml"
    path.write_text(text)
    return path


def _remove_images(name: str) -> None:
    # only the images this session tagged: its own unique repositories
    out = _docker("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
    mine = [ref for ref in out if name in ref.rsplit(":", 1)[0]]
    if mine:
        _docker("rmi", *mine, check=False)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    require_docker()
    base = base_tag("base", Bootstrap(distro="debian", suite="bookworm"))
    if os.geteuid() != 0 and not DockerEngine().exists(base):
        # under CI a missing prerequisite fails, never skips
        (pytest.fail if IN_CI else pytest.skip)(f"{base} is missing and making it needs root once (debootstrap)")
    folder = tmp_path_factory.mktemp("tiny")
    name = f"ikt-{uuid.uuid4().hex[:8]}"
    marker = f"IMAGEKIT-SECRET-MARKER-{uuid.uuid4().hex}"
    spec = _write_spec(folder, name, marker)
    try:
        cold = build(spec, "docker", verify=False)
        warm = build(spec, "docker", verify=False)
        yield Built(spec, name, marker, cold, warm)
    finally:
        _remove_images(name)


def test_cold_build_builds_every_layer_and_tags_by_hash(built: Built) -> None:
    res = built.cold.image("tiny")
    assert [lr.name for lr in res.layers] == ["base", "runtime", "app"]
    assert [lr.status for lr in res.layers] == ["built", "built", "built"]
    loaded = load_spec(built.spec)
    engine = DockerEngine()
    for lr in res.layers:
        assert (
            lr.tag == layer_tag(loaded.spec.name, lr.name, lr.hash) == f"imagekit/{built.name}-{lr.name}:{lr.hash[:16]}"
        )
        info = engine.inspect(lr.tag)
        assert info is not None
        assert info.id == lr.image_id
        assert info.labels["dev.imagekit.layer.hash"] == lr.hash
    leaf = res.layers[-1]
    assert res.ref == f"imagekit-test/{built.name}:{leaf.hash[:16]}"
    assert res.image_id == leaf.image_id
    assert engine.inspect(f"imagekit-test/{built.name}:latest").id == leaf.image_id  # type: ignore[union-attr]
    assert res.base is not None
    assert res.base.kind == "bootstrap"
    assert res.base.ref.startswith("imagekit-base-base:")
    assert Path(res.log_path).is_file()
    assert "runtime" in Path(res.log_path).read_text()
    json.dumps(built.cold.to_json())  # JSON-able


def test_unchanged_spec_reuses_every_layer(built: Built) -> None:
    cold, warm = built.cold.image("tiny"), built.warm.image("tiny")
    assert [lr.status for lr in warm.layers] == ["reused", "reused", "reused"]
    assert [lr.image_id for lr in warm.layers] == [lr.image_id for lr in cold.layers]
    assert warm.image_id == cold.image_id


def test_changing_app_source_rebuilds_only_the_app_layer(built: Built) -> None:
    src = built.spec.parent / "src" / "main.py"
    original = src.read_text()
    src.write_text("print('v2')\n")
    try:
        t0 = time.monotonic()
        again = build(built.spec, "docker", verify=False).image("tiny")
        seconds = time.monotonic() - t0
    finally:
        src.write_text(original)
    cold = built.cold.image("tiny")
    assert [lr.status for lr in again.layers] == ["reused", "reused", "built"]
    assert again.layers[0].image_id == cold.layers[0].image_id
    assert again.layers[1].image_id == cold.layers[1].image_id
    assert again.layers[2].image_id != cold.layers[2].image_id
    assert again.image_id != cold.image_id
    out = _docker("run", "--rm", "--entrypoint", "cat", again.ref, "/opt/app/src/main.py").stdout
    assert out == "print('v2')\n"
    # the weights sit in their own image layer, right on the parent's, and that layer did not move
    parent = _diff_ids(cold.layers[1].image_id)
    before, after = _diff_ids(cold.image_id), _diff_ids(again.image_id)
    assert before[: len(parent)] == after[: len(parent)] == parent
    weights = _weights_layer(again.ref, parent)
    assert before[len(parent)] == after[len(parent)] == weights
    assert before[len(parent) + 1 :] != after[len(parent) + 1 :]  # and the code's layer did
    print(f"app-only rebuild: {seconds:.1f}s")


def _diff_ids(ref: str) -> list[str]:
    out = _docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", ref).stdout
    layers: list[str] = json.loads(out)
    return layers


def _weights_layer(ref: str, parent: list[str]) -> str:
    """The diff ID of the image layer just above the parent's, checked to hold the model file and nothing else."""
    layer = _diff_ids(ref)[len(parent)]
    saved = subprocess.run([require_docker(), "save", ref], capture_output=True, check=True, timeout=300).stdout
    with tarfile.open(fileobj=io.BytesIO(saved)) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        path = manifest[0]["Layers"][len(parent)]
        blob = tar.extractfile(path).read()  # type: ignore[union-attr]
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer
    with tarfile.open(fileobj=io.BytesIO(blob)) as inner:
        files = [m.name for m in inner.getmembers() if m.isfile()]
    assert files == ["opt/models/w.bin"], files
    return layer


def _cli_piped(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with stdout and stderr piped (as in a CI log), CI unset: what a pipe gets by itself."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "imagekit"), "build", *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=1800, check=False, env=env,
    )  # fmt: skip


def test_a_piped_build_prints_a_line_per_step_start_and_end(built: Built) -> None:
    """Every layer rebuilt (--force), piped: a start and a done line per layer, none of BuildKit's own lines."""
    proc = _cli_piped("-f", str(built.spec), "--target", "docker", "--force", "--no-verify")
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = proc.stdout.splitlines()
    print(f"piped forced build of the tiny spec: {len(lines)} lines")
    assert len(lines) <= 30, proc.stdout
    for layer in ("base", "runtime", "app"):
        where = f"tiny/docker/{layer}"
        assert sum(1 for ln in lines if ln.split()[:2] == ["start", where]) == 1, proc.stdout
        done = [ln for ln in lines if " done " in f" {ln} " and where in ln]
        assert len(done) == 1 and re.match(r"^\s*[\dmh.]+s\s+done", done[0]), proc.stdout  # its time leads the line
    assert not any(ln.startswith("#") or " #" in ln for ln in lines), "BuildKit's lines belong in the log file"
    assert any("full log:" in ln for ln in lines)
    # -v streams everything as before: BuildKit's plain progress lines are there
    src = built.spec.parent / "src" / "main.py"
    original = src.read_text()
    src.write_text(f"print('{uuid.uuid4().hex}')\n")
    try:
        verbose = _cli_piped("-f", str(built.spec), "--target", "docker", "--no-verify", "-v")
    finally:
        src.write_text(original)
    assert verbose.returncode == 0, verbose.stdout[-3000:]
    assert sum(1 for ln in verbose.stdout.splitlines() if "#" in ln) >= 5, verbose.stdout


def test_force_rebuilds_every_layer(built: Built) -> None:
    forced = build(built.spec, "docker", force=True, verify=False).image("tiny")
    assert [lr.status for lr in forced.layers] == ["built", "built", "built"]
    # copied again with no build cache, the weights' layer has the same diff ID: its content alone decides it
    cold = built.cold.image("tiny")
    parent_cold, parent_forced = _diff_ids(cold.layers[1].image_id), _diff_ids(forced.layers[1].image_id)
    assert _weights_layer(forced.ref, parent_forced) == _weights_layer(cold.ref, parent_cold)
    assert forced.base is not None
    assert not forced.base.built  # --force rebuilds layers, not the debootstrapped distribution base
    # every RUN ran again, but the spec's package cache mount stayed: uv found six in it and downloaded nothing
    # (BuildKit's --no-cache would have emptied the mount as well)
    log = Path(forced.log_path).read_text(encoding="utf-8", errors="replace")
    runtime = log.split("# ---- layer runtime", 1)[1].split("# ---- layer app", 1)[0]
    assert "runtime-ok" in runtime and "Installed 1 package" in runtime, runtime[-2000:]
    assert "Prepared" not in runtime and "Downloading" not in runtime, runtime[-2000:]


def test_final_image_runs_as_non_root_and_models_are_read_only(built: Built) -> None:
    ref = built.cold.image("tiny").ref
    uid = _docker("run", "--rm", "--entrypoint", "id", ref, "-u").stdout.strip()
    assert uid != "0"
    assert _docker("run", "--rm", "--entrypoint", "id", ref, "-un").stdout.strip() == "app"
    assert _docker("run", "--rm", "--entrypoint", "test", ref, "-r", "/opt/models/w.bin", check=False).returncode == 0
    for path in ("/opt/models/w.bin", "/opt/models", "/opt/app/src/main.py"):
        writable = _docker("run", "--rm", "--entrypoint", "test", ref, "-w", path, check=False)
        assert writable.returncode == 1, f"{path} is writable by the app user"


def test_no_secret_in_any_layer(built: Built, tmp_path: Path) -> None:
    ref = built.cold.image("tiny").ref
    saved = tmp_path / "image.tar"
    _docker("save", "-o", str(saved), ref)
    marker = built.marker.encode()
    with tarfile.open(saved) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        layers = [m for m in members if m.name.endswith("layer.tar")]
        assert len(layers) >= 3
        for member in members:
            fh = tar.extractfile(member)
            assert fh is not None
            data = fh.read()
            assert marker not in data, f"the CA bundle's marker is in {member.name}"
    # and the build did see it (the runtime layer's grep of /run/secrets/ca passed), so the check above means something
    assert built.cold.image("tiny").layers[1].status == "built"


def test_from_docker_records_the_resolved_image(built: Built, tmp_path: Path) -> None:
    base = built.cold.image("tiny").base
    assert base is not None
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(
        f"""\
version: 1
name: {built.name}-fromdocker
layers:
  base:
    from: {{docker: "{base.ref}"}}
    run: ["test -x /usr/bin/python3"]
images:
  fromdocker: {{leaf: base}}
"""
    )
    res = build(spec, "docker", verify=False).image("fromdocker")
    assert res.base is not None
    assert res.base.kind == "docker"
    assert res.base.image_id == base.image_id
    assert res.base.digest  # RepoDigest when pulled from a registry, else the image id
    assert [lr.status for lr in res.layers] == ["built"]


def test_a_broken_run_step_exits_1_naming_the_layer(built: Built, tmp_path: Path) -> None:
    spec = _write_spec(tmp_path, f"{built.name}-broken", built.marker, extra_run="echo imagekit-broke-here; exit 7")
    with pytest.raises(BuildFailed) as info:
        build(spec, "docker", verify=False)
    err = info.value
    assert err.exit_code == 1
    assert err.layer == "runtime"
    assert any("imagekit-broke-here" in line for line in err.log_tail)
    assert Path(err.log_path).is_file()
    # the CLI shows the same: exit 1, the layer, the tail and the log path
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "imagekit"), "build", "-f", str(spec), "--target", "docker", "--no-verify"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 1, proc.stderr
    assert "runtime" in proc.stderr
    assert "imagekit-broke-here" in proc.stderr
    assert "full log:" in proc.stderr


def test_push_records_the_repo_digest(built: Built, docker_registry: str) -> None:
    registry = docker_registry
    dest = f"{registry}/imagekit-test/{built.name}"
    res = build(built.spec, "docker", push=dest, verify=False).image("tiny")
    assert [lr.status for lr in res.layers] == ["reused", "reused", "reused"]
    assert res.repo_digest.startswith("sha256:")
    assert res.pushed == f"{dest}@{res.repo_digest}"
    tag = res.ref.rsplit(":", 1)[1]
    req = urllib.request.Request(
        f"http://{registry}/v2/imagekit-test/{built.name}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        method="HEAD",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Docker-Content-Digest"] == res.repo_digest


def test_ctrl_c_stops_the_build_and_exits_130(built: Built, tmp_path: Path) -> None:
    import signal

    spec = tmp_path / "imagekit.yaml"
    spec.write_text(
        f"""\
version: 1
name: {built.name}-sigint
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
    run: ["echo imagekit-sleeping; sleep 300"]
images:
  slow: {{leaf: base}}
"""
    )
    proc = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "imagekit"), "build", "-f", str(spec), "--target", "docker", "--no-verify", "-v"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:
        seen.append(line)
        if "imagekit-sleeping" in line and "echo" not in line:
            break
        assert time.monotonic() < deadline, "".join(seen[-20:])
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    rest = proc.stderr.read()
    rc = proc.wait(timeout=120)
    assert rc == 130, "".join(seen[-10:]) + rest
    assert time.monotonic() - t0 < 60
    assert "interrupted" in rest
    assert not DockerEngine().exists(f"imagekit/{built.name}-sigint-base:latest")
    tagged = _docker("images", "--format", "{{.Repository}}", f"imagekit/{built.name}-sigint-base").stdout.strip()
    assert tagged == ""


def test_remote_model_is_fetched_checked_and_copied_in(
    built: Built,
    tmp_path: Path,
    https_server: tuple[str, Path, list[str], Path],  # noqa: F811
) -> None:
    url, served, hits, cert = https_server
    weights = os.urandom(100_000)
    (served / "remote.bin").write_bytes(weights)
    sha = hashlib.sha256(weights).hexdigest()
    (tmp_path / "ca.pem").write_bytes(cert.read_bytes())
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(
        f"""\
version: 1
name: {built.name}-remote
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
    models:
      - {{src: "{url}/remote.bin", dest: /opt/models/remote.bin, sha256: "{sha}"}}
images:
  remote: {{leaf: base}}
build:
  ca_bundle: ca.pem
"""
    )
    res = build(spec, "docker", verify=False).image("remote")
    assert hits == ["/remote.bin"]
    out = _docker("run", "--rm", "--entrypoint", "sha256sum", res.ref, "/opt/models/remote.bin").stdout
    assert out.split()[0] == sha
    build(spec, "docker", force=True, verify=False)
    assert hits == ["/remote.bin"]  # the second build took it from the cache


def _cli_json(*args: str) -> tuple[int, dict[str, object], str]:
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "imagekit"), "build", *args, "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    doc = json.loads(proc.stdout) if proc.returncode == 0 else {}
    return proc.returncode, doc, proc.stderr


def test_cpu_example_builds_verifies_and_rebuilds_only_the_app(tmp_path: Path) -> None:
    """The CPU example through the CLI: exit 0 with a verify report; an edit under app/ rebuilds only the app layer."""
    require_docker()

    copy = tmp_path / "tts"
    copy_example(copy)
    spec = copy / "imagekit-cpu.yaml"
    rc, first, err = _cli_json("-f", str(spec), "--target", "docker")
    assert rc == 0, err[-3000:]
    img = first["images"][0]  # type: ignore[index]
    assert img["image"] == "tts-cpu"
    assert Path(img["verify_report"]).is_file()
    assert img["ref"].startswith("imagekit/tts-cpu:")
    (copy / "app" / "__init__.py").write_text((copy / "app" / "__init__.py").read_text() + f"# {uuid.uuid4()}\n")
    again: Any = None
    try:
        rc, second, err = _cli_json("-f", str(spec), "--target", "docker", "--no-verify")
        assert rc == 0, err[-3000:]
        again = second["images"][0]  # type: ignore[index]
        assert [lr["status"] for lr in again["layers"]] == ["reused", "reused", "built"]
        assert [lr["image_id"] for lr in again["layers"][:2]] == [lr["image_id"] for lr in img["layers"][:2]]
        assert again["image_id"] != img["image_id"]
        print(f"cpu example app-only rebuild: {again['seconds']}s, image {again['size'] / 1e6:.0f} MB")
    finally:
        # keep the shared example tags as they were: :latest back on the example's own build
        _docker("tag", img["ref"], "imagekit/tts-cpu:latest")
        if again is not None:
            _docker("rmi", again["ref"], again["layers"][2]["tag"], check=False)


def test_from_docker_pulls_and_records_the_repo_digest(built: Built, docker_registry: str, tmp_path: Path) -> None:
    registry = docker_registry
    # the runtime layer (root user; the final image's USER is app) goes to the registry, then only from there
    runtime = built.cold.image("tiny").layers[1]
    engine = DockerEngine()
    dest, tag = f"{registry}/imagekit-test/{built.name}-runtime", runtime.hash[:16]
    current = engine.inspect(runtime.tag)  # test_force_rebuilds_every_layer may have re-made it
    assert current is not None
    engine.tag(runtime.tag, dest, tag)
    digest = engine.push(dest, tag)
    ref = f"{dest}:{tag}"
    _docker("rmi", ref)  # only that tag: the engine must pull it from the registry again
    assert not engine.exists(ref)
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(
        f"""\
version: 1
name: {built.name}-pulled
layers:
  top:
    from: {{docker: "{ref}"}}
    run: ["test -f /etc/imagekit-test-runtime"]
images:
  pulled: {{leaf: top}}
"""
    )
    res = build(spec, "docker", verify=False).image("pulled")
    assert res.base is not None
    assert res.base.kind == "docker"
    assert res.base.digest == digest
    assert res.base.ref == f"{dest}@{digest}"
    assert res.base.image_id == current.id
    assert [lr.status for lr in res.layers] == ["built"]
