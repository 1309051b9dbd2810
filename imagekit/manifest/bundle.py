"""Sigstore bundle v0.3 of a DSSE envelope, signed with a key (no certificate, no transparency log).

`@sigstore/verify`, sigstore-python and `cosign verify-blob-attestation --bundle … --key …` read this form; the
`publicKey.hint` is the keyid (sha256 of the key's DER SubjectPublicKeyInfo) that the verifier maps to its key.
"""

from __future__ import annotations

import json
from typing import Any

from imagekit.errors import SignatureError

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
BUNDLE_SUFFIX = ".sigstore.json"


def sigstore_bundle(envelope: dict[str, Any]) -> dict[str, Any]:
    """The bundle of an envelope with exactly one signature (a v0.3 bundle holds one)."""
    sigs = envelope.get("signatures") or []
    if len(sigs) != 1:
        raise SignatureError(f"a Sigstore bundle holds one signature; the envelope has {len(sigs)}")
    sig = sigs[0]
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": sig.get("keyid", "")}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": envelope["payload"],
            "payloadType": envelope["payloadType"],
            "signatures": [{"sig": sig["sig"], "keyid": sig.get("keyid", "")}],
        },
    }


def bundle_bytes(bundle: dict[str, Any]) -> bytes:
    """Stable serialisation (sorted keys, trailing newline)."""
    return (json.dumps(bundle, sort_keys=True, indent=2) + "\n").encode("utf-8")


def check_bundle(raw: bytes, envelope: dict[str, Any], where: str) -> None:
    """A bundle stored beside an envelope must carry exactly that envelope (else someone swapped one of them)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise SignatureError(f"{where} is not JSON (rule: bundle matches envelope)") from None
    if not isinstance(doc, dict) or doc.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise SignatureError(f"{where} is not a Sigstore bundle v0.3 (rule: bundle matches envelope)")
    if doc.get("dsseEnvelope") != sigstore_bundle(envelope)["dsseEnvelope"]:
        raise SignatureError(f"{where} carries another envelope than the record (rule: bundle matches envelope)")
