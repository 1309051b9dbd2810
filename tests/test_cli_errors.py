"""Plain bad input through the CLI: exit 2 (usage, spec, files) or 1 (trust, store), one printable line, never 3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from manifest_helpers import fake_build, make_spec
from typer.testing import CliRunner, Result

from imagekit.api import manifest as api
from imagekit.cli import app


def cli(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def one_line(result: Result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    err = result.stderr
    assert err.count("\n") == 1, err
    assert "this is a bug" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    make_spec(tmp_path)
    return tmp_path / "imagekit.yaml"


def test_directory_as_trust_key_and_trust_entry(spec: Path, tmp_path: Path) -> None:
    rec = fake_build(make_spec(tmp_path))
    folder = tmp_path / "somedir"
    folder.mkdir()
    one_line(cli("manifest", "verify", rec.id, "-f", str(spec), "--trust", str(folder)), 2, "is a directory")
    (tmp_path / "t.yaml").write_text(f"keys:\n  - pem: {folder}\n")
    one_line(cli("manifest", "verify", rec.id, "-f", str(spec), "--trust", str(tmp_path / "t.yaml")), 2, "directory")
    r = cli("promote", "app", rec.id, "--channel", "stable", "-f", str(spec), "--key", str(tmp_path / "keys"))
    one_line(r, 2, "signing key", "is a directory", "imagekit.key")


def test_public_key_as_key_is_named_as_such(spec: Path, tmp_path: Path) -> None:
    rec = fake_build(make_spec(tmp_path))
    pub = tmp_path / "keys" / "imagekit.pub"
    r = cli("promote", "app", rec.id, "--channel", "stable", "-f", str(spec), "--key", str(pub))
    err = one_line(r, 2, "is a public key: --key takes the private key")
    assert "chmod" not in err


def test_fifo_as_trust_or_key_does_not_block(spec: Path, tmp_path: Path) -> None:
    rec = fake_build(make_spec(tmp_path))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    one_line(cli("manifest", "verify", rec.id, "-f", str(spec), "--trust", str(fifo)), 2, "named pipe (FIFO)")
    r = cli("promote", "app", rec.id, "--channel", "stable", "-f", str(spec), "--key", str(fifo))
    one_line(r, 2, "not a regular file")


def test_non_utf8_trust_file(spec: Path, tmp_path: Path) -> None:
    rec = fake_build(make_spec(tmp_path))
    (tmp_path / "bad.yaml").write_bytes(b"keys:\n  - pem: \xff\xfe\n")
    one_line(cli("manifest", "verify", rec.id, "-f", str(spec), "--trust", str(tmp_path / "bad.yaml")), 2, "not UTF-8")


def test_awskms_with_no_region(spec: Path, tmp_path: Path) -> None:
    rec = fake_build(make_spec(tmp_path))
    (tmp_path / "kms.yaml").write_text("keys:\n  - awskms: alias/imagekit\n")
    no_region = {"AWS_REGION": None, "AWS_DEFAULT_REGION": None, "AWS_CONFIG_FILE": "/nonexistent"}
    r = cli("manifest", "verify", rec.id, "-f", str(spec), "--trust", str(tmp_path / "kms.yaml"), env=no_region)
    one_line(r, 1, "cannot use AWS KMS", "AWS_REGION")
    r = cli("promote", "app", rec.id, "--channel", "stable", "-f", str(spec), "--key", "awskms:alias/x", env=no_region)
    one_line(r, 1, "cannot use AWS KMS")


@pytest.mark.parametrize("target", ["file", "devnull"])
def test_keygen_onto_a_file(tmp_path: Path, target: str) -> None:
    out = Path("/dev/null") if target == "devnull" else tmp_path / "f"
    if target == "file":
        out.write_text("x")
    one_line(cli("keygen", "--out", str(out)), 2, "is a file, not a folder")


def test_nightly_report_onto_a_file_fails_before_planning(spec: Path, tmp_path: Path) -> None:
    (tmp_path / "report").write_text("x")
    one_line(cli("nightly", "-f", str(spec), "--report", str(tmp_path / "report")), 2, "--report", "not a folder")


def test_cache_dir_pointing_at_a_file(spec: Path, tmp_path: Path) -> None:
    (tmp_path / "cachefile").write_text("x")
    r = cli("plan", "-f", str(spec), env={"IMAGEKIT_CACHE_DIR": str(tmp_path / "cachefile")})
    one_line(r, 2, "IMAGEKIT_CACHE_DIR", "is a file, not a folder")


def test_render_where_packer_is_a_file_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "imagekit.yaml").write_text(
        "version: 1\nname: p\nlayers:\n  base:\n"
        '    from: {docker: "debian:bookworm", ami: {name: "debian-12-*", owners: ["1"]}}\n'
        "images:\n  p: {leaf: base, targets: [docker, ami]}\n"
    )
    (tmp_path / "packer").write_text("a file\n")
    one_line(cli("render", "-f", str(tmp_path / "imagekit.yaml")), 2, "is not a folder")
    assert not (tmp_path / "dockerfiles").exists() and not (tmp_path / "provision").exists()


def test_unknown_manifest_id_is_a_usage_error(spec: Path) -> None:
    one_line(cli("manifest", "show", "ffffffffffff", "-f", str(spec)), 2, "no manifest 'ffffffffffff'")


def test_relative_key_and_trust_resolve_against_the_current_folder(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = fake_build(make_spec(tmp_path))
    elsewhere = tmp_path / "cwd"
    (elsewhere / "keys").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    # keys/imagekit.key exists next to the spec, not here: a relative --key is relative to the current folder
    r = cli("promote", "app", rec.id, "--channel", "stable", "-f", str(spec), "--key", "keys/imagekit.key")
    one_line(r, 1, str(elsewhere / "keys" / "imagekit.key"), "does not exist")
    monkeypatch.chdir(tmp_path)
    r = cli("promote", "app", rec.id, "--channel", "stable", "-f", str(spec), "--key", "keys/imagekit.key",
            "--trust", "keys/imagekit.pub")  # fmt: skip
    assert r.exit_code == 0, r.output


def test_rollback_never_records_a_move_from_x_to_x(spec: Path, tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    one, two = fake_build(loaded, seed="1"), fake_build(loaded, seed="2")
    api.promote(tmp_path, "app", one.id, "stable")
    api.promote(tmp_path, "app", two.id, "stable")
    api.promote(tmp_path, "app", two.id, "stable")
    res = api.rollback(tmp_path, "app", "stable")
    assert (res["from"], res["manifest"]) == (two.id, one.id)
    api.promote(tmp_path, "app", one.id, "stable")  # the stack is now [one, one]: there is nothing to go back to
    one_line(cli("rollback", "app", "--channel", "stable", "-f", str(spec)), 2, "no earlier, non-revoked build")
    history = api.channel_history(tmp_path, "app", "stable")
    assert all(h["action"] != "rollback" or h["manifest"] != h.get("from") for h in history)


def test_json_failures_print_json_on_stdout(spec: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nlayers: {a: {from: {docker: x}, port: true}}\nimages: {x: {leaf: a}}\n")
    for args in (
        ["validate", "-f", str(bad), "--json"],
        ["plan", "-f", str(bad), "--json"],
        ["render", "-f", str(bad), "--json"],
        ["build", "-f", str(bad), "--target", "docker", "--json"],
    ):
        r = cli(*args)
        assert r.exit_code == 2, r.output
        doc = json.loads(r.stdout)
        assert doc["error"]["exit_code"] == 2
        assert doc["error"]["where"] == f"{bad}:3"
        assert "layers.a.port: expected a number, got true" in doc["error"]["message"]
    r = cli("resolve", "app", "--channel", "stable", "-f", str(spec), "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["error"]["message"].startswith("channel stable of app points at nothing")


def test_control_characters_and_long_values_are_escaped_and_cut(tmp_path: Path) -> None:
    path = tmp_path / "imagekit.yaml"
    evil = "\\e[31mred\\e[0m" + "A" * 100_000  # YAML's own escape for ESC: the reader lets it through
    path.write_text(
        f'version: 1\nname: x\nlayers: {{a: {{from: {{docker: x}}}}}}\nimages: {{x: {{leaf: a}}}}\nstore: "{evil}://x"\n'
    )
    r = cli("validate", "-f", str(path))
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 3  # one problem per line: the scheme, the control character, the length
    assert "\x1b" not in r.stderr and "\\x1b" in r.stderr
    assert all(len(line) < 600 for line in lines), [len(line) for line in lines]


def test_a_300_byte_name_anywhere_is_exit_2(spec: Path, tmp_path: Path) -> None:
    long = str(tmp_path / ("n" * 300))
    one_line(cli("manifest", "verify", long), 2, "is not a file")
    one_line(cli("manifest", "verify", long, "-f", str(spec), "--trust", long), 2, "the file name is too long")
    r = cli("promote", "app", "abcdef", "--channel", "stable", "-f", str(spec), "--key", long)
    one_line(r, 2, "signing key")


def test_json_runs_get_a_json_error_even_when_click_rejects_the_options(spec: Path) -> None:
    for args, needle, where in (
        (["build", "-f", str(spec), "--json"], "Missing option '--target'", "imagekit build"),
        (["plan", "--bogus", "--json"], "No such option: --bogus", "imagekit plan"),
        (["manifest", "verify", "--bogus", "--json"], "No such option: --bogus", "imagekit manifest verify"),
        (["nosuch", "--json"], "No such command 'nosuch'", "imagekit"),
    ):
        r = CliRunner().invoke(app, args, prog_name="imagekit")
        assert r.exit_code == 2, r.output
        doc = json.loads(r.stdout)
        assert doc["error"]["exit_code"] == 2 and doc["error"]["where"] == where, doc
        assert needle in doc["error"]["message"], doc
        assert needle in r.stderr  # the usual message still goes to stderr
    # without --json, stdout stays empty
    r = CliRunner().invoke(app, ["build", "-f", str(spec)])
    assert r.exit_code == 2 and r.stdout == ""
