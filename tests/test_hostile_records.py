"""Records are never lost (#21): gc keeps every build a rollback reaches, a same-hash rebuild keeps the build it
replaces, and a log append killed at any point recovers on the next command."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import require_docker
from manifest_helpers import fake_build, make_spec

from imagekit.api import manifest as api
from imagekit.manifest.ledger import open_ledger
from imagekit.retention.docker import docker_gc, protected_ids
from imagekit.spec import load_spec

TESTS = Path(__file__).resolve().parent


def _three_builds(root: Path) -> list[str]:
    """A, B, C of image app, each with its own app layer (so revoking one revokes no other)."""
    ids = []
    for n in ("1", "2", "3"):
        loaded = make_spec(root, app=n)
        ids.append(fake_build(loaded, seed=n).id)
    return ids


class Engine:
    """The engine as gc sees it: every tag exists; what gc removes is listed."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    def exists(self, ref: str) -> bool:
        return ref not in self.removed

    def remove_image(self, ref: str) -> None:
        self.removed.append(ref)

    def repo_tags(self, _repository: str) -> list[str]:
        return []

    def inspect(self, _ref: str) -> None:
        return None


def test_gc_keeps_the_build_rollback_reaches_past_a_revoked_one(tmp_path: Path) -> None:
    a, b, c = _three_builds(tmp_path)
    for mid in (a, b, c):
        api.promote(tmp_path, "app", mid, "stable", who="t", why="t")
    api.revoke(tmp_path, b, reason="bad weights", who="t")
    loaded = load_spec(tmp_path / "imagekit.yaml")
    ledger = open_ledger(loaded)
    assert protected_ids(ledger, "app") == {c, a}  # not B: rollback skips it and goes to A
    res = docker_gc(loaded, ledger, Engine(), images=["app"], keep=1)
    assert a in res[0].kept and a not in res[0].removed_builds
    back = api.rollback(tmp_path, "app", "stable", who="t", why="t")
    assert back["manifest"] == a  # the build gc kept


def test_gc_skips_repeated_ids_as_rollback_does(tmp_path: Path) -> None:
    a, b, _c = _three_builds(tmp_path)
    for mid in (a, b, b):  # B promoted twice in a row
        api.promote(tmp_path, "app", mid, "stable", who="t", why="t")
    ledger = open_ledger(load_spec(tmp_path / "imagekit.yaml"))
    assert protected_ids(ledger, "app") == {b, a}
    assert api.rollback(tmp_path, "app", "stable", who="t", why="t")["manifest"] == a


def test_ami_gc_keeps_the_rollback_target_past_a_revoked_build(tmp_path: Path) -> None:
    from imagekit.manifest.record import record_build
    from imagekit.plan import plan_image
    from imagekit.retention.ami import protected_amis

    ids = []
    for n in range(3):
        loaded = make_spec(tmp_path, app=str(n))
        loaded.path.write_text(
            loaded.path.read_text().replace("  app: {leaf: app}", "  app: {leaf: app, targets: [ami]}")
        )
        loaded = load_spec(loaded.path)
        layers = plan_image(loaded, "app", "ami").layers
        ami = {"region": "us-east-1", "id": f"ami-{n:08d}", "account": "123456789012", "snapshots": [f"snap-{n}"]}
        ids.append(record_build(loaded, "app", "ami", layers, started=f"2026-11-2{n}T00:00:00Z",
                                finished=f"2026-11-2{n}T00:10:00Z", amis=[ami], base="ami-785db401",
                                report={"passed": True}).id)  # fmt: skip
    for mid in ids:
        api.promote(loaded.path, "app", mid, "prod", why="t", who="t")
    api.revoke(loaded.path, ids[1], reason="bad", who="t")
    protected = protected_amis(loaded, "app")
    assert protected.channel["ami-00000000"] == "app@prod (rollback target)"
    assert "ami-00000001" not in protected.channel


CRASH = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from imagekit.manifest import channels
from imagekit.api import manifest as api

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # between the record and the head that names it

