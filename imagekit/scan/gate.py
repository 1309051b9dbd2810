"""The scan gate of a build: the verified image's packages through every configured scanner, then the allow-list.

Runs after verification passed and before the record is signed, on what verification saw (the probe's dpkg and
pip lists, checked again here as untrusted input) and never on the live image: Trivy and Grype get the CycloneDX
SBOM of that inventory. `scan_inventory` is the same for a stored SBOM (nightly re-scans).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imagekit import __version__
from imagekit.events import Event, Reporter, silent
from imagekit.runners.archive import ArchiveError
from imagekit.scan.debian import installed_debs, scan_debs
from imagekit.scan.findings import ScanOutcome, judge, vuln_predicate
from imagekit.scan.tools import PARSERS
from imagekit.spec import LoadedSpec, Scan
from imagekit.timefmt import iso_utc

DISTROS = ("debian", "ubuntu")


def release_of(loaded: LoadedSpec, image: str, os_info: Mapping[str, Any]) -> tuple[str, str, str]:
    """(distro, suite, mirror) to compare against: the bootstrapped base's, else the image's os-release."""
    root = loaded.chain(image)[0][1]
    boot = root.from_.bootstrap if root.from_ is not None else None
    if boot is not None:
        return boot.distro, boot.suite, boot.mirror
    distro = str(os_info.get("id") or "")
    suite = str(os_info.get("version_codename") or "")
    return (distro, suite, "") if distro in DISTROS and suite.isalnum() else ("", "", "")


def scan_inventory(
    scan: Scan,
    debs: Mapping[str, str],
    release: tuple[str, str, str],
    arch: str,
    sbom: Mapping[str, Any] | None,
    *,
    reporter: Reporter = silent,
    image: str = "",
) -> ScanOutcome:
    """Every scanner of `scan.scanners` over an inventory (a dpkg list, a CycloneDX SBOM), judged by the gate."""
    from imagekit.manifest.sbom import bom_sha256
    from imagekit.runners import scanners as tools

    out = ScanOutcome(fail_on=scan.fail_on, started=iso_utc())
    if sbom is not None:
        out.sbom_sha256 = bom_sha256(sbom)
    if "debian" in scan.scanners:
        distro, suite, mirror = release
        if not debs:
            out.skipped.append("debian: the image has no dpkg list; skipped")
        elif not distro:
            out.skipped.append("debian: the image is neither a Debian nor an Ubuntu release; skipped")
        else:
            reporter(Event("step", f"scan: {distro} {suite} packages against {suite}-security/-updates", image))
            try:
                found, read = scan_debs(debs, distro, suite, arch, mirror)
                out.findings += found
                out.ran.append({"name": "debian-archive", "version": __version__, "db": " ".join(read)})
            except ArchiveError as exc:
                # fail closed: an image nobody could check is not "scanned under the gate"
                out.errors.append(str(exc))
    for name in ("trivy", "grype"):
        if name not in scan.scanners:
            continue
        exe = tools.find(name)
        if exe is None:
            if scan.required:
                out.errors.append(f"{name}: not installed, and verify.scan.required is true")
            else:
                out.skipped.append(f"{name}: not installed; skipped")
            continue
        if sbom is None:
            out.skipped.append(f"{name}: no SBOM to scan (the probe listed no packages); skipped")
            continue
        reporter(Event("step", f"scan: {name} on the SBOM", image))
        with tempfile.TemporaryDirectory(prefix="imagekit-sbom-") as tmp:
            path = Path(tmp) / "sbom.cdx.json"
            from imagekit.manifest.statement import canonical_json

            path.write_bytes(canonical_json(sbom))
            try:
                out.findings += PARSERS[name](tools.scan_sbom(name, exe, path))
                out.ran.append({"name": name, "version": tools.version(exe), "db": ""})
            except (tools.ScannerFailed, ValueError) as exc:
                out.errors.append(f"{name}: {exc}")
    out.finished = iso_utc()
    return judge(out, scan.allow)


def scan_report(
    loaded: LoadedSpec, image: str, report: Mapping[str, Any], reporter: Reporter = silent
) -> tuple[ScanOutcome, dict[str, Any]] | None:
    """The gate over a verification report's probe; None when the image has no verify.scan."""
    from imagekit.manifest.sbom import cyclonedx_sbom, inventory

    scan = loaded.verify_for(image).scan
    if scan is None:
        return None
    probe = report.get("probe") if isinstance(report.get("probe"), dict) else {}
    assert isinstance(probe, dict)
    debs, refused = installed_debs(probe)
    pip, _, os_info = inventory(report)
    sbom = None
    if debs or pip:
        sbom = cyclonedx_sbom(image, [], pip, debs, os_info, tool_version=__version__, timestamp=iso_utc())
    arch = str(os_info.get("machine") or "x86_64")
    outcome = scan_inventory(scan, debs, release_of(loaded, image, os_info), arch, sbom, reporter=reporter, image=image)
    if refused:
        outcome.skipped.append(f"dpkg: {len(refused)} entries of the probe were not package names/versions")
    return outcome, vuln_predicate(outcome, tool_version=__version__)
