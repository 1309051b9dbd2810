"""The append-only manifest store: a local folder or s3://bucket/prefix behind one interface.

Nothing is ever overwritten: every manifest and every channel/revocation record is its own object, written with an
exclusive create (a hard link locally, `IfNoneMatch: *` on S3). Logs claim the next sequence number by such a write
and retry on conflict, so concurrent writers never lose a record and no mutable index exists to lose updates.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imagekit.errors import StoreError, UsageError
from imagekit.fsutil import atomic_write
from imagekit.inputs import MAX_RECORD_BYTES, InputError, clip, read_regular

MANIFEST_SUFFIX = ".intoto.json"
CHANNELS = "_channels"
REVOCATIONS = "_revocations"
IMAGE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # as the spec's NAME_RE; used with fullmatch
SEQ_RE = re.compile(r"^(\d{10})\.json$")
MAX_CLAIM_ATTEMPTS = 200
# Each log's signed head (sequence number and digest of its newest record): the one object that is replaced.
HEAD_NAME = "head.json"
# _channels/<image>/<channel>/<seq>.json is the deepest key: folders below that are never listed
MAX_KEY_DEPTH = 4


class Conflict(StoreError):
    """An object with that key already exists (someone else wrote it first)."""


class UnknownManifest(UsageError, StoreError):
    """No manifest has the id the user gave: a usage error (exit 2), still a StoreError for callers that catch one."""

    exit_code = 2


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

    def read_token(self, key: str) -> tuple[bytes, str] | None:
        """An object's bytes and a version token for swap(), or None when it does not exist."""
        ...

    def swap(self, key: str, data: bytes, token: str | None) -> None:
        """Replace an object only if it is still at version `token` (None: only if absent); Conflict otherwise."""
        ...


