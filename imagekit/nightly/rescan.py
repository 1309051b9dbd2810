"""Nightly's re-scan: the builds channels point at, scanned again against today's archive, with no rebuild.

What is scanned is what the signed record holds (its embedded verification report's dpkg and pip lists, checked
against its signed digest), never a live image; findings the build's own signed scan did not have are new.
"""

from __future__ import annotations

from typing import Any

from imagekit.errors import ImagekitError, SignatureError
from imagekit.events import Event, Reporter, silent
from imagekit.manifest.ledger import Ledger, resolve_trust
from imagekit.manifest.store import Store
from imagekit.manifest.vuln import read_vuln
from imagekit.scan.findings import findings_of
from imagekit.scan.gate import scan_report
from imagekit.spec import LoadedSpec


def rescan_channels(loaded: LoadedSpec, store: Store, reporter: Reporter = silent) -> list[dict[str, Any]]:
    """One row per (image, manifest) a channel points at: findings now, the new ones, the gate's verdict now."""
    try:
        ledger = Ledger(store, resolve_trust(loaded))
    except SignatureError as exc:
        return [{"error": str(exc)}]
    rows: list[dict[str, Any]] = []
    for image in sorted(loaded.spec.images):
        if loaded.verify_for(image).scan is None:
            continue
        try:
            channels = ledger.channels_of(image)
        except ImagekitError as exc:
            rows.append({"image": image, "error": str(exc)})
            continue
        by_manifest: dict[str, list[str]] = {}
        for channel, mid in sorted(channels.items()):
            by_manifest.setdefault(mid, []).append(channel)
        for mid, names in sorted(by_manifest.items()):
            row: dict[str, Any] = {"image": image, "channels": names, "manifest": mid}
            rows.append(row)
            try:
                e = ledger.entry(mid, image)
                if e.build is None:
                    raise SignatureError(e.problem or f"manifest {mid} does not verify")
                report = e.build.report()
                if report is None:
                    raise SignatureError(f"manifest {mid} holds no verification report to scan")
                before = findings_of(read_vuln(ledger, e) or {})
                reporter(Event("step", f"re-scan of {mid[:12]} ({', '.join(names)})", image))
                done = scan_report(loaded, image, report, reporter)
            except ImagekitError as exc:
                row["error"] = str(exc)
                continue
            assert done is not None
            outcome, _ = done
            seen = {(f.id, f.package) for f in before}
            new = [f for f in outcome.findings if (f.id, f.package) not in seen]
            row.update(
                findings=len(outcome.findings),
                counts=outcome.counts(),
                new=[f.line() for f in new],
                gate_passes_now=outcome.passed,
                blocking_now=[f.line() for f in outcome.blocking],
                skipped=outcome.skipped,
                errors=outcome.errors,
            )
            if new:
                reporter(Event("warn", f"re-scan: {len(new)} new finding(s) in {mid[:12]}", image))
    return rows
