"""Fail-closed logs: removed records, removed heads, removed logs, stray numbers and wrong kinds of path all exit 1."""

from __future__ import annotations

import base64
import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
from manifest_helpers import fake_build, make_spec
from typer.testing import CliRunner, Result

from imagekit.api import manifest as api
from imagekit.cli import app
from imagekit.errors import StoreError
from imagekit.manifest.dsse import envelope_payload
from imagekit.manifest.heads import heads_dir


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def fails(result: Result, *needles: str, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert "this is a bug" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


def _promoted(tmp_path: Path) -> tuple[str, str, str]:
    loaded = make_spec(tmp_path)
    one, two = fake_build(loaded, seed="1"), fake_build(loaded, seed="2")
    api.promote(tmp_path, "app", one.id, "stable")
    api.promote(tmp_path, "app", two.id, "stable")
    return str(tmp_path / "imagekit.yaml"), one.id, two.id


def _log(tmp_path: Path) -> Path:
    return tmp_path / "manifests" / "_channels" / "app" / "stable"


def test_deleting_the_newest_record_is_seen_from_the_head(tmp_path: Path) -> None:
    spec, _one, _two = _promoted(tmp_path)
    shutil.rmtree(heads_dir(), ignore_errors=True)  # no reader has seen it: the head alone tells
    (_log(tmp_path) / "0000000002.json").unlink()
    fails(cli("resolve", "app", "--channel", "stable", "-f", spec), "was rolled back", "record 2 removed")
    fails(cli("history", "app", "--channel", "stable", "-f", spec), "was rolled back")


def test_deleting_the_newest_record_and_the_head_after_a_reader_saw_them(tmp_path: Path) -> None:
    spec, one, two = _promoted(tmp_path)
    assert cli("resolve", "app", "--channel", "stable", "-f", spec).exit_code == 0
    (_log(tmp_path) / "0000000002.json").unlink()
    (_log(tmp_path) / "head.json").unlink()
    t0 = time.monotonic()
    fails(
        cli("resolve", "app", "--channel", "stable", "-f", spec),
        "was rolled back: this machine has verified it up to record 2",
    )
    # a writer refuses too, at once: it never papers over the gap with a new record 2
    fails(cli("promote", "app", one, "--channel", "stable", "-f", spec), "was rolled back")
    assert time.monotonic() - t0 < 10
    assert not (_log(tmp_path) / "0000000002.json").exists()
    del two


def test_deleting_only_the_head_is_refused(tmp_path: Path) -> None:
    spec, _one, _two = _promoted(tmp_path)
    shutil.rmtree(heads_dir(), ignore_errors=True)
    (_log(tmp_path) / "head.json").unlink()
    fails(cli("resolve", "app", "--channel", "stable", "-f", spec), "has 2 records but no signed head")


def test_a_head_from_another_log_is_refused(tmp_path: Path) -> None:
    spec, one, _two = _promoted(tmp_path)
    api.promote(tmp_path, "app", one, "canary")
    canary = tmp_path / "manifests" / "_channels" / "app" / "canary"
    shutil.copy(canary / "head.json", _log(tmp_path) / "head.json")
    fails(cli("resolve", "app", "--channel", "stable", "-f", spec), "is not the head of log")


def test_moving_revocations_away_after_a_reader_saw_them(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    bad = fake_build(loaded, seed="1")
    spec = str(tmp_path / "imagekit.yaml")
    api.revoke(tmp_path, bad.id, reason="CVE")
    fails(cli("manifest", "verify", bad.id, "-f", spec), "revoked")
    shutil.move(tmp_path / "manifests" / "_revocations", tmp_path / "elsewhere")
    fails(cli("manifest", "verify", bad.id, "-f", spec), "_revocations was rolled back", "record 1 removed")
    fails(cli("promote", "app", bad.id, "--channel", "stable", "-f", spec), "was rolled back")
    assert not (tmp_path / "manifests" / "_channels").exists(), "nothing was promoted"


def test_a_record_numbered_out_of_sequence_is_refused(tmp_path: Path) -> None:
    spec, one, _two = _promoted(tmp_path)
    stray = _log(tmp_path) / "9999999999.json"
    shutil.copy(_log(tmp_path) / "0000000002.json", stray)
    fails(
        cli("resolve", "app", "--channel", "stable", "-f", spec),
        "is numbered 9999999999, but the one before it is 2",
    )
    fails(cli("promote", "app", one, "--channel", "stable", "-f", spec), "numbered 9999999999")


@pytest.mark.parametrize("what", ["store", "channels", "channel", "revocations"])
def test_a_file_where_a_folder_belongs_is_an_error_not_an_empty_store(tmp_path: Path, what: str) -> None:
    spec, one, _two = _promoted(tmp_path)
    store = tmp_path / "manifests"
    target = {
        "store": store,
        "channels": store / "_channels",
        "channel": _log(tmp_path),
        "revocations": store / "_revocations",
    }[what]
    if target.exists():
        shutil.rmtree(target)
    target.write_text("not a folder\n")
    t0 = time.monotonic()
    if what != "revocations":
        fails(cli("resolve", "app", "--channel", "stable", "-f", spec), "is a file where a folder belongs")
    fails(cli("promote", "app", one, "--channel", "stable", "-f", spec), "is a file where a folder belongs")
    assert time.monotonic() - t0 < 10, "promote must fail at once, not retry"


def test_a_damaged_seen_heads_file_is_refused(tmp_path: Path) -> None:
    spec, _one, _two = _promoted(tmp_path)
    (seen,) = heads_dir().glob("*.json")
    seen.write_text("[" * 100_000)
    fails(cli("resolve", "app", "--channel", "stable", "-f", spec), "seen log heads", "are damaged")


def test_a_record_of_100000_brackets_fails_cleanly(tmp_path: Path) -> None:
    spec, _one, _two = _promoted(tmp_path)
    (_log(tmp_path) / "0000000002.json").write_text("[" * 100_000)
    fails(cli("resolve", "app", "--channel", "stable", "-f", spec), "nested deeper than 64 levels")
    loaded = make_spec(tmp_path / "m")
    rec = fake_build(loaded)
    Path(rec.location).write_text("[" * 100_000)
    r = cli("manifest", "verify", rec.id, "-f", str(tmp_path / "m" / "imagekit.yaml"))
    fails(r, "nested deeper than 64 levels")


def test_concurrent_promotions_keep_the_head_at_the_newest_record(tmp_path: Path) -> None:
    import threading

    loaded = make_spec(tmp_path)
    builds = [fake_build(loaded, seed=str(i)) for i in range(6)]
    errors: list[BaseException] = []

    def go(mid: str) -> None:
        try:
            api.promote(tmp_path, "app", mid, "stable")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(b.id,)) for b in builds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    head = json.loads(envelope_payload((_log(tmp_path) / "head.json").read_bytes()))
    assert head["seq"] == 6
    assert len(api.channel_history(tmp_path, "app", "stable")) == 6


@pytest.mark.aws
def test_s3_store_rollback_is_refused(moto_server: str, tmp_path: Path) -> None:
    import boto3

    bucket = f"imagekit-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    loaded = make_spec(tmp_path, store=f"s3://{bucket}/team")
    one, two = fake_build(loaded, seed="1"), fake_build(loaded, seed="2")
    api.promote(tmp_path, "app", one.id, "stable")
    api.promote(tmp_path, "app", two.id, "stable")
    assert api.resolve(tmp_path, "app", "stable")["manifest"] == two.id
    other = fake_build(make_spec(tmp_path, store=f"s3://{bucket}/team", app="2"), seed="3")
    api.revoke(tmp_path, other.id, reason="CVE")
    head = s3.get_object(Bucket=bucket, Key="team/_channels/app/stable/head.json")["Body"].read()
    assert json.loads(envelope_payload(head))["seq"] == 2
    s3.delete_object(Bucket=bucket, Key="team/_channels/app/stable/0000000002.json")
    with pytest.raises(StoreError, match="was rolled back"):
        api.resolve(tmp_path, "app", "stable")
    s3.delete_object(Bucket=bucket, Key="team/_channels/app/stable/head.json")
    with pytest.raises(StoreError, match="this machine has verified it up to record 2"):
        api.resolve(tmp_path, "app", "stable")
    for key in ("0000000001.json", "head.json"):
        s3.delete_object(Bucket=bucket, Key=f"team/_revocations/{key}")
    r = cli("manifest", "verify", other.id, "-f", str(tmp_path / "imagekit.yaml"))
    fails(r, "_revocations was rolled back")


def test_a_store_from_before_signed_heads_is_sealed_once_on_purpose(tmp_path: Path) -> None:
    spec, _one, two = _promoted(tmp_path)
    loaded = make_spec(tmp_path)
    api.revoke(tmp_path, fake_build(loaded, seed="3").id, reason="cve")
    # what an older imagekit left: the same signed records, no heads, and no reader on this machine has seen them
    shutil.rmtree(heads_dir(), ignore_errors=True)
    (_log(tmp_path) / "head.json").unlink()
    (tmp_path / "manifests" / "_revocations" / "head.json").unlink()
    fails(cli("resolve", "app", "--channel", "stable", "-f", spec), "no signed head", "manifest seal-heads")

    res = cli("manifest", "seal-heads", "-f", spec, "--json")
    assert res.exit_code == 0, res.output
    sealed = json.loads(res.stdout)["sealed"]
    assert sorted(Path(p).name for p in sealed) == ["_revocations", "stable"]
    ok = cli("history", "app", "--channel", "stable", "-f", spec, "--json")
    assert ok.exit_code == 0, ok.output
    assert two in ok.stdout  # both records read, against the new head
    # a second run seals nothing, and a log whose records do not verify is never sealed
    again = cli("manifest", "seal-heads", "-f", spec, "--json")
    assert json.loads(again.stdout)["sealed"] == []
    (_log(tmp_path) / "head.json").unlink()
    record = _log(tmp_path) / "0000000002.json"
    env = json.loads(record.read_bytes())
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[-1] ^= 1  # another signature
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    record.write_text(json.dumps(env))
    fails(cli("manifest", "seal-heads", "-f", spec))
    assert not (_log(tmp_path) / "head.json").exists()
