"""The manifest commands through the CLI: output, exit codes 0/1/2 and one-line errors."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from manifest_helpers import fake_build, make_spec
from typer.testing import CliRunner

from imagekit.cli import app


def cli(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), env=env)


def test_keygen_cli(tmp_path: Path) -> None:
    r = cli("keygen", "--out", str(tmp_path / "k"))
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((tmp_path / "k" / "imagekit.key").stat().st_mode) == 0o600
    again = cli("keygen", "--out", str(tmp_path / "k"))
    assert again.exit_code == 2 and again.stderr.count("\n") == 1 and "refusing to overwrite" in again.stderr
    bad = cli("keygen", "--type", "rsa", "--out", str(tmp_path / "r"))
    assert bad.exit_code == 2 and "--type must be one of ecdsa-p256, ed25519" in bad.stderr
    ed = cli("keygen", "--type", "ed25519", "--out", str(tmp_path / "e"))
    assert ed.exit_code == 0


def test_flow_verify_promote_resolve_revoke(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded, report={"passed": True, "torch": "2.5.1", "latency_ms": 40})
    spec = str(tmp_path / "imagekit.yaml")

    r = cli("manifest", "verify", rec.id, "-f", spec)
    assert r.exit_code == 0, r.output
    assert "cosign verify-blob-attestation --bundle" in r.stdout and "--insecure-ignore-tlog" in r.stdout
    # `--image "$(imagekit resolve ...)"` after a failed resolve: a usage error, not a pass without the image check
    for empty in ("", "  "):
        r = cli("manifest", "verify", rec.id, "-f", spec, "--image", empty)
        assert r.exit_code == 2 and "--image is empty" in r.output and "Traceback" not in r.output, r.output

    lst = cli("manifest", "list", "-f", spec, "--json")
    assert lst.exit_code == 0 and json.loads(lst.stdout)[0]["id"] == rec.id
    shown = cli("manifest", "show", rec.id, "-f", spec)
    assert shown.exit_code == 0 and "latency_ms" in shown.stdout and "passed" in shown.stdout

    assert cli("promote", "app", rec.id, "--channel", "stable", "-f", spec).exit_code == 0
    res = cli("resolve", "app", "--channel", "stable", "-f", spec)
    assert res.exit_code == 0 and res.stdout.strip().startswith("localhost:5000/demo-app@sha256:")
    js = cli("resolve", "app", "--channel", "stable", "-f", spec, "--json")
    assert json.loads(js.stdout)["manifest"] == rec.id

    hist = cli("history", "app", "--channel", "stable", "-f", spec)
    assert hist.exit_code == 0 and "promote" in hist.stdout and rec.id in hist.stdout
    unknown = cli("resolve", "nope", "--channel", "stable", "-f", spec)
    assert unknown.exit_code == 2 and unknown.stderr.count("\n") == 1 and "unknown image 'nope'" in unknown.stderr

    rv = cli("revoke", rec.id, "--reason", "leaked weights", "-f", spec)
    assert rv.exit_code == 0, rv.output
    gone = cli("manifest", "verify", rec.id, "-f", spec)
    assert (
        gone.exit_code == 1
        and gone.stderr.count("\n") == 1
        and "revoked" in gone.stderr
        and "leaked weights" in gone.stderr
    )
    stale = cli("resolve", "app", "--channel", "stable", "-f", spec)
    assert stale.exit_code == 1 and "rollback" in stale.stderr


def test_verify_exit_1_on_a_flipped_byte_and_unknown_key(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded)
    env = json.loads(Path(rec.location).read_text())
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[10] ^= 0x80
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    bad = tmp_path / "bad.intoto.json"
    bad.write_text(json.dumps(env))
    r = cli("manifest", "verify", str(bad), "-f", str(tmp_path))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "does not verify" in r.stderr
    make_spec(tmp_path / "other")
    r2 = cli(
        "manifest", "verify", rec.id, "-f", str(tmp_path), "--trust", str(tmp_path / "other" / "keys" / "imagekit.pub")
    )
    assert r2.exit_code == 1 and "unknown key" in r2.stderr
    # verifying with the public key only, from another folder, no spec
    cwd = os.getcwd()
    os.chdir(tmp_path / "other")
    try:
        (tmp_path / "other" / "imagekit.yaml").unlink()
        ok = cli("manifest", "verify", rec.location, "--trust", str(tmp_path / "keys" / "imagekit.pub"))
    finally:
        os.chdir(cwd)
    assert ok.exit_code == 0, ok.output
    assert "revocation not checked" in ok.stderr


def test_promote_failed_build_exits_1(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded, passed=False)
    r = cli("promote", "app", rec.id, "--channel", "stable", "-f", str(tmp_path))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "verification failed" in r.stderr
    short = cli("manifest", "show", "abc", "-f", str(tmp_path))
    assert short.exit_code == 2 and "too short" in short.stderr


def test_diff_cli(tmp_path: Path) -> None:
    a = fake_build(make_spec(tmp_path), seed="a", report={"passed": True, "torch": "2.5.1"}, size=100)
    b = fake_build(make_spec(tmp_path, app="2"), seed="b", report={"passed": True, "torch": "2.5.2"}, size=150)
    r = cli("manifest", "diff", a.id, b.id, "-f", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "torch: 2.5.1 → 2.5.2" in r.stdout and "+50.0%" in r.stdout and "app:" in r.stdout, r.stdout


@pytest.mark.parametrize("cmd", [["manifest", "list"], ["resolve", "app", "--channel", "stable"]])
def test_missing_spec_is_exit_2(tmp_path: Path, cmd: list[str]) -> None:
    r = cli(*cmd, "-f", str(tmp_path / "nope.yaml"))
    assert r.exit_code == 2 and "no such file" in r.stderr


def test_plan_cli_shows_cached_after_a_verified_build(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    before = json.loads(cli("plan", "-f", str(tmp_path), "--target", "docker", "--image", "app", "--json").stdout)
    assert [lp["status"] for lp in before["images"][0]["layers"]] == ["stale"] * 3
    rec = fake_build(loaded)
    r = cli("plan", "-f", str(tmp_path), "--target", "docker", "--image", "app", "--json")
    assert r.exit_code == 0, r.output
    layers = json.loads(r.stdout)["images"][0]["layers"]
    assert [(lp["status"], lp["reason"]) for lp in layers] == [("cached", f"verified build {rec.id}")] * 3
