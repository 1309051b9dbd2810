"""`--engine` on nightly and gc: the nightly job builds, verifies, checks drift and gcs through the engine it names,
and one gc decides over the store's records whichever engine holds the images (for real: containers-storage)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from manifest_helpers import fake_build, make_spec
from typer.testing import CliRunner

from imagekit.api import manifest as api
from imagekit.api.gc import gc
from imagekit.cli import app
from imagekit.errors import BuildFailed, UsageError
from imagekit.manifest.ledger import open_ledger
from imagekit.names import LABEL_PREFIX
from imagekit.retention.docker import _tags

NIGHT_SPEC = (
    "version: 1\nname: night-engine\nlayers:\n  base: {from: {bootstrap: {suite: bookworm}}, cuda: 'none'}\n"
    "  a: {parent: base, run: ['true']}\nimages:\n  one: {leaf: a}\n"
)


class FakeEngine:
    """An image engine as nightly's gc and drift checks see it: it holds nothing."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def exists(self, ref: str) -> bool:
        return False

    def remove_image(self, ref: str) -> None:
        raise AssertionError(f"nothing to remove, asked for {ref}")

    def registry_digest(self, ref: str) -> str:
        return "sha256:" + "0" * 64


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The engine kinds gc and drift checks open (open_engine replaced by a fake that holds no image)."""
    kinds: list[str] = []

    def open_engine(name: str) -> FakeEngine:
        kinds.append(name)
        return FakeEngine(name)

    monkeypatch.setattr("imagekit.targets.engines.open_engine", open_engine)
    return kinds


def test_nightly_builds_and_gcs_with_the_engine_it_is_given(tmp_path: Path, opened: list[str]) -> None:
    from imagekit.nightly.run import run_nightly

    (tmp_path / "imagekit.yaml").write_text(NIGHT_SPEC)
    calls: list[dict[str, Any]] = []

    def builder(_path: Any, target: str, *, images: list[str], **kw: Any) -> Any:
        calls.append({"target": target, "images": images, **kw})
        raise BuildFailed("stop here", image=images[0], layer="a")

    res = run_nightly(tmp_path / "imagekit.yaml", target="docker", builder=builder, engine_kind="buildah")
    # the build (and with it verify: podman for buildah) gets the engine; gc looks in containers-storage
    assert [c["engine_kind"] for c in calls] == ["buildah"]
    assert opened == ["buildah"] and [row["engine"] for row in res.gc] == ["buildah"]
    # no --engine: the spec's build.engine (docker) everywhere, and build() is not told anything
    opened.clear()
    calls.clear()
    res = run_nightly(tmp_path / "imagekit.yaml", target="docker", builder=builder)
    assert "engine_kind" not in calls[0] and opened == ["docker"] and res.gc[0]["engine"] == "docker"


def test_nightly_and_gc_engine_usage_errors(tmp_path: Path) -> None:
    from imagekit.nightly.run import run_nightly

    (tmp_path / "imagekit.yaml").write_text(NIGHT_SPEC)
    with pytest.raises(UsageError, match="--engine must be docker or buildah"):
        run_nightly(tmp_path / "imagekit.yaml", target="docker", engine_kind="kaniko")
    with pytest.raises(UsageError, match="--engine applies to --target docker"):
        run_nightly(tmp_path / "imagekit.yaml", target="ami", engine_kind="buildah")
    with pytest.raises(UsageError, match="--engine applies to --target docker"):
        gc(tmp_path / "imagekit.yaml", target="ami", engine="buildah")
    runner = CliRunner()
    for argv in (
        ["nightly", "-f", str(tmp_path / "imagekit.yaml"), "--target", "docker", "--engine", "podman"],
        ["gc", "-f", str(tmp_path / "imagekit.yaml"), "--target", "docker", "--engine", "podman"],
        ["nightly", "-f", str(tmp_path / "imagekit.yaml"), "--collect", "--since", "2026-12-01T00:00:00Z",
         "--target", "ami", "--engine", "buildah"],
    ):  # fmt: skip
        out = runner.invoke(app, argv)
        assert out.exit_code == 2, (argv, out.output)
        assert "--engine" in out.output and "Traceback" not in out.output


def test_help_lists_engine_on_nightly_and_gc() -> None:
    runner = CliRunner()
    for command in ("nightly", "gc"):
        out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert out.exit_code == 0 and "--engine" in out.output and "buildah" in out.output


def test_gc_names_the_engine_it_looked_in(tmp_path: Path, opened: list[str]) -> None:
    loaded = make_spec(tmp_path)
    fake_build(loaded, seed="1")
    res = gc(tmp_path / "imagekit.yaml", target="docker", engine="buildah", dry_run=True)
    assert opened == ["buildah"] and res.to_json()["engine"] == "buildah"
    assert {row["engine"] for row in res.rows()} == {"buildah"}
    # the spec's build.engine when no --engine is given
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(spec.read_text().replace("images:\n", "build: {engine: buildah}\nimages:\n"))
    opened.clear()
    assert gc(spec, target="docker", dry_run=True).to_json()["engine"] == "buildah" and opened == ["buildah"]


# --- for real: containers-storage through buildah ------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A containers-storage of this test's own (vfs: no mounts), as imagekit's buildah, podman and skopeo see it;
    yields the buildah argv prefix for it. Everything in it goes with the test."""
    buildah = require_tool("buildah")
    # podman refuses a runroot longer than 50 characters (pytest's tmp_path is longer)
    runroot = Path(tempfile.mkdtemp(prefix="ik-run-"))
    root = tmp_path / "storage"
    monkeypatch.setenv("STORAGE_DRIVER", "vfs")
    monkeypatch.setenv("IMAGEKIT_STORAGE_ROOT", str(root))
    monkeypatch.setenv("IMAGEKIT_STORAGE_RUNROOT", str(runroot))
    argv = [buildah, "--storage-driver=vfs", f"--root={root}", f"--runroot={runroot}"]
    yield argv
    subprocess.run([*argv, "rm", "--all"], capture_output=True, check=False, timeout=120)
    subprocess.run([*argv, "rmi", "--all", "--force"], capture_output=True, check=False, timeout=120)
    shutil.rmtree(runroot, ignore_errors=True)


