"""The packer wrapper's parsing (machine-readable lines, artifacts, script lines) and version detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import require_packer

from imagekit.runners import packer as pk


def test_machine_line_unescapes_commas_and_newlines() -> None:
    line = "1795236960,base.amazon-ebs.base,artifact,0,id,eu-west-1:ami-1%!(PACKER_COMMA)us-east-1:ami-2"
    parsed = pk.parse_machine_line(line)
    assert parsed is not None
    assert parsed.target == "base.amazon-ebs.base" and parsed.type == "artifact"
    assert parsed.data == ("0", "id", "eu-west-1:ami-1,us-east-1:ami-2")
    say = pk.parse_machine_line("1795236960,,ui,say,==> done\\nnext")
    assert say is not None and say.data == ("say", "==> done\nnext")
    assert pk.parse_machine_line("panic: something") is None


def test_amis_of_splits_regions() -> None:
    assert pk.amis_of(["eu-west-1:ami-1,us-east-1:ami-2", "us-east-1:ami-2"]) == {
        "eu-west-1": "ami-1",
        "us-east-1": "ami-2",
    }
    assert pk.amis_of(["nonsense"]) == {}


def test_script_line_prefers_imagekit_trap_then_bash() -> None:
    assert pk.script_line(["x", "imagekit: failed at line 42 of the provisioning script", "Script exited"]) == 42
    assert pk.script_line(["/tmp/script_1.sh: line 7: nope: command not found"]) == 7
    assert pk.script_line(["Script exited with non-zero exit status: 1"]) is None


def test_read_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"builds": [{"name": "base", "artifact_id": "us-east-1:ami-1"}]}))
    assert pk.read_manifest(path)[0]["artifact_id"] == "us-east-1:ami-1"
    assert pk.read_manifest(tmp_path / "missing.json") == []


def test_plugins_only_from_1_7() -> None:
    assert not pk.PackerInfo("packer", (1, 6, 6)).needs_plugins
    assert pk.PackerInfo("packer", (1, 11, 2)).needs_plugins


@pytest.mark.packer
def test_find_packer_reads_the_version() -> None:
    info = pk.find_packer(require_packer())
    assert info.version >= pk.MIN_VERSION
    assert info.version_text.count(".") == 2
