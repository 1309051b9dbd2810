"""Trivy's and Grype's JSON reports parsed into findings. Pure (the runners/scanners wrapper runs them).

Formats as documented by each tool: Trivy's `--format json` has `Results[].Vulnerabilities[]` with
VulnerabilityID, PkgName, InstalledVersion, FixedVersion, Severity, Title; Grype's `-o json` has `matches[]` with
`vulnerability{id, severity, fix{versions, state}}`, `artifact{name, version, type}` and `relatedVulnerabilities`.
The reports come from tools reading an SBOM of an untrusted image: they are bounded and checked like any input.
"""

from __future__ import annotations

from typing import Any

from imagekit.inputs import JsonInputError, load_json
from imagekit.scan.findings import MAX_FINDINGS, Finding, finding


def _kind(pkg_type: object) -> str:
    word = str(pkg_type or "").lower()
    return (
        "deb"
        if word in ("deb", "debian", "ubuntu")
        else "python"
        if word in ("python", "python-pkg", "pip")
        else "other"
    )


def _doc(data: bytes | str, tool: str) -> dict[str, Any]:
    try:
        doc = load_json(data if isinstance(data, str) else data.decode("utf-8", "replace"))
    except JsonInputError as exc:
        raise ValueError(f"{tool}: the report is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{tool}: the report is a {type(doc).__name__}, expected a JSON object")
    return doc


def parse_trivy(data: bytes | str) -> list[Finding]:
    """Findings of a Trivy JSON report."""
    doc = _doc(data, "trivy")
    out: list[Finding] = []
    for result in doc.get("Results") or []:
        if not isinstance(result, dict):
            continue
        kind = _kind(result.get("Type"))
        for v in result.get("Vulnerabilities") or []:
            if not isinstance(v, dict) or len(out) >= MAX_FINDINGS:
                continue
            f = finding(
                v.get("VulnerabilityID"), v.get("PkgName"), v.get("InstalledVersion"), v.get("FixedVersion"),
                v.get("Severity"), "trivy", kind=kind, title=v.get("Title", ""),
            )  # fmt: skip
            if f is not None:
                out.append(f)
    return out


def parse_grype(data: bytes | str) -> list[Finding]:
    """Findings of a Grype JSON report."""
    doc = _doc(data, "grype")
    out: list[Finding] = []
    for m in doc.get("matches") or []:
        if not isinstance(m, dict) or len(out) >= MAX_FINDINGS:
            continue
        vuln = m.get("vulnerability") if isinstance(m.get("vulnerability"), dict) else {}
        art = m.get("artifact") if isinstance(m.get("artifact"), dict) else {}
        assert isinstance(vuln, dict) and isinstance(art, dict)
        fix = vuln.get("fix") if isinstance(vuln.get("fix"), dict) else {}
        assert isinstance(fix, dict)
        versions = [str(x) for x in fix.get("versions") or [] if isinstance(x, str | int)]
        related = [r.get("id") for r in m.get("relatedVulnerabilities") or [] if isinstance(r, dict)]
        f = finding(
            vuln.get("id"), art.get("name"), art.get("version"), ", ".join(versions), vuln.get("severity"), "grype",
            kind=_kind(art.get("type")), title=vuln.get("description", ""), aliases=related,
        )  # fmt: skip
        if f is not None:
            out.append(f)
    return out


PARSERS = {"trivy": parse_trivy, "grype": parse_grype}
