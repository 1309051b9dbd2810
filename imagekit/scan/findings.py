"""Findings of every scanner in one shape, the gate over them, and the signed vuln statement's predicate. Pure.

The predicate is cosign's vulnerability attestation (predicateType https://cosign.sigstore.dev/attestation/vuln/v1:
invocation, scanner{uri, version, db, result}, metadata{scanStartedOn, scanFinishedOn}); imagekit's findings, the
counts by severity, each allowed finding with its reason and the gate's verdict are its scanner.result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from imagekit.inputs import clip, printable

VULN_PREDICATE_TYPE = "https://cosign.sigstore.dev/attestation/vuln/v1"
SEVERITIES = ("unknown", "low", "medium", "high", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")
MAX_FINDINGS = 100000


def severity_of(text: object) -> str:
    """A scanner's severity word as one of SEVERITIES ('Negligible' and anything unknown -> unknown)."""
    word = str(text or "").strip().lower()
    if word in _RANK:
        return word
    return {"moderate": "medium", "important": "high", "negligible": "low", "emergency": "critical"}.get(
        word, "unknown"
    )


@dataclass(frozen=True)
class Finding:
    """One known vulnerability of one installed package."""

    id: str
    package: str
    installed: str
    fixed: str
    severity: str
    scanner: str
    kind: str = "deb"  # deb | python | other
    title: str = ""
    aliases: tuple[str, ...] = ()

    def line(self) -> str:
        """One printable line: id, package, installed and fixed versions, severity."""
        fixed = f", fixed in {self.fixed}" if self.fixed else ", no fix yet"
        return f"{self.id} ({self.severity}): {self.package} {self.installed}{fixed} [{self.scanner}]"


def finding(  # noqa: PLR0917 (one scanner row, field by field)
    id_: object, package: object, installed: object, fixed: object, severity: object, scanner: str, **extra: Any
) -> Finding | None:
    """A Finding from untrusted scanner output: bounded, printable fields; None when the id is not an id."""
    ident = str(id_ or "")
    if not _ID.match(ident):
        return None
    aliases = tuple(a for a in (str(x) for x in extra.pop("aliases", ())) if _ID.match(a) and a != ident)
    return Finding(
        id=ident,
        package=clip(printable(str(package or "")), 120),
        installed=clip(printable(str(installed or "")), 120),
        fixed=clip(printable(str(fixed or "")), 120),
        severity=severity_of(severity),
        scanner=scanner,
        kind=str(extra.pop("kind", "other")),
        title=clip(printable(str(extra.pop("title", "") or "")), 200),
        aliases=aliases,
    )


@dataclass
class ScanOutcome:
    """What the scanners found and what the gate made of it."""

    fail_on: str
    findings: list[Finding] = field(default_factory=list)
    ran: list[dict[str, str]] = field(default_factory=list)  # {name, version, db}
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # a required scanner missing, a scanner that failed
    allowed: list[tuple[Finding, str]] = field(default_factory=list)
    blocking: list[Finding] = field(default_factory=list)
    started: str = ""
    finished: str = ""
    sbom_sha256: str = ""

    @property
    def passed(self) -> bool:
        """The gate's verdict: nothing blocking and every required scanner ran."""
        return not self.blocking and not self.errors

    def failure(self) -> str | None:
        """The gate's failure as one message naming each blocking finding (package, fixed version, advisory)."""
        if self.passed:
            return None
        parts = [f.line() for f in self.blocking[:20]]
        if len(self.blocking) > 20:
            parts.append(f"and {len(self.blocking) - 20} more")
        return "scan gate: " + "; ".join(self.errors + parts)

    def counts(self) -> dict[str, int]:
        """Findings by severity (every severity present, zero included)."""
        out = dict.fromkeys(SEVERITIES, 0)
        for f in self.findings:
            out[f.severity] += 1
        return out


def dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per (id, package, installed), the highest severity kept; sorted for stable records."""
    best: dict[tuple[str, str, str], Finding] = {}
    for f in findings:
        key = (f.id, f.package, f.installed)
        if key not in best or _RANK[f.severity] > _RANK[best[key].severity]:
            best[key] = f
    return sorted(best.values(), key=lambda f: (-_RANK[f.severity], f.id, f.package))


def judge(outcome: ScanOutcome, allow: Mapping[str, str]) -> ScanOutcome:
    """Apply the gate: a finding at or above fail_on blocks unless its id (or an alias) is allowed."""
    outcome.findings = dedupe(outcome.findings)
    threshold = None if outcome.fail_on == "none" else _RANK[outcome.fail_on]
    outcome.allowed, outcome.blocking = [], []
    for f in outcome.findings:
        reason = next((allow[i] for i in (f.id, *f.aliases) if i in allow), None)
        if reason is not None:
            outcome.allowed.append((f, reason))
        elif threshold is not None and _RANK[f.severity] >= threshold:
            outcome.blocking.append(f)
    return outcome


def vuln_predicate(outcome: ScanOutcome, *, tool_version: str) -> dict[str, Any]:
    """cosign's vuln/v1 predicate with imagekit's result: counts, findings, allowed with reasons, the verdict."""
    names = "+".join(r["name"] for r in outcome.ran) or "none"
    return {
        "invocation": {"parameters": [f"fail_on={outcome.fail_on}"], "uri": "", "event_id": "", "builder.id": ""},
        "scanner": {
            "uri": f"urn:imagekit:scan:{names}",
            "version": tool_version,
            "db": {"uri": ";".join(r.get("db", "") for r in outcome.ran), "version": ""},
            "result": {
                "gate": {
                    "fail_on": outcome.fail_on,
                    "passed": outcome.passed,
                    "blocking": [f.id for f in outcome.blocking],
                    "errors": outcome.errors,
                },
                "counts": outcome.counts(),
                "findings": [asdict(f) | {"aliases": list(f.aliases)} for f in outcome.findings],
                "allowed": [{"id": f.id, "package": f.package, "reason": r} for f, r in outcome.allowed],
                "scanners": outcome.ran,
                "skipped": outcome.skipped,
                "sbom_sha256": outcome.sbom_sha256,
            },
        },
        "metadata": {"scanStartedOn": outcome.started, "scanFinishedOn": outcome.finished},
    }


def findings_of(predicate: Mapping[str, Any]) -> list[Finding]:
    """The findings of a stored vuln predicate (signed, so trusted once its envelope verified)."""
    result = ((predicate.get("scanner") or {}).get("result") or {}) if isinstance(predicate, Mapping) else {}
    out = []
    for raw in (result.get("findings") or [])[:MAX_FINDINGS]:
        if isinstance(raw, dict):
            f = finding(
                raw.get("id"), raw.get("package"), raw.get("installed"), raw.get("fixed"), raw.get("severity"),
                str(raw.get("scanner") or ""), kind=str(raw.get("kind") or "other"), title=raw.get("title", ""),
                aliases=raw.get("aliases") or (),
            )  # fmt: skip
            if f is not None:
                out.append(f)
    return out
