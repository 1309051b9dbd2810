"""A spec's view of its store: trust resolution, manifests with their signature, revocation and channel state."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from imagekit.errors import SignatureError, StoreError
from imagekit.inputs import clip, exists, read_regular
from imagekit.manifest.channels import (
    CHANNEL_TYPE,
    Record,
    Revocations,
    assignments,
    channel_log,
    channel_names,
    read_revocations,
    read_verified,
)
from imagekit.manifest.dsse import loads_strict, parse_envelope, verify_envelope
from imagekit.manifest.keys import PUBLIC_NAME, TrustedKey, load_trust, trusted_from_pem
from imagekit.manifest.rules import check_statement
from imagekit.manifest.sbom import SBOM_SUFFIX, check_sbom_statement
from imagekit.manifest.statement import BuildRecord, manifest_id_of, parse_statement
from imagekit.manifest.store import MANIFEST_SUFFIX, Store, open_store
from imagekit.paths import config_dir
from imagekit.spec import LoadedSpec


def spec_store(loaded: LoadedSpec, *, s3_client: Any = None) -> Store:
    """The store a spec names (`store:`, default manifests/ next to the spec)."""
    return open_store(loaded.spec.store, base=loaded.root, s3_client=s3_client)


@dataclass(frozen=True)
class Trust:
    """The keys verification accepts and where they came from (for messages)."""

    keys: list[TrustedKey]
    source: str


def resolve_trust(loaded: LoadedSpec | None, override: Path | None = None, *, kms_client: Any = None) -> Trust:
    """--trust FILE (a trust YAML or a single PEM), else the spec's trust file, else the local default public key."""
    if override is not None:
        return trust_from_file(override, kms_client=kms_client)
    if loaded is not None:
        path = loaded.local(loaded.spec.signing.trust)
        if exists(path):
            return trust_from_file(path, kms_client=kms_client)
    default_pub = config_dir() / PUBLIC_NAME
    if exists(default_pub):
        # No trust file yet: the local default flow (build, verify on the same machine) trusts the local key.
        return Trust([trusted_from_pem(default_pub, f"the local default key {default_pub}")], str(default_pub))
    where = loaded.local(loaded.spec.signing.trust) if loaded else Path("imagekit.trust.yaml")
    raise SignatureError(f"no trusted keys: create {where} (keys: [{{pem: imagekit.pub}}]) or pass --trust FILE")


def trust_from_file(path: Path, *, kms_client: Any = None) -> Trust:
    """A trust YAML file, or a bare PEM public key (cosign.pub, imagekit.pub)."""
    try:
        head = read_regular(path, what="trust file")[:64]
    except FileNotFoundError:
        raise SignatureError(f"trust file {clip(str(path))} does not exist") from None
    if head.lstrip().startswith(b"-----BEGIN"):
        return Trust([trusted_from_pem(path)], str(path))
    return Trust(load_trust(path, kms_client=kms_client), str(path))


