"""The scan's parts on data written here: Debian versions (against dpkg itself), a Packages index, a package
file's changelog, Trivy's and Grype's JSON (as their documentation lays it out), the gate, the signed statement."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from manifest_helpers import make_spec

from imagekit.errors import SignatureError
from imagekit.manifest.dsse import envelope_payload
from imagekit.manifest.ledger import open_ledger
from imagekit.manifest.record import record_build
from imagekit.manifest.vuln import VULN_SUFFIX, read_vuln
from imagekit.plan import plan_image
from imagekit.scan.debian import changelog_advisories, installed_debs, parse_packages, suites
from imagekit.scan.debver import compare, is_version
from imagekit.scan.findings import VULN_PREDICATE_TYPE, ScanOutcome, finding, findings_of, judge, vuln_predicate
from imagekit.scan.tools import parse_grype, parse_trivy
from imagekit.spec import Scan

REF = "127.0.0.1:5000/team/app@sha256:" + "ab" * 32
VERSIONS = ["1.0~rc1", "1.0", "1.0-1", "1:0.1", "1.0+deb12u1", "1.0-1~deb12u1", "1.0-1+b1", "2.7.6-7",
            "2.7.6-7+deb12u1", "0.19-3", "1.0a", "1.0.a", "1.0~~", "1:1.2.13.dfsg-1", "1:1.2.13.dfsg-1+deb12u1",
            "2.36-9+deb12u13", "10.0", "9.9", "1.0~", "1.0-0"]  # fmt: skip


@pytest.mark.parametrize("a", VERSIONS)
def test_debian_versions_sort_as_dpkg_sorts_them(a: str) -> None:
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        pytest.skip("dpkg is not here to compare with")
    for b in VERSIONS:
        want = (
            "lt"
            if subprocess.run([dpkg, "--compare-versions", a, "lt", b], check=False).returncode == 0
            else (
                "eq" if subprocess.run([dpkg, "--compare-versions", a, "eq", b], check=False).returncode == 0 else "gt"
            )
        )
        got = compare(a, b)
        assert ("lt" if got < 0 else "eq" if got == 0 else "gt") == want, (a, b)


def test_versions_from_an_image_are_checked() -> None:
    assert is_version("1:2.36-9+deb12u13")
    assert not is_version("1.0\n; rm -rf") and not is_version("") and not is_version("x" * 200)
    debs, refused = installed_debs({"dpkg": {"packages": {"patch": "2.7.6-7", "\x1bbad": "1", "ok": "1.0 evil"}}})
    assert debs == {"patch": "2.7.6-7"} and len(refused) == 2


INDEX = """\
Package: patch
Version: 2.7.6-7+deb12u1
Installed-Size: 246
Filename: pool/updates/main/p/patch/patch_2.7.6-7+deb12u1_amd64.deb

Package: libexpat1
Source: expat
Version: 2.5.0-1+deb12u5
Filename: pool/updates/main/e/expat/libexpat1_2.5.0-1+deb12u5_amd64.deb

Package: libexpat1
Source: expat
Version: 2.5.0-1+deb12u3
Filename: pool/updates/main/e/expat/libexpat1_2.5.0-1+deb12u3_amd64.deb
"""


def test_a_packages_index_keeps_the_newest_version_and_the_source() -> None:
    idx = parse_packages(INDEX)
    assert idx["patch"].version == "2.7.6-7+deb12u1" and idx["patch"].source == "patch"
    assert idx["libexpat1"].version == "2.5.0-1+deb12u5" and idx["libexpat1"].source == "expat"


def test_the_security_suite_is_on_the_builds_mirror() -> None:
    deb = suites("debian", "bookworm", "http://mirror.example/debian")
    assert [(s.base, s.suite) for s in deb] == [
        ("http://mirror.example/debian-security", "bookworm-security"),
        ("http://mirror.example/debian", "bookworm-updates"),
    ]
    assert [s.suite for s in suites("ubuntu", "noble")] == ["noble-security", "noble-updates"]


CHANGELOG = """\
patch (2.7.6-7+deb12u2) bookworm-security; urgency=medium

  * CVE-2026-0002: a second fix.

 -- Someone <a@example.org>  Sat, 28 Nov 2026 10:00:00 +0000

