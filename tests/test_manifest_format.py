"""What a record says about a build, in forms outside tools can check: subjects, dependencies, builder, buildType."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from imagekit.api import manifest as api
from imagekit.digests import DigestCache, dir_hash
from imagekit.manifest.dsse import envelope_payload
from imagekit.manifest.keys import keygen
from imagekit.manifest.record import Recorded, record_build
from imagekit.manifest.statement import BUILD_TYPE, LOCAL_IMAGE_PREFIX
from imagekit.plan import plan_image
from imagekit.spec import LoadedSpec, load_spec

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = b"not really weights\n" * 100

SPEC = """\
version: 1
name: fmt
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
  app:
    parent: base
    python: "3.11"
    requirements: requirements.lock
    copy: [{{src: app/, dest: /opt/app/app}}]
    models:
      - {{src: models/w.pt, dest: /opt/models/w.pt, sha256: "{sha}"}}
images:
  app: {{leaf: app}}
signing: {{key: keys/imagekit.key}}
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def make_repo(root: Path) -> LoadedSpec:
    """A spec in a git work tree with a remote (with credentials in its URL, which must not leak into records)."""
    (root / "app").mkdir(parents=True)
    (root / "app" / "server.py").write_text("print('hi')\n")
    (root / "app" / "sub").mkdir()
    (root / "app" / "sub" / "x.txt").write_text("x\n")
    (root / "models").mkdir()
    (root / "models" / "w.pt").write_bytes(WEIGHTS)
    (root / "requirements.lock").write_text("numpy==2.1.0\n")
    (root / "imagekit.yaml").write_text(SPEC.format(sha=hashlib.sha256(WEIGHTS).hexdigest()))
    keygen(root / "keys")
    (root / "imagekit.trust.yaml").write_text("keys:\n  - pem: keys/imagekit.pub\n")
    git(root, "init", "-q")
    git(root, "remote", "add", "origin", "https://ci-bot:s3cret@git.example.com/org/fmt.git")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "x")
    return load_spec(root / "imagekit.yaml")


def record(loaded: LoadedSpec, **kw: Any) -> tuple[Recorded, dict[str, Any]]:
    layers = plan_image(loaded, "app", "docker").layers
    args: dict[str, Any] = {
        "started": "2026-11-21T01:00:00Z",
        "finished": "2026-11-21T01:10:00Z",
        "image_ref": "imagekit/fmt-app:0123456789abcdef",
        "image_digest": "sha256:" + "c" * 64,
        "base": "imagekit-base-base:feedfacefeedface",
        "base_image_id": "sha256:" + "b" * 64,
        "base_recipe": "d" * 64,
        "report": {"passed": True, "failures": []},
    }
    rec = record_build(loaded, "app", "docker", layers, **(args | kw))
    return rec, json.loads(envelope_payload(Path(rec.location).read_bytes()))


def deps_by_name(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]}


def test_local_image_is_named_for_what_it_is(tmp_path: Path) -> None:
    loaded = make_repo(tmp_path)
    rec, st = record(loaded)
    (subject,) = st["subject"]  # the model file is an input, not a subject
    assert subject["name"] == f"{LOCAL_IMAGE_PREFIX}imagekit/fmt-app:0123456789abcdef"
    assert "@" not in subject["name"]  # never looks like a pullable repo@sha256: reference
    assert subject["digest"] == {"sha256": "c" * 64}
    assert "not a registry manifest digest" in subject["annotations"]["digestOf"]
    shown = api.show_manifest(tmp_path, rec.id)
    assert shown["artifact"] == {"image_id": "sha256:" + "c" * 64, "local_ref": "imagekit/fmt-app:0123456789abcdef"}
    assert shown["models"] == {"/opt/models/w.pt": hashlib.sha256(WEIGHTS).hexdigest()}


def test_pushed_image_subject_is_the_registry_digest(tmp_path: Path) -> None:
    loaded = make_repo(tmp_path)
    digest = "sha256:" + "e" * 64
    rec, st = record(loaded, image_ref=f"127.0.0.1:5000/org/app@{digest}", image_digest=digest)
    assert st["subject"] == [{"name": f"oci:127.0.0.1:5000/org/app@{digest}", "digest": {"sha256": "e" * 64}}]
    assert api.show_manifest(tmp_path, rec.id)["artifact"] == {"image": f"127.0.0.1:5000/org/app@{digest}"}


