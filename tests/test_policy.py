"""`manifest verify --image REF --policy FILE` against a real registry, real signatures and the store: each clause
(pushed with this digest, signed by a trusted key, scanned under the gate, verified, on a channel) fails alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from manifest_helpers import make_spec
from test_manifest_attach import push_image
from typer.testing import CliRunner

from imagekit.api.manifest import promote
from imagekit.cli import app
from imagekit.manifest.keys import keygen
from imagekit.manifest.record import record_build
from imagekit.plan import plan_image
from imagekit.scan.findings import ScanOutcome, finding, judge, vuln_predicate


def cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def _scan(blocked: bool, fail_on: str = "high") -> dict[str, Any]:
    out = ScanOutcome(fail_on=fail_on, started="2026-12-04T19:00:00Z", finished="2026-12-04T19:00:01Z")
    f = finding("CVE-2026-115207", "patch", "2.7.6-7", "2.7.6-7+deb12u1", "high", "debian-archive", kind="deb")
    assert f is not None
    out.findings.append(f)
    return vuln_predicate(judge(out, {} if blocked else {"CVE-2026-115207": "not reachable"}), tool_version="0.1.0")


def _record(tmp_path: Path, ref: str, *, vuln: dict[str, Any] | None, passed: bool = True, minute: int = 1) -> str:
    loaded = make_spec(tmp_path)
    layers = plan_image(loaded, "app", "docker").layers
    rec = record_build(loaded, "app", "docker", layers, started="2026-12-04T18:00:00Z",
                       finished=f"2026-12-04T18:{minute:02d}:00Z", image_ref=ref, image_digest=ref.split("@")[1],
                       report={"passed": True, "failures": []},
                       failure=None if passed else "scan gate: CVE-2026-115207 (high): patch 2.7.6-7",
                       vuln=vuln)  # fmt: skip
    return rec.id


@pytest.fixture
def setup(tmp_path: Path, docker_registry: str) -> tuple[Path, str, Path]:
    make_spec(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text("verified: true\nscan: {fail_on: high}\nchannels: [stable]\n")
    return tmp_path, docker_registry, policy


def _verify(folder: Path, image: str, policy: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    res = cli("manifest", "verify", "-f", str(folder / "imagekit.yaml"), "--image", image, "--policy", str(policy),
              "--json", *extra)  # fmt: skip
    doc = json.JSONDecoder().raw_decode(res.stdout.strip())[0] if res.stdout.strip() else {}
    return res.exit_code, doc


def _failed(doc: dict[str, Any]) -> list[str]:
    return [c["name"] for c in doc["clauses"] if not c["ok"]]


def test_a_promoted_pushed_scanned_build_passes(setup: tuple[Path, str, Path]) -> None:
    folder, registry, policy = setup
    digest = push_image(registry, "team/app", "v1")
    mid = _record(folder, f"{registry}/team/app@{digest}", vuln=_scan(blocked=False))
    promote(folder / "imagekit.yaml", "app", mid, "stable")
    code, doc = _verify(folder, f"{registry}/team/app:v1", policy)
    assert code == 0, doc
    assert doc["ok"] is True and doc["manifest"] == mid and doc["digest"] == digest
    assert [c["name"] for c in doc["clauses"]] == [
        "pushed with this digest",
        "signed by a trusted key",
        "scanned under the gate",
        "verified",
        "on a channel",
    ]
    # by digest too, as an admission webhook sees it
    assert _verify(folder, f"{registry}/team/app@{digest}", policy)[0] == 0
    text = cli("manifest", "verify", "-f", str(folder / "imagekit.yaml"), "--image", f"{registry}/team/app:v1",
               "--policy", str(policy))  # fmt: skip
    assert text.exit_code == 0 and "scanned under the gate" in text.stdout


def test_a_failed_scan_fails_naming_the_clause(setup: tuple[Path, str, Path]) -> None:
    folder, registry, policy = setup
    digest = push_image(registry, "team/app", "v2")
    mid = _record(folder, f"{registry}/team/app@{digest}", vuln=_scan(blocked=True), passed=False)
    code, doc = _verify(folder, f"{registry}/team/app:v2", policy)
    assert (code == 1 and doc == {}) or _failed(doc)[0] == "scanned under the gate"
    res = cli("manifest", "verify", "-f", str(folder / "imagekit.yaml"), "--image", f"{registry}/team/app:v2",
              "--policy", str(policy))  # fmt: skip
    assert res.exit_code == 1
    assert "policy clause 'scanned under the gate' failed" in res.output
    assert f"the scan of manifest {mid} failed its gate: CVE-2026-115207" in res.output


def test_no_scan_or_a_laxer_gate_fails(setup: tuple[Path, str, Path]) -> None:
    folder, registry, policy = setup
    digest = push_image(registry, "team/app", "v3")
    mid = _record(folder, f"{registry}/team/app@{digest}", vuln=None)
    promote(folder / "imagekit.yaml", "app", mid, "stable")
    res = cli("manifest", "verify", "-f", str(folder / "imagekit.yaml"), "--image", f"{registry}/team/app:v3",
              "--policy", str(policy))  # fmt: skip
    assert res.exit_code == 1 and "has no signed scan beside it" in res.output
    digest = push_image(registry, "team/app", "v4")
    mid = _record(folder, f"{registry}/team/app@{digest}", vuln=_scan(blocked=False, fail_on="critical"), minute=2)
    promote(folder / "imagekit.yaml", "app", mid, "stable")
    res = cli("manifest", "verify", "-f", str(folder / "imagekit.yaml"), "--image", f"{registry}/team/app:v4",
              "--policy", str(policy))  # fmt: skip
    assert res.exit_code == 1 and "fail_on critical; the policy asks high or stricter" in res.output


def test_a_build_not_on_the_channel_fails(setup: tuple[Path, str, Path]) -> None:
    folder, registry, policy = setup
    digest = push_image(registry, "team/app", "v5")
    _record(folder, f"{registry}/team/app@{digest}", vuln=_scan(blocked=False))
    res = cli("manifest", "verify", "-f", str(folder / "imagekit.yaml"), "--image", f"{registry}/team/app:v5",
              "--policy", str(policy))  # fmt: skip
    assert res.exit_code == 1
    assert "policy clause 'on a channel' failed: on none of stable (on: none)" in res.output


def test_a_build_signed_by_an_untrusted_key_fails(setup: tuple[Path, str, Path]) -> None:
    folder, registry, _ = setup
    digest = push_image(registry, "team/app", "v6")
    mid = _record(folder, f"{registry}/team/app@{digest}", vuln=_scan(blocked=False))
    promote(folder / "imagekit.yaml", "app", mid, "stable")
    keygen(folder / "release")
    strict = folder / "release-policy.yaml"
    strict.write_text("scan: {fail_on: high}\nchannels: [stable]\ntrust: release/imagekit.pub\n")
    res = cli("manifest", "verify", "-f", str(folder / "imagekit.yaml"), "--image", f"{registry}/team/app:v6",
              "--policy", str(strict))  # fmt: skip
    assert res.exit_code == 1
    assert "policy clause 'signed by a trusted key' failed" in res.output


def test_an_image_the_registry_does_not_serve_fails(setup: tuple[Path, str, Path]) -> None:
    folder, registry, policy = setup
    res = cli("manifest", "verify", "-f", str(folder / "imagekit.yaml"), "--image", f"{registry}/team/none:v1",
              "--policy", str(policy))  # fmt: skip
    assert res.exit_code == 1 and "policy clause 'pushed with this digest' failed" in res.output


def test_a_bad_policy_file_is_a_usage_error(setup: tuple[Path, str, Path]) -> None:
    folder, registry, _ = setup
    bad = folder / "bad.yaml"
    bad.write_text("verified: true\nscan: {fail_on: sometimes}\n")
    res = cli("manifest", "verify", "-f", str(folder / "imagekit.yaml"), "--image", f"{registry}/team/app:v1",
              "--policy", str(bad))  # fmt: skip
    assert res.exit_code == 2 and "scan.fail_on" in res.output