patch (2.7.6-7+deb12u1) bookworm-security; urgency=high

  * CVE-2026-0001: Reject an unsafe pathname.

 -- Someone <a@example.org>  Fri, 27 Nov 2026 10:00:00 +0000

patch (2.7.6-7) unstable; urgency=medium

  * Fix CVE-2019-13636 (already in what is installed).

 -- Someone <a@example.org>  Sat, 09 Jan 2021 09:58:08 +0100
"""


def _deb(package: str, changelog: str) -> bytes:
    """A .deb as dpkg-deb lays it out: an ar archive with debian-binary, control.tar.xz, data.tar.xz."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        body = gzip.compress(changelog.encode())
        info = tarfile.TarInfo(f"./usr/share/doc/{package}/changelog.Debian.gz")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", lzma.compress(b"")),
               ("data.tar.xz", lzma.compress(data.getvalue()))]  # fmt: skip
    out = b"!<arch>\n"
    for name, content in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(content):<10}`\n".encode() + content
        out += b"\n" if len(content) % 2 else b""
    return out


def test_the_changelog_names_the_advisories_newer_than_what_is_installed() -> None:
    cves, urgency = changelog_advisories(_deb("patch", CHANGELOG), "patch", "2.7.6-7")
    assert cves == ["CVE-2026-0002", "CVE-2026-0001"] and urgency == "high"
    cves, urgency = changelog_advisories(_deb("patch", CHANGELOG), "patch", "2.7.6-7+deb12u1")
    assert cves == ["CVE-2026-0002"] and urgency == "medium"
    assert changelog_advisories(b"not a deb", "patch", "1") == ([], None)


TRIVY = {
    "SchemaVersion": 2,
    "ArtifactName": "sbom.cdx.json",
    "ArtifactType": "cyclonedx",
    "Results": [
        {"Target": "debian 12.8", "Class": "os-pkgs", "Type": "debian", "Vulnerabilities": [
            {"VulnerabilityID": "CVE-2026-0001", "PkgName": "patch", "InstalledVersion": "2.7.6-7",
             "FixedVersion": "2.7.6-7+deb12u1", "Severity": "HIGH", "Title": "patch: unsafe pathname"},
            {"VulnerabilityID": "CVE-2026-0009", "PkgName": "libc6", "InstalledVersion": "2.36-9",
             "Severity": "LOW"}]},
        {"Target": "Python", "Class": "lang-pkgs", "Type": "python-pkg", "Vulnerabilities": [
            {"VulnerabilityID": "GHSA-aaaa-bbbb-cccc", "PkgName": "six", "InstalledVersion": "1.17.0",
             "FixedVersion": "1.18.0", "Severity": "CRITICAL"}]},
        {"Target": "no findings", "Type": "debian"},
    ],
}  # fmt: skip
GRYPE = {
    "matches": [
        {"vulnerability": {"id": "CVE-2026-0001", "severity": "High", "fix": {"versions": ["2.7.6-7+deb12u1"],
                                                                               "state": "fixed"}},
         "relatedVulnerabilities": [{"id": "DSA-9999-1"}],
         "artifact": {"name": "patch", "version": "2.7.6-7", "type": "deb"}},
        {"vulnerability": {"id": "GHSA-xxxx-yyyy-zzzz", "severity": "Negligible", "fix": {"versions": [],
                                                                                    "state": "not-fixed"}},
         "artifact": {"name": "six", "version": "1.17.0", "type": "python"}},
        {"vulnerability": {"id": "bad id; rm", "severity": "High"}, "artifact": {"name": "x", "version": "1"}},
    ],
    "source": {"type": "sbom"},
}  # fmt: skip


def test_trivy_json_becomes_findings() -> None:
    found = parse_trivy(json.dumps(TRIVY))
    assert [(f.id, f.package, f.fixed, f.severity, f.kind) for f in found] == [
        ("CVE-2026-0001", "patch", "2.7.6-7+deb12u1", "high", "deb"),
        ("CVE-2026-0009", "libc6", "", "low", "deb"),
        ("GHSA-aaaa-bbbb-cccc", "six", "1.18.0", "critical", "python"),
    ]
    with pytest.raises(ValueError, match="trivy"):
        parse_trivy("[1, 2]")


def test_grype_json_becomes_findings_and_drops_what_is_not_an_id() -> None:
    found = parse_grype(json.dumps(GRYPE).encode())
    assert [(f.id, f.package, f.fixed, f.severity, f.aliases) for f in found] == [
        ("CVE-2026-0001", "patch", "2.7.6-7+deb12u1", "high", ("DSA-9999-1",)),
        ("GHSA-xxxx-yyyy-zzzz", "six", "", "low", ()),
    ]


def _outcome(*findings: tuple[str, str]) -> ScanOutcome:
    out = ScanOutcome(fail_on="high")
    for ident, severity in findings:
        f = finding(ident, "patch", "2.7.6-7", "2.7.6-7+deb12u1", severity, "debian-archive", kind="deb")
        assert f is not None
        out.findings.append(f)
    return out


def test_the_gate_blocks_at_or_above_fail_on_unless_allowed() -> None:
    out = judge(_outcome(("CVE-1", "high"), ("CVE-2", "medium"), ("CVE-3", "critical")), {"CVE-3": "not reachable"})
    assert [f.id for f in out.blocking] == ["CVE-1"] and not out.passed
    assert [(f.id, why) for f, why in out.allowed] == [("CVE-3", "not reachable")]
    failure = out.failure()
    assert failure is not None and "CVE-1 (high): patch 2.7.6-7, fixed in 2.7.6-7+deb12u1" in failure
    assert judge(_outcome(("CVE-1", "high")), {"CVE-1": "ok"}).passed
    assert judge(_outcome(("CVE-1", "critical")), {}).passed is False
    none = _outcome(("CVE-1", "critical"))
    none.fail_on = "none"
    assert judge(none, {}).passed
    missing = _outcome()
    missing.errors.append("trivy: not installed, and verify.scan.required is true")
    assert not judge(missing, {}).passed


def test_the_scan_spec_needs_a_reason_and_an_id() -> None:
    assert Scan(allow={"CVE-2026-1": "why"}).fail_on == "high"
    with pytest.raises(ValueError, match="say why"):
        Scan(allow={"CVE-2026-1": " "})
    with pytest.raises(ValueError, match="vulnerability id"):
        Scan(allow={"no spaces please": "x"})


def test_the_vuln_statement_is_signed_bound_and_checked(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    out = judge(_outcome(("CVE-1", "high"), ("CVE-2", "low")), {"CVE-1": "accepted for the test"})
    out.started = out.finished = "2026-12-04T19:00:00Z"
    predicate = vuln_predicate(out, tool_version="0.1.0")
    layers = plan_image(loaded, "app", "docker").layers
    rec = record_build(loaded, "app", "docker", layers, started="2026-12-04T18:00:00Z",
                       finished="2026-12-04T19:00:00Z", report={"passed": True, "failures": []}, image_ref=REF,
                       vuln=predicate)  # fmt: skip
    ledger = open_ledger(loaded)
    entry = ledger.build(rec.id, "app")
    got = read_vuln(ledger, entry)
    assert got == predicate
    assert got["scanner"]["result"]["counts"] == {"unknown": 0, "low": 1, "medium": 0, "high": 1, "critical": 0}
    assert [f.id for f in findings_of(got)] == ["CVE-1", "CVE-2"]
    doc = json.loads(envelope_payload(rec.store.read_sidecar(entry.key, VULN_SUFFIX) or b""))  # type: ignore[union-attr]
    assert doc["predicateType"] == VULN_PREDICATE_TYPE and doc["subject"] == entry.build.subjects  # type: ignore[union-attr]
    # another predicate under the same name: it no longer hashes to what the record signed
    other = record_build(loaded, "app", "docker", layers, started="2026-12-04T18:00:00Z",
                         finished="2026-12-04T19:01:00Z", report={"passed": True, "failures": []}, image_ref=REF,
                         vuln={**predicate, "metadata": {}})  # fmt: skip
    swapped = rec.store.read_sidecar(ledger.build(other.id, "app").key, VULN_SUFFIX)  # type: ignore[union-attr]
    assert swapped is not None
    # the store refuses to replace a sidecar; someone with write access to its folder does it by hand
    (tmp_path / "manifests" / "app" / f"{rec.id}{VULN_SUFFIX}").write_bytes(swapped)
    with pytest.raises(SignatureError, match=r"names other subjects|does not hash"):
        read_vuln(open_ledger(loaded), open_ledger(loaded).build(rec.id, "app"))