def _buildah(argv: list[str], *args: str) -> str:
    res = subprocess.run([*argv, *args], capture_output=True, text=True, check=False, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _image(argv: list[str], ref: str, layer: str, layer_hash: str, spec: str) -> None:
    """A tiny image (scratch, one file) with the labels the docker target writes on each layer's image."""
    ctr = _buildah(argv, "from", "scratch")
    try:
        _buildah(argv, "config", "--label", f"{LABEL_PREFIX}.layer.hash={layer_hash}", "--label",
                 f"{LABEL_PREFIX}.layer={layer}", "--label", f"{LABEL_PREFIX}.spec={spec}", ctr)  # fmt: skip
        _buildah(argv, "commit", "--quiet", ctr, ref)
    finally:
        _buildah(argv, "rm", ctr)


def _has(argv: list[str], ref: str) -> bool:
    res = subprocess.run([*argv, "inspect", "--type", "image", ref], capture_output=True, check=False, timeout=120)
    return res.returncode == 0


@pytest.mark.buildah
def test_gc_in_containers_storage_keeps_channel_heads_and_rollback_targets(tmp_path: Path, store: list[str]) -> None:
    root = tmp_path / "spec"
    ids = []
    for n in ("1", "2", "3", "4"):  # A, B, C, D: each its own app layer; base and runtime shared
        loaded = make_spec(root, app=n)
        ids.append(fake_build(loaded, seed=n).id)
    a, b, c, d = ids
    for mid in (a, b):  # stable: head B, rollback target A
        api.promote(root, "app", mid, "stable", who="t", why="t")
    ledger = open_ledger(loaded)
    builds = {e.build.id: e.build for e in ledger.entries(with_channels=False) if e.build is not None}
    tags = {mid: _tags(loaded, builds[mid]) for mid in ids}
    made: set[str] = set()
    for mid in ids:
        layers = dict(builds[mid].layers)
        for tag in tags[mid]:
            if tag in made:
                continue
            layer = tag.split(":", 1)[0].rsplit("-", 1)[-1] if tag.startswith("imagekit/") else "app"
            _image(store, tag, layer, layers.get(layer, ""), loaded.spec.name)
            made.add(tag)
    assert all(_has(store, t) for t in made)
    # C is neither the newest (keep 1: D) nor a channel head (B) nor a rollback target (A): only its own tags go
    gone = [t for t in tags[c] if t not in tags[a] + tags[b] + tags[d]]
    assert len(gone) == 2  # its app layer and its `app:<leaf hash>` tag; base and runtime are shared

    runner = CliRunner()
    out = runner.invoke(app, ["gc", "-f", str(root / "imagekit.yaml"), "--target", "docker", "--engine", "buildah",
                              "--keep", "1", "--dry-run", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    rows = {r["image"]: r for r in json.loads(out.stdout)["images"]}
    row = rows["app"]
    assert rows["rt"]["removed_tags"] == [] and rows["rt"]["engine"] == "buildah"  # no build of its own
    assert row["engine"] == "buildah" and sorted(row["removed_tags"]) == sorted(gone)
    assert row["removed_builds"] == [c] and set(row["kept"]) == {a, b, d}
    assert all(_has(store, t) for t in made)  # a dry run removes nothing

    # a working container holds C's app-layer image: buildah refuses that one, gc says so and goes on
    held = next(t for t in gone if t.startswith("imagekit/"))
    ctr = _buildah(store, "from", "--pull-never", held)
    res = gc(root / "imagekit.yaml", target="docker", engine="buildah", keep=1, image="app")
    img = res.images[0]  # type: ignore[attr-defined]
    assert [t for t in gone if t not in img.removed_tags] == [held]
    assert len(img.errors) == 1 and "in use by a container" in img.errors[0]
    assert not any(_has(store, t) for t in gone if t != held) and _has(store, held)
    assert all(_has(store, t) for t in made if t not in gone)
    # the container gone, the next gc removes the tag; a gc with nothing left to do removes nothing
    _buildah(store, "rm", ctr)
    img = gc(root / "imagekit.yaml", target="docker", engine="buildah", keep=1, image="app").images[0]  # type: ignore[attr-defined]
    assert img.removed_tags == [held] and not img.errors and not _has(store, held)
    img = gc(root / "imagekit.yaml", target="docker", engine="buildah", keep=1, image="app").images[0]  # type: ignore[attr-defined]
    assert img.removed_tags == [] and img.errors == []


@pytest.mark.buildah
def test_gc_in_containers_storage_removes_replaced_tags_no_kept_build_is(tmp_path: Path, store: list[str]) -> None:
    """repo_tags lists a repository's tags as the spec names them (containers-storage keeps `localhost/` ones), so
    the `<hash16>-replaced-<id12>` tags a same-hash rebuild leaves go with buildah as they go with docker."""
    from imagekit.runners.buildah import BuildahEngine

    root = tmp_path / "spec"
    loaded = make_spec(root, app="1")
    fake_build(loaded, seed="1")
    repo = loaded.spec.images["app"].repository or "app"
    replaced, other = f"{repo}:0123456789abcdef-replaced-0123456789ab", f"{repo}:keep-me"
    _image(store, replaced, "app", "", loaded.spec.name)
    _image(store, other, "app", "", loaded.spec.name)
    _image(store, "elsewhere:0123456789abcdef-replaced-0123456789ab", "app", "", loaded.spec.name)
    assert BuildahEngine().repo_tags(repo) == sorted([replaced, other])
    img = gc(root / "imagekit.yaml", target="docker", engine="buildah", keep=1, image="app").images[0]  # type: ignore[attr-defined]
    assert replaced in img.removed_tags and other not in img.removed_tags and not img.errors
    assert not _has(store, replaced) and _has(store, other)
    assert _has(store, "elsewhere:0123456789abcdef-replaced-0123456789ab")  # another repository is not gc's


NIGHT_REAL = """\
version: 1
name: {name}
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
    cuda: "none"
  app:
    parent: base
    copy: [{{src: app/, dest: /opt/app}}]
images:
  svc: {{leaf: app, repository: imagekit-test/{name}}}
verify: {{gpu: optional}}
retention: {{keep: 1}}
"""


def _seed_base(spec: Path) -> None:
    """The shared bootstrapped base copied into the test's store when the host has it (else imagekit makes it)."""
    from imagekit.names import base_hash, base_repository
    from imagekit.spec import load_spec

    boot = load_spec(spec).spec.layers["base"].from_.bootstrap  # type: ignore[union-attr]
    assert boot is not None
    ref = f"{base_repository('base')}:{base_hash(boot)[:16]}"
    dest = (f"containers-storage:[vfs@{os.environ['IMAGEKIT_STORAGE_ROOT']}+{os.environ['IMAGEKIT_STORAGE_RUNROOT']}]"
            f"localhost/{ref}")  # fmt: skip
    for src in (f"containers-storage:localhost/{ref}", f"docker-daemon:{ref}"):
        res = subprocess.run([require_tool("skopeo"), "copy", "--quiet", src, dest], capture_output=True, check=False,
                             timeout=900)  # fmt: skip
        if res.returncode == 0:
            return


@pytest.mark.buildah
@pytest.mark.slow
def test_nightly_with_buildah_builds_verifies_with_podman_and_gcs_with_no_docker(
    tmp_path: Path, store: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagekit.api.nightly import nightly

    require_tool("podman")
    name = f"night-bah-{uuid.uuid4().hex[:6]}"
    (tmp_path / "app").mkdir()
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(NIGHT_REAL.format(name=name))
    _seed_base(spec)
    # no Docker Engine to reach: everything goes through buildah, podman and skopeo
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-such-docker.sock'}")
    runs = []
    for version in range(3):
        (tmp_path / "app" / "hello.txt").write_text(f"v{version}\n")
        res = nightly(spec, target="docker", engine="buildah", report_dir=tmp_path / f"r{version}")
        assert not res.failed, [(c.name, c.message) for r in res.runs for c in r.checks]
        runs.append(res)
    first, *_, last = runs
    (run,) = first.runs
    checks = {c.name: c for c in run.checks}
    assert checks["verify"].passed and checks["promote nightly"].passed
    report = json.loads(Path(checks["verify"].message.removeprefix("report ")).read_text())
    # booted by podman (its verify containers are named in the report, and gone: see the end)
    assert report["ok"] is True and report["failures"] == [] and report["host"].startswith("podman")
    assert [b.layer for b in run.built] == ["base", "app"] and [b.layer for b in last.runs[0].built] == ["app"]
    # keep 1: the first build is neither the newest nor nightly's head nor its rollback target (the second)
    (row,) = last.gc
    assert row["engine"] == "buildah" and row["removed_builds"] == [run.manifest_id]
    assert row["removed_tags"] and not any(_has(store, t) for t in row["removed_tags"])
    for later in runs[1:]:
        assert _has(store, f"imagekit-test/{name}:latest") and later.runs[0].manifest_id in row["kept"]
    assert _buildah(store, "containers", "--all", "--quiet") == ""  # no working container left
    podman = [require_tool("podman"), *store[1:], "ps", "--all", "--quiet"]
    assert subprocess.run(podman, capture_output=True, text=True, check=True, timeout=120).stdout.strip() == ""


@pytest.mark.buildah
def test_podman_failing_is_said_not_taken_for_a_missing_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagekit.runners.podman import PodmanError, PodmanRuntime

    require_tool("podman")
    monkeypatch.setenv("STORAGE_DRIVER", "vfs")
    monkeypatch.setenv("IMAGEKIT_STORAGE_ROOT", str(tmp_path / "storage"))
    short = Path(tempfile.mkdtemp(prefix="ik-run-"))
    try:
        monkeypatch.setenv("IMAGEKIT_STORAGE_RUNROOT", str(short))
        assert PodmanRuntime().image_id("imagekit-test/no-such-image:1") is None  # not there: None, as before
        monkeypatch.setenv("IMAGEKIT_STORAGE_RUNROOT", str(tmp_path / ("r" * 60)))
        with pytest.raises(PodmanError, match="runroot is longer than 50 characters"):
            PodmanRuntime().image_id("imagekit-test/no-such-image:1")
    finally:
        shutil.rmtree(short, ignore_errors=True)
