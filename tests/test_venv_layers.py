"""The venv in parts (render/install.py): the lock cut by package groups, heavy first, one image layer per part.

The unit tests run the rendered sh and awk for real; the docker test builds a small spec twice on the real engine
and pushes both builds to a local registry: a changed light pin moves only the light layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import REPO, remove_buildah_images, require_docker, require_tool, running_registry

from imagekit.render.install import DEFAULT_VENV_LAYERS, lock_part_helper, lock_parts, part_of
from imagekit.render.scripts import render_scripts
from imagekit.spec import load_spec, parse_spec
from imagekit.spec_model import Layer

GPU = REPO / "examples" / "tts" / "imagekit.yaml"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

LOCK = """\
# a hashed lock as pip-compile writes it
--index-url https://pypi.org/simple
fastapi==0.115.0 \\
    --hash=sha256:aa \\
    --hash=sha256:bb
    # via app
Torch==2.5.1 \\
    --hash=sha256:cc
nvidia_cudnn.cu12==9.1.0.70 \\
    --hash=sha256:dd
nvidia-nccl-cu12==2.21.5 \\
    --hash=sha256:ee
triton==3.1.0  # via torch
-r extra.txt
"""


def _lock_part(tmp_path: Path, layer: Layer, part: str) -> str:
    helper = tmp_path / "helper.sh"
    helper.write_text(lock_part_helper(layer))
    lock = tmp_path / "req.lock"
    lock.write_text(LOCK)
    proc = subprocess.run(
        ["sh", "-eu", "-c", f". {helper}; lock_part {part} {lock}"], check=False, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_lock_is_cut_by_group_with_hashes_and_options(tmp_path: Path) -> None:
    layer = Layer()
    assert lock_parts(layer) == ["heavy1", "heavy2", "heavy3", "heavy4", "heavy5", "light"]
    opt = "--index-url https://pypi.org/simple\n"
    assert _lock_part(tmp_path, layer, "heavy1") == opt + "Torch==2.5.1 \\\n    --hash=sha256:cc\n"
    assert _lock_part(tmp_path, layer, "heavy2") == opt + "triton==3.1.0  # via torch\n"
    assert _lock_part(tmp_path, layer, "heavy3") == opt + "nvidia_cudnn.cu12==9.1.0.70 \\\n    --hash=sha256:dd\n"
    assert _lock_part(tmp_path, layer, "heavy4") == opt  # no cuBLAS, cuFFT or cuSOLVER in this lock
    assert _lock_part(tmp_path, layer, "heavy5") == opt + "nvidia-nccl-cu12==2.21.5 \\\n    --hash=sha256:ee\n"
    # the rest, and the nested file, once (not in every part); comments go
    light = _lock_part(tmp_path, layer, "light")
    assert light == opt + "fastapi==0.115.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n-r extra.txt\n"
    # every package line lands in exactly one part
    names = [re.split(r"[=\s]", line)[0] for line in LOCK.splitlines() if re.match(r"^[A-Za-z]", line)]
    parts = "".join(_lock_part(tmp_path, layer, p) for p in lock_parts(layer))
    assert sorted(n for n in names if n in parts) == sorted(names)


def test_groups_are_configurable(tmp_path: Path) -> None:
    layer = Layer.model_validate({"venv_layers": [["fastapi", "nvidia-*"]]})
    assert lock_parts(layer) == ["heavy1", "light"]
    assert part_of(layer, "nvidia-nccl-cu12") == "heavy1" and part_of(layer, "torch") == "light"
    assert "fastapi" in _lock_part(tmp_path, layer, "heavy1") and "torch" in _lock_part(tmp_path, layer, "light")
    assert part_of(Layer(), "nvidia-cudnn-cu13") == "heavy3" and part_of(Layer(), "cuda-toolkit") == "heavy5"
    assert part_of(Layer(), "nvidia-cublas") == "heavy4" and part_of(Layer(), "nvidia-cusparselt-cu13") == "heavy5"
    assert DEFAULT_VENV_LAYERS[0] == ("torch",)


def test_a_bad_glob_is_a_spec_error(tmp_path: Path) -> None:
    from imagekit.errors import SpecError

    text = GPU.read_text(encoding="utf-8").replace(
        "    requirements: requirements.lock", '    requirements: requirements.lock\n    venv_layers: [["Torch"]]'
    )
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match="venv_layers"):
        parse_spec(text, spec)


def _phase_install(tmp_path: Path, env: dict[str, str]) -> list[tuple[str, str]]:
    """Run the GPU example's real install phase with the package installer stubbed: (part, lock lines) per call."""
    script = render_scripts(load_spec(GPU), "tts-inference", "ami")["runtime"]
    funcs = [
        re.search(rf"(?ms)^{name}\(\) \{{.*?^\}}\n", script).group(0)  # type: ignore[union-attr]
        for name in ("lock_part", "has_requirements", "phase_install")
    ]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "requirements.lock").write_text(LOCK)
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("#!/bin/sh\nexit 0\n")
    (venv / "python").chmod(0o755)
    stubs = f"""
log() {{ echo "log: $*" >&2; }}
die() {{ echo "die: $*" >&2; exit 1; }}
pip_env() {{ :; }}
find_uv() {{ :; }}
index_answers() {{ return 1; }}
pkg_install_or_build() {{
    while [ $# -gt 0 ]; do
        if [ "$1" = -r ]; then echo "CALL $*" >>{tmp_path}/calls; grep -E '^[A-Za-z]' "$2" >>{tmp_path}/calls; fi
        shift
    done
}}
VENV={tmp_path}/venv
IMAGEKIT_SRC={tmp_path}/src
"""
    proc = subprocess.run(["sh", "-eu", "-c", stubs + "".join(funcs) + "phase_install"], check=False, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", **env})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls: list[tuple[str, str]] = []
    for block in (tmp_path / "calls").read_text().split("CALL ")[1:]:
        first, _, rest = block.partition("\n")
        part = Path(first.split()[1]).name
        calls.append((part, rest))
    return calls


def test_a_vm_installs_every_part_heavy_first(tmp_path: Path) -> None:
    calls = _phase_install(tmp_path, {})
    # heavy4 (cuBLAS, cuFFT, cuSOLVER) matches nothing in this lock: a VM skips it
    assert [part for part, _ in calls] == ["heavy1", "heavy2", "heavy3", "heavy5", "light"]
    assert "Torch==2.5.1" in calls[0][1] and "fastapi" in calls[-1][1]


def test_a_docker_run_installs_only_its_part(tmp_path: Path) -> None:
    calls = _phase_install(tmp_path, {"IMAGEKIT_PART": "heavy5"})
    assert calls == [("heavy5", "nvidia-nccl-cu12==2.21.5 \\\n")]


# --- on the real engine --------------------------------------------------------------------------------------

SPEC = """\
version: 1
name: {name}
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
  runtime:
    parent: base
    requirements: req.lock
    venv_layers: [["six"]]
  app:
    parent: runtime
    models: [{{src: w.bin, dest: /opt/models/w.bin, sha256: "{weights_sha}"}}]
    copy: [{{src: app/, dest: /opt/app/}}]
images:
  venv:
    leaf: app
    repository: imagekit-test/{name}
build:
  ca_bundle: ca.pem
"""


def _docker(*args: str) -> str:
    return subprocess.run([require_docker(), *args], capture_output=True, text=True, check=True, timeout=300).stdout


def _manifest(registry: str, repo: str, tag: str) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://{registry}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        doc: dict[str, object] = json.loads(resp.read())
    return doc


@pytest.mark.docker
@pytest.mark.slow
def test_a_light_pin_change_moves_only_the_light_layer_and_keeps_the_weights(tmp_path: Path) -> None:
    from imagekit.api.build import build

    require_docker()
    name = f"ikv-{uuid.uuid4().hex[:8]}"
    weights = os.urandom(16 << 20)  # incompressible, so that uploading it again would be far over 5%
    (tmp_path / "w.bin").write_bytes(weights)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    spec = SPEC.format(name=name, weights_sha=hashlib.sha256(weights).hexdigest())
    (tmp_path / "imagekit.yaml").write_text(spec)
    (tmp_path / "ca.pem").write_text(HOST_CA.read_text() if HOST_CA.is_file() else "")
    lock = tmp_path / "req.lock"
    lock.write_text("six==1.17.0\nidna==3.10\n")
    (tmp_path / "reg").mkdir()
    try:
        with running_registry(tmp_path / "reg") as (registry, _proc):
            dest = f"{registry}/imagekit-test/{name}"
            first = build(tmp_path / "imagekit.yaml", "docker", push=dest, verify=False).image("venv")
            time.sleep(1.1)  # a second later: a folder stamped with the build's time would differ
            lock.write_text("six==1.17.0\nidna==3.9\n")
            second = build(tmp_path / "imagekit.yaml", "docker", push=dest, verify=False).image("venv")
            assert [lr.status for lr in second.layers] == ["reused", "built", "built"]
            before = json.loads(_docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", first.ref))
            after = json.loads(_docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", second.ref))
            base = json.loads(_docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", first.layers[0].tag))
            # base, then runtime: system RUN, heavy1 (six), light (idna); then the app: the weights first
            light, weights_at = len(base) + 2, len(base) + 3
            assert len(before) == len(after) > weights_at
            assert before[:light] == after[:light]
            assert before[light] != after[light]
            # the weights' layer is the same on the new runtime (a reproducible tar, imagekit/weights_tar.py)
            assert before[weights_at] == after[weights_at]
            six = "six-1.17.0.dist-info"
            ls = _docker("run", "--rm", "--entrypoint", "sh", second.ref, "-c", "ls /opt/venv/lib/*/site-packages")
            assert six in ls and "idna-3.9.dist-info" in ls and "idna-3.10" not in ls
            stat = _docker("run", "--rm", "--entrypoint", "stat", second.ref, "-c", "%a %U %s", "/opt/models/w.bin")
            assert stat.split() == ["444", "root", str(16 << 20)]
            # at the registry: the same blobs for every layer below the light one and for the weights
            m1 = _manifest(registry, f"imagekit-test/{name}", first.ref.rsplit(":", 1)[1])
            m2 = _manifest(registry, f"imagekit-test/{name}", second.ref.rsplit(":", 1)[1])
            l1, l2 = m1["layers"], m2["layers"]
            assert isinstance(l1, list) and isinstance(l2, list)
            assert [x["digest"] for x in l1[:light]] == [x["digest"] for x in l2[:light]]
            assert l1[weights_at]["digest"] == l2[weights_at]["digest"]
            moved = sum(int(x["size"]) for x in l2 if x["digest"] not in {y["digest"] for y in l1})
            total = sum(int(x["size"]) for x in l2)
            print(f"light pin change: {moved} of {total} compressed bytes are new ({100 * moved / total:.2f}%)")
            assert moved <= 0.05 * total
    finally:
        refs = _docker("images", "--format", "{{.Repository}}:{{.Tag}}").split()
        mine = [ref for ref in refs if name in ref.rsplit(":", 1)[0]]
        if mine:
            subprocess.run([require_docker(), "rmi", *mine], capture_output=True, check=False, timeout=300)


def _buildah_ls(ref: str, path: str) -> str:
    """`ls PATH` in a buildah image (a working container, removed after)."""
    cid = subprocess.run(["buildah", "from", "--pull=never", ref], capture_output=True, text=True, check=True,
                         timeout=300).stdout.strip()  # fmt: skip
    try:
        return subprocess.run(["buildah", "run", cid, "sh", "-c", f"ls {path}"], capture_output=True, text=True,
                              check=True, timeout=300).stdout  # fmt: skip
    finally:
        subprocess.run(["buildah", "rm", cid], capture_output=True, check=False, timeout=300)


@pytest.mark.buildah
@pytest.mark.slow
def test_the_lock_parts_with_buildah_are_fresh_and_mountable_when_the_lock_stage_is_cached(tmp_path: Path) -> None:
    """buildah 1.28 cannot bind-mount a stage it took from its cache (`couldn't find .../merged/imagekit-lock/...`,
    containers/buildah#4375) and keys no RUN by what it mounts: after a failed build, with --force-layer, or after a
    lock change, the `<layer>-lock` stage came from cache and the part RUNs failed (the last CI) or could read the
    old lock. The buildah engine reruns the lock stage on every build (IMAGEKIT_LOCK_RUN, a few seconds)."""
    from imagekit.api.build import build

    require_tool("buildah")
    name = f"ikv-{uuid.uuid4().hex[:8]}"
    (tmp_path / "w.bin").write_bytes(b"weights\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    (tmp_path / "imagekit.yaml").write_text(
        SPEC.format(name=name, weights_sha=hashlib.sha256(b"weights\n").hexdigest())
    )
    (tmp_path / "ca.pem").write_text(HOST_CA.read_text() if HOST_CA.is_file() else "")
    lock = tmp_path / "req.lock"
    lock.write_text("six==1.17.0\nidna==3.10\n")
    site = "/opt/venv/lib/*/site-packages"
    try:
        first = build(tmp_path / "imagekit.yaml", "docker", verify=False, engine_kind="buildah").image("venv")
        assert "idna-3.10.dist-info" in _buildah_ls(first.ref, site)
        # every RUN of the runtime stage again, its lock stage unchanged (from buildah's cache)
        forced = build(tmp_path / "imagekit.yaml", "docker", verify=False, engine_kind="buildah",
                       force_layers=["runtime"]).image("venv")  # fmt: skip
        assert [lr.status for lr in forced.layers] == ["reused", "built", "built"]
        lock.write_text("six==1.17.0\nidna==3.9\n")
        second = build(tmp_path / "imagekit.yaml", "docker", verify=False, engine_kind="buildah").image("venv")
        listing = _buildah_ls(second.ref, site)
        assert "six-1.17.0.dist-info" in listing and "idna-3.9.dist-info" in listing and "idna-3.10" not in listing
    finally:
        remove_buildah_images(name)