def test_dependencies_carry_digests_anyone_can_recompute(tmp_path: Path) -> None:
    loaded = make_repo(tmp_path)
    _rec, st = record(loaded)
    deps = deps_by_name(st)
    lock = deps["requirements:requirements.lock"]
    assert lock["digest"] == {"sha256": hashlib.sha256(b"numpy==2.1.0\n").hexdigest()}
    tree = deps["copy:app/"]
    # in-toto dirHash: the `find | sort | sha256sum | sha256sum` of the folder, recomputed here with coreutils
    listing = subprocess.run(
        "find . -type f | cut -c3- | LC_ALL=C sort | xargs -r sha256sum | sha256sum | cut -f1 -d' '",
        shell=True, cwd=tmp_path / "app", check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert tree["digest"] == {"dirHash": listing} == {"dirHash": dir_hash(tmp_path / "app", DigestCache())}
    assert len(tree["annotations"]["imagekitTreeHash"]) == 64  # imagekit's own layer-input hash, labelled as such
    model = deps["model:/opt/models/w.pt"]
    commit = git(tmp_path, "rev-parse", "HEAD")
    assert model["digest"] == {"sha256": hashlib.sha256(WEIGHTS).hexdigest()}
    assert model["uri"] == f"git+https://git.example.com/org/fmt.git@{commit}#models/w.pt"
    assert deps["git"] == {"name": "git", "uri": "git+https://git.example.com/org/fmt.git",
                           "digest": {"gitCommit": commit}, "annotations": {"dirty": False}}  # fmt: skip
    assert "s3cret" not in json.dumps(st)
    base = deps["base"]
    assert base["digest"] == {"sha256": "b" * 64}  # the imported image's ID, not the recipe hash
    assert base["annotations"] == {"source": "bootstrap", "localTag": "imagekit-base-base:feedfacefeedface",
                                   "recipeSha256": "d" * 64}  # fmt: skip


def test_a_dirty_work_tree_is_in_the_signed_record(tmp_path: Path) -> None:
    loaded = make_repo(tmp_path)
    commit = git(tmp_path, "rev-parse", "HEAD")
    clean, st = record(loaded)
    assert deps_by_name(st)["git"]["annotations"] == {"dirty": False}  # the store's own new records do not count
    assert api.show_manifest(tmp_path, clean.id)["source"] == commit
    (tmp_path / "app" / "server.py").write_text("print('changed, not committed')\n")
    dirty, st = record(loaded)
    dep = deps_by_name(st)["git"]
    assert dep["digest"] == {"gitCommit": commit} and dep["annotations"] == {"dirty": True}
    assert api.show_manifest(tmp_path, dirty.id)["source"] == f"{commit}-dirty"
    from typer.testing import CliRunner

    from imagekit.cli import app

    shown = CliRunner().invoke(app, ["manifest", "show", dirty.id, "-f", str(tmp_path / "imagekit.yaml")])
    assert shown.exit_code == 0 and f"git commit    {commit}-dirty" in shown.stdout, shown.output
    checked = CliRunner().invoke(app, ["manifest", "verify", dirty.id, "-f", str(tmp_path / "imagekit.yaml")])
    assert checked.exit_code == 0, checked.output  # the strict rules take the annotation


def test_registry_base_keeps_its_repo_digest(tmp_path: Path) -> None:
    loaded = make_repo(tmp_path)
    ref = "127.0.0.1:5000/library/debian@sha256:" + "a" * 64
    _rec, st = record(loaded, base=ref, base_image_id="sha256:" + "9" * 64, base_recipe=None)
    base = deps_by_name(st)["base"]
    assert base["uri"] == f"oci:{ref}" and base["digest"] == {"sha256": "a" * 64}
    from imagekit.manifest.statement import BuildRecord
    from imagekit.nightly.staleness import base_dependency

    assert base_dependency(BuildRecord("x", st)) == (f"oci:{ref}", "a" * 64)  # what drift detection reads


def test_builder_id_names_this_installation_and_build_type_is_documented(tmp_path: Path) -> None:
    loaded = make_repo(tmp_path)
    rec, st = record(loaded)
    builder = st["predicate"]["runDetails"]["builder"]["id"]
    assert builder == f"https://imagekit.dev/builder/v1?host={socket.gethostname()}&keyid=sha256:{rec.keyid}"
    assert st["predicate"]["buildDefinition"]["buildType"] == BUILD_TYPE
    page = REPO / "docs" / (BUILD_TYPE.rsplit("/", 1)[1] + ".md")
    text = page.read_text()
    assert BUILD_TYPE in text
    # every parameter the statement records is described on the page
    bd = st["predicate"]["buildDefinition"]
    for key in [*bd["externalParameters"], *bd["internalParameters"]]:
        assert f"`{key}`" in text, key
    for dep in bd["resolvedDependencies"]:
        assert f"`{dep['name'].split(':', 1)[0]}" in text, dep["name"]
