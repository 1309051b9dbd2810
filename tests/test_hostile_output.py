"""What the image under test, a record or a spec says is printed as text (#21): no rich markup interpreted, no
terminal escape reaching the screen, Markdown and junit XML that stay what they are."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from manifest_helpers import fake_build, make_spec
from rich.console import Console
from typer.testing import CliRunner

from imagekit.api import manifest as api
from imagekit.cli import app
from imagekit.cli.console import SafeConsole, cell, escape
from imagekit.nightly.report import Check, ImageRun, NightlyResult, md, to_junit, to_markdown

HOSTILE = [
    "\\[red]not red",  # console.escape's old `[` -> `\[` turned this into an escaped backslash and a tag
    "\\\\[bold]x",
    "[link=http://attacker.example]click[/link]",
    "[/]",  # a lone closing tag: rich raises MarkupError (a crash, exit 3)
    "[/bold]",
    "\x1b[32mALL CHECKS PASSED\x1b[0m",
    "\x1b]8;;http://attacker.example\x07link\x1b]8;;\x07",
    "bell\x07 and C1 \x9b31m",
    "line\rforged",
]


def _render(value: str) -> str:
    buf = io.StringIO()
    console = SafeConsole(file=buf, force_terminal=True, color_system="truecolor", highlight=False)
    console.print(f"[bold]value:[/] {escape(value)}")
    return buf.getvalue()


@pytest.mark.parametrize("value", HOSTILE)
def test_escape_leaves_no_markup_and_no_control_character(value: str) -> None:
    shown = _render(value)
    # only rich's own bold (ESC[1m ... ESC[0m) may appear; the value brings no escape sequence of its own
    assert shown.count("\x1b") == 2 and "\x1b]8" not in shown and "\x07" not in shown and "\x9b" not in shown
    plain = io.StringIO()
    SafeConsole(file=plain, force_terminal=False).print(escape(value))
    assert "[" not in value or "[" in plain.getvalue()  # the brackets are printed, not eaten as a tag


def test_a_table_cell_is_never_markup() -> None:
    from rich.table import Table

    table = Table("x")
    table.add_row(cell("[red]x[/]\x1b[2J"))
    buf = io.StringIO()
    Console(file=buf, force_terminal=False, width=80).print(table)
    assert "[red]x[/]" in buf.getvalue() and "\x1b" not in buf.getvalue()


def test_manifest_show_and_history_print_hostile_values_as_text(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded, report={"passed": True, "torch": "\x1b[32m[link=http://x]2.5.1[/link]", "x": "[/]"})
    spec = str(tmp_path / "imagekit.yaml")
    api.promote(tmp_path, "app", rec.id, "stable", why="[/] \\[red]oops \x1b[2J", who="[bold]mallory")
    runner = CliRunner()
    shown = runner.invoke(app, ["manifest", "show", rec.id, "-f", spec])
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.stdout and "[link=http://x]2.5.1[/link]" in shown.stdout
    hist = runner.invoke(app, ["history", "app", "--channel", "stable", "-f", spec])
    assert hist.exit_code == 0, hist.output  # a --why text used to make this channel's history crash for good
    assert "[/] \\[red]oops" in hist.stdout and "[bold]mallory" in hist.stdout and "\x1b" not in hist.stdout


def test_report_md_takes_names_as_text() -> None:
    run = ImageRun(
        "app",
        "docker",
        status="failed",
        checks=[Check("verify", False, "# Heading\n![img](http://attacker.example/x.png) <img src=x onerror=y> | a")],
        diff={"packages": [{"key": "probe.pip.packages.evil](http://x)", "old": "1", "new": "<b>2</b>"}]},
    )
    text = to_markdown(NightlyResult(spec="s", started="t", runs=[run]))
    body = text.split("## Failures", 1)[1]
    assert "\n# Heading" not in body
    line = next(x for x in body.splitlines() if x.startswith("- verify"))
    assert re.search(r"(?<!\\)[#!\[\]<>|]", line[len("- verify: ") :]) is None  # every mark escaped
    pkg = next(x for x in text.splitlines() if "evil" in x)
    assert re.search(r"(?<!\\)[\[\]<>]", pkg.replace(" -> ", " ")) is None
    assert "\\!\\[img\\]" in body and "\\<img" in body
    assert md("a\nb") == "a\\\\nb"  # one line: a newline cannot start a heading


def test_junit_stays_xml_with_control_characters() -> None:
    run = ImageRun("app", "docker", checks=[Check("verify\x00", False, "bad \x1b[31m \x0b\x0c \ud800 end")])
    xml = to_junit(NightlyResult(spec="s", started="t\x01", runs=[run]))
    root = ET.fromstring(xml.encode("utf-8"))  # well-formed
    failure = root.find(".//failure")
    assert failure is not None and failure.text is not None and "\\x1b" in failure.text


def test_the_nightly_report_on_stdout_draws_nothing() -> None:
    run = ImageRun("app", "docker", checks=[Check("verify", False, "\x1b[2J\x1b[H\x1b[32mALL CHECKS PASSED")])
    buf = io.StringIO()
    SafeConsole(file=buf, force_terminal=True).print(to_markdown(NightlyResult("s", "t", runs=[run])), markup=False)
    assert "\x1b[2J" not in buf.getvalue() and "\x1b[H" not in buf.getvalue()
