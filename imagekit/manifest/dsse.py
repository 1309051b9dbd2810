"""DSSE envelopes: PAE, signing, and verification against trusted keys."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from imagekit.errors import SignatureError
from imagekit.inputs import MAX_RECORD_BYTES, JsonInputError, load_json
from imagekit.manifest.keys import Signer, TrustedKey, b64, verify_signature

INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
ENVELOPE_FIELDS = frozenset({"payload", "payloadType", "signatures"})
SIGNATURE_FIELDS = frozenset({"keyid", "sig"})


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the LAST of two equal keys while other parsers keep the first: a forged first `payload`
    # could show one thing to them and verify as another here, so a duplicate is never accepted anywhere.
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise SignatureError(f"duplicate JSON key {key!r} (rule: no duplicate keys)")
            seen.add(key)
    return out


def loads_strict(raw: bytes | str, *, limit: int = MAX_RECORD_BYTES) -> Any:
    """JSON within the size and nesting bounds (JsonInputError) that repeats no key in any object (SignatureError).
    One parse: the bounds are checked on the text first, the duplicates while objects are made."""
    return load_json(raw, limit=limit, object_pairs_hook=_refuse_duplicates)


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE pre-authentication encoding: "DSSEv1" SP len(type) SP type SP len(body) SP body."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def sign_envelope(payload: bytes, signer: Signer, payload_type: str = INTOTO_PAYLOAD_TYPE) -> dict[str, Any]:
    """A DSSE envelope over payload with one signature."""
    sig = signer.sign(pae(payload_type, payload))
    signature = {"keyid": signer.keyid, "sig": b64(sig)}
    return {"payload": b64(payload), "payloadType": payload_type, "signatures": [signature]}


def envelope_bytes(envelope: dict[str, Any]) -> bytes:
    """Stable serialisation of an envelope (sorted keys, trailing newline)."""
    return (json.dumps(envelope, sort_keys=True, indent=2) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Verified:
    """A verified envelope: its payload and the trusted key that signed it."""

    payload: bytes
    payload_type: str
    key: TrustedKey
    keyid_hint: str = ""

    @property
    def hint_matches(self) -> bool:
        """True when the signature's keyid names the key that verified it (the keyid is not signed: a hint)."""
        return self.keyid_hint == self.key.keyid


def _b64decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise SignatureError(f"envelope {what} is not a base64 string")
    try:
        # validate=True: a non-alphabet character is tampering, not something to skip over
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SignatureError(f"envelope {what} is not valid base64") from None
    # refuse non-canonical text (changed padding bits decode to the same bytes): any altered byte must fail
    if base64.b64encode(raw).decode("ascii") != text:
        raise SignatureError(f"envelope {what} is not canonical base64 (altered?) (rule: canonical base64)")
    return raw


def parse_envelope(raw: bytes) -> dict[str, Any]:
    """Parse envelope JSON and check its shape: the DSSE fields only, no duplicate keys."""
    try:
        env = loads_strict(raw)
    except SignatureError as exc:
        raise SignatureError(f"envelope: {exc}") from None
    except JsonInputError as exc:
        raise SignatureError(f"not a DSSE envelope ({exc})") from None
    if not isinstance(env, dict) or not env.keys() >= ENVELOPE_FIELDS:
        raise SignatureError("not a DSSE envelope (needs payload, payloadType and signatures)")
    extra = sorted(env.keys() - ENVELOPE_FIELDS)
    if extra:
        raise SignatureError(f"envelope has unknown field(s) {', '.join(extra)} (rule: DSSE fields only)")
    if not isinstance(env["signatures"], list) or not env["signatures"]:
        raise SignatureError("the envelope is unsigned (no signatures)")
    for i, entry in enumerate(env["signatures"]):
        if not isinstance(entry, dict) or "sig" not in entry:
            raise SignatureError(f"envelope signatures[{i}] is not a {{keyid, sig}} object (rule: DSSE fields only)")
        extra = sorted(entry.keys() - SIGNATURE_FIELDS)
        if extra:
            raise SignatureError(
                f"envelope signatures[{i}] has unknown field(s) {', '.join(extra)} (rule: DSSE fields only)"
            )
        if not isinstance(entry.get("keyid", ""), str):
            raise SignatureError(f"envelope signatures[{i}].keyid is not a string (rule: DSSE fields only)")
    return env


def envelope_payload(raw: bytes) -> bytes:
    """The payload of an envelope WITHOUT checking its signature (for showing what a bad manifest claims)."""
    return _b64decode(parse_envelope(raw).get("payload"), "payload")


def verify_envelope(
    envelope: dict[str, Any], trusted: list[TrustedKey], *, payload_type: str = INTOTO_PAYLOAD_TYPE
) -> Verified:
    """Accept the envelope when one signature verifies with a trusted key; raise SignatureError with why not."""
    if envelope.get("payloadType") != payload_type:
        raise SignatureError(f"payloadType is {envelope.get('payloadType')!r}, expected {payload_type!r}")
    payload = _b64decode(envelope.get("payload"), "payload")
    sigs = envelope.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise SignatureError("the envelope is unsigned (no signatures)")
    if not trusted:
        raise SignatureError("no trusted keys to verify with")
    message = pae(payload_type, payload)
    by_id = {t.keyid: t for t in trusted}
    reasons: list[str] = []
    for entry in sigs:
        if not isinstance(entry, dict):
            reasons.append("malformed signature entry")
            continue
        sig = _b64decode(entry.get("sig"), "signature")
        keyid = entry.get("keyid") or ""
        # keyid is a hint only (it is not signed): fall back to trying every trusted key
        candidates = [by_id[keyid]] if keyid in by_id else list(trusted)
        for key in candidates:
            if verify_signature(key.key, sig, message):
                return Verified(payload, payload_type, key, keyid)
        if keyid and keyid not in by_id:
            reasons.append(f"signed by unknown key {keyid[:16]}… (not in the trust file)")
        else:
            reasons.append(f"signature by {keyid[:16] or 'an unnamed key'}… does not verify (content was altered?)")
    raise SignatureError("; ".join(reasons))
