"""Channel and revocation logs: append-only, each record a signed DSSE envelope chained to the one before."""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagekit.errors import SignatureError, StoreError
from imagekit.manifest.dsse import envelope_bytes, parse_envelope, sign_envelope, verify_envelope
from imagekit.manifest.keys import Signer, TrustedKey
from imagekit.manifest.statement import BuildRecord, canonical_json, sha256_hex
from imagekit.manifest.store import CHANNELS, REVOCATIONS, LogEntry, Store
from imagekit.timefmt import iso_utc

RECORD_PAYLOAD_TYPE = "application/vnd.imagekit.record+json"
CHANNEL_TYPE = "https://imagekit.dev/channel-record/v1"
REVOCATION_TYPE = "https://imagekit.dev/revocation/v1"


@dataclass(frozen=True)
class Record:
    """A verified log record: its sequence number, payload and the key that signed it."""

    seq: int
    doc: dict[str, Any]
    keyid: str
    location: str

    @property
    def manifest(self) -> str:
        """The manifest id the record is about."""
        return str(self.doc.get("manifest", ""))

    def describe(self) -> str:
        """who, when, why in one line."""
        why = f": {self.doc['why']}" if self.doc.get("why") else ""
        return f"by {self.doc.get('who', '?')} at {self.doc.get('when', '?')}{why}"


def who_default() -> str:
    """$USER@hostname, who a record names when nobody is given."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def now_iso() -> str:
    """Current UTC time, ISO 8601 with a Z."""
    return iso_utc()


def channel_log(image: str, channel: str) -> str:
    """The log key of one image's channel."""
    return f"{CHANNELS}/{image}/{channel}"


def _log_fields(log: str) -> dict[str, str]:
    # a channel record names its image and channel, so a signed record copied into another log is refused
    parts = log.split("/")
    return {"image": parts[1], "channel": parts[2]} if parts[0] == CHANNELS and len(parts) == 3 else {}


def verify_log(store: Store, entries: list[LogEntry], trusted: list[TrustedKey], expect: str) -> list[Record]:
    """Verify every record's signature, sequence number, log and link to the previous record."""
    out: list[Record] = []
    prev: str | None = None
    for entry in entries:
        where = store.location(entry.key)
        try:
            verified = verify_envelope(parse_envelope(entry.data), trusted, payload_type=RECORD_PAYLOAD_TYPE)
        except SignatureError as exc:
            raise SignatureError(f"record {where} does not verify: {exc}") from None
        doc = json.loads(verified.payload)
        if not isinstance(doc, dict) or doc.get("_type") != expect:
            raise SignatureError(f"record {where} is not a {expect} record")
        log = entry.key.rsplit("/", 1)[0]
        for name, value in _log_fields(log).items():
            if doc.get(name) != value:
                raise SignatureError(f"record {where} is for {name} {doc.get(name)!r}, not {value!r} (copied?)")
        if doc.get("seq") != entry.seq:
            raise SignatureError(f"record {where} says seq {doc.get('seq')}, stored as {entry.seq} (moved?)")
        if doc.get("prev") != prev:
            raise SignatureError(f"record {where} does not follow the record before it (the log was altered)")
        prev = sha256_hex(entry.data)
        out.append(Record(entry.seq, doc, verified.key.keyid, where))
    return out


def read_verified(store: Store, log: str, trusted: list[TrustedKey], expect: str) -> list[Record]:
    """Every record of a log, verified."""
    return verify_log(store, store.read_log(log), trusted, expect)


def append_signed(
    store: Store,
    log: str,
    *,
    signer: Signer,
    trusted: list[TrustedKey],
    expect: str,
    build: Callable[[list[Record], int], dict[str, Any]],
) -> Record:
    """Append a signed record; build(records, seq) decides from the log as it is at that moment (and may raise)."""
    if signer.keyid not in {t.keyid for t in trusted}:
        raise SignatureError(
            f"signing key {signer.ref} ({signer.keyid[:16]}…) is not in the trust file, so its records would not "
            "verify; add its public key to the trust file"
        )
    signed: dict[str, Any] = {}

    def make(entries: list[LogEntry], seq: int) -> bytes:
        records = verify_log(store, entries, trusted, expect)
        doc = build(records, seq)
        doc.update(_type=expect, seq=seq, prev=sha256_hex(entries[-1].data) if entries else None)
        signed["doc"] = doc
        return envelope_bytes(sign_envelope(canonical_json(doc), signer, RECORD_PAYLOAD_TYPE))

    entry = store.append(log, make)
    return Record(entry.seq, signed["doc"], signer.keyid, store.location(entry.key))


# --- channel state -----------------------------------------------------------------------------------


def assignments(records: list[Record]) -> list[str]:
    """The channel's stack of manifest ids after replaying its log: promote pushes, rollback pops back."""
    stack: list[str] = []
    for rec in records:
        action = rec.doc.get("action")
        if action == "promote":
            stack.append(rec.manifest)
        elif action == "rollback":
            while stack and stack[-1] != rec.manifest:
                stack.pop()
            if not stack:
                raise StoreError(f"record {rec.location} rolls back to {rec.manifest}, which was never assigned")
        else:
            raise StoreError(f"record {rec.location} has unknown action {action!r}")
    return stack


def channel_names(store: Store, image: str) -> list[str]:
    """Every channel an image has a log for."""
    prefix = f"{CHANNELS}/{image}/"
    return sorted({k[len(prefix) :].split("/", 1)[0] for k in store.backend.keys(prefix)})


# --- revocations -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Revocations:
    """Revoked manifest ids and layer hashes, with the record that revoked each."""

    ids: dict[str, Record]
    hashes: dict[str, Record]

    @classmethod
    def from_records(cls, records: list[Record]) -> Revocations:
        """Fold the revocation log."""
        ids: dict[str, Record] = {}
        hashes: dict[str, Record] = {}
        for rec in records:
            ids.setdefault(rec.manifest, rec)
            for h in rec.doc.get("layers", []):
                hashes.setdefault(str(h), rec)
        return cls(ids, hashes)

    def reason(self, build: BuildRecord) -> str | None:
        """Why a build is revoked (itself, or a layer of its chain that another revocation covers), else None."""
        rec = self.ids.get(build.id)
        if rec:
            what = (
                "" if rec.doc.get("layer") in (None, build.layers[-1][0]) else f" (from its layer {rec.doc['layer']})"
            )
            return f"build {build.id} was revoked{what} {rec.describe()}"
        for name, h in build.layers:
            rec = self.hashes.get(h)
            # a layer revoked by hash covers the builds made until then; one finished after it is a rebuild from
            # scratch (nightly and build never reuse a revoked layer's image or AMI), not the revoked artifact
            if rec and build.created <= str(rec.doc.get("when", "")):
                return (
                    f"its layer {name} ({h[:12]}) was revoked with build {rec.manifest} "
                    f"({rec.doc.get('layer', '?')}) {rec.describe()}"
                )
        return None


def read_revocations(store: Store, trusted: list[TrustedKey]) -> Revocations:
    """The verified revocation log, folded."""
    return Revocations.from_records(read_verified(store, REVOCATIONS, trusted, REVOCATION_TYPE))
