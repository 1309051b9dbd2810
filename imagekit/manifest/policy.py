"""Admission policy: what a webhook asks of an image before it deploys, answered from the signed store.

A policy file (YAML):

    verified: true            # the record says boot-and-verify passed, and it is not revoked
    scan: {fail_on: high}     # a signed scan beside the record, its gate passed, at fail_on high or stricter
    channels: [stable]        # the build is what one of these channels points at now (empty: any channel)
    trust: release.pub        # the keys it must be signed by (a trust file or a PEM, beside the policy);
                              # default: the spec's trust file

`evaluate` finds the records whose subject is the image's digest and checks each clause; every clause's verdict
is returned, and the first failing one is what the command names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagekit.errors import ImagekitError, SignatureError, UsageError
from imagekit.inputs import clip, read_text
from imagekit.manifest.dsse import envelope_payload
from imagekit.manifest.ledger import Entry, Ledger
from imagekit.manifest.statement import parse_statement
from imagekit.manifest.vuln import read_vuln
from imagekit.scan.findings import SEVERITIES
from imagekit.yamlsrc import YamlSyntaxError, load_located

GATES = ("low", "medium", "high", "critical")


class ScanClause(BaseModel):
    """The scan the image must have passed: its gate at fail_on or stricter."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fail_on: Literal["low", "medium", "high", "critical"] = "high"


class Policy(BaseModel):
    """An admission policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    verified: bool = True
    scan: ScanClause | None = Field(default_factory=ScanClause)
    channels: tuple[str, ...] = ()
    trust: str | None = None


class PolicyFailed(ImagekitError):
    """The image does not meet the policy."""

    exit_code = 1


def load_policy(path: Path) -> Policy:
    """Read and check a policy file (bounded, through the one YAML reader)."""
    try:
        doc = load_located(read_text(path, what="policy file")).data
    except FileNotFoundError:
        raise UsageError(f"policy file {clip(str(path))} does not exist") from None
    except YamlSyntaxError as exc:
        raise UsageError(f"policy file {clip(str(path))}:{exc.line} is not valid YAML: {exc.message}") from None
    try:
        return Policy.model_validate(doc if doc is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise UsageError(f"policy file {clip(str(path))}: {where}: {first.get('msg')}") from None


@dataclass
class Clause:
    """One clause of the policy and how the image fared."""

    name: str
    ok: bool
    detail: str


@dataclass
class PolicyOutcome:
    """Every clause's verdict for one image digest."""

    image: str
    digest: str
    manifest: str | None
    clauses: list[Clause] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every clause holds."""
        return all(c.ok for c in self.clauses)

    def require(self) -> None:
        """Raise PolicyFailed naming the first failing clause (and how many others failed)."""
        failed = [c for c in self.clauses if not c.ok]
        if failed:
            more = f" (and {len(failed) - 1} more clause(s))" if len(failed) > 1 else ""
            raise PolicyFailed(f"{self.image}: policy clause '{failed[0].name}' failed: {failed[0].detail}{more}")


def _digest_of(e: Entry) -> str | None:
    build = e.build
    if build is None:  # not signed by a trusted key: read what it claims, only to say so
        try:
            build = parse_statement(e.id, envelope_payload(e.raw), strict=False)
        except (SignatureError, ValueError, ImagekitError):
            return None
    oci = build.oci
    return oci.split("@", 1)[1] if oci and "@" in oci else None


def evaluate(ledger: Ledger, image: str, digest: str, policy: Policy, served: str) -> PolicyOutcome:
    """Each clause for the records whose subject is `digest` (served: how the registry answered for the ref)."""
    channel_problem = ""
    try:
        listed = ledger.entries(with_channels=True)
    except SignatureError as exc:
        # a channel log the policy's keys did not sign: no channel counts, the records are still judged
        channel_problem = clip(str(exc), 300)
        listed = ledger.entries(with_channels=False)
    entries = [e for e in listed if _digest_of(e) == digest]
    trusted = [e for e in entries if e.signed_ok]
    # the newest trusted record on a channel wins, else the newest trusted one
    pick = next((e for e in reversed(trusted) if e.channels), trusted[-1] if trusted else None)
    out = PolicyOutcome(image, digest, pick.id if pick else None)
    out.clauses.append(
        Clause("pushed with this digest", bool(served), served or f"the registry does not serve {image}")
    )
    if pick is None:
        if entries:
            why = entries[-1].problem or "not signed by a trusted key"
            out.clauses.append(Clause("signed by a trusted key", False, f"manifest {entries[-1].id}: {clip(why)}"))
        else:
            out.clauses.append(Clause("signed by a trusted key", False, f"no record in the store names {digest}"))
        return out
    assert pick.build is not None and pick.key_used is not None
    out.clauses.append(Clause("signed by a trusted key", True, f"manifest {pick.id} by {pick.key_used.source}"))
    if policy.scan is not None:
        out.clauses.append(_scan_clause(ledger, pick, policy.scan))
    if policy.verified:
        if pick.revoked:
            out.clauses.append(Clause("verified", False, f"manifest {pick.id} is revoked: {clip(pick.revoked)}"))
        elif not pick.build.passed:
            why = "; ".join(pick.build.failures) or "failed"
            out.clauses.append(Clause("verified", False, f"manifest {pick.id} failed: {clip(why, 400)}"))
        else:
            out.clauses.append(Clause("verified", True, f"manifest {pick.id} passed boot-and-verify"))
    if channel_problem:
        out.clauses.append(Clause("on a channel", False, channel_problem))
    elif policy.channels:
        on = sorted(set(pick.channels) & set(policy.channels))
        detail = f"on {', '.join(on)}" if on else f"on none of {', '.join(policy.channels)} (on: "
        out.clauses.append(
            Clause("on a channel", bool(on), detail if on else detail + (", ".join(pick.channels) or "none") + ")")
        )
    else:
        ch = ", ".join(pick.channels)
        out.clauses.append(Clause("on a channel", bool(pick.channels), f"on {ch}" if ch else "on no channel"))
    return out


def _scan_clause(ledger: Ledger, e: Entry, want: ScanClause) -> Clause:
    name = "scanned under the gate"
    try:
        predicate = read_vuln(ledger, e)
    except SignatureError as exc:
        return Clause(name, False, str(exc))
    if predicate is None:
        return Clause(name, False, f"manifest {e.id} has no signed scan beside it")
    gate = ((predicate.get("scanner") or {}).get("result") or {}).get("gate") or {}
    fail_on = str(gate.get("fail_on") or "none")
    if gate.get("passed") is not True:
        blocking = ", ".join(str(b) for b in gate.get("blocking") or []) or "; ".join(gate.get("errors") or [])
        return Clause(name, False, f"the scan of manifest {e.id} failed its gate: {clip(blocking, 300)}")
    if fail_on not in GATES or SEVERITIES.index(fail_on) > SEVERITIES.index(want.fail_on):
        return Clause(name, False, f"the scan's gate was fail_on {fail_on}; the policy asks {want.fail_on} or stricter")
    return Clause(name, True, f"gate fail_on {fail_on} passed")
