"""Channel and revocation logs: append-only, each record a signed DSSE envelope chained to the one before."""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagekit.errors import SignatureError, StoreError
from imagekit.inputs import JsonInputError, load_json
from imagekit.manifest.dsse import envelope_bytes, envelope_payload, parse_envelope, sign_envelope, verify_envelope
from imagekit.manifest.heads import Seen, SeenHeads
from imagekit.manifest.keys import Signer, TrustedKey
from imagekit.manifest.statement import BuildRecord, canonical_json, sha256_hex
from imagekit.manifest.store import CHANNELS, REVOCATIONS, Conflict, LogEntry, Store
from imagekit.timefmt import iso_utc

RECORD_PAYLOAD_TYPE = "application/vnd.imagekit.record+json"
CHANNEL_TYPE = "https://imagekit.dev/channel-record/v1"
REVOCATION_TYPE = "https://imagekit.dev/revocation/v1"
HEAD_TYPE = "https://imagekit.dev/log-head/v1"
HEAD_WAIT = 2.0  # seconds a reader waits for the head of a log whose first record is being appended


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
    """Verify every record's signature, sequence number (1, 2, 3, … without gaps), log and link to the one before."""
    out: list[Record] = []
    prev: str | None = None
    for index, entry in enumerate(entries):
        where = store.location(entry.key)
        if entry.seq != index + 1:
            raise StoreError(
                f"record {where} is numbered {entry.seq}, but the one before it is {index}: records are numbered "
                f"without gaps (the log was altered; remove the stray record)"
            )
        try:
            verified = verify_envelope(parse_envelope(entry.data), trusted, payload_type=RECORD_PAYLOAD_TYPE)
        except SignatureError as exc:
            raise SignatureError(f"record {where} does not verify: {exc}") from None
        try:
            doc = load_json(verified.payload)
        except JsonInputError as exc:
            raise SignatureError(f"record {where} is not a readable record: {exc}") from None
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


def _head_seq(data: bytes) -> int:
    """The sequence number a stored head names (its signature is checked by readers, not here)."""
    try:
        doc = load_json(envelope_payload(data))
        return int(doc["seq"]) if isinstance(doc, dict) else 0
    except (SignatureError, JsonInputError, KeyError, TypeError, ValueError):
        return 0


def _span(first: int, last: int) -> str:
    return f"record {last}" if first == last else f"records {first}..{last}"


def _check_head(store: Store, log: str, head: bytes | None, entries: list[LogEntry], trusted: list[TrustedKey]) -> None:
    """The log's signed head must be there once it has records, and name its newest record or one before it.

    A head behind the records is an append in flight (record first, head after); a head ahead of them means
    records were removed.
    """
    where = store.location(store.head_key(log))
    if head is None:
        if entries:
            raise StoreError(
                f"log {store.location(log)} has {len(entries)} records but no signed head ({where} is missing): "
                "its newest records may have been removed with it; restore the head from a backup or versioned bucket "
                "(a store written before imagekit signed log heads: check it, then `imagekit manifest seal-heads`)"
            )
        return
    try:
        verified = verify_envelope(parse_envelope(head), trusted, payload_type=RECORD_PAYLOAD_TYPE)
        doc = load_json(verified.payload)
    except (SignatureError, JsonInputError) as exc:
        raise SignatureError(f"the head {where} does not verify: {exc}") from None
    if not isinstance(doc, dict) or doc.get("_type") != HEAD_TYPE or doc.get("log") != log:
        raise SignatureError(f"the head {where} is not the head of log {log} (copied?)")
    seq = doc.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise SignatureError(f"the head {where} names no record")
    if seq == 0:
        return  # a new log's first head, signed before its first record: any record after it is in flight
    if seq > len(entries):
        removed = _span(len(entries) + 1, seq)
        raise StoreError(
            f"log {store.location(log)} was rolled back: its signed head names record {seq}, but the log ends at "
            f"{len(entries)} ({removed} removed); restore them from a backup or versioned bucket"
        )
    if doc.get("digest") != sha256_hex(entries[seq - 1].data):
        raise SignatureError(f"record {store.location(entries[seq - 1].key)} is not the record its signed head names")


def _check_seen(store: Store, log: str, entries: list[LogEntry], seen: Seen | None, *, writer: bool = False) -> None:
    """Refuse a log that is shorter than, or differs from, what a reader on this machine verified before.

    `seen` must be read before `entries` were listed: another process here may append (and remember) meanwhile.
    """
    seen_heads = SeenHeads(store.url)
    if seen is not None:
        if len(entries) < seen.seq:
            if writer and len(store.read_log(log)) >= seen.seq:
                raise Conflict(f"{store.location(log)} moved on while it was read")
            raise StoreError(
                f"log {store.location(log)} was rolled back: this machine has verified it up to record {seen.seq}, "
                f"it now ends at {len(entries)} ({_span(len(entries) + 1, seen.seq)} removed, with its head); "
                f"restore them from a backup or versioned bucket (seen heads: {seen_heads.path})"
            )
        if sha256_hex(entries[seen.seq - 1].data) != seen.digest:
            raise StoreError(
                f"log {store.location(log)} was rewritten: record {seen.seq} differs from the one this machine "
                f"verified before (seen heads: {seen_heads.path})"
            )
    if not writer and entries:
        seen_heads.update(log, Seen(len(entries), sha256_hex(entries[-1].data)))


