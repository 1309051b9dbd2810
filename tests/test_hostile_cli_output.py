"""The commands that print what a build, gc or nightly saw (#21): `build`, `gc`, `nightly` and `plan` print image-
and store-derived strings (refs, layer names, report paths, gc lines, plan reasons, progress events) as text. Rich
markup stays visible instead of becoming links or colours (or a MarkupError, exit 3), escape sequences never reach
the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imagekit.cli import app, console
from imagekit.events import Event, Reporter
from imagekit.nightly.report import Check, ImageRun, NightlyResult
from imagekit.plan import ImagePlan, LayerPlan
from imagekit.retention.docker import DockerGc, DockerGcResult
from imagekit.targets.results import BuildResult, ImageResult

LINK = "[link=http://attacker.example]click[/link]"
ESCAPED_TAG = "\\[bold]not bold"
CLOSE = "[/]"  # a lone closing tag: interpreted, rich raises MarkupError
ESC = "\x1b[32mALL CHECKS PASSED\x1b]8;;http://attacker.example\x07"
HOSTILE = f"{LINK} {ESCAPED_TAG} {CLOSE} {ESC}"
REVOKED = {"layer": HOSTILE, "hash": "a" * 64, "manifest": HOSTILE, "revoked": [HOSTILE]}


def _check(output: str) -> None:
    assert "Traceback" not in output and "unexpected error" not in output, output
    assert "\x1b" not in output and "\x07" not in output, repr(output)  # CliRunner is no terminal: rich adds none
    assert LINK in output and ESCAPED_TAG in output and CLOSE in output, output  # printed, not taken as markup
    assert "\\x1b[32mALL CHECKS PASSED" in output  # the sequence is shown, not sent


def _spec(tmp_path: Path) -> str:
    (tmp_path / "imagekit.yaml").write_text("version: 1\n")  # never read: the api is replaced
    return str(tmp_path / "imagekit.yaml")


def _events(reporter: Reporter) -> None:
    reporter(Event("start", HOSTILE, image="app", target="docker", layer=HOSTILE))
    reporter(Event("warn", HOSTILE, image="app", target="docker"))
    reporter(Event("done", HOSTILE, image="app", target="docker", layer=HOSTILE))


def test_build_prints_refs_layers_and_paths_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_build(*_a: Any, reporter: Reporter, **_kw: Any) -> BuildResult:
        _events(reporter)
        res = ImageResult(image="app", target="docker", ref=f"x:{HOSTILE}", release_tags=[HOSTILE], pushed=HOSTILE)
        res.verify_report, res.manifest_id, res.manifest_path, res.log_path = HOSTILE, HOSTILE, HOSTILE, HOSTILE
        return BuildResult(spec="s", target="docker", images=[res])

    monkeypatch.setattr("imagekit.api.build.build", fake_build)
    res = CliRunner().invoke(app, ["build", "--target", "docker", "-f", _spec(tmp_path)])
    assert res.exit_code == 0, res.output
    _check(res.output)
    assert res.output.count(LINK) >= 6  # ref, tags, push, report, manifest, log, and the events


def test_gc_prints_its_lines_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_gc(*_a: Any, reporter: Reporter, **_kw: Any) -> DockerGcResult:
        _events(reporter)
        done = DockerGc("app", 1, kept=[HOSTILE], removed_tags=[HOSTILE], errors=[HOSTILE])
        return DockerGcResult("s", False, [done], record=HOSTILE)

    monkeypatch.setattr("imagekit.api.gc.gc", fake_gc)
    res = CliRunner().invoke(app, ["gc", "--target", "docker", "-f", _spec(tmp_path)])
    assert res.exit_code == 0, res.output
    _check(res.output)
    assert f"record: {LINK}" in res.output


def test_nightly_prints_its_report_and_paths_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report_dir = tmp_path / f"r{LINK}"

    def fake_nightly(*_a: Any, reporter: Reporter, **_kw: Any) -> NightlyResult:
        _events(reporter)
        run = ImageRun("app", "docker", status="failed", checks=[Check("verify", False, HOSTILE)], error=HOSTILE)
        return NightlyResult(spec=HOSTILE, started="t", runs=[run])

    monkeypatch.setattr("imagekit.api.nightly.nightly", fake_nightly)
    res = CliRunner().invoke(app, ["nightly", "-f", _spec(tmp_path), "--report", str(report_dir)])
    assert res.exit_code == 1, res.output  # the image failed: exit 1, not a crash
    _check(res.output)
    assert f"reports: {report_dir / 'report.md'}" in res.output


def test_plan_prints_reasons_from_the_store_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a stale reason quotes a revocation's --reason, which anyone allowed to revoke wrote
    layer = LayerPlan(name="app", hash="a" * 64, status="stale", reason=f"revoked layer: {HOSTILE}")

    def fake_plan(*_a: Any, **_kw: Any) -> tuple[Any, list[ImagePlan]]:
        return None, [ImagePlan(name="app", target="docker", layers=[layer])]

    monkeypatch.setattr("imagekit.api.spec.plan_spec", fake_plan)
    monkeypatch.setattr(console.out, "width", 1000)  # one row per line: the reason is not wrapped in its cell
    res = CliRunner().invoke(app, ["plan", "-f", _spec(tmp_path)])
    assert res.exit_code == 0, res.output
    _check(res.output)


@pytest.mark.parametrize(
    ("args", "api", "answer"),
    [
        (["resolve", "app", "--channel", "stable"], "resolve", {"image": HOSTILE, "amis": {HOSTILE: HOSTILE}}),
        (["resolve", "app", "--channel", "stable"], "resolve", {"image_id": HOSTILE, "local_ref": HOSTILE}),
        (["promote", "app", "m", "--channel", "stable"], "promote", {"manifest": HOSTILE, "seq": 1}),
        (["rollback", "app", "--channel", "stable"], "rollback", {"from": HOSTILE, "manifest": HOSTILE, "seq": 2}),
        (["revoke", "m", "--reason", "r"], "revoke", REVOKED),
    ],
)
def test_channel_commands_print_store_values_as_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], api: str, answer: dict[str, Any]
) -> None:
    monkeypatch.setattr(f"imagekit.api.manifest.{api}", lambda *_a, **_kw: answer)
    monkeypatch.setattr(console.out, "width", 1000)
    res = CliRunner().invoke(app, [*args, "-f", _spec(tmp_path)])
    assert res.exit_code == 0, res.output
    _check(res.output)
