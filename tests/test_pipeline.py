"""The one build pipeline (api/build.py) over a recording fake target, run as docker and as ami alike.

Both targets go through the same steps: plan with the target's reuse lookup, build only stale layers, finish,
verify, the size gate, the signed record. A build with nothing to build verifies and records on either target.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imagekit.api.build import build
from imagekit.errors import BuildFailed, UsageError, VerifyFailed
from imagekit.manifest.ledger import open_ledger
from imagekit.plan import LayerPlan
from imagekit.spec import LoadedSpec, load_spec
from imagekit.targets import TARGETS, BuildOptions, TargetInfo
from imagekit.targets.results import ImageResult, LayerResult

SPEC = """\
version: 1
name: pipe
layers:
  base: {{from: {{bootstrap: {{suite: bookworm}}}}, cuda: "none"}}
  app: {{parent: base, run: ["true"]}}
images:
  svc: {{leaf: app, targets: [docker, ami]{budget}}}
"""


class Sizes:
    def __init__(self, size: int) -> None:
        self.value = size

    def size(self, ref: str) -> int | None:
        return self.value

    def history(self, ref: str) -> list[dict[str, Any]]:
        return []


@dataclass
class FakeTarget:
    """Remembers what it built; its artifacts are names in a set; verification passes unless told otherwise."""

    name: str
    built: set[tuple[str, str]]
    calls: list[str] = field(default_factory=list)
    fail_verify: bool = False
    size: int = 1000
    builders: dict[str, str] = field(default_factory=dict)
    layer_builds: int = 0

    @contextlib.contextmanager
    def prepare(self, image: str, res: ImageResult) -> Iterator[None]:
        self.calls.append(f"prepare {image}")
        yield

    def reuse(self, image: str, layer: str, digest: str) -> LayerResult | None:
        if (layer, digest) not in self.built:
            return None
        return LayerResult(layer, digest, f"{self.name}/{layer}:{digest[:8]}", "reused", 0.0, reason="exists")

    def build_layer(self, image: str, lp: LayerPlan, done: list[LayerResult], *, force: bool) -> LayerResult:
        self.calls.append(f"build {lp.name}")
        self.layer_builds += 1
        self.built.add((lp.name, lp.hash))
        return LayerResult(lp.name, lp.hash, f"{self.name}/{lp.name}:{lp.hash[:8]}", "built", 0.1)

    def finish(self, image: str, res: ImageResult) -> None:
        self.calls.append("finish")
        res.ref, res.size = f"{self.name}:{res.layers[-1].hash[:8]}", self.size

    def verify(self, image: str, res: ImageResult) -> str:
        self.calls.append("verify")
        path = Path(self.report_dir) / f"report-{len(self.calls)}.json"
        failures = ["smoke status: expected 200, found 500"] if self.fail_verify else []
        path.write_text(json.dumps({"ok": not failures, "failures": failures, "run": str(path)}))
        if failures:
            raise VerifyFailed(f"{image}: verification failed", failures=failures, report_path=str(path))
        return str(path)

    def record_facts(self, res: ImageResult) -> dict[str, Any]:
        self.calls.append("record")
        digest = "sha256:" + res.layers[-1].hash
        return {"image_ref": res.ref, "image_digest": digest, "size_bytes": res.size}

    def sizes(self) -> Sizes:
        return Sizes(self.size)

    def layer_ref(self, layer: str, digest: str) -> str | None:
        return f"{self.name}/{layer}:{digest[:8]}"

    report_dir: str = ""


@pytest.fixture(params=["docker", "ami"])
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeTarget:
    target = FakeTarget(request.param, set(), report_dir=str(tmp_path))

    @contextlib.contextmanager
    def opener(_loaded: LoadedSpec, _images: list[str], _options: BuildOptions) -> Iterator[FakeTarget]:
        yield target

    monkeypatch.setitem(TARGETS, request.param, TargetInfo(request.param, opener, concurrent=True))  # type: ignore[arg-type]
    return target


def _spec(tmp_path: Path, budget: str = "") -> Path:
    path = tmp_path / "imagekit.yaml"
    path.write_text(SPEC.format(budget=budget))
    return path


def test_a_build_with_nothing_to_build_still_verifies_and_records(fake: FakeTarget, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    first = build(spec, fake.name).image("svc")
    assert [lr.status for lr in first.layers] == ["built", "built"]
    assert fake.calls == ["prepare svc", "build base", "build app", "finish", "verify", "record"]
    fake.calls.clear()
    again = build(spec, fake.name).image("svc")
    assert [lr.status for lr in again.layers] == ["reused", "reused"]
    assert fake.calls == ["prepare svc", "finish", "verify", "record"]
    assert again.manifest_passed is True and again.manifest_id != first.manifest_id
    entries = open_ledger(load_spec(spec)).entries("svc")
    assert [e.build.target for e in entries if e.build] == [fake.name, fake.name]


def test_force_layers_rebuild_from_that_layer_down(fake: FakeTarget, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    build(spec, fake.name, verify=False)
    fake.calls.clear()
    res = build(spec, fake.name, verify=False, force_layers={"app"}).image("svc")
    assert [lr.status for lr in res.layers] == ["reused", "built"]
    assert fake.calls == ["prepare svc", "build app", "finish"]  # --no-verify: no verification, no record
    assert res.manifest_id == ""


def test_a_failed_verification_is_recorded_failed_then_raised(fake: FakeTarget, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    fake.fail_verify = True
    with pytest.raises(VerifyFailed, match="verification failed") as info:
        build(spec, fake.name)
    assert info.value.failures == ["smoke status: expected 200, found 500"]
    (entry,) = open_ledger(load_spec(spec)).entries("svc")
    assert entry.build is not None and not entry.build.passed
    # nightly's way: the failure stays in the result
    res = build(spec, fake.name, raise_failures=False).image("svc")
    assert res.verify_failures == ["smoke status: expected 200, found 500"] and res.manifest_passed is False


def test_the_size_gate_applies_to_every_target(fake: FakeTarget, tmp_path: Path) -> None:
    spec = _spec(tmp_path, budget=", budget: {max_bytes: 500}")
    with pytest.raises(BuildFailed, match=r"size budget: image svc: .* is over max_bytes") as info:
        build(spec, fake.name)
    assert info.value.exit_code == 1
    (entry,) = open_ledger(load_spec(spec)).entries("svc")
    assert entry.build is not None and not entry.build.passed
    assert any("size budget" in f for f in entry.build.failures)
    fake.size = 400
    res = build(spec, fake.name).image("svc")
    assert res.budget_passed is True and res.manifest_passed is True


def test_options_a_target_does_not_take_are_usage_errors(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    with pytest.raises(UsageError, match="--push applies to --target docker"):
        build(spec, "ami", push="registry.example/x")
    with pytest.raises(UsageError, match="--rehearse applies to --target ami"):
        build(spec, "docker", rehearse=True)
    with pytest.raises(UsageError, match="--target must be docker or ami, not 'vm'"):
        build(spec, "vm")
