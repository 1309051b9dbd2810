"""Channels: promote, rollback, revoke (with the cascade over layer hashes), resolve; concurrent promotions."""

from __future__ import annotations

import json
import multiprocessing
import uuid
from pathlib import Path

import pytest
from manifest_helpers import fake_build, make_spec

from imagekit.api import attest
from imagekit.api import manifest as api
from imagekit.errors import SignatureError, StoreError, UsageError
from imagekit.manifest.dsse import envelope_bytes, envelope_payload, sign_envelope
from imagekit.manifest.keys import keygen, load_file_signer


def test_promote_resolve_rollback_round_trip(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    one = fake_build(loaded, seed="1")
    two = fake_build(loaded, seed="2")
    with pytest.raises(StoreError, match="points at nothing"):
        api.resolve(tmp_path, "app", "stable")
    api.promote(tmp_path, "app", one.id, "stable", why="first release", who="alice")
    first = api.resolve(tmp_path, "app", "stable")
    assert first["manifest"] == one.id and first["image"].startswith("localhost:5000/demo-app@sha256:")
    res = api.promote(tmp_path, "app", two.id[:10], "stable", who="bob")
    assert res["seq"] == 2
    assert api.resolve(tmp_path, "app", "stable")["manifest"] == two.id
    back = api.rollback(tmp_path, "app", "stable", why="latency regression", who="carol")
    assert (back["from"], back["manifest"]) == (two.id, one.id)
    assert api.resolve(tmp_path, "app", "stable")["manifest"] == one.id
    with pytest.raises(UsageError, match="no earlier"):
        api.rollback(tmp_path, "app", "stable")
    # the log keeps everything, signed, with who/when/why
    logs = sorted((tmp_path / "manifests" / "_channels" / "app" / "stable").glob("0*.json"))
    assert [p.name for p in logs] == ["0000000001.json", "0000000002.json", "0000000003.json"]
    head = json.loads(envelope_payload((logs[0].parent / "head.json").read_bytes()))
    assert head["seq"] == 3 and head["log"] == "_channels/app/stable"
    docs = [json.loads(envelope_payload(p.read_bytes())) for p in logs]
    assert [(d["action"], d["who"]) for d in docs] == [("promote", "alice"), ("promote", "bob"), ("rollback", "carol")]
    assert docs[2]["why"] == "latency regression" and docs[0]["when"].endswith("Z")
    hist = api.channel_history(tmp_path, "app", "stable")
    assert [(h["seq"], h["action"], h["manifest"], h["who"]) for h in hist] == [
        (1, "promote", one.id, "alice"), (2, "promote", two.id, "bob"), (3, "rollback", one.id, "carol")]  # fmt: skip
    listed = {r["id"]: r["channels"] for r in api.list_manifests(tmp_path)}
    assert listed == {one.id: ["stable"], two.id: []}


def test_promote_refuses_failed_rehearsal_wrong_image_and_unsigned(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    failed = fake_build(loaded, seed="f", passed=False)
    with pytest.raises(StoreError, match="verification failed"):
        api.promote(tmp_path, "app", failed.id, "stable")
    reh = fake_build(loaded, seed="r", rehearsal=True)
    with pytest.raises(UsageError, match="rehearsal"):
        api.promote(tmp_path, "app", reh.id, "stable")
    assert api.promote(tmp_path, "app", reh.id, "staging", allow_rehearsal=True)["manifest"] == reh.id
    rt = fake_build(loaded, "rt", seed="rt")
    with pytest.raises(UsageError, match="not 'app'"):
        api.promote(tmp_path, "app", rt.id, "stable")
    with pytest.raises(UsageError, match="channel"):
        api.promote(tmp_path, "app", rt.id, "Bad Channel!")
    # signed by a key the trust file does not list
    other = make_spec(tmp_path / "other")
    foreign = fake_build(other, seed="x")
    dest = tmp_path / "manifests" / "app" / Path(foreign.location).name
    dest.write_bytes(Path(foreign.location).read_bytes())
    with pytest.raises(SignatureError, match="unknown key"):
        api.promote(tmp_path, "app", foreign.id, "stable")
    # an unsigned envelope
    env = json.loads(dest.read_bytes())
    env["signatures"] = []
    unsigned = tmp_path / "manifests" / "app" / "ffffffffffffffff.intoto.json"
    unsigned.write_text(json.dumps(env))
    with pytest.raises(SignatureError, match="unsigned"):
        api.promote(tmp_path, "app", "ffffffffffffffff", "stable")
    assert not (tmp_path / "manifests" / "_channels" / "app" / "stable").exists()


def test_revoking_a_base_layer_cascades_to_every_build_on_top(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    rt = fake_build(loaded, "rt", seed="rt")  # an image whose leaf is the runtime layer
    app1 = fake_build(loaded, "app", seed="a1")
    loaded2 = make_spec(tmp_path, app="2")
    app2 = fake_build(loaded2, "app", seed="a2")
    loaded3 = make_spec(tmp_path, rt="2")  # another runtime: not on top of the revoked one
    app3 = fake_build(loaded3, "app", seed="a3")
    api.promote(tmp_path, "app", app3.id, "stable")
    api.promote(tmp_path, "app", app1.id, "stable")
    api.promote(tmp_path, "app", app2.id, "stable")
    res = api.revoke(tmp_path, rt.id, reason="CVE in the runtime")
    assert res["layer"] == "runtime" and sorted(res["revoked"]) == sorted([rt.id, app1.id, app2.id])
    for mid in (rt.id, app1.id, app2.id):
        with pytest.raises(SignatureError, match="revoked"):
            attest.verify_manifest(tmp_path, mid)
    assert attest.verify_manifest(tmp_path, app3.id).id == app3.id
    with pytest.raises(SignatureError, match=f"layer runtime .*revoked with build {rt.id}.*CVE in the runtime"):
        attest.verify_manifest(tmp_path, app1.id)
    with pytest.raises(StoreError, match=r"revoked.*imagekit rollback app --channel stable"):
        api.resolve(tmp_path, "app", "stable")
    with pytest.raises(StoreError, match="revoked"):
        api.promote(tmp_path, "app", app1.id, "stable")
    # rollback skips the revoked app1 and lands on app3
    assert api.rollback(tmp_path, "app", "stable")["manifest"] == app3.id
    assert api.resolve(tmp_path, "app", "stable")["manifest"] == app3.id
    rows = {r["id"]: r for r in api.list_manifests(tmp_path)}
    assert rows[app2.id]["revoked"] and not rows[app3.id]["revoked"]
    with pytest.raises(UsageError, match="reason"):
        api.revoke(tmp_path, app3.id, reason=" ")
    with pytest.raises(UsageError, match="no layer"):
        api.revoke(tmp_path, app3.id, reason="x", layer="nope")


def test_a_build_made_later_on_a_revoked_layer_is_revoked_too(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    first = fake_build(loaded, seed="1")
    api.revoke(tmp_path, first.id, reason="bad base image", layer="base")
    later = fake_build(make_spec(tmp_path, app="9"), seed="2")  # same base hash, recorded after the revocation
    with pytest.raises(SignatureError, match="layer base"):
        attest.verify_manifest(tmp_path, later.id)


def test_altered_channel_log_is_detected(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    one, two = fake_build(loaded, seed="1"), fake_build(loaded, seed="2")
    api.promote(tmp_path, "app", one.id, "stable")
    api.promote(tmp_path, "app", two.id, "stable")
    log = tmp_path / "manifests" / "_channels" / "app" / "stable"
    # deleting a record breaks the chain
    second = (log / "0000000002.json").read_bytes()
    (log / "0000000001.json").unlink()
    (log / "0000000002.json").rename(log / "0000000001.json")
    with pytest.raises(SignatureError, match="seq 2, stored as 1"):
        api.resolve(tmp_path, "app", "stable")
    (log / "0000000001.json").unlink()
    # a record signed by an untrusted key
    stranger = load_file_signer(keygen(tmp_path / "stranger")[0])
    doc = json.loads(envelope_payload(second))
    doc.update(seq=1, prev=None)
    from imagekit.manifest.channels import RECORD_PAYLOAD_TYPE
    from imagekit.manifest.statement import canonical_json

    (log / "0000000001.json").write_bytes(
        envelope_bytes(sign_envelope(canonical_json(doc), stranger, RECORD_PAYLOAD_TYPE))
    )
    with pytest.raises(SignatureError, match="unknown key"):
        api.resolve(tmp_path, "app", "stable")
    # and promoting with a key the trust file does not list is refused before anything is written
    with pytest.raises(SignatureError, match="not in the trust file"):
        api.promote(tmp_path, "app", one.id, "other", key=str(tmp_path / "stranger" / "imagekit.key"))


def _promote_many(spec_dir: str, ids: list[str], worker: int) -> None:
    for i, mid in enumerate(ids):
        api.promote(spec_dir, "app", mid, "stable", who=f"w{worker}", why=f"{worker}-{i}")


@pytest.mark.aws
@pytest.mark.slow
def test_concurrent_promotions_on_s3_lose_no_record(moto_server: str, tmp_path: Path) -> None:
    import boto3

    bucket = f"imagekit-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    loaded = make_spec(tmp_path, store=f"s3://{bucket}/manifests")
    ids = [fake_build(loaded, seed=str(i)).id for i in range(3)]
    ctx = multiprocessing.get_context("spawn")
    workers, per = 4, 3
    procs = [ctx.Process(target=_promote_many, args=(str(tmp_path), ids, w)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    from imagekit.manifest.ledger import open_ledger

    records = open_ledger(loaded).channel_records("app", "stable")  # verifies signatures and the prev chain
    assert [r.seq for r in records] == list(range(1, workers * per + 1))
    assert sorted(r.doc["why"] for r in records) == sorted(f"{w}-{i}" for w in range(workers) for i in range(per))
    resolved = api.resolve(tmp_path, "app", "stable")
    assert resolved["manifest"] == records[-1].manifest
    assert attest.verify_manifest(tmp_path, ids[0]).revocation_checked


def test_a_signed_record_copied_into_another_channel_is_refused(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    one = fake_build(loaded, seed="1")
    api.promote(tmp_path, "app", one.id, "staging")
    log = tmp_path / "manifests" / "_channels" / "app"
    (log / "stable").mkdir()
    (log / "stable" / "0000000001.json").write_bytes((log / "staging" / "0000000001.json").read_bytes())
    with pytest.raises(SignatureError, match="channel 'staging', not 'stable'"):
        api.resolve(tmp_path, "app", "stable")
