"""Release tags, the VoxCPM / GLM-TTS way: `build --tag v1.5.0 --tag '{git_sha}'` on a service listening on 6006,
recorded in the signed manifest and the OCI labels, `resolve --tag`, promotion by tag and rollback to the previous.

Runs the CPU example (copied into a fresh git repository) through the real build, verify, sign and channels.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DOCKER, copy_example, require_docker

from imagekit.errors import UsageError
from imagekit.release import expand_tags

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _run(*argv: str, cwd: Path | None = None, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)


def _imagekit(*args: str) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "imagekit", *args)


def _git(repo: Path, *args: str) -> str:
    out = _run("git", "-c", "user.name=imagekit-test", "-c", "user.email=test@example.invalid", *args, cwd=repo)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def voxcpm(tmp_path: Path) -> Iterator[dict[str, Any]]:
    require_docker()
    copy = copy_example(tmp_path / "voxcpm")
    spec = copy / "imagekit-cpu.yaml"
    repo = f"imagekit/tagtest-{uuid.uuid4().hex[:8]}"
    text = spec.read_text(encoding="utf-8")
    text = text.replace('"--port", "7860"]', '"--port", "6006"]').replace("port: 7860", "port: 6006")
    text = text.replace("repository: imagekit/tts-cpu", f"repository: {repo}")
    assert "6006" in text and repo in text
    spec.write_text(text, encoding="utf-8")
    _git(copy, "init", "-q")
    _git(copy, "add", "-A")
    _git(copy, "commit", "-q", "-m", "v1.4.0")
    try:
        yield {"dir": copy, "spec": spec, "repo": repo}
    finally:
        listed = _run(DOCKER, "images", "--format", "{{.Repository}}:{{.Tag}}", repo).stdout.split()
        if listed:
            _run(DOCKER, "rmi", "-f", *listed)


def _build(spec: Path, *tags: str) -> dict[str, Any]:
    args = [a for t in tags for a in ("--tag", t)]
    out = _imagekit("build", "-f", str(spec), "--target", "docker", *args, "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    image: dict[str, Any] = json.loads(out.stdout)["images"][0]
    return image


def _statement(manifest_path: str) -> dict[str, Any]:
    envelope = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    doc: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return doc


def _resolve(spec: Path, *args: str) -> dict[str, Any]:
    out = _imagekit("resolve", "tts-cpu", "-f", str(spec), *args, "--json")
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def test_tags_are_recorded_labelled_resolved_promoted_and_rolled_back(voxcpm: dict[str, Any]) -> None:
    spec, repo = voxcpm["spec"], voxcpm["repo"]
    sha = _git(voxcpm["dir"], "rev-parse", "HEAD")
    first = _build(spec, "v1.4.0", "{git_sha}")
    assert first["release_tags"] == ["v1.4.0", sha]
    assert f"{repo}:v1.4.0" in first["tags"] and f"{repo}:{sha}" in first["tags"]
    params = _statement(first["manifest_path"])["predicate"]["buildDefinition"]["externalParameters"]
    assert params["tags"] == ["v1.4.0", sha]  # in the signed statement
    labels = json.loads(
        _run(DOCKER, "image", "inspect", f"{repo}:v1.4.0", "--format", "{{json .Config.Labels}}").stdout
    )
    assert labels["org.opencontainers.image.revision"] == sha
    assert labels["org.opencontainers.image.source"] == f"file://{voxcpm['dir'].resolve()}"
    report = json.loads(Path(first["verify_report"]).read_text(encoding="utf-8"))
    assert report["ok"] and report["smoke"]["status"] == 200  # the service answered on 6006

    # a release of the same content at a new commit reuses every layer, yet names its own commit
    _git(voxcpm["dir"], "commit", "-q", "--allow-empty", "-m", "v1.4.1")
    again = _build(spec, "v1.4.1")
    assert [lr["status"] for lr in again["layers"]] == ["reused", "reused", "reused"]
    relabel = json.loads(
        _run(DOCKER, "image", "inspect", f"{repo}:v1.4.1", "--format", "{{json .Config.Labels}}").stdout
    )
    assert relabel["org.opencontainers.image.revision"] == _git(voxcpm["dir"], "rev-parse", "HEAD") != sha
    assert again["ref"] == f"{repo}:v1.4.1"  # what is verified and signed is the release image

    # the next release: an app change, committed
    app = voxcpm["dir"] / "app" / "__init__.py"
    app.write_text(app.read_text(encoding="utf-8") + "# v1.5.0\n", encoding="utf-8")
    _git(voxcpm["dir"], "commit", "-q", "-am", "v1.5.0")
    second = _build(spec, "v1.5.0")
    assert second["image_id"] != first["image_id"]

    assert _resolve(spec, "--tag", "v1.4.0")["manifest"] == first["manifest_id"]
    assert _resolve(spec, "--tag", sha)["manifest"] == first["manifest_id"]
    newest = _resolve(spec, "--tag", "v1.5.0")
    # not pushed: resolve names the local image ID (issue 11: a local build has no pullable reference)
    assert newest["manifest"] == second["manifest_id"] and newest["image_id"] == second["image_id"]

    for tag in ("v1.4.0", "v1.5.0"):  # promotion by release tag
        out = _imagekit("promote", "tts-cpu", tag, "--channel", "stable", "-f", str(spec), "--why", f"release {tag}")
        assert out.returncode == 0, out.stderr
    assert _resolve(spec, "--channel", "stable")["manifest"] == second["manifest_id"]
    out = _imagekit("rollback", "tts-cpu", "--channel", "stable", "-f", str(spec), "--why", "regression in v1.5.0")
    assert out.returncode == 0, out.stderr
    assert _resolve(spec, "--channel", "stable")["manifest"] == first["manifest_id"]  # back on v1.4.0

    missing = _imagekit("resolve", "tts-cpu", "--tag", "v9.9.9", "-f", str(spec))
    assert missing.returncode == 1 and "tag v9.9.9 of tts-cpu: no build carries it" in missing.stderr


def test_tag_expansion_and_refusals(tmp_path: Path) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert expand_tags(["v1.5.0", "{git_sha}", "v1.5.0"], sha, where=tmp_path) == ("v1.5.0", sha)
    assert expand_tags(["build-{git_sha}"], sha, where=tmp_path) == (f"build-{sha}",)
    with pytest.raises(UsageError, match="not in a git work tree"):
        expand_tags(["{git_sha}"], None, where=tmp_path)
    for bad in ("latest", "-x", "a/b", "x" * 129, "0123456789abcdef"):
        with pytest.raises(UsageError):
            expand_tags([bad], sha, where=tmp_path)


def test_git_sha_on_a_dirty_tree_says_dirty(tmp_path: Path) -> None:
    """{git_sha} and the OCI revision never name HEAD for a tree that is not HEAD (#21)."""
    from imagekit.release import release_for

    repo = tmp_path / "repo"
    (repo / "spec").mkdir(parents=True)
    (repo / "spec" / "app.py").write_text("print(1)\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one")
    sha = _git(repo, "rev-parse", "HEAD")
    (repo / "spec" / ".imagekit" / "reports").mkdir(parents=True)  # imagekit's own work folder does not count
    (repo / "spec" / ".imagekit" / "reports" / "r.json").write_text("{}")
    (repo / "spec" / "manifests" / "app").mkdir(parents=True)  # nor the spec's local store, imagekit's output
    (repo / "spec" / "manifests" / "app" / "m.intoto.json").write_text("{}")
    clean = release_for(repo / "spec", ["{git_sha}"], "manifests")
    assert clean.revision == sha and clean.tags == (sha,)
    assert release_for(repo / "spec", ["{git_sha}"]).revision == f"{sha}-dirty"  # the same files, not a store
    (repo / "spec" / "app.py").write_text("print(2)\n")
    dirty = release_for(repo / "spec", ["{git_sha}"])
    assert dirty.revision == f"{sha}-dirty" and dirty.tags == (f"{sha}-dirty",)
    (repo / "spec" / "app.py").write_text("print(1)\n")
    (repo / "spec" / "new.py").write_text("x\n")  # an untracked file a copy: would take
    assert release_for(repo / "spec", ["{git_sha}"]).revision == f"{sha}-dirty"