@dataclass
class Entry:
    """One stored manifest with what reading it found."""

    key: str
    location: str
    raw: bytes
    build: BuildRecord | None = None
    key_used: TrustedKey | None = None
    keyid_hint_ok: bool = True
    problem: str | None = None
    revoked: str | None = None
    channels: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The manifest id (from the file name)."""
        return self.key.rsplit("/", 1)[-1][: -len(MANIFEST_SUFFIX)]

    @property
    def signed_ok(self) -> bool:
        """True when a trusted key signed it and the payload parsed."""
        return self.build is not None and self.problem is None


@dataclass(frozen=True)
class Checked:
    """A manifest envelope that verified and met every rule: its build, the key, and whether the keyid hint agreed."""

    build: BuildRecord
    key: TrustedKey
    keyid_hint_ok: bool


def check_envelope(manifest_id: str | None, raw: bytes, trust: Trust) -> Checked:
    """Verify one manifest envelope against the trusted keys, parse its statement and apply the strict rules."""
    verified = verify_envelope(parse_envelope(raw), trust.keys)
    mid = manifest_id_of(verified.payload)
    if manifest_id is not None and mid != manifest_id:
        raise SignatureError(
            f"manifest {manifest_id}: its payload hashes to id {mid} (renamed or replaced) (rule: file name is the id)"
        )
    return Checked(parse_statement(mid, verified.payload), verified.key, verified.hint_matches)


class Ledger:
    """Everything in one store as seen through one set of trusted keys. Reads happen on first use."""

    def __init__(self, store: Store, trust: Trust | None, *, trust_error: str | None = None) -> None:
        self.store = store
        self.trust = trust
        self.trust_error = trust_error

    @property
    def keys(self) -> list[TrustedKey]:
        """Trusted keys; SignatureError when there are none."""
        if self.trust is None:
            raise SignatureError(self.trust_error or "no trusted keys")
        return self.trust.keys

    @cached_property
    def revocations(self) -> Revocations:
        """The verified revocation log."""
        return read_revocations(self.store, self.keys) if self.trust else Revocations({}, {})

    def channel_records(self, image: str, channel: str) -> list[Record]:
        """The verified log of one channel."""
        return read_verified(self.store, channel_log(image, channel), self.keys, CHANNEL_TYPE)

    def channels_of(self, image: str) -> dict[str, str]:
        """channel -> manifest id it currently points at, for one image."""
        out = {}
        for ch in channel_names(self.store, image):
            stack = assignments(self.channel_records(image, ch))
            if stack:
                out[ch] = stack[-1]
        return out

    def rollback_target(self, image: str, stack: list[str]) -> BuildRecord | None:
        """The build `rollback` goes back to from a channel's stack: the newest earlier assignment that is not the
        current one (promoted twice in a row) and verifies and is not revoked. gc keeps exactly this one, so the
        two can never disagree about which build a rollback reaches."""
        if not stack:
            return None
        current = stack[-1]
        for mid in reversed(stack[:-1]):
            if mid == current:
                continue
            try:
                b = self.entry(mid, image).build
            except StoreError:
                continue
            if b is not None and not self.revocations.reason(b):
                return b
        return None

    def read_entry(self, key: str) -> Entry:
        """One manifest: verify, parse, revocation."""
        entry = Entry(key, self.store.location(key), self.store.read(key))
        if self.trust is None:
            entry.problem = self.trust_error or "no trusted keys"
            return entry
        try:
            checked = check_envelope(entry.id, entry.raw, self.trust)
        except SignatureError as exc:
            entry.problem = str(exc)
            return entry
        entry.build, entry.key_used, entry.keyid_hint_ok = checked.build, checked.key, checked.keyid_hint_ok
        entry.revoked = self.revocations.reason(entry.build)
        return entry

    def entries(self, image: str | None = None, *, with_channels: bool = True) -> list[Entry]:
        """Every manifest (of one image), oldest first, with channel names filled in."""
        with bulk():
            out = [self.read_entry(k) for k in self.store.manifest_keys(image)]
        if with_channels and self.trust is not None:
            for img in sorted({e.key.split("/", 1)[0] for e in out}):
                for ch, mid in self.channels_of(img).items():
                    for e in out:
                        if e.id == mid and e.key.startswith(img + "/"):
                            e.channels.append(ch)
        out.sort(key=lambda e: (e.build.created if e.build else "", e.id))
        return out

    def entry(self, ref: str, image: str | None = None) -> Entry:
        """The manifest with id (or unique id prefix) ref; with its image, a full id is read without a listing."""
        if image is not None:
            # a channel record names the full id of a build of its image: one read, however big the store is
            key = self.store.manifest_key(image, ref)
            try:
                return self.read_entry(key)
            except StoreError:
                pass  # not there under that name: find() says what is (or why not)
        return self.read_entry(self.store.find(ref))

    def sbom(self, e: Entry) -> dict[str, Any] | None:
        """The CycloneDX document beside a verified record, checked: signed by a trusted key, over the record's
        subjects, hashing to the digest the record signed. None for a record without one (older, or no probe)."""
        assert e.build is not None
        raw = self.store.read_sidecar(e.key, SBOM_SUFFIX)
        if raw is None:
            if e.build.sbom_sha256:
                raise SignatureError(
                    f"manifest {e.id}: it names an SBOM but none lies beside it (rule: SBOM matches its signed digest)"
                )
            return None
        try:
            verified = verify_envelope(parse_envelope(raw), self.keys)
            doc = loads_strict(verified.payload)
        except SignatureError as exc:
            raise SignatureError(f"manifest {e.id}: its SBOM statement: {exc}") from None
        check_statement(e.id, doc)
        return check_sbom_statement(e.id, doc, e.build.subjects, e.build.sbom_sha256)

    def build(self, ref: str, image: str | None = None) -> Entry:
        """A manifest that must verify; SignatureError with why otherwise."""
        e = self.entry(ref, image)
        if e.build is None:
            raise SignatureError(f"manifest {e.id} ({e.location}): {e.problem}")
        return e


def open_ledger(loaded: LoadedSpec, trust: Path | None = None, *, require_trust: bool = True) -> Ledger:
    """The ledger of a spec's store; without require_trust a missing trust file only marks entries unverified."""
    store = spec_store(loaded)
    try:
        return Ledger(store, resolve_trust(loaded, trust))
    except SignatureError as exc:
        if require_trust:
            raise
        return Ledger(store, None, trust_error=str(exc))


@contextlib.contextmanager
def bulk() -> Iterator[None]:
    """No cyclic garbage collection while thousands of records are parsed: they make no cycles, and the collector's
    passes over the growing list made `manifest list` superlinear (12.7x from 1,000 to 10,000 records, 10x without)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
