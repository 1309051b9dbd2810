"""The append-only manifest store: a local folder or s3://bucket/prefix behind one interface.

Nothing is ever overwritten: every manifest and every channel/revocation record is its own object, written with an
exclusive create (a hard link locally, `IfNoneMatch: *` on S3). Logs claim the next sequence number by such a write
and retry on conflict, so concurrent writers never lose a record and no mutable index exists to lose updates.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imagekit.errors import StoreError, UsageError
from imagekit.fsutil import atomic_write

MANIFEST_SUFFIX = ".intoto.json"
CHANNELS = "_channels"
REVOCATIONS = "_revocations"
SEQ_RE = re.compile(r"^(\d{10})\.json$")
MAX_CLAIM_ATTEMPTS = 200


class Conflict(StoreError):
    """An object with that key already exists (someone else wrote it first)."""


class Backend(Protocol):
    """The primitive operations a store needs: exclusive create, read, list."""

    url: str

    def create(self, key: str, data: bytes) -> None:
        """Write a new object; raise Conflict when the key exists."""
        ...

    def read(self, key: str) -> bytes:
        """An object's bytes; StoreError when missing."""
        ...

    def keys(self, prefix: str) -> list[str]:
        """Every key under prefix (recursive), sorted."""
        ...

    def location(self, key: str) -> str:
        """A path or URL for messages."""
        ...


class LocalBackend:
    """A folder; atomic exclusive writes (temp file, fsync, link) so a record is whole or absent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def create(self, key: str, data: bytes) -> None:
        try:
            atomic_write(self.root / key, data, mode=0o644, exclusive=True)
        except FileExistsError:
            raise Conflict(f"{self.root / key} already exists; the store never overwrites a record") from None
        except OSError as exc:
            raise StoreError(f"cannot write {self.root / key}: {exc.strerror or exc}") from None

    def read(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.root / key} does not exist") from None
        except OSError as exc:
            raise StoreError(f"cannot read {self.root / key}: {exc.strerror or exc}") from None

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for path in base.rglob("*"):
            rel = path.relative_to(self.root)
            # dot-names are atomic_write's temp files (or editor litter), never records
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                out.append(rel.as_posix())
        return sorted(out)

    def location(self, key: str) -> str:
        return str(self.root / key)


class S3Backend:
    """s3://bucket/prefix through boto3; creates are conditional puts (IfNoneMatch='*')."""

    def __init__(self, url: str, client: Any = None) -> None:
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError(f"store {url!r}: expected s3://bucket/prefix")
        self.url = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client

    @property
    def client(self) -> Any:
        """The boto3 S3 client (honours AWS_ENDPOINT_URL)."""
        if self._client is None:
            from imagekit.runners.aws import s3_client

            self._client = s3_client()
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def create(self, key: str, data: bytes) -> None:
        from imagekit.runners.aws import aws_errors, error_code

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
        except aws_errors() as exc:
            code, status = error_code(exc)
            # 412: the object exists; 409: a concurrent conditional write to the same key is in flight
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise Conflict(f"{self.location(key)} already exists; the store never overwrites a record") from None
            raise StoreError(f"cannot write {self.location(key)}: {exc}") from None

    def read(self, key: str) -> bytes:
        from imagekit.runners.aws import aws_errors, error_code

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(resp["Body"].read())
        except aws_errors() as exc:
            if error_code(exc)[0] in ("NoSuchKey", "404"):
                raise StoreError(f"{self.location(key)} does not exist") from None
            raise StoreError(f"cannot read {self.location(key)}: {exc}") from None

    def keys(self, prefix: str) -> list[str]:
        from imagekit.runners.aws import aws_errors

        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except aws_errors() as exc:
            raise StoreError(f"cannot list {self.url}/{prefix}: {exc}") from None
        return sorted(out)

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


@dataclass(frozen=True)
class LogEntry:
    """One record of an append-only log: its sequence number and raw bytes."""

    seq: int
    key: str
    data: bytes


