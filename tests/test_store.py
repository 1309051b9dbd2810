"""The append-only store: exclusive writes locally and on S3 (moto), and concurrent appenders losing nothing."""

from __future__ import annotations

import json
import multiprocessing
import os
import uuid
from pathlib import Path

import pytest

from imagekit.errors import StoreError, UsageError
from imagekit.manifest.store import Conflict, LogEntry, Store, open_store


def _s3_store(url: str) -> Store:
    import boto3

    bucket = url[5:].split("/", 1)[0]
    boto3.client("s3").create_bucket(Bucket=bucket)
    return open_store(url)


def _check_exclusive(store: Store) -> None:
    loc = store.put_manifest("app", "abc123def456", b"first")
    assert store.read(store.find("abc123d")) == b"first"
    assert loc.endswith("app/abc123def456.intoto.json")
    with pytest.raises(Conflict, match="never overwrites"):
        store.put_manifest("app", "abc123def456", b"second")
    assert store.read(store.find("abc123def456")) == b"first"
    store.put_manifest("app", "abc999000111", b"other")
    with pytest.raises(UsageError, match="too short"):
        store.find("abc")
    store.put_manifest("app", "abc123fff000", b"third")
    with pytest.raises(UsageError, match="ambiguous"):
        store.find("abc123")
    with pytest.raises(StoreError, match="no manifest"):
        store.find("ffffff")
    assert len(store.manifest_keys()) == 3


def test_local_store_never_overwrites(tmp_path: Path) -> None:
    _check_exclusive(open_store("manifests", base=tmp_path))
    assert (tmp_path / "manifests" / "app" / "abc123def456.intoto.json").read_bytes() == b"first"
    assert not [p for p in (tmp_path / "manifests").rglob("*.tmp")]


@pytest.mark.aws
def test_s3_store_never_overwrites(moto_server: str) -> None:
    store = _s3_store(f"s3://imagekit-{uuid.uuid4().hex[:8]}/team/manifests")
    _check_exclusive(store)
    assert store.location("app/x.intoto.json").startswith("s3://imagekit-")


@pytest.mark.aws
def test_s3_conditional_put_is_enforced_by_the_server(moto_server: str) -> None:
    """The guarantee lives in S3's IfNoneMatch, not in a check-then-write on our side."""
    import boto3
    from botocore.exceptions import ClientError

    bucket = f"imagekit-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def _append_many(url: str, base: str, worker: int, count: int) -> None:
    store = open_store(url, base=Path(base))
    for i in range(count):

        def make(existing: list[LogEntry], seq: int, i: int = i) -> bytes:
            return json.dumps({"w": worker, "i": i, "seq": seq}).encode()

        store.append("_channels/app/stable", make)


def _run_workers(url: str, base: str, workers: int, count: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(url, base, w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def _check_log(store: Store, workers: int, count: int) -> None:
    entries = store.read_log("_channels/app/stable")
    assert [e.seq for e in entries] == list(range(1, workers * count + 1))
    docs = [json.loads(e.data) for e in entries]
    assert all(d["seq"] == e.seq for d, e in zip(docs, entries, strict=True))
    assert sorted((d["w"], d["i"]) for d in docs) == [(w, i) for w in range(workers) for i in range(count)]


@pytest.mark.slow
def test_local_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    _run_workers("manifests", str(tmp_path), workers=4, count=15)
    _check_log(open_store("manifests", base=tmp_path), 4, 15)


@pytest.mark.aws
@pytest.mark.slow
def test_s3_concurrent_appends_lose_nothing(moto_server: str) -> None:
    url = f"s3://imagekit-{uuid.uuid4().hex[:8]}/p"
    _s3_store(url)
    assert os.environ["AWS_ENDPOINT_URL"] == moto_server  # spawned workers inherit it
    _run_workers(url, "/", workers=4, count=8)
    _check_log(open_store(url), 4, 8)