channels._sign_head = killed
{call}
"""


def _crash(call: str) -> int:
    script = CRASH.format(tests=str(TESTS), call=textwrap.dedent(call))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    return res.returncode


def test_a_promote_killed_between_record_and_head_recovers(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    mid = fake_build(loaded).id
    code = _crash(f"api.promote({str(tmp_path)!r}, 'app', {mid!r}, 'stable', who='t', why='t')")
    assert code == -signal.SIGKILL
    records = list((tmp_path / "manifests" / "_channels" / "app" / "stable").glob("*.json"))
    assert records, "the record was written before the kill"
    # the next command reads the log (head one behind: an append in flight), and the next append moves on
    assert api.resolve(tmp_path, "app", "stable")["manifest"] == mid
    assert api.promote(tmp_path, "app", mid, "stable", who="t", why="again")["seq"] == 2
    assert [r["seq"] for r in api.channel_history(tmp_path, "app", "stable")] == [1, 2]


def test_a_revoke_killed_between_record_and_head_recovers(tmp_path: Path) -> None:
    a, b, _c = _three_builds(tmp_path)
    code = _crash(f"api.revoke({str(tmp_path)!r}, {a!r}, reason='x', who='t')")
    assert code == -signal.SIGKILL
    api.promote(tmp_path, "app", b, "stable", who="t", why="t")  # reads the revocation log: not "rolled back"
    assert api.revoke(tmp_path, b, reason="y", who="t")["revoked"]


@pytest.mark.docker
def test_a_same_hash_rebuild_keeps_a_tag_on_the_image_it_replaces(tmp_path: Path) -> None:
    from imagekit.runners.bootstrap import ensure_base
    from imagekit.runners.docker import DockerEngine
    from imagekit.spec import Bootstrap
    from imagekit.targets.docker import DockerTarget
    from imagekit.targets.results import LayerResult

    docker = require_docker()
    engine = DockerEngine()
    base = ensure_base(engine, "base", Bootstrap(distro="debian", suite="bookworm")).tag
    repo = f"imagekit-test-i21-{uuid.uuid4().hex[:8]}"
    leaf_hash = "ab" * 32
    made = []
    try:
        for n in ("old", "new"):
            tag = f"{repo}-leaf:{n}"
            subprocess.run([docker, "build", "-q", "-t", tag, "-"], input=f"FROM {base}\nLABEL i21={n}\n",
                           text=True, check=True, capture_output=True)  # fmt: skip
            made.append(tag)
        subprocess.run([docker, "tag", made[0], f"{repo}:{leaf_hash[:16]}"], check=True)
        old_id = engine.inspect(made[0]).id  # type: ignore[union-attr]
        leaf = LayerResult("app", leaf_hash, made[1], "built", 1.0)
        host = SimpleNamespace(engine=engine, reporter=lambda _e: None)
        DockerTarget._keep_replaced(host, f"{repo}:{leaf_hash[:16]}", repo, leaf)  # type: ignore[arg-type]
        kept = f"{repo}:{leaf_hash[:16]}-replaced-{old_id.split(':')[1][:12]}"
        info = engine.inspect(kept)
        assert info is not None and info.id == old_id
        made.append(kept)
    finally:
        for tag in [*made, f"{repo}:{leaf_hash[:16]}"]:
            subprocess.run([docker, "rmi", "-f", tag], capture_output=True, check=False)


# --- names: a trailing newline is no look-alike; `manifest list ARG` walks only the store ---------------------


def test_a_channel_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imagekit.cli import app
    from imagekit.errors import UsageError

    loaded = make_spec(tmp_path)
    mid = fake_build(loaded).id
    with pytest.raises(UsageError, match="channel"):
        api.promote(tmp_path, "app", mid, "stable\n", who="t", why="t")
    res = CliRunner().invoke(app, ["promote", "app", mid, "--channel", "stable\n", "-f", str(loaded.path)])
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "manifests" / "_channels" / "app" / "stable\n").exists()


@pytest.mark.parametrize("arg", ["../..", "/etc", "app/../..", "app\n", "."])
def test_manifest_list_walks_only_store_folders(tmp_path: Path, arg: str) -> None:
    from typer.testing import CliRunner

    from imagekit.cli import app

    loaded = make_spec(tmp_path)
    fake_build(loaded)
    res = CliRunner().invoke(app, ["manifest", "list", arg, "-f", str(loaded.path), "--json"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output


def test_the_store_backend_refuses_a_prefix_outside_it(tmp_path: Path) -> None:
    from imagekit.errors import StoreError
    from imagekit.manifest.store import LocalBackend

    (tmp_path / "store").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.json").write_text("{}")
    with pytest.raises(StoreError, match="not a folder of the store"):
        LocalBackend(tmp_path / "store").keys("../secret/")


@pytest.mark.docker
def test_gc_removes_a_replaced_tag_once_no_kept_build_is_that_image(tmp_path: Path) -> None:
    """The `<hash16>-replaced-<id12>` tags a same-hash rebuild leaves go as old builds' tags go: kept while a kept
    build (here the rollback target) is that image, removed by the gc after it is not."""
    from imagekit.manifest.record import record_build
    from imagekit.plan import plan_image
    from imagekit.runners.bootstrap import ensure_base
    from imagekit.runners.docker import DockerEngine
    from imagekit.spec import Bootstrap

    docker = require_docker()
    engine = DockerEngine()
    base = ensure_base(engine, "base", Bootstrap(distro="debian", suite="bookworm")).tag
    repo = f"imagekit-test-i21r-{uuid.uuid4().hex[:8]}"
    made: list[str] = []
    try:
        ids, mids = [], []
        for n in ("1", "2", "3"):
            tag = f"{repo}:build{n}"
            subprocess.run([docker, "build", "-q", "--label", "imagekit.test=1", "-t", tag, "-"],
                           input=f"FROM {base}\nLABEL i21r={n}\n", text=True, check=True, capture_output=True)  # fmt: skip
            made.append(tag)
            ids.append(engine.inspect(tag).id)  # type: ignore[union-attr]
            make_spec(tmp_path, app=n)
            spec = tmp_path / "imagekit.yaml"
            spec.write_text(spec.read_text().replace("app: {leaf: app}", f"app: {{leaf: app, repository: {repo}}}"))
            loaded = load_spec(spec)
            layers = plan_image(loaded, "app", "docker").layers
            mids.append(record_build(loaded, "app", "docker", layers, started="2026-11-21T01:00:00Z",
                                     finished=f"2026-11-21T01:0{n}:00Z", image_ref=tag, image_digest=ids[-1],
                                     report={"passed": True, "failures": []}).id)  # fmt: skip
        # build 1's image was replaced by a same-hash rebuild: only its -replaced- tag holds it
        replaced = f"{repo}:{'ab' * 8}-replaced-{ids[0].split(':')[1][:12]}"
        subprocess.run([docker, "tag", made[0], replaced], check=True)
        subprocess.run([docker, "rmi", made[0]], check=True, capture_output=True)
        made.append(replaced)
        stranger = f"{repo}:{'cd' * 8}-replaced-{'0' * 12}"  # an image no build is
        subprocess.run([docker, "build", "-q", "--label", "imagekit.test=1", "-t", stranger, "-"],
                       input=f"FROM {base}\nLABEL i21r=x\n", text=True, check=True, capture_output=True)  # fmt: skip
        made.append(stranger)
        for mid in mids[:2]:
            api.promote(tmp_path, "app", mid, "stable", who="t", why="t")
        loaded = load_spec(tmp_path / "imagekit.yaml")
        (res,) = docker_gc(loaded, open_ledger(loaded), engine, images=["app"], keep=1)
        assert engine.exists(replaced), res  # build 1 is stable's rollback target
        assert not engine.exists(stranger) and stranger in res.removed_tags  # nothing kept is that image
        assert engine.exists(made[1])  # the tag went, build 2's image and tag stay
        api.promote(tmp_path, "app", mids[2], "stable", who="t", why="t")  # 1 -> 2 -> 3: 1 is out of reach
        (res,) = docker_gc(loaded, open_ledger(loaded), engine, images=["app"], keep=1)
        assert not engine.exists(replaced) and replaced in res.removed_tags, res
        assert engine.inspect(ids[0]) is None  # the replaced image itself is gone with its last tag
    finally:
        for tag in made:
            subprocess.run([docker, "rmi", "-f", tag], capture_output=True, check=False)
