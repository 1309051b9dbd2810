"""The writer never signs a record its readers refuse (#21): what feeds the record and its SBOM (the probe, the
package inventory, the failures) is bounded where it comes in, so the biggest verification a probe can produce
still gives a record and an SBOM that `manifest list`, `show`, `verify` and `sbom` read; an inventory past the
bound is a failed check (exit 1) with a readable record, never a verified build that cannot be stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from manifest_helpers import make_spec
from typer.testing import CliRunner

from imagekit.cli import app
from imagekit.errors import VerifyFailed
from imagekit.inputs import MAX_RECORD_BYTES
from imagekit.manifest.record import RecordTooBig, record_build
from imagekit.plan import plan_image
from imagekit.verify.probe_file import verify_probe_file
from imagekit.verify.probe_input import (
    MAX_PACKAGES,
    MAX_PROBE_BYTES,
    MAX_SBOM_BYTES,
    ProbeInputError,
    parse_probe,
    sbom_cost,
)

FIXTURE = Path(__file__).parent / "fixtures" / "probe-cpu.json"


def _probe(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FIXTURE.read_text())
    doc.update(changes)
    return doc


def test_a_section_over_max_packages_is_dropped_and_named() -> None:
    pip = {f"p{i}": "1.0" for i in range(MAX_PACKAGES + 1)}
    probe, problems = parse_probe(json.dumps(_probe(pip={"packages": pip})))
    assert probe["pip"]["packages"] == {}
    assert any(f"{MAX_PACKAGES + 1} packages" in p for p in problems), problems


def test_an_inventory_whose_sbom_would_pass_the_bound_is_dropped() -> None:
    # few packages, long names and versions: under MAX_PACKAGES, over the SBOM's bound
    name, version = "n" * 199, "1" + "+" * 198
    pip = {f"{name[:-6]}{i:06d}": version for i in range(MAX_SBOM_BYTES // (10 * 400) + 10)}
    probe, problems = parse_probe(json.dumps(_probe(pip={"packages": pip})))
    assert probe["pip"]["packages"] == {} and probe["dpkg"]["packages"] == {}
    assert any("would make an SBOM over" in p for p in problems), problems


def test_numbers_written_out_count_against_the_probe_bound() -> None:
    # 1e15 is 4 bytes read and 18 written (1000000000000000.0): the bound holds for what a record embeds
    base = json.dumps(_probe())
    chunk = "[" + ",".join(["1e15"] * 40_000) + "]"  # lists under MAX_ITEMS: nothing is cut, all are kept
    count = (MAX_PROBE_BYTES - len(base) - 100) // (len(chunk) + 1)
    raw = base[:-1] + ', "n": [' + ",".join([chunk] * count) + "]}"
    assert len(raw) <= MAX_PROBE_BYTES
    with pytest.raises(ProbeInputError, match="once parsed"):
        parse_probe(raw)


def test_os_release_tokens_are_checked_before_every_purl_repeats_them() -> None:
    probe, problems = parse_probe(json.dumps(_probe(os={"id": "debian" * 600, "version_id": "12/../x"})))
    assert "id" not in probe["os"] and "version_id" not in probe["os"]
    assert sum("os-release token" in p for p in problems) == 2


def test_the_biggest_probe_still_gives_a_record_every_reader_takes(tmp_path: Path) -> None:
    """The worst case the boundary lets through: an inventory at the SBOM bound (long names, `+` versions that
    purls triple), filler up to the probe bound, hundreds of long failures. Recorded and read back whole."""
    loaded = make_spec(tmp_path / "spec")
    name, version = "n" * 150, "1" + "+" * 149
    budget_n = MAX_SBOM_BYTES // (256 + 10 * 300)
    pip = {f"{name[:-6]}{i:06d}": version for i in range(budget_n)}
    assert sbom_cost(pip) <= MAX_SBOM_BYTES
    doc = _probe(pip={"packages": pip, "locations": {}})
    doc["dpkg"] = {"packages": {}}
    room = MAX_PROBE_BYTES - len(json.dumps(doc).encode()) - 10_000
    doc["filler"] = ["x" * 4000] * (room // 4004)
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(doc))
    assert MAX_PROBE_BYTES - 30_000 < path.stat().st_size <= MAX_PROBE_BYTES
    with pytest.raises(VerifyFailed) as failed:  # every package is unasked: one failure each
        verify_probe_file(loaded, path, "app", gpu="optional")
    report_path = Path(str(failed.value.report_path))
    report = json.loads(report_path.read_text())
    assert len(report["failures"]) <= 201 and report["failures"][-1].startswith("… and ")
    layers = plan_image(loaded, "app", "docker").layers
    rec = record_build(
        loaded, "app", "docker", layers, started="2026-11-21T01:00:00Z", finished="2026-11-21T01:10:00Z",
        image_ref="imagekit/demo-app:0123456789abcdef", image_digest="sha256:" + "c" * 64, report=report_path,
        failure="; ".join(failed.value.failures),
    )  # fmt: skip
    assert rec.sbom_location is not None
    record_size = Path(rec.location).stat().st_size
    sbom_size = Path(rec.sbom_location).stat().st_size
    assert record_size < MAX_RECORD_BYTES and sbom_size < MAX_RECORD_BYTES, (record_size, sbom_size)
    spec = str(tmp_path / "spec" / "imagekit.yaml")
    runner = CliRunner()
    for args in (["manifest", "list", "-f", spec], ["manifest", "show", rec.id, "-f", spec, "--json"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    sbom = runner.invoke(app, ["manifest", "sbom", rec.id, "-f", spec, "-o", str(tmp_path / "sbom.json")])
    assert sbom.exit_code == 0, sbom.output
    components = json.loads((tmp_path / "sbom.json").read_text())["components"]
    assert len([c for c in components if c.get("purl", "").startswith("pkg:pypi/")]) == budget_n


def test_the_writer_refuses_what_readers_refuse_and_stores_nothing(tmp_path: Path) -> None:
    """The last guard, for a caller that hands record_build a report past every bound: one error, nothing stored."""
    loaded = make_spec(tmp_path / "spec")
    report = {"passed": True, "failures": [], "probe": {"filler": ["x" * 4000] * (MAX_RECORD_BYTES // 4000)}}
    layers = plan_image(loaded, "app", "docker").layers
    with pytest.raises(RecordTooBig, match="nothing stored"):
        record_build(loaded, "app", "docker", layers, started="2026-11-21T01:00:00Z",
                     finished="2026-11-21T01:10:00Z", image_ref="imagekit/demo-app:0123456789abcdef",
                     image_digest="sha256:" + "c" * 64, report=report)  # fmt: skip
    store = tmp_path / "spec" / "manifests"
    assert not store.exists() or not [p for p in store.rglob("*") if p.is_file()]
    res = subprocess.run(
        [sys.executable, "-m", "imagekit", "manifest", "list", "-f", str(tmp_path / "spec" / "imagekit.yaml")],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
