"""Trivy and Grype, when installed: each scans a CycloneDX SBOM file (never the live image) into a JSON file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from imagekit.errors import ImagekitError
from imagekit.runners.process import capture

MAX_REPORT_BYTES = 64 * 1024 * 1024
COMMANDS = {
    # trivy sbom: the CycloneDX file's purls matched against trivy's database
    "trivy": lambda exe, sbom, out: [exe, "sbom", "--quiet", "--format", "json", "--output", out, sbom],
    # grype sbom:FILE: the same for grype
    "grype": lambda exe, sbom, out: [exe, f"sbom:{sbom}", "--quiet", "-o", "json", "--file", out],
}


class ScannerFailed(ImagekitError):
    """A scanner ran and failed."""

    exit_code = 1


def find(name: str) -> str | None:
    """The scanner's executable on PATH, or None."""
    return shutil.which(name)


def version(exe: str) -> str:
    """The scanner's version line (empty when it does not say)."""
    try:
        res = capture([exe, "version"], timeout=30)
    except (ImagekitError, OSError):
        return ""
    return next((ln.strip() for ln in res.output.splitlines() if ln.strip()), "")[:120]


def scan_sbom(name: str, exe: str, sbom: Path, *, timeout: float = 900.0) -> bytes:
    """Run scanner `name` on an SBOM file and return its JSON report (bounded)."""
    with tempfile.TemporaryDirectory(prefix="imagekit-scan-") as tmp:
        out = Path(tmp) / "report.json"
        res = capture(COMMANDS[name](exe, str(sbom), str(out)), timeout=timeout)
        if not res.ok:
            tail = " | ".join(res.output.strip().splitlines()[-3:])[:300]
            raise ScannerFailed(f"{name} exited {res.returncode}: {tail}")
        if not out.is_file() or out.stat().st_size > MAX_REPORT_BYTES:
            raise ScannerFailed(f"{name} wrote no report, or one over {MAX_REPORT_BYTES} bytes")
        return out.read_bytes()
