"""docs/ci: every file parses as YAML and every `imagekit ...` command line in it (cron comments included) is
accepted by imagekit's own argument parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from conftest import REPO

from imagekit.cli import app

# typer vendors its own click: take its exception root from a public typer class, not from a click import
ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
CI_DIR = REPO / "docs" / "ci"
CI_FILES = sorted(p for p in CI_DIR.iterdir() if p.suffix in (".yml", ".yaml"))
# `imagekit` (or a path ending in /imagekit) followed by its arguments, up to the end of the line
COMMAND_RE = re.compile(r"(?:^|[\s'\"])(?:\S*/)?imagekit[ \t]+(?P<args>[a-z][^\n]*)")
CRON_RE = re.compile(r"^#\s+(\S+\s+){5}.*imagekit nightly", re.MULTILINE)


def imagekit_commands(text: str) -> list[list[str]]:
    """The argument lists of every imagekit invocation in a text (shell operators end a command)."""
    out = []
    for m in COMMAND_RE.finditer(text):
        args = m.group("args")
        args = re.split(r"\s(?:&&|\|\||;|\|)\s", args)[0]
        out.append(shlex.split(args, comments=True))
    return out


def parse(args: list[str]) -> Any:
    """Parse args like the `imagekit` command would (click make_context), without running anything."""
    group: Any = typer.main.get_command(app)
    ctx = group.make_context("imagekit", list(args))
    # the subcommand name: `protected_args` in older click, `_protected_args` in the click typer vendors
    head = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
    name, cmd, rest = group.resolve_command(ctx, [*head, *ctx.args])
    assert cmd is not None and name is not None
    return cmd.make_context(name, rest, parent=ctx)


def test_there_are_the_three_ci_systems() -> None:
    names = {p.name for p in CI_FILES}
    assert {"github-actions.yml", "concourse.yml", "tekton.yml"} <= names


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.name)
def test_ci_file_parses_and_its_imagekit_commands_are_accepted(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict) and doc
    assert CRON_RE.search(text), f"{path.name} has no plain cron line running imagekit nightly"
    commands = imagekit_commands(text)
    assert any(c[0] == "nightly" for c in commands), f"{path.name} never runs imagekit nightly"
    for args in commands:
        try:
            ctx = parse(args)
        except ClickException as exc:
            pytest.fail(f"{path.name}: `imagekit {shlex.join(args)}` is rejected: {exc}")
        assert ctx.command.name == args[0]
        if args[0] == "nightly":
            assert ctx.params["file"] is not None  # a scheduled job names its spec


def test_the_checker_rejects_a_wrong_command() -> None:
    # the test above would pass vacuously if the parser accepted anything
    with pytest.raises(ClickException):
        parse(["nightly", "--target", "all", "--no-such-option"])
    with pytest.raises(ClickException):
        parse(["nightly", "--jobs", "zero"])
    assert imagekit_commands("run: .venv/bin/imagekit nightly -f x.yaml --jobs 2 && echo done") == [
        ["nightly", "-f", "x.yaml", "--jobs", "2"]
    ]
