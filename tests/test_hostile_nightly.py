"""One hostile image does not turn the night into exit 3 (#21): its probe (lists for objects, lone surrogates,
empty and markup package names, escape sequences, deep nesting) fails that image's row with `probe:` failures,
the other images finish, junit.xml parses, report.md keeps the image's words as text, and the exit code is 1.

The nightly runs for real (plan, the pipeline's verify/record/promote steps, gc, reports, the CLI's exit code);
only the docker build is replaced, by a builder that judges each image's saved probe through the probe boundary
and records the verdict, as the docker target's verify and record do."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imagekit.cli import app
from imagekit.errors import VerifyFailed
from imagekit.manifest.keys import keygen
from imagekit.manifest.record import record_build
from imagekit.plan import plan_image
from imagekit.spec import load_spec
from imagekit.targets.results import BuildResult, ImageResult, LayerResult
from imagekit.timefmt import iso_utc
from imagekit.verify.probe_file import verify_probe_file

FIXTURE = Path(__file__).parent / "fixtures" / "probe-cpu.json"
SPEC = """\
version: 1
name: ikt-hostile-night
layers:
  base: {from: {bootstrap: {suite: bookworm}}, cuda: 'none'}
  a: {parent: base, run: ['true']}
  b: {parent: base, run: ['true']}
  c: {parent: base, run: ['true']}
images:
  good: {leaf: a}
  odd: {leaf: b}
  deep: {leaf: c}
verify: {gpu: optional}
signing: {key: keys/imagekit.key}
"""


def _probes(root: Path) -> dict[str, Path]:
    good: dict[str, Any] = json.loads(FIXTURE.read_text())
    good["pip"] = {"packages": {}, "locations": {}}
    odd = json.loads(json.dumps(good))
    odd.update(torch=[1], nvidia_smi="nope", models=[], user=7, cuda_libs=["x"])
    odd["os"]["pretty_name"] = "\\[link=http://attacker.example]x[/link]\x1b[32mALL CHECKS PASSED"
    odd["dpkg"]["packages"].update({"": "1.0", "evil pkg](http://x)": "1", "ok-name": "[red]1\x1b[2J", "# h": "<b>"})
    text = json.dumps(odd).replace('"user": 7', '"user": 7, "surrogate": "\\ud800"')  # a lone surrogate
    out = {"good": root / "good.json", "odd": root / "odd.json", "deep": root / "deep.json"}
    out["good"].write_text(json.dumps(good))
    out["odd"].write_text(text)
    out["deep"].write_text(json.dumps(good)[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}")
    return out


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "imagekit.yaml").write_text(SPEC)
    keygen(tmp_path / "keys")
    (tmp_path / "imagekit.trust.yaml").write_text("keys:\n  - pem: keys/imagekit.pub\n")
    return tmp_path / "imagekit.yaml"


def test_a_hostile_probe_fails_its_row_and_the_night_exits_1(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes = _probes(tmp_path)

    def builder(path: Any, target: str, *, images: list[str], **_kw: Any) -> BuildResult:
        loaded = load_spec(path)
        name = images[0]
        lps = plan_image(loaded, name, "docker").layers
        res = ImageResult(image=name, target=target, started=iso_utc(), ref=f"imagekit/{name}:{lps[-1].hash[:16]}")
        res.layers = [LayerResult(lp.name, lp.hash, f"imagekit/x-{lp.name}:{lp.hash[:16]}", "built", 0.1) for lp in lps]
        try:
            res.verify_report = str(verify_probe_file(loaded, probes[name], name).path)
        except VerifyFailed as exc:
            res.verify_report, res.verify_failures = exc.report_path or "", list(exc.failures)
        except Exception as exc:  # the boundary refused the probe: no report, a failed check
            res.verify_failures = [f"probe: {exc}"]
        report = Path(res.verify_report) if res.verify_report else None
        rec = record_build(
            loaded, name, target, [(lp.name, lp.hash) for lp in lps], started=res.started, finished=iso_utc(),
            image_ref=res.ref, image_digest="sha256:" + hashlib.sha256(name.encode()).hexdigest(), report=report,
            failure="; ".join(res.verify_failures) or None,
        )  # fmt: skip
        res.manifest_id = rec.id
        return BuildResult(spec=str(path), target=target, images=[res])

    monkeypatch.setattr("imagekit.api.build.build", builder)
    reports = tmp_path / "reports"
    res = CliRunner().invoke(app, ["nightly", "-f", str(spec), "--target", "docker", "--report", str(reports)])
    assert res.exit_code == 1, res.output  # not 3: one image's lies are its own failure
    assert "Traceback" not in res.output and "unexpected error" not in res.output
    assert "\x1b" not in res.output
    doc = json.loads((reports / "report.json").read_text())
    runs = {r["image"]: r for r in doc["runs"]}
    assert runs["good"]["status"] == "ok" and runs["good"]["channels"] == ["nightly"], runs["good"]
    for name in ("odd", "deep"):
        assert runs[name]["status"] == "failed" and runs[name]["channels"] == []
        assert runs[name]["error"] is None  # a failed check, not a crash
    odd = next(c for c in runs["odd"]["checks"] if c["name"] == "verify")["message"]
    for said in ("probe: torch: expected an object", "lone surrogates", "is not a package"):
        assert said in odd, odd
    deep = next(c for c in runs["deep"]["checks"] if c["name"] == "verify")["message"]
    assert "probe:" in deep and "nested deeper" in deep, deep
    ET.fromstring((reports / "junit.xml").read_bytes())  # well-formed
    md = (reports / "report.md").read_text()
    assert "\x1b" not in md and "](http://x)" not in md and "<b>" not in md and "\n# h" not in md
