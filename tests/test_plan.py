"""Layer hashing and staleness: what changes which hash, the digest cache, and `plan --json`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from manifest_helpers import make_spec
from typer.testing import CliRunner

from imagekit.cli import app
from imagekit.digests import DigestCache
from imagekit.manifest.record import record_build
from imagekit.plan import plan, plan_image
from imagekit.spec import load_spec

SPEC = """\
version: 1
name: plantest
layers:
  base:
    from: {bootstrap: {distro: debian, suite: bookworm}}
    cuda: "none"
    apt: [curl]
  runtime:
    parent: base
    python: "3.11"
    requirements: requirements.lock
  app:
    parent: runtime
    copy: [{src: app/, dest: /opt/app}]
    models: [{src: models/w.bin, dest: /opt/models/w.bin, sha256: "%(sha)s"}]
images:
  plantest: {leaf: app, targets: [docker, ami]}
"""


def _spec(root: Path, weights: bytes = b"w" * (2 << 20)) -> Path:
    (root / "app").mkdir(parents=True, exist_ok=True)
    (root / "app" / "server.py").write_text("print('v1')\n")
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "w.bin").write_bytes(weights)
    (root / "requirements.lock").write_text("requests==2.32.3\n")
    spec = root / "imagekit.yaml"
    spec.write_text(SPEC % {"sha": hashlib.sha256(weights).hexdigest()})
    return spec


def _hashes(spec: Path, cache: DigestCache, target: str = "docker") -> dict[str, str]:
    return {lp.name: lp.hash for lp in plan_image(load_spec(spec), "plantest", target, cache=cache).layers}  # type: ignore[arg-type]


def test_an_app_file_change_moves_only_the_app_hash(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    cache = DigestCache(tmp_path / "digests.json")
    before = _hashes(spec, cache)
    (tmp_path / "app" / "server.py").write_text("print('v2')\n")
    after = _hashes(spec, cache)
    assert before["base"] == after["base"]
    assert before["runtime"] == after["runtime"]
    assert before["app"] != after["app"]


def test_a_lock_change_moves_runtime_and_everything_on_it(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    cache = DigestCache(tmp_path / "digests.json")
    before = _hashes(spec, cache)
    (tmp_path / "requirements.lock").write_text("requests==2.32.4\n")
    after = _hashes(spec, cache)
    assert before["base"] == after["base"]
    assert before["runtime"] != after["runtime"]
    assert before["app"] != after["app"]


def test_a_definition_change_moves_its_layer_and_children(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    cache = DigestCache(tmp_path / "digests.json")
    before = _hashes(spec, cache)
    spec.write_text(spec.read_text().replace("apt: [curl]", "apt: [curl, jq]"))
    after = _hashes(spec, cache)
    assert all(before[k] != after[k] for k in ("base", "runtime", "app"))


def test_targets_hash_apart_and_pycache_does_not_count(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    cache = DigestCache(tmp_path / "digests.json")
    docker, ami = _hashes(spec, cache, "docker"), _hashes(spec, cache, "ami")
    assert docker["base"] != ami["base"]
    (tmp_path / "app" / "__pycache__").mkdir()
    (tmp_path / "app" / "__pycache__" / "server.cpython-311.pyc").write_bytes(b"junk")
    assert _hashes(spec, cache) == docker


def test_the_driver_pin_moves_ami_hashes_only(tmp_path: Path) -> None:
    # the driver is the host's on docker (an AMI installs it): a driver pin must leave docker layers cached
    spec = _spec(tmp_path)
    cpu = spec.read_text()
    spec.write_text(cpu.replace('cuda: "none"', 'cuda: "13.0"\n    driver: "580"'))
    cache = DigestCache(tmp_path / "digests.json")
    docker, ami = _hashes(spec, cache, "docker"), _hashes(spec, cache, "ami")
    spec.write_text(cpu.replace('cuda: "none"', 'cuda: "13.0"\n    driver: "590"'))
    assert _hashes(spec, cache, "docker") == docker
    assert all(_hashes(spec, cache, "ami")[k] != ami[k] for k in ami)
    # no driver at all hashes the same on docker too, and a CPU spec keeps the hashes it had before this rule
    spec.write_text(cpu.replace('cuda: "none"', 'cuda: "13.0"'))
    assert _hashes(spec, cache, "docker") == docker


def test_a_gpu_leaf_hash_covers_nvidia_require_cuda(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    cpu = spec.read_text()
    cache = DigestCache(tmp_path / "digests.json")
    spec.write_text(cpu.replace('cuda: "none"', 'cuda: "12.8"'))
    cu128 = plan_image(load_spec(spec), "plantest", "docker", cache=cache)
    spec.write_text(cpu.replace('cuda: "none"', 'cuda: "13.0"'))
    cu130 = plan_image(load_spec(spec), "plantest", "docker", cache=cache)
    # every layer moves with the CUDA pin; the leaf also carries the image's NVIDIA_REQUIRE_CUDA (cuda>=13.0)
    assert all(a.hash != b.hash for a, b in zip(cu128.layers, cu130.layers, strict=True))
    from imagekit.names import nvidia_require_cuda

    assert nvidia_require_cuda("13.0") == "cuda>=13.0" and nvidia_require_cuda("12.4.1") == "cuda>=12.4"
    assert nvidia_require_cuda("none") is None and nvidia_require_cuda(None) is None


def test_big_weights_are_read_once_then_served_from_the_cache(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    cache_file = tmp_path / "cache" / "digests.json"
    first = DigestCache(cache_file)
    _hashes(spec, first)
    assert first.misses == 1 and first.hits == 0  # only the 2 MiB weights file is cached; small files are hashed
    second = DigestCache(cache_file)  # a new process would start like this
    _hashes(spec, second)
    assert second.misses == 0 and second.hits == 1
    # any change to the file (size, mtime or inode) misses, and the new digest is the real one
    weights = tmp_path / "models" / "w.bin"
    data = bytearray(weights.read_bytes())
    data[0] ^= 0xFF
    tmp = weights.with_suffix(".new")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, weights)
    third = DigestCache(cache_file)
    assert third.digest(weights) == hashlib.sha256(bytes(data)).hexdigest()
    assert third.misses == 1


def test_plan_json_shape_and_order(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    res = CliRunner().invoke(app, ["plan", "-f", str(spec), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [(i["name"], i["target"]) for i in doc["images"]] == [("plantest", "docker"), ("plantest", "ami")]
    for image in doc["images"]:
        assert [lp["name"] for lp in image["layers"]] == ["base", "runtime", "app"]  # root first
        for lp in image["layers"]:
            assert set(lp) == {"name", "hash", "status", "reason"}
            assert lp["status"] == "stale" and len(lp["hash"]) == 64
    only_ami = CliRunner().invoke(app, ["plan", "-f", str(spec), "--json", "--target", "ami"])
    assert [i["target"] for i in json.loads(only_ami.stdout)["images"]] == ["ami"]


def test_plan_names_a_missing_input_file_with_its_line(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    (tmp_path / "requirements.lock").unlink()
    res = CliRunner().invoke(app, ["plan", "-f", str(spec)])
    assert res.exit_code == 2
    assert "imagekit.yaml:11: layers.runtime.requirements: 'requirements.lock' does not exist" in res.output


def test_plan_filters_by_image(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    plans = plan(load_spec(spec), target="docker", images=["plantest"], cache=DigestCache(tmp_path / "d.json"))
    assert [(p.name, p.target) for p in plans] == [("plantest", "docker")]
    res = CliRunner().invoke(app, ["plan", "-f", str(spec), "--image", "nope"])
    assert res.exit_code == 2 and "unknown image 'nope'" in res.output


def test_an_ami_leaf_hash_covers_the_image_service_unit(tmp_path: Path) -> None:
    """The AMI leaf carries the image's systemd unit: as another image's inner layer it is a different AMI."""
    spec = _spec(tmp_path)
    text = spec.read_text().replace(
        "images:\n",
        "    command: [python, -m, app.server]\n  extra:\n    parent: app\n    env: {MODE: extra}\n"
        "    command: [python, -m, app.other]\nimages:\n  two: {leaf: extra, targets: [docker, ami]}\n",
    )
    spec.write_text(text)
    loaded = load_spec(spec)
    cache = DigestCache(tmp_path / "d.json")

    def app_hash(image: str, target: str) -> str:
        return next(lp.hash for lp in plan_image(loaded, image, target, cache=cache).layers if lp.name == "app")  # type: ignore[arg-type]

    assert app_hash("plantest", "docker") == app_hash("two", "docker")
    assert app_hash("plantest", "ami") != app_hash("two", "ami")
    leaf = plan_image(loaded, "plantest", "ami", cache=cache).layers[-1]
    assert "service-unit" in leaf.inputs


def _record_ami(root: Path) -> str:
    """Sign a verified AMI build of the helper spec (with an `aws:` block) into its own store; its id."""
    loaded = make_spec(root)
    text = loaded.path.read_text().replace("  app: {leaf: app}", "  app: {leaf: app, targets: [docker, ami]}")
    loaded.path.write_text(text + "aws: {region: us-east-1, encrypted: false}\n")
    loaded = load_spec(loaded.path)
    layers = plan_image(loaded, "app", "ami").layers
    ami = {"region": "us-east-1", "id": "ami-12345678", "account": "123456789012", "snapshots": ["snap-1"]}
    return record_build(loaded, "app", "ami", layers, started="2026-11-20T00:00:00Z",
                        finished="2026-11-20T00:10:00Z", amis=[ami], base="ami-785db401",
                        report={"passed": True, "failures": []}).id  # fmt: skip


def _ami_plan(spec: Path) -> list[dict[str, str]]:
    res = CliRunner().invoke(app, ["plan", "-f", str(spec), "--json", "--target", "ami", "--image", "app"])
    assert res.exit_code == 0, res.output
    (image,) = json.loads(res.stdout)["images"]
    return image["layers"]  # type: ignore[no-any-return]


def test_ami_settings_are_in_the_hash_and_the_plan_names_the_one_that_changed(tmp_path: Path) -> None:
    mid = _record_ami(tmp_path)
    spec = tmp_path / "imagekit.yaml"
    assert [lp["status"] for lp in _ami_plan(spec)] == ["cached"] * 3
    docker_before = _hashes_of(spec, "docker")

    spec.write_text(spec.read_text().replace("encrypted: false", "encrypted: true"))
    layers = _ami_plan(spec)
    assert [lp["status"] for lp in layers] == ["stale"] * 3
    for lp in layers:  # every layer AMI is encrypted anew, and each says why
        assert lp["reason"] == f"ami settings changed since verified build {mid}: aws.encrypted false -> true"
    assert _hashes_of(spec, "docker") == docker_before  # the docker target does not read `aws:`

    spec.write_text(spec.read_text().replace("encrypted: true", "encrypted: false, ami_regions: [eu-west-1]"))
    reasons = {lp["reason"] for lp in _ami_plan(spec)}
    assert reasons == {f'ami settings changed since verified build {mid}: aws.ami_regions [] -> ["eu-west-1"]'}

    # where the build runs from (a subnet) is not part of what the AMI is
    spec.write_text(spec.read_text().replace("ami_regions: [eu-west-1]", "ami_regions: [], subnet_id: s-1"))
    assert [lp["status"] for lp in _ami_plan(spec)] == ["cached"] * 3


def test_every_identity_setting_moves_every_ami_layer_hash(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    cache = DigestCache(tmp_path / "d.json")
    base = _hashes(spec, cache, "ami")
    text = spec.read_text()
    for setting in ("region: eu-west-1", "ami_regions: [us-west-2]", "encrypted: true", "kms_key_id: alias/k",
                    "instance_type: g6.xlarge", "volume_size: 200", "ssh_username: admin", "tags: {team: tts}"):  # fmt: skip
        spec.write_text(text + f"aws: {{{setting}}}\n")
        moved = _hashes(spec, cache, "ami")
        assert all(moved[k] != base[k] for k in base), setting
    spec.write_text(text + "aws: {ami_regions: [b, a, a], subnet_id: s-1, ssh_interface: private_ip}\n")
    one = _hashes(spec, cache, "ami")
    spec.write_text(text + "aws: {ami_regions: [a, b]}\n")
    assert _hashes(spec, cache, "ami") == one


def _hashes_of(spec: Path, target: str) -> dict[str, str]:
    return {lp.name: lp.hash for lp in plan_image(load_spec(spec), "app", target).layers}  # type: ignore[arg-type]