class Store:
    """Manifests by image and id, plus append-only logs (channels, revocations), over a Backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def url(self) -> str:
        """Where the store is (folder path or s3:// URL)."""
        return self.backend.url

    # manifests ------------------------------------------------------------------------------------
    @staticmethod
    def manifest_key(image: str, manifest_id: str) -> str:
        """manifests/<image>/<id>.intoto.json, relative to the store."""
        return f"{image}/{manifest_id}{MANIFEST_SUFFIX}"

    def put_manifest(self, image: str, manifest_id: str, data: bytes) -> str:
        """Write a manifest envelope once; returns its location."""
        key = self.manifest_key(image, manifest_id)
        self.backend.create(key, data)
        return self.backend.location(key)

    @staticmethod
    def sidecar_key(image: str, manifest_id: str, suffix: str) -> str:
        """manifests/<image>/<id><suffix>: what lies beside a manifest (its Sigstore bundle, its SBOM statement)."""
        return f"{image}/{manifest_id}{suffix}"

    def put_sidecar(self, image: str, manifest_id: str, suffix: str, data: bytes) -> str:
        """Write a file beside a manifest once; returns its location."""
        key = self.sidecar_key(image, manifest_id, suffix)
        self.backend.create(key, data)
        return self.backend.location(key)

    def read_sidecar(self, manifest_key: str, suffix: str) -> bytes | None:
        """The file beside a manifest (by the manifest's key), or None when there is none (older records)."""
        image, name = manifest_key.split("/", 1)
        key = self.sidecar_key(image, name[: -len(MANIFEST_SUFFIX)], suffix)
        if key not in self.backend.keys(f"{image}/"):
            return None
        return self.backend.read(key)

    def manifest_keys(self, image: str | None = None) -> list[str]:
        """Keys of every manifest (of one image, or all); `<id>.sbom.dsse.json` and other sidecars are not."""
        keys = self.backend.keys(f"{image}/" if image else "")
        return [
            k
            for k in keys
            if k.endswith(MANIFEST_SUFFIX)
            and not k.startswith("_")
            and k.count("/") == 1
            and "." not in k.split("/")[1][: -len(MANIFEST_SUFFIX)]
        ]

    def find(self, ref: str) -> str:
        """The key of the manifest whose id is ref or starts with it (unique prefix, at least 6 characters)."""
        ref = ref.strip()
        if len(ref) < 6:
            raise UsageError(f"manifest id {ref!r} is too short: give at least 6 characters")
        hits = [k for k in self.manifest_keys() if k.split("/")[1].startswith(ref)]
        if not hits:
            raise StoreError(f"no manifest {ref!r} in {self.url} (see `imagekit manifest list`)")
        if len(hits) > 1:
            ids = ", ".join(k.split("/")[1][: -len(MANIFEST_SUFFIX)] for k in hits[:5])
            raise UsageError(f"manifest id {ref!r} is ambiguous: {ids}")
        return hits[0]

    def read(self, key: str) -> bytes:
        """Raw bytes of a stored object."""
        return self.backend.read(key)

    def location(self, key: str) -> str:
        """Path or URL of a stored object."""
        return self.backend.location(key)

    # logs -----------------------------------------------------------------------------------------
    def read_log(self, log: str) -> list[LogEntry]:
        """Every record of a log, in sequence order."""
        out = []
        for key in self.backend.keys(log + "/"):
            m = SEQ_RE.match(key.rsplit("/", 1)[-1])
            if m and key.rsplit("/", 1)[0] == log:
                out.append(LogEntry(int(m.group(1)), key, self.backend.read(key)))
        return sorted(out, key=lambda e: e.seq)

    def append(self, log: str, make: Callable[[list[LogEntry], int], bytes]) -> LogEntry:
        """Append a record: make(existing, seq) builds it from the log as read; retried when another writer wins."""
        for attempt in range(MAX_CLAIM_ATTEMPTS):
            existing = self.read_log(log)
            seq = existing[-1].seq + 1 if existing else 1
            data = make(existing, seq)
            key = f"{log}/{seq:010d}.json"
            try:
                self.backend.create(key, data)
            except Conflict:
                # someone claimed this number first: re-read (their record may change our decision) and retry
                time.sleep(random.uniform(0, min(0.5, 0.01 * (attempt + 1))))  # noqa: S311 - jitter, not crypto
                continue
            return LogEntry(seq, key, data)
        raise StoreError(f"could not append to {self.backend.location(log)} after {MAX_CLAIM_ATTEMPTS} attempts")


def open_store(url: str, *, base: Path | None = None, s3_client: Any = None) -> Store:
    """A store from the spec's `store` value: s3://bucket/prefix, or a folder (relative to base)."""
    if url.startswith("s3://"):
        return Store(S3Backend(url, s3_client))
    if "://" in url:
        raise UsageError(f"store {url!r}: use a folder or s3://bucket/prefix")
    path = Path(url).expanduser()
    if not path.is_absolute() and base is not None:
        path = (base / path).resolve()  # messages show /repo/manifests, not /repo/examples/tts/../../manifests
    return Store(LocalBackend(path))
