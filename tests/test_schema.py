"""The JSON Schema of imagekit.yaml: generated from the spec models, committed, and accepted by check-jsonschema."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO
from typer.testing import CliRunner

from imagekit.api.spec import schema_text
from imagekit.cli import app

COMMITTED = REPO / "docs" / "imagekit.schema.json"
SPECS = sorted([*EXAMPLES.glob("*/imagekit*.yaml"), *(REPO / "tests" / "golden").glob("*/spec/imagekit.yaml")])


def _check_jsonschema() -> str:
    exe = Path(sys.executable).with_name("check-jsonschema")
    path = str(exe) if exe.exists() else shutil.which("check-jsonschema")
    if path is None:
        pytest.fail("check-jsonschema is part of the test extra: pip install -e '.[test]'")
    return path


def _validate(*files: Path) -> subprocess.CompletedProcess[str]:
    argv = [_check_jsonschema(), "--schemafile", str(COMMITTED), *map(str, files)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_schema_command_prints_the_committed_schema() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["title"] == "imagekit.yaml (version 1)"
    assert result.stdout == COMMITTED.read_text(encoding="utf-8"), (
        "docs/imagekit.schema.json is stale: run `imagekit schema > docs/imagekit.schema.json`"
    )
    assert schema_text() == result.stdout


def test_schema_follows_the_models() -> None:
    doc = json.loads(schema_text())
    layer = doc["$defs"]["Layer"]
    # the YAML keys (aliases), not the Python attribute names
    assert {"from", "copy"} <= set(layer["properties"]) and "from_" not in layer["properties"]
    assert layer["additionalProperties"] is False
    assert doc["required"] == ["version", "name", "layers", "images"]
    assert doc["properties"]["layers"]["propertyNames"]["pattern"].startswith("^[a-z0-9]")


def test_every_example_names_the_schema_for_its_editor() -> None:
    for spec in EXAMPLES.glob("*/imagekit*.yaml"):
        first = spec.read_text(encoding="utf-8").splitlines()[0]
        m = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert m, f"{spec}: first line must be the yaml-language-server $schema comment"
        assert (spec.parent / m.group(1)).resolve() == COMMITTED


def test_check_jsonschema_accepts_every_example_and_golden_spec() -> None:
    assert len(SPECS) >= 5
    proc = _validate(*SPECS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_jsonschema_rejects_what_the_loader_rejects(tmp_path: Path) -> None:
    good = (EXAMPLES / "tts" / "imagekit-cpu.yaml").read_text(encoding="utf-8")
    bad = {
        "typo.yaml": good.replace("    torch:", "    torchh:"),
        "float.yaml": good.replace('python: "3.11"', "python: 3.10"),
        "target.yaml": good.replace("targets: [docker, ami]", "targets: [docker, lambda]"),
        "sha.yaml": re.sub(r'sha256: "[0-9a-f]{64}"', 'sha256: "abc"', good),
    }
    for name, text in bad.items():
        assert text != good, name
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        proc = _validate(path)
        assert proc.returncode == 1, f"{name}: {proc.stdout}{proc.stderr}"