def read_checked(store: Store, log: str, trusted: list[TrustedKey], expect: str) -> list[Record]:
    """A log's records, verified one by one, against its signed head and against what this machine saw before."""
    seen = SeenHeads(store.url).get(log)
    entries, head = _read_with_head(store, log)
    records = verify_log(store, entries, trusted, expect)
    _check_seen(store, log, entries, seen)
    _check_head(store, log, head, entries, trusted)
    return records


def _read_with_head(store: Store, log: str) -> tuple[list[LogEntry], bytes | None]:
    # records first, head second; a head newer than the listing may be a writer that finished in between, so
    # the records are listed once more before the head is called ahead of them
    entries = store.read_log(log)
    head = store.read_head(log)
    if head is not None and _head_seq(head) > len(entries):
        entries = store.read_log(log)
    # a log's first record is written before its first head: give a writer in flight a moment to finish
    delay = 0.01
    while head is None and entries and delay < HEAD_WAIT:
        time.sleep(delay)
        delay *= 2
        head = store.read_head(log)
    return entries, head


def read_verified(store: Store, log: str, trusted: list[TrustedKey], expect: str) -> list[Record]:
    """Every record of a log, verified (signatures, chain, head, seen heads)."""
    return read_checked(store, log, trusted, expect)


def append_signed(
    store: Store,
    log: str,
    *,
    signer: Signer,
    trusted: list[TrustedKey],
    expect: str,
    build: Callable[[list[Record], int], dict[str, Any]],
) -> Record:
    """Append a signed record; build(records, seq) decides from the log as it is at that moment (and may raise).

    The log is checked as a reader checks it first (a rolled-back log is never appended to), and its signed head
    is moved to the new record afterwards.
    """
    if signer.keyid not in {t.keyid for t in trusted}:
        raise SignatureError(
            f"signing key {signer.ref} ({signer.keyid[:16]}…) is not in the trust file, so its records would not "
            "verify; add its public key to the trust file"
        )
    signed: dict[str, Any] = {}

    def make(entries: list[LogEntry], seq: int) -> bytes:
        records = verify_log(store, entries, trusted, expect)
        _check_seen(store, log, entries, SeenHeads(store.url).get(log), writer=True)
        head = store.read_head(log)
        if head is None and entries:
            _entries, head = _read_with_head(store, log)
        if head is not None and _head_seq(head) > len(entries):
            # another writer's record landed after our listing: claiming this number would conflict; re-read
            raise Conflict(f"{store.location(log)} moved on while it was read")
        _check_head(store, log, head, entries, trusted)
        doc = build(records, seq)
        doc.update(_type=expect, seq=seq, prev=sha256_hex(entries[-1].data) if entries else None)
        signed["doc"] = doc
        return envelope_bytes(sign_envelope(canonical_json(doc), signer, RECORD_PAYLOAD_TYPE))

    if not store.read_log(log) and store.read_head(log) is None:
        # a new log gets a signed head naming no record before its first record: killed between the record and
        # the head that names it, the log still has a head (one behind, as any append in flight), never none
        _sign_genesis(store, log, signer)
    entry = store.append(log, make)
    _sign_head(store, log, entry, signer)
    return Record(entry.seq, signed["doc"], signer.keyid, store.location(entry.key))


def _sign_genesis(store: Store, log: str, signer: Signer) -> None:
    head_doc = {"_type": HEAD_TYPE, "log": log, "seq": 0, "digest": None}
    head = envelope_bytes(sign_envelope(canonical_json(head_doc), signer, RECORD_PAYLOAD_TYPE))
    store.advance_head(log, 0, head, _head_seq)


def _sign_head(store: Store, log: str, entry: LogEntry, signer: Signer) -> None:
    head_doc = {"_type": HEAD_TYPE, "log": log, "seq": entry.seq, "digest": sha256_hex(entry.data)}
    head = envelope_bytes(sign_envelope(canonical_json(head_doc), signer, RECORD_PAYLOAD_TYPE))
    store.advance_head(log, entry.seq, head, _head_seq)
    SeenHeads(store.url).update(log, Seen(entry.seq, sha256_hex(entry.data)))


def seal_heads(store: Store, signer: Signer, trusted: list[TrustedKey]) -> list[str]:
    """Sign a head for each log written before logs had signed heads (records but no head); their locations.

    Trust on first use, asked for on purpose: every record of such a log must verify (signature, sequence, chain)
    first, and what is sealed is the log as it stands now, so a log that lost records before this is not detected.
    """
    if signer.keyid not in {t.keyid for t in trusted}:
        raise SignatureError(f"signing key {signer.ref} is not in the trust file; add its public key to it first")
    logs = [(REVOCATIONS, REVOCATION_TYPE)]
    channel_logs = {key.rsplit("/", 1)[0] for key in store.backend.keys(CHANNELS + "/")}
    logs += [(log, CHANNEL_TYPE) for log in sorted(channel_logs) if len(log.split("/")) == 3]
    sealed = []
    for log, expect in logs:
        entries = store.read_log(log)
        if not entries or store.read_head(log) is not None:
            continue
        verify_log(store, entries, trusted, expect)
        _sign_head(store, log, entries[-1], signer)
        sealed.append(store.location(log))
    return sealed


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
