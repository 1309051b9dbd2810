"""The Debian/Ubuntu check: the image's dpkg list against the security and updates suites of the build's mirror.

A package whose installed version sorts before the version in `<suite>-security` or `<suite>-updates` is a
finding. The archive's Packages index gives the fixed version and the source package, not the advisory: that is
read from the fixed package itself, whose `changelog.Debian.gz` names the CVEs the upload fixes and its urgency.
Severity: the archive carries no CVSS score, so a finding's severity is the fixed upload's changelog urgency
(low, medium, high; emergency/critical -> critical), the value Debian's uploader set for that fix; where the
changelog cannot be read it is DEFAULT_SEVERITY (high: a missed security update is treated as blocking under the
default gate). The id is each CVE the changelog names between the installed and the fixed version, else
`DEBIAN-<source>-<fixed version>`.
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagekit.names import MIRRORS
from imagekit.runners.archive import MAX_DEB_BYTES, ArchiveError, get, packages_index
from imagekit.scan.debver import is_version, older
from imagekit.scan.findings import Finding, finding

DEFAULT_SEVERITY = "high"
URGENCY = {"low": "low", "medium": "medium", "high": "high", "emergency": "critical", "critical": "critical"}
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
MAX_CHANGELOG_FETCHES = 40  # beyond this, findings keep the default severity and a DEBIAN- id
_PKG = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,99}$")
_CVE = re.compile(r"\bCVE-\d{4}-\d{4,}\b")
_ENTRY = re.compile(r"^(\S+) \(([^)]+)\) [^;]*; *urgency=(\w+)", re.MULTILINE)


@dataclass(frozen=True)
class Suite:
    """One suite of the archive to compare against."""

    base: str  # the mirror's URL
    suite: str
    label: str  # debian-security, debian-updates, ubuntu-security, ...


@dataclass(frozen=True)
class Newer:
    """A package of an index: its version, source package and pool path."""

    version: str
    source: str
    filename: str


def suites(distro: str, suite: str, mirror: str = "") -> list[Suite]:
    """The security and updates suites of a distribution release on the build's mirror (as names.apt_sources)."""
    base = (mirror or MIRRORS.get(distro, "")).rstrip("/")
    if not base:
        return []
    if distro == "ubuntu":
        return [Suite(base, f"{suite}-security", "ubuntu-security"), Suite(base, f"{suite}-updates", "ubuntu-updates")]
    security = f"{base}-security" if base.endswith("/debian") else base
    return [Suite(security, f"{suite}-security", "debian-security"), Suite(base, f"{suite}-updates", "debian-updates")]


def parse_packages(text: str) -> dict[str, Newer]:
    """Package -> (version, source, filename) of a Packages index; the newest stanza of a name wins."""
    out: dict[str, Newer] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        name, version = fields.get("Package", ""), fields.get("Version", "")
        if not _PKG.match(name) or not is_version(version):
            continue
        source = fields.get("Source", name).split(" ", 1)[0] or name
        if name not in out or older(out[name].version, version):
            out[name] = Newer(version, source, fields.get("Filename", ""))
    return out


def installed_debs(probe: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The probe's dpkg list as bounded, checked values (untrusted input); and what was refused."""
    section = probe.get("dpkg")
    pkgs = section.get("packages") if isinstance(section, dict) else None
    if not isinstance(pkgs, dict):
        return {}, ["dpkg: the probe listed no Debian packages"]
    out: dict[str, str] = {}
    refused: list[str] = []
    for name, version in list(pkgs.items())[:50000]:
        n, v = str(name).split(":", 1)[0], str(version)
        if _PKG.match(n) and is_version(v):
            out[n] = v
        else:
            refused.append(n[:60])
    return out, refused


def changelog_advisories(deb: bytes, package: str, installed: str) -> tuple[list[str], str | None]:
    """(CVE ids, urgency) of the changelog entries newer than `installed` in a .deb's changelog.Debian.gz."""
    text = _changelog(deb, package)
    if text is None:
        return [], None
    cves: list[str] = []
    urgency: str | None = None
    rank = ["low", "medium", "high", "critical"]
    entries = list(_ENTRY.finditer(text))
    for i, m in enumerate(entries):
        version = m.group(2)
        if not is_version(version) or not older(installed, version):
            break  # entries are newest first: the rest are at or below what is installed
        body = text[m.end() : entries[i + 1].start() if i + 1 < len(entries) else len(text)]
        for cve in _CVE.findall(body):
            if cve not in cves:
                cves.append(cve)
        level = URGENCY.get(m.group(3).lower())
        if level and (urgency is None or rank.index(level) > rank.index(urgency)):
            urgency = level
    return cves, urgency


def _changelog(deb: bytes, package: str) -> str | None:
    """changelog.Debian.gz of a package file (an ar archive holding data.tar.xz or .gz), or None."""
    if not deb.startswith(b"!<arch>\n"):
        return None
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            return None
        body = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".xz"):
            body = lzma.decompress(body)
        elif name.endswith(".gz"):
            body = gzip.decompress(body)
        elif name != "data.tar":
            return None  # zstd: not in the standard library
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            for want in (f"./usr/share/doc/{package}/changelog.Debian.gz", f"./usr/share/doc/{package}/changelog.gz"):
                try:
                    member = tar.getmember(want)
                except KeyError:
                    continue
                if not member.isfile() or member.size > 8 * 1024 * 1024:
                    return None
                fh = tar.extractfile(member)
                if fh is None:
                    return None
                return gzip.decompress(fh.read()).decode("utf-8", "replace")[: 4 * 1024 * 1024]
        return None
    return None


def scan_debs(
    debs: Mapping[str, str], distro: str, suite: str, arch: str, mirror: str = ""
) -> tuple[list[Finding], list[str]]:
    """Findings for every installed package older than its security/updates version; and the indexes read."""
    arch = ARCHES.get(arch, arch)
    indexes: list[tuple[Suite, dict[str, Newer]]] = []
    read: list[str] = []
    for s in suites(distro, suite, mirror):
        component = "main"
        try:
            indexes.append((s, parse_packages(packages_index(s.base, s.suite, component, arch))))
        except ArchiveError as exc:
            raise ArchiveError(f"scan: cannot read {s.suite} from {s.base}: {exc}") from None
        read.append(f"{s.base}/dists/{s.suite}/{component}/binary-{arch}")
    findings: list[Finding] = []
    fetches = 0
    for name, installed in sorted(debs.items()):
        for s, index in indexes:
            newer = index.get(name)
            if newer is None or not older(installed, newer.version):
                continue
            cves: list[str] = []
            urgency: str | None = None
            if newer.filename and fetches < MAX_CHANGELOG_FETCHES:
                fetches += 1
                try:
                    deb = get(f"{s.base}/{newer.filename}", limit=MAX_DEB_BYTES, ttl=None)
                    cves, urgency = changelog_advisories(deb, name, installed)
                except (ArchiveError, OSError, EOFError, lzma.LZMAError, tarfile.TarError):
                    pass  # no advisory data for this one: the default severity and a DEBIAN- id
            ids = cves or [f"DEBIAN-{newer.source}-{newer.version}"]
            for ident in ids:
                f = finding(
                    ident, name, installed, newer.version, urgency or DEFAULT_SEVERITY, "debian-archive",
                    kind="deb", title=f"fixed in {s.suite} ({newer.source} {newer.version})",
                )  # fmt: skip
                if f is not None:
                    findings.append(f)
            break  # the security suite first; -updates only when security has nothing newer
    return findings, read
