"""The SBOM of what was verified: CycloneDX 1.6 from the probe's pip/dpkg inventory, signed beside the record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from manifest_helpers import fake_build, make_spec
from typer.testing import CliRunner

from imagekit.cli import app
from imagekit.manifest.dsse import envelope_bytes, envelope_payload, sign_envelope
from imagekit.manifest.keys import load_file_signer
from imagekit.manifest.ledger import spec_store
from imagekit.manifest.sbom import SBOM_PREDICATE_TYPE, sbom_statement, validate_cyclonedx
from imagekit.manifest.statement import canonical_json

PROBE = json.loads((Path(__file__).parent / "fixtures" / "probe-cpu.json").read_text())


def cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def _report() -> dict[str, Any]:
    return {"passed": True, "failures": [], "probe": PROBE}


def test_manifest_sbom_writes_a_valid_cyclonedx_document(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded, report=_report())
    out = tmp_path / "sbom.json"
    r = cli("manifest", "sbom", rec.id, "-f", str(loaded.path), "-o", str(out))
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert validate_cyclonedx(text) is None  # cyclonedx-python-lib's strict JSON schema validator
    bom = json.loads(text)
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    purls = {c["name"]: c.get("purl") for c in bom["components"]}
    assert purls["torch"] == "pkg:pypi/torch@2.13.0%2Bcpu"
    debs = [p for p in purls.values() if p and p.startswith("pkg:deb/debian/")]
    assert len(debs) == len(PROBE["dpkg"]["packages"]) == 118
    libc = PROBE["dpkg"]["packages"]["libc6"].replace("+", "%2B")  # purl percent-encodes '+'
    assert purls["libc6"] == f"pkg:deb/debian/libc6@{libc}?distro=debian-12"
    assert len(purls) == 118 + len(PROBE["pip"]["packages"]) + 1  # and the operating system
    # on stdout too, the same document
    shown = cli("manifest", "sbom", rec.id, "-f", str(loaded.path))
    assert shown.exit_code == 0 and json.loads(shown.stdout) == bom


def test_sbom_is_its_own_statement_over_the_same_subject(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded, report=_report())
    assert rec.sbom_location == str(Path(rec.location).with_name(f"{rec.id}.sbom.dsse.json"))
    st = json.loads(envelope_payload(Path(rec.location).read_bytes()))
    sbom = json.loads(envelope_payload(Path(rec.sbom_location).read_bytes()))
    assert sbom["predicateType"] == SBOM_PREDICATE_TYPE == "https://cyclonedx.org/bom"
    assert sbom["subject"] == st["subject"]
    assert Path(rec.location).with_name(f"{rec.id}.sbom.sigstore.json").is_file()
    byproduct = next(b for b in st["predicate"]["runDetails"]["byproducts"] if b["name"] == "sbom")
    assert byproduct["mediaType"] == "application/vnd.cyclonedx+json"
    # the sidecar is not a manifest of its own
    listed = cli("manifest", "list", "-f", str(loaded.path), "--json")
    assert [m["id"] for m in json.loads(listed.stdout)] == [rec.id]
    ok = cli("manifest", "verify", rec.id, "-f", str(loaded.path))
    assert ok.exit_code == 0 and "SBOM" in ok.stderr, ok.output


def test_an_sbom_that_does_not_match_the_signed_digest_is_refused(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded, report=_report())
    sbom_path = Path(rec.sbom_location or "")
    sbom = json.loads(envelope_payload(sbom_path.read_bytes()))
    # signed with the TRUSTED key, same subjects, one package's version changed: not what the record bound
    sbom["predicate"]["components"][0]["version"] = "0.0.0-forged"
    signer = load_file_signer(tmp_path / "keys" / "imagekit.key")
    forged = envelope_bytes(sign_envelope(canonical_json(sbom_statement(sbom["subject"], sbom["predicate"])), signer))
    sbom_path.unlink()
    sbom_path.write_bytes(forged)
    for args in (("manifest", "verify", rec.id), ("manifest", "sbom", rec.id)):
        r = cli(*args, "-f", str(loaded.path))
        assert r.exit_code == 1 and "(rule: SBOM matches its signed digest)" in r.stderr, r.output
    sbom_path.unlink()  # gone altogether while the record names one
    r = cli("manifest", "verify", rec.id, "-f", str(loaded.path))
    assert r.exit_code == 1 and "names an SBOM but none lies beside it" in r.stderr


def test_a_record_without_an_inventory_has_no_sbom(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded)  # the report has no probe
    assert rec.sbom_location is None
    r = cli("manifest", "sbom", rec.id, "-f", str(loaded.path))
    assert r.exit_code == 1 and "has no SBOM" in r.stderr and r.stderr.count("\n") == 1
    assert not any(k.endswith(".sbom.dsse.json") for k in spec_store(loaded).backend.keys("app/"))
