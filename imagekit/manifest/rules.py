"""The strict rules a signed statement must also meet: a good signature over a nonsensical claim is still refused.

Each rule has a short name that the error message ends with, so a user (and a test) can tell which one failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from imagekit.errors import SignatureError

# lowercase hex lengths of the in-toto DigestSet algorithms imagekit writes or accepts
HEX_LENGTHS: Mapping[str, tuple[int, ...]] = {
    "sha256": (64,),
    "sha384": (96,),
    "sha512": (128,),
    "sha1": (40,),
    "gitCommit": (40, 64),
    "dirHash": (64,),
}
HEX_RE = re.compile(r"^[0-9a-f]+$")
# RFC 3339 date-time: full date, 'T', time with optional fraction, and Z or a numeric offset
RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _fail(mid: str, what: str, rule: str) -> SignatureError:
    return SignatureError(f"manifest {mid}: {what} (rule: {rule})")


def check_digest(mid: str, where: str, digest: Any) -> None:
    """A DigestSet: a non-empty object of known algorithms with lowercase hex values of the right length."""
    if not isinstance(digest, dict) or not digest:
        raise _fail(mid, f"{where} has no digest", "well-formed digests")
    for algo, value in digest.items():
        lengths = HEX_LENGTHS.get(algo)
        if lengths is None:
            raise _fail(mid, f"{where} uses digest algorithm {algo!r}", "well-formed digests")
        if not isinstance(value, str) or len(value) not in lengths or not HEX_RE.fullmatch(value):
            what = f"{where} has {algo} {str(value)[:20]!r}, not {lengths[0]} lowercase hex digits"
            raise _fail(mid, what, "well-formed digests")


def is_rfc3339(text: Any) -> bool:
    """True for an RFC 3339 date-time such as 2026-11-21T06:30:00Z."""
    if not isinstance(text, str) or not RFC3339_RE.fullmatch(text):
        return False
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _descriptors(doc: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    pred = doc.get("predicate")
    if not isinstance(pred, dict):
        return
    bd = pred.get("buildDefinition")
    bd = bd if isinstance(bd, dict) else {}
    for i, dep in enumerate(bd.get("resolvedDependencies") or []):
        yield f"resolvedDependencies[{i}]", dep
    rd = pred.get("runDetails")
    rd = rd if isinstance(rd, dict) else {}
    for i, bp in enumerate(rd.get("byproducts") or []):
        yield f"byproducts[{i}]", bp


def check_statement(mid: str, doc: Mapping[str, Any]) -> None:
    """Subjects, digests, times and embedded contents of a statement; SignatureError naming the broken rule."""
    subjects = doc.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise _fail(mid, "the statement has no subject", "at least one subject")
    for i, s in enumerate(subjects):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not s["name"]:
            raise _fail(mid, f"subject[{i}] has no name", "at least one subject")
        check_digest(mid, f"subject {s['name']!r}", s.get("digest"))
    for where, desc in _descriptors(doc):
        if not isinstance(desc, dict):
            raise _fail(mid, f"{where} is not an object", "well-formed digests")
        name = desc.get("name", where)
        if "digest" in desc:
            check_digest(mid, f"{where} ({name})", desc["digest"])
        if "content" in desc:
            _check_content(mid, f"{where} ({name})", desc)
    pred = doc.get("predicate")
    meta = pred.get("runDetails", {}).get("metadata", {}) if isinstance(pred, dict) else {}
    for key in ("startedOn", "finishedOn"):
        if isinstance(meta, dict) and key in meta and not is_rfc3339(meta[key]):
            raise _fail(mid, f"runDetails.metadata.{key} is {meta[key]!r}", "RFC 3339 times")


def _check_content(mid: str, where: str, desc: Mapping[str, Any]) -> None:
    """An embedded byproduct (the verification report) must hash to the digest signed beside it."""
    text = desc["content"]
    try:
        raw = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        raise _fail(mid, f"{where} content is not base64", "embedded content matches its digest") from None
    want = (desc.get("digest") or {}).get("sha256")
    if not isinstance(text, str) or hashlib.sha256(raw).hexdigest() != want:
        raise _fail(mid, f"{where} content does not hash to its signed sha256", "embedded content matches its digest")
