"""Fan-out: `plan --matrix` lists the stale (image, target) jobs a nightly run would build, in a CI matrix shape."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from manifest_helpers import fake_build, make_spec
from typer.testing import CliRunner

from imagekit.api.fanout import nightly_plans, plan_matrix
from imagekit.cli import app
from imagekit.spec import load_spec

RECORDED_BASE = "sha256:" + "ab" * 32  # what fake_build records as the base digest


class Upstream:
    """A registry answering one digest for every reference (counts the questions)."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.asked: list[str] = []

    def registry_digest(self, ref: str) -> str:
        self.asked.append(ref)
        return self.digest


def test_matrix_lists_only_stale_jobs_with_their_layers(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    fake_build(loaded, "rt")  # base + runtime verified; app is not built
    doc = plan_matrix(loaded.path, target="docker", docker_resolver=Upstream(RECORDED_BASE))
    assert doc == {"include": [{"image": "app", "target": "docker", "layers": "app", "force": ""}]}

    fake_build(loaded, "app")
    assert plan_matrix(loaded.path, target="docker", docker_resolver=Upstream(RECORDED_BASE)) == {"include": []}


def test_matrix_forces_what_upstream_drift_and_a_due_refresh_rebuild(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    fake_build(loaded, "app")
    fake_build(loaded, "rt")
    moved = Upstream("sha256:" + "cd" * 32)
    doc = plan_matrix(loaded.path, target="docker", docker_resolver=moved)
    assert doc["include"] == [
        {"image": "app", "target": "docker", "layers": "base runtime app", "force": "base"},
        {"image": "rt", "target": "docker", "layers": "base runtime", "force": "base"},
    ]
    assert moved.asked == ["debian:bookworm"]  # asked once per reference for the whole run

    text = loaded.path.read_text().replace('    python: "3.11"\n', '    python: "3.11"\n    refresh: {every_days: 7}\n')
    loaded.path.write_text(text)
    fake_build(load_spec(loaded.path), "rt", seed="2")
    later = datetime.now(timezone.utc) + timedelta(days=8)
    doc = plan_matrix(loaded.path, target="docker", images=["rt"], docker_resolver=Upstream(RECORDED_BASE),
                      clock=lambda: later)  # fmt: skip
    assert doc["include"] == [{"image": "rt", "target": "docker", "layers": "runtime", "force": "runtime"}]


def test_plan_matrix_prints_one_line_github_actions_can_take(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    text = loaded.path.read_text().replace("  app: {leaf: app}", "  app: {leaf: app, targets: [docker, ami]}")
    loaded.path.write_text(text)
    res = CliRunner().invoke(app, ["plan", "-f", str(loaded.path), "--matrix"])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("\n") == 1  # `echo "matrix=$(imagekit plan --matrix)" >> $GITHUB_OUTPUT`
    doc = json.loads(res.stdout)
    assert [(j["image"], j["target"]) for j in doc["include"]] == [("app", "docker"), ("app", "ami"), ("rt", "docker")]
    assert all(j["layers"].split()[0] == "base" and j["force"] == "" for j in doc["include"])
    only = CliRunner().invoke(app, ["plan", "-f", str(loaded.path), "--matrix", "--target", "ami", "--rehearse"])
    assert [j["target"] for j in json.loads(only.stdout)["include"]] == ["ami"]
    bad = CliRunner().invoke(app, ["plan", "-f", str(loaded.path), "--rehearse"])
    assert bad.exit_code == 2 and "--rehearse goes with --matrix" in bad.output


def test_build_refuses_a_force_layer_the_image_does_not_have(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    res = CliRunner().invoke(app, ["build", "-f", str(loaded.path), "--target", "docker", "--image", "rt",
                                   "--force-layer", "base, app"])  # fmt: skip
    assert res.exit_code == 2
    assert "--force-layer 'app' is no layer of rt" in res.output


def test_the_nightly_report_lists_the_dpkg_and_pip_versions_that_changed(tmp_path: Path) -> None:
    from imagekit.api.manifest import diff_builds
    from imagekit.manifest.ledger import open_ledger
    from imagekit.nightly.report import ImageRun, NightlyResult, to_json, to_markdown

    loaded = make_spec(tmp_path)

    def report(libc: str, numpy: str | None) -> dict[str, object]:
        pip = {"packages": {"requests": "2.32.3", **({"numpy": numpy} if numpy else {})}}
        return {"passed": True, "failures": [], "probe": {"dpkg": {"packages": {"libc6": libc, "bash": "5.2"}},
                                                           "pip": pip}}  # fmt: skip

    old = fake_build(loaded, "app", seed="1", report=report("2.36-9+deb12u7", None))
    new = fake_build(loaded, "app", seed="2", report=report("2.36-9+deb12u9", "2.1.3"))
    ledger = open_ledger(loaded)
    a, b = ledger.build(old.id).build, ledger.build(new.id).build
    assert a is not None and b is not None
    run = ImageRun("app", "docker", status="ok", previous_id=old.id, diff=diff_builds(a, b))
    result = NightlyResult(spec="s", started="t", runs=[run])
    md = to_markdown(result)
    assert f"## Package versions changed: app/docker (against {old.id})" in md
    assert "- dpkg libc6: 2.36-9+deb12u7 -> 2.36-9+deb12u9" in md
    assert "- pip numpy: (new) -> 2.1.3" in md
    assert "bash" not in md.split("## Package versions changed")[1].split("##")[0]  # unchanged ones are not listed
    assert to_json(result)["package_changes"] == [
        {"image": "app", "target": "docker", "manager": "dpkg", "name": "libc6", "old": "2.36-9+deb12u7",
         "new": "2.36-9+deb12u9"},
        {"image": "app", "target": "docker", "manager": "pip", "name": "numpy", "old": None, "new": "2.1.3"},
    ]  # fmt: skip


def test_the_report_shows_the_time_to_ready_verify_measured() -> None:
    from imagekit.nightly.report import ImageRun, NightlyResult, to_markdown
    from imagekit.nightly.run import _figures
    from imagekit.verify.report import HealthResult, Report

    health = HealthResult(path="/ready", ready=True, seconds_to_ready=61.5)
    report = Report(spec="s", image="app", image_ref="r", seconds=70.0, health=health)
    figures = _figures(json.loads(report.to_json()))
    assert figures["time_to_ready_s"] == 61.5
    md = to_markdown(NightlyResult(spec="s", started="t", runs=[ImageRun("app", "docker", verification=figures)]))
    assert "time_to_ready_s: 61.5" in md


def test_a_revoked_layer_is_rebuilt_from_scratch_and_then_is_good_again(tmp_path: Path) -> None:
    import hashlib

    from imagekit.api.manifest import revoke
    from imagekit.manifest.record import record_build, revoked_layers, verified_builds
    from imagekit.plan import plan_image
    from imagekit.timefmt import iso_utc

    loaded = make_spec(tmp_path)
    bad = fake_build(loaded, "app")
    fake_build(loaded, "rt")
    revoke(loaded.path, bad.id, reason="CVE in the base", layer="base")
    assert verified_builds(loaded) == []  # both builds stand on the revoked base
    doc = plan_matrix(loaded.path, target="docker", docker_resolver=Upstream(RECORDED_BASE))
    assert {(j["image"], j["force"]) for j in doc["include"]} == {("app", "base"), ("rt", "base")}
    (app_plan,) = nightly_plans(loaded.path, target="docker", images=["app"], docker_resolver=Upstream(RECORDED_BASE))
    base = app_plan.layers[0]
    assert base.reason.startswith(f"revoked layer, rebuilt from scratch (revoked with build {bad.id} by ")
    assert base.reason.endswith(": CVE in the base)")
    base_hash = base.hash

    # the nightly's rebuild of the same hash, made after the revocation, is not covered by it
    time.sleep(1.1)  # record times have whole seconds: one made in the revocation's second counts as covered
    layers = plan_image(loaded, "app", "docker").layers
    fresh = record_build(loaded, "app", "docker", layers, started=iso_utc(), finished=iso_utc(),
                         image_ref="r:t", image_digest="sha256:" + hashlib.sha256(b"fresh").hexdigest(),
                         report={"passed": True, "failures": []})  # fmt: skip
    assert [b.id for b in verified_builds(loaded)] == [fresh.id]
    assert base_hash not in revoked_layers(loaded)
    # and its base and runtime layers are rt's too: nothing is left to build
    assert plan_matrix(loaded.path, target="docker", docker_resolver=Upstream(RECORDED_BASE)) == {"include": []}


def test_a_reused_ami_layer_brings_every_region_copy_or_is_rebuilt(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from imagekit.runners.aws import Ami
    from imagekit.spec import load_spec
    from imagekit.targets.ami import AmiTarget

    loaded = make_spec(tmp_path)
    loaded.path.write_text(loaded.path.read_text() + "aws: {region: us-east-1, ami_regions: [eu-west-1, us-west-2]}\n")
    loaded = load_spec(loaded.path)
    found = {"us-east-1": "ami-1", "eu-west-1": "ami-2"}

    class Ec2:
        def find_layer(self, region: str, spec: str, layer: str, layer_hash: str) -> Ami | None:
            ami = found.get(region)
            return Ami(ami, region, "n", "2026-12-01", "available", {}, ()) if ami else None

    events: list[str] = []
    target = SimpleNamespace(aws=Ec2(), region="us-east-1", loaded=loaded, ec2=None,
                             event=lambda kind, message, *_: events.append(message))  # fmt: skip
    assert AmiTarget.reuse(target, "app", "base", "h" * 64) is None  # type: ignore[arg-type]
    assert events == ["AMI ami-1 has no copy in us-west-2; rebuilding base for every region"]
    found["us-west-2"] = "ami-3"
    reused = AmiTarget.reuse(target, "app", "base", "h" * 64)  # type: ignore[arg-type]
    assert reused is not None
    assert reused.amis == {"us-east-1": "ami-1", "eu-west-1": "ami-2", "us-west-2": "ami-3"}