class LocalBackend:
    """A folder; atomic exclusive writes (temp file, fsync, link) so a record is whole or absent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def create(self, key: str, data: bytes) -> None:
        self._check_parents(key)
        try:
            atomic_write(self.root / key, data, mode=0o644, exclusive=True)
        except FileExistsError:
            if not (self.root / key).is_file():
                # mkdir met a file where a folder belongs: retrying cannot help
                raise StoreError(f"cannot write {self.root / key}: a path above it is not a folder") from None
            raise Conflict(f"{self.root / key} already exists; the store never overwrites a record") from None
        except OSError as exc:
            raise StoreError(f"cannot write {self.root / key}: {exc.strerror or exc}") from None

    def _check_parents(self, key: str) -> None:
        """StoreError when the store, or a folder on the way to key, exists as something other than a folder."""
        path = self.root
        for part in ("", *key.split("/")[:-1]):
            path = path / part if part else path
            if path.exists() and not path.is_dir():
                raise StoreError(
                    f"store {self.root}: {path} is a file where a folder belongs (damaged store?); "
                    "move it away or restore the folder"
                )

    def read_token(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = (self.root / key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.root / key}: {exc.strerror or exc}") from None
        return data, hashlib.sha256(data).hexdigest()

    def swap(self, key: str, data: bytes, token: str | None) -> None:
        import fcntl

        path = self.root / key
        self._check_parents(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # the lock makes compare-and-replace one step among writers on this filesystem
            with open(path.parent / f".{path.name}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = self.read_token(key)
                if (current[1] if current else None) != token:
                    raise Conflict(f"{path} changed while it was being replaced")
                atomic_write(path, data, mode=0o644)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None

    def read(self, key: str) -> bytes:
        try:
            return read_regular(self.root / key, what="store record", limit=MAX_RECORD_BYTES)
        except FileNotFoundError:
            raise StoreError(f"{self.root / key} does not exist") from None
        except InputError as exc:
            raise StoreError(str(exc)) from None

    def keys(self, prefix: str) -> list[str]:
        if prefix and (prefix.startswith("/") or any(p in ("", ".", "..") for p in prefix.rstrip("/").split("/"))):
            # only the store's own folders are walked: `manifest list ../..` is no way to list the host
            raise StoreError(f"store {self.root}: {clip(prefix)!r} is not a folder of the store")
        base = self.root / prefix if prefix else self.root
        self._check_parents(prefix.rstrip("/") + "/x" if prefix else "x")
        if not base.exists():
            return []
        if not base.is_dir():
            raise StoreError(
                f"store {self.root}: {base} is a file where a folder belongs (damaged store?); "
                "move it away or restore the folder"
            )
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root)
            # records lie at most MAX_KEY_DEPTH folders deep: never walk below that (a store at a big folder)
            depth = len(rel_dir.parts)
            # dot-names are atomic_write's temp files and lock files (or editor litter), never records
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and depth + 1 < MAX_KEY_DEPTH)
            for name in filenames:
                if not name.startswith(".") and os.path.isfile(os.path.join(dirpath, name)):
                    out.append((rel_dir / name).as_posix())
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
            # the size S3 states, checked before reading (read(amt) would allocate the whole limit every time)
            if int(resp.get("ContentLength") or 0) > MAX_RECORD_BYTES:
                raise StoreError(f"{self.location(key)} is over the limit of {MAX_RECORD_BYTES} bytes for a record")
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

    def read_token(self, key: str) -> tuple[bytes, str] | None:
        from imagekit.runners.aws import aws_errors, error_code

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(resp["Body"].read()), str(resp["ETag"])
        except aws_errors() as exc:
            if error_code(exc)[0] in ("NoSuchKey", "404"):
                return None
            raise StoreError(f"cannot read {self.location(key)}: {exc}") from None

    def swap(self, key: str, data: bytes, token: str | None) -> None:
        from imagekit.runners.aws import aws_errors, error_code

        cond = {"IfMatch": token} if token is not None else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **cond)
        except aws_errors() as exc:
            code, status = error_code(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (404, 409, 412):
                raise Conflict(f"{self.location(key)} changed while it was being replaced") from None
            raise StoreError(f"cannot write {self.location(key)}: {exc}") from None


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
        if image is not None and not IMAGE_NAME_RE.fullmatch(image):
            from imagekit.errors import UsageError

            raise UsageError(f"{clip(image)!r} is not an image name (lowercase letters, digits, '.', '_', '-')")
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
            raise UnknownManifest(f"no manifest {clip(ref)!r} in {self.url} (see `imagekit manifest list`)")
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
    @staticmethod
    def head_key(log: str) -> str:
        """Where a log's signed head lives."""
        return f"{log}/{HEAD_NAME}"

    def read_head(self, log: str) -> bytes | None:
        """A log's head as stored, or None when it has none."""
        found = self.backend.read_token(self.head_key(log))
        return found[0] if found else None

    def advance_head(self, log: str, seq: int, data: bytes, seq_of: Callable[[bytes], int]) -> None:
        """Replace a log's head with data (for record seq) unless a head at seq or later is there already.

        Compare-and-swap, so a slow writer never moves the head back past a faster one's newer record.
        """
        key = self.head_key(log)
        for attempt in range(MAX_CLAIM_ATTEMPTS):
            current = self.backend.read_token(key)
            if current is not None and seq_of(current[0]) >= seq:
                return
            try:
                self.backend.swap(key, data, current[1] if current else None)
            except Conflict:
                time.sleep(random.uniform(0, min(0.5, 0.01 * (attempt + 1))))  # noqa: S311 - jitter, not crypto
                continue
            return
        raise StoreError(f"could not update {self.backend.location(key)} after {MAX_CLAIM_ATTEMPTS} attempts")

    def read_log(self, log: str) -> list[LogEntry]:
        """Every record of a log, in sequence order."""
        out = []
        for key in self.backend.keys(log + "/"):
            m = SEQ_RE.fullmatch(key.rsplit("/", 1)[-1])
            if m and key.rsplit("/", 1)[0] == log:
                out.append(LogEntry(int(m.group(1)), key, self.backend.read(key)))
        return sorted(out, key=lambda e: e.seq)

    def append(self, log: str, make: Callable[[list[LogEntry], int], bytes]) -> LogEntry:
        """Append a record: make(existing, seq) builds it from the log as read; retried when another writer wins."""
        for attempt in range(MAX_CLAIM_ATTEMPTS):
            existing = self.read_log(log)
            seq = existing[-1].seq + 1 if existing else 1
            key = f"{log}/{seq:010d}.json"
            try:
                # make may raise Conflict itself when it sees the log moved on while it was read
                data = make(existing, seq)
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
