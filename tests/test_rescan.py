"""Nightly's re-scan: the build a channel points at, scanned again against the mirror's security suite today (no
rebuild): a finding its own signed scan did not have is reported as new, in report.json and report.md."""

from __future__ import annotations

from pathlib import Path

from manifest_helpers import make_spec

from imagekit.api.manifest import promote
from imagekit.manifest.ledger import spec_store
from imagekit.manifest.record import record_build
from imagekit.nightly.report import NightlyResult, to_json, to_markdown
from imagekit.nightly.rescan import rescan_channels
from imagekit.plan import plan_image
from imagekit.scan.findings import ScanOutcome, judge, vuln_predicate
from imagekit.spec import load_spec

# bookworm's patch 2.7.6-7: bookworm-security carries a fix (see test_scan_gate_docker)
PROBE = {
    "os": {"id": "debian", "version_id": "12", "version_codename": "bookworm", "machine": "x86_64"},
    "dpkg": {"packages": {"patch": "2.7.6-7", "libc6": "2.36-9+deb12u13"}},
    "pip": {"packages": {}},
}


def test_a_channel_build_rescanned_reports_the_new_finding(tmp_path: Path) -> None:
    make_spec(tmp_path)
    spec = tmp_path / "imagekit.yaml"
    # the demo spec's app image, with a scan gate
    spec.write_text(
        spec.read_text().replace("  app: {leaf: app}", "  app: {leaf: app, verify: {scan: {fail_on: high}}}")
    )
    loaded = load_spec(spec)
    clean = ScanOutcome(fail_on="high", started="2026-12-01T00:00:00Z", finished="2026-12-01T00:00:01Z")
    ref = "127.0.0.1:5000/team/app@sha256:" + "cd" * 32
    rec = record_build(loaded, "app", "docker", plan_image(loaded, "app", "docker").layers,
                       started="2026-12-01T00:00:00Z", finished="2026-12-01T00:01:00Z", image_ref=ref,
                       report={"passed": True, "failures": [], "probe": PROBE},
                       vuln=vuln_predicate(judge(clean, {}), tool_version="0.1.0"))  # fmt: skip
    promote(spec, "app", rec.id, "stable")
    rows = rescan_channels(loaded, spec_store(loaded))
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["image"] == "app" and row["channels"] == ["stable"] and row["manifest"] == rec.id
    assert row["gate_passes_now"] is False
    assert any(line.startswith("CVE-") and ": patch 2.7.6-7, fixed in 2.7.6-7+deb12u" in line for line in row["new"])
    result = NightlyResult(spec=str(spec), started="2026-12-04T00:00:00Z", rescan=rows)
    assert to_json(result)["rescan"] == rows
    md = to_markdown(result)
    assert "## Re-scan of the builds channels point at (no rebuild)" in md and "  - new: CVE-" in md
