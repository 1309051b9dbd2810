"""record_build and the statement it signs; manifest list/show/verify/diff; the plan lookup."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from manifest_helpers import fake_build, make_spec

from imagekit.api import attest
from imagekit.api import manifest as api
from imagekit.errors import SignatureError
from imagekit.manifest.dsse import envelope_payload
from imagekit.manifest.record import record_build, store_lookup
from imagekit.manifest.statement import PREDICATE_TYPE, STATEMENT_TYPE, ami_record, canonical_json
from imagekit.plan import plan, plan_image


def _statement(path: str) -> dict:  # type: ignore[type-arg]
    return json.loads(envelope_payload(Path(path).read_bytes()))


def test_record_build_writes_a_signed_slsa_statement(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    report = {"passed": True, "failures": [], "torch": "2.5.1", "pip": {"numpy": "2.1.0"}, "latency_ms": 41.5}
    rec = fake_build(loaded, report=report)
    assert rec.passed and rec.trusted is True and rec.key_created is None
    path = Path(rec.location)
    assert path == tmp_path / "manifests" / "app" / f"{rec.id}.intoto.json"
    env = json.loads(path.read_text())
    assert env["payloadType"] == "application/vnd.in-toto+json"
    st = _statement(rec.location)
    assert st["_type"] == STATEMENT_TYPE and st["predicateType"] == PREDICATE_TYPE
    assert hashlib.sha256(base64.b64decode(env["payload"])).hexdigest()[:16] == rec.id
    (subject,) = st["subject"]
    assert subject["name"].startswith("oci:localhost:5000/demo-app@sha256:")
    assert subject["name"].endswith(subject["digest"]["sha256"])
    bd = st["predicate"]["buildDefinition"]
    assert bd["externalParameters"]["target"] == "docker" and bd["externalParameters"]["image"] == "app"
    assert (
        bd["externalParameters"]["spec"]["sha256"]
        == hashlib.sha256((tmp_path / "imagekit.yaml").read_bytes()).hexdigest()
    )
    assert [x["name"] for x in bd["internalParameters"]["layers"]] == ["base", "runtime", "app"]
    assert [x["hash"] for x in bd["internalParameters"]["layers"]] == [
        lp.hash for lp in plan_image(loaded, "app", "docker").layers
    ]
    assert bd["resolvedDependencies"][0]["digest"]["sha256"] == "ab" * 32
    rd = st["predicate"]["runDetails"]
    assert rd["builder"]["version"]["docker"] == "20.10.24" and "imagekit" in rd["builder"]["version"]
    assert rd["metadata"]["startedOn"] == "2026-11-21T01:00:00Z"
    (rep,) = [b for b in rd["byproducts"] if b["name"] == "verification-report"]
    raw = base64.b64decode(rep["content"])
    assert hashlib.sha256(raw).hexdigest() == rep["digest"]["sha256"] and json.loads(raw) == report


def test_ami_and_model_subjects(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    layers = plan_image(loaded, "app", "ami").layers
    ami = {"id": "ami-0123", "region": "eu-west-1", "account": "123456789012", "snapshot_ids": ["snap-2", "snap-1"]}
    rec = record_build(loaded, "app", "ami", layers, started="2026-11-21T01:00:00Z", finished="2026-11-21T01:30:00Z", amis=[ami], base="ami-785db401",
                       report={"passed": True})  # fmt: skip
    st = _statement(rec.location)
    (s,) = st["subject"]
    assert s["name"] == "aws:eu-west-1:ami-0123"
    assert s["digest"]["sha256"] == hashlib.sha256(canonical_json(ami_record(ami))).hexdigest()
    assert ami_record(ami)["snapshot_ids"] == ["snap-1", "snap-2"]
    assert st["predicate"]["buildDefinition"]["resolvedDependencies"][0]["uri"] == "aws:ami:ami-785db401"


def test_failed_and_rehearsal_builds_are_recorded_and_marked(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    failed = fake_build(loaded, seed="f", passed=False)
    assert not failed.passed
    layers = plan_image(loaded, "app", "docker").layers
    crashed = record_build(loaded, "app", "docker", layers, started="2026-11-21T01:00:00Z", finished="2026-11-21T01:30:00Z", image_ref="r:t",
                           image_digest="sha256:" + "1" * 64, report=None, failure="health endpoint never answered")  # fmt: skip
    rehearsal = fake_build(loaded, seed="r", rehearsal=True)
    rows = {r["id"]: r for r in api.list_manifests(tmp_path)}
    assert rows[failed.id]["verified"] is False and rows[crashed.id]["verified"] is False
    assert rows[rehearsal.id]["rehearsal"] is True and rows[rehearsal.id]["verified"] is True
    st = _statement(crashed.location)
    status = next(b for b in st["predicate"]["runDetails"]["byproducts"] if b["name"] == "imagekit-status")
    assert status["annotations"]["verification"] == {"passed": False, "failures": ["health endpoint never answered"]}
    assert api.show_manifest(tmp_path, crashed.id)["failures"] == ["health endpoint never answered"]


def test_default_key_is_created_on_first_record_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    loaded = make_spec(tmp_path / "s", key=False)
    (tmp_path / "s" / "imagekit.yaml").write_text(
        (tmp_path / "s" / "imagekit.yaml").read_text().replace("signing: {key: keys/imagekit.key}\n", "")
    )
    from imagekit.spec import load_spec

    loaded = load_spec(tmp_path / "s" / "imagekit.yaml")
    events = []
    rec = record_build(loaded, "app", "docker", plan_image(loaded, "app", "docker").layers, started="2026-11-21T01:00:00Z", finished="2026-11-21T01:30:00Z",
                       image_ref="r:t", image_digest="sha256:" + "2" * 64, report={"passed": True},
                       reporter=events.append)  # fmt: skip
    assert rec.key_created == tmp_path / "cfg" / "imagekit" / "imagekit.key"
    assert any(str(rec.key_created) in e.message for e in events)
    assert not list((tmp_path / "s").rglob("*.key"))  # never into the repo
    # with no trust file, the local default public key is trusted: the local flow needs no setup
    assert attest.verify_manifest(tmp_path / "s", rec.id).id == rec.id


def test_verify_list_show(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded, report={"passed": True, "torch": "2.5.1", "latency_ms": 40})
    out = attest.verify_manifest(tmp_path, rec.id[:8])
    assert out.id == rec.id and out.revocation_checked and out.passed
    bundle = rec.location.removesuffix(".intoto.json") + ".sigstore.json"
    digest = _statement(rec.location)["subject"][0]["digest"]["sha256"]
    blob, image = out.cosign.splitlines() if out.cosign else ("", "")
    # the cosign v3 form: the bundle, and the subject's real digest instead of --check-claims=false
    assert blob.startswith(f"cosign verify-blob-attestation --bundle {bundle} --key ")
    assert f"--type {PREDICATE_TYPE} --insecure-ignore-tlog --digest {digest} --digestAlg sha256" in blob
    assert "--check-claims=false" not in out.cosign and "--signature" not in out.cosign
    assert image.startswith("cosign verify-attestation --key ") and image.endswith(
        f"localhost:5000/demo-app@sha256:{digest}"
    )
    # the file alone, with only the public key (no spec): works offline
    monkey_cwd = tmp_path / "elsewhere"
    monkey_cwd.mkdir()
    import os

    old = os.getcwd()
    os.chdir(monkey_cwd)
    try:
        alone = attest.verify_manifest(None, rec.location, trust=tmp_path / "keys" / "imagekit.pub")
    finally:
        os.chdir(old)
    assert alone.id == rec.id and not alone.revocation_checked
    (row,) = api.list_manifests(tmp_path)
    assert {k: row[k] for k in ("id", "image", "target", "verified", "channels", "signature")} == {
        "id": rec.id, "image": "app", "target": "docker", "verified": True, "channels": [], "signature": "ok"}  # fmt: skip
    assert row["subjects"][0].startswith("oci:") and row["created"]
    shown = api.show_manifest(tmp_path, rec.id)
    assert shown["report"]["latency_ms"] == 40 and shown["artifact"]["image"].startswith(
        "localhost:5000/demo-app@sha256:"
    )


def test_tampered_or_untrusted_manifest_fails_verify(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded)
    path = Path(rec.location)
    good = path.read_bytes()
    env = json.loads(good)
    payload = base64.b64decode(env["payload"])
    for i in (0, len(payload) // 2, len(payload) - 1):
        bad = dict(env, payload=base64.b64encode(payload[:i] + bytes([payload[i] ^ 1]) + payload[i + 1 :]).decode())
        other = tmp_path / "bad.intoto.json"
        other.write_text(json.dumps(bad))
        with pytest.raises(SignatureError):
            attest.verify_manifest(tmp_path, str(other))
    from imagekit.manifest.keys import keygen

    _, pub = keygen(tmp_path / "stranger")
    with pytest.raises(SignatureError, match="unknown key"):
        attest.verify_manifest(tmp_path, rec.id, trust=pub)
    # a re-signed payload under a new name is caught by the id check
    alias = path.with_name("0000000000000000.intoto.json")
    alias.write_bytes(good)
    with pytest.raises(SignatureError, match="renamed or replaced"):
        attest.verify_manifest(tmp_path, "0000000000000000")


def test_diff_with_real_verify_reports(tmp_path: Path) -> None:
    from imagekit.verify.report import Report, SmokeResult

    probe = json.loads((Path(__file__).parent / "fixtures" / "probe-cpu.json").read_text())
    new_probe = json.loads(json.dumps(probe))
    new_probe["torch"]["version"] = "2.13.1+cpu"
    new_probe["pip"]["packages"]["filelock"] = "4.2.12"
    new_probe["dpkg"]["packages"]["hostname"] = "3.24"

    def report(p: dict, latency: float, host: str) -> Report:  # type: ignore[type-arg]
        return Report(spec="s", image="app", image_ref="r", host=host, ok=True, probe=p, started_at=host,
                      smoke=SmokeResult(method="POST", path="/x", status=200, bytes=9000, latency_ms=latency))  # fmt: skip

    a = fake_build(make_spec(tmp_path), seed="a", size=1000, report=report(probe, 40.0, "h1"))  # type: ignore[arg-type]
    b = fake_build(make_spec(tmp_path, app="2"), seed="b", size=1100, report=report(new_probe, 44.0, "h2"))  # type: ignore[arg-type]
    d = api.diff_manifests(tmp_path, a.id, b.id)
    assert [c["key"] for c in d["layers"]] == ["app"]
    assert d["versions"] == [{"key": "probe.torch.version", "old": "2.13.0+cpu", "new": "2.13.1+cpu"}]
    # read from the signed SBOMs beside the records (one entry per package, from its purl)
    assert {c["key"] for c in d["packages"]} == {"pip.filelock", "dpkg.hostname"}
    assert next(c for c in d["packages"] if c["key"] == "dpkg.hostname")["new"] == "3.24"
    assert a.sbom_location and b.sbom_location
    assert d["verification"] == [{"key": "smoke.latency_ms", "old": 40.0, "new": 44.0}]  # host/times are noise
    assert d["size"] == {"old": 1000, "new": 1100}
    assert api.diff_manifests(tmp_path, a.id, a.id)["packages"] == []


def test_plan_marks_layers_cached_from_verified_builds_only(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    before = plan(loaded, target="docker", images=["app"], lookup=store_lookup(loaded))[0]
    assert [lp.status for lp in before.layers] == ["stale"] * 3
    fake_build(loaded, seed="bad", passed=False)
    fake_build(loaded, seed="reh", rehearsal=True)
    assert [
        lp.status for lp in plan(loaded, target="docker", images=["app"], lookup=store_lookup(loaded))[0].layers
    ] == ["stale"] * 3
    rec = fake_build(loaded, seed="ok")
    after = plan(loaded, target="docker", images=["app"], lookup=store_lookup(loaded))[0]
    assert [(lp.status, lp.reason) for lp in after.layers] == [("cached", f"verified build {rec.id}")] * 3
    # another image sharing base+runtime reuses them; a changed app layer is stale
    rt = plan(loaded, target="docker", images=["rt"], lookup=store_lookup(loaded))[0]
    assert [lp.status for lp in rt.layers] == ["cached", "cached"]
    changed = make_spec(tmp_path, app="2")
    assert [
        lp.status for lp in plan(changed, target="docker", images=["app"], lookup=store_lookup(changed))[0].layers
    ] == ["cached", "cached", "stale"]
    api.revoke(tmp_path, rec.id, reason="bad base", layer="base")
    assert [
        lp.status for lp in plan(loaded, target="docker", images=["app"], lookup=store_lookup(loaded))[0].layers
    ] == ["stale"] * 3


def test_report_as_file_or_model_and_latest_verified(tmp_path: Path) -> None:
    from pydantic import BaseModel

    from imagekit.manifest.record import latest_verified

    class Rep(BaseModel):
        passed: bool
        failures: list[str]
        torch: str

    loaded = make_spec(tmp_path)
    assert latest_verified(loaded, "app", "docker") is None
    layers = plan_image(loaded, "app", "docker").layers
    rf = tmp_path / "report.json"
    rf.write_text(json.dumps({"passed": True, "failures": [], "torch": "2.5.1"}))
    a = record_build(loaded, "app", "docker", layers, started="2026-01-01T00:00:00Z", finished="2026-01-01T00:00:00Z",
                     image_ref="r@sha256:" + "3" * 64, report=rf)  # fmt: skip
    b = record_build(loaded, "app", "docker", layers, started="2026-01-01T00:00:00Z", finished="2026-01-02T00:00:00Z",
                     image_ref="r:t", image_digest="r@sha256:" + "4" * 64,
                     report=Rep(passed=False, failures=["torch 2.4.0 != 2.5.1"], torch="2.4.0"))  # fmt: skip
    assert a.passed and not b.passed
    assert api.show_manifest(tmp_path, b.id)["report"]["torch"] == "2.4.0"
    assert api.show_manifest(tmp_path, a.id)["artifact"]["image"] == "r@sha256:" + "3" * 64
    latest = latest_verified(loaded, "app", "docker")
    assert latest is not None and latest.id == a.id  # b is newer but failed


def test_ed25519_builds_verify_without_a_cosign_line(tmp_path: Path) -> None:
    from imagekit.manifest.keys import keygen

    loaded = make_spec(tmp_path)
    priv, _pub = keygen(tmp_path / "ed", "ed25519")
    (tmp_path / "imagekit.trust.yaml").write_text("keys:\n  - pem: keys/imagekit.pub\n  - pem: ed/imagekit.pub\n")
    layers = plan_image(loaded, "app", "docker").layers
    rec = record_build(loaded, "app", "docker", layers, started="2026-11-21T01:00:00Z", finished="2026-11-21T01:30:00Z", image_ref="r@sha256:" + "5" * 64,
                       report={"passed": True}, key=str(priv))  # fmt: skip
    out = attest.verify_manifest(tmp_path, rec.id)
    assert out.keyid == rec.keyid and out.cosign is None
