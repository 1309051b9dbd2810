"""The scan's signed statement: cosign's vulnerability predicate over the build's subjects, beside the record.

Stored as `<id>.vuln.dsse.json` (and a Sigstore bundle), bound to the provenance by the sha256 of the predicate's
canonical JSON (its `vulnerability-scan` byproduct), attached at the registry beside provenance and SBOM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from imagekit.errors import SignatureError
from imagekit.manifest.dsse import loads_strict, parse_envelope, verify_envelope
from imagekit.manifest.rules import check_statement
from imagekit.manifest.statement import STATEMENT_TYPE, canonical_json, sha256_hex
from imagekit.scan.findings import VULN_PREDICATE_TYPE

if TYPE_CHECKING:
    from imagekit.manifest.ledger import Entry, Ledger

VULN_SUFFIX = ".vuln.dsse.json"
VULN_BUNDLE_SUFFIX = ".vuln.sigstore.json"
RULE = "(rule: the scan matches its signed digest)"


def vuln_statement(subjects: Sequence[Mapping[str, Any]], predicate: Mapping[str, Any]) -> dict[str, Any]:
    """The in-toto statement that carries the scan, over the same subjects as the build's provenance."""
    return {"_type": STATEMENT_TYPE, "subject": [dict(s) for s in subjects], "predicateType": VULN_PREDICATE_TYPE,
            "predicate": dict(predicate)}  # fmt: skip


def vuln_sha256(predicate: Mapping[str, Any]) -> str:
    """What the provenance's `vulnerability-scan` byproduct binds: sha256 of the predicate's canonical JSON."""
    return sha256_hex(canonical_json(predicate))


def read_vuln(ledger: Ledger, e: Entry) -> dict[str, Any] | None:
    """The scan predicate beside a record, checked: signed by a trusted key, over the record's subjects, hashing
    to the digest the record signed. None for a record made without a scan."""
    assert e.build is not None
    want = e.build.vuln_sha256
    raw = ledger.store.read_sidecar(e.key, VULN_SUFFIX)
    if raw is None:
        if want:
            raise SignatureError(f"manifest {e.id}: it names a scan but none lies beside it {RULE}")
        return None
    try:
        doc = loads_strict(verify_envelope(parse_envelope(raw), ledger.keys).payload)
    except SignatureError as exc:
        raise SignatureError(f"manifest {e.id}: its scan statement: {exc}") from None
    check_statement(e.id, doc)
    if not isinstance(doc, dict) or doc.get("predicateType") != VULN_PREDICATE_TYPE:
        raise SignatureError(f"manifest {e.id}: the scan beside it is not a {VULN_PREDICATE_TYPE} statement {RULE}")
    if doc.get("subject") != e.build.subjects:
        raise SignatureError(f"manifest {e.id}: the scan beside it names other subjects {RULE}")
    predicate = doc.get("predicate")
    if not isinstance(predicate, dict) or want is None or vuln_sha256(predicate) != want:
        raise SignatureError(
            f"manifest {e.id}: the scan beside it does not hash to the digest the record signed {RULE}"
        )
    return predicate
