"""Fast checks of the nightly job's decisions: refresh due, upstream drift (docker and AMI), the size gate."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from imagekit.events import Event
from imagekit.manifest.statement import BuildFacts, BuildRecord, build_statement
from imagekit.nightly.budget import LayerSize, check_budget, layer_sizes, package_changes
from imagekit.nightly.staleness import StaleChecker, base_dependency
from imagekit.plan import plan_image
from imagekit.spec import LoadedSpec, load_spec

SPEC = """\
version: 1
name: units
layers:
  base:
    from: {docker: "registry.example/debian:bookworm", ami: {name: "debian-12-*", owners: ["136693071363"]}}
    refresh: {every_days: 7}
  app:
    parent: base
    run: ["true"]
    budget: {max_bytes: 5000000}
images:
  svc: {leaf: app, targets: [docker, ami], budget: {max_growth_pct: 10}}
"""
NOW = datetime(2026, 11, 21, 3, 0, tzinfo=timezone.utc)


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedSpec:
    (tmp_path / "imagekit.yaml").write_text(SPEC)
    return load_spec(tmp_path / "imagekit.yaml")


def record(loaded: LoadedSpec, target: str, *, finished: datetime, base: str, mid: str = "m1") -> BuildRecord:
    layers = [(lp.name, lp.hash) for lp in plan_image(loaded, "svc", target).layers]  # type: ignore[arg-type]
    facts = BuildFacts(
        image="svc", target=target, spec_path="imagekit.yaml", spec_sha256="0" * 64, layers=layers,
        started=finished.isoformat(), finished=finished.isoformat().replace("+00:00", "Z"), builder={},
        image_ref="svc:1" if target == "docker" else None, image_digest="sha256:" + "1" * 64,
        amis=[{"id": "ami-0123", "region": "us-east-1"}] if target == "ami" else [], base=base, passed=True,
    )  # fmt: skip
    return BuildRecord(mid, build_statement(facts))


class FakeRegistry:
    def __init__(self, digest: str | Exception) -> None:
        self.digest = digest
        self.calls = 0

    def registry_digest(self, ref: str) -> str:
        self.calls += 1
        if isinstance(self.digest, Exception):
            raise self.digest
        return self.digest


class FakeEc2:
    def __init__(self, newest: str | None) -> None:
        self.newest = newest

    def newest_ami(self, region: str, name: str, owners: tuple[str, ...], architecture: str) -> str | None:
        assert (region, name, owners, architecture) == ("us-east-1", "debian-12-*", ("136693071363",), "x86_64")
        return self.newest


OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64


def reasons(loaded: LoadedSpec, checker: StaleChecker, target: str = "docker") -> dict[str, str]:
    hashes = {h for b in checker.builds for _, h in b.layers}
    p = plan_image(
        loaded, "svc", target,  # type: ignore[arg-type]
        lookup=lambda _i, _t, _l, h: "verified build m1" if h in hashes else None, stale_check=checker,
    )  # fmt: skip
    return {lp.name: lp.reason for lp in p.layers}


def test_refresh_due_after_every_days_and_not_before(loaded: LoadedSpec) -> None:
    b = record(loaded, "docker", finished=NOW - timedelta(days=8), base=f"registry.example/debian@{OLD}")
    reg = FakeRegistry(OLD)
    due = reasons(loaded, StaleChecker(loaded, [b], lambda: NOW, reg))
    assert due["base"].startswith("refresh due (last built 2026-11-13 03:00Z in m1, every 7 days)")
    assert due["app"] == "parent base is stale"
    fresh = reasons(loaded, StaleChecker(loaded, [b], lambda: NOW - timedelta(days=2), reg))
    assert fresh == {"base": "verified build m1", "app": "verified build m1"}


def test_docker_drift_and_an_unreachable_registry(loaded: LoadedSpec) -> None:
    b = record(loaded, "docker", finished=NOW, base=f"registry.example/debian@{OLD}")
    assert base_dependency(b) == (f"oci:registry.example/debian@{OLD}", "a" * 64)
    # what `imagekit build` records for a pulled base: the bare digest
    assert base_dependency(record(loaded, "docker", finished=NOW, base=OLD))[1] == "a" * 64
    reg = FakeRegistry(NEW)
    drift = reasons(loaded, StaleChecker(loaded, [b], lambda: NOW, reg))
    assert drift["base"].startswith("upstream changed (registry.example/debian:bookworm now sha256:bbbbbbbbbbbb")
    assert drift["app"] == "parent base is stale"
    same = reasons(loaded, StaleChecker(loaded, [b], lambda: NOW, FakeRegistry(OLD)))
    assert same["base"] == "verified build m1"
    events: list[Event] = []
    down = FakeRegistry(ConnectionError("connection refused"))
    checker = StaleChecker(loaded, [b], lambda: NOW, down, reporter=events.append)
    assert reasons(loaded, checker)["base"] == "verified build m1"  # unreachable: treated as unchanged
    reasons(loaded, checker)
    assert down.calls == 1  # asked once per run
    assert [e.kind for e in events] == ["warn"]
    assert "cannot reach the registry of registry.example/debian:bookworm (connection refused)" in events[0].message


def test_ami_drift_when_the_filter_selects_a_newer_ami(loaded: LoadedSpec) -> None:
    b = record(loaded, "ami", finished=NOW, base="ami-0ld")
    newer = reasons(loaded, StaleChecker(loaded, [b], lambda: NOW, ami=FakeEc2("ami-0new")), "ami")
    assert newer["base"] == "upstream changed ('debian-12-*' now selects ami-0new, built from ami-0ld in m1)"
    same = reasons(loaded, StaleChecker(loaded, [b], lambda: NOW, ami=FakeEc2("ami-0ld")), "ami")
    assert same["base"] == "verified build m1"


class FakeSizes:
    def __init__(self, sizes: dict[str, int], history: dict[str, list[dict[str, Any]]]) -> None:
        self.sizes, self.rows = sizes, history

    def size(self, ref: str) -> int | None:
        return self.sizes.get(ref)

    def history(self, ref: str) -> list[dict[str, Any]]:
        return self.rows.get(ref, [])


def test_budget_growth_names_the_layer_and_its_biggest_step(loaded: LoadedSpec) -> None:
    base_rows = [{"CreatedBy": "debootstrap", "Size": 100_000_000}]
    sizes = FakeSizes(
        {"base:h1": 100_000_000, "app:new": 104_900_000, "app:old": 101_000_000},
        {
            "base:h1": base_rows,
            "app:new": [
                {"CreatedBy": "RUN /bin/sh -c pip install big-wheel", "Size": 4_800_000},
                {"CreatedBy": "COPY app/ /opt/app", "Size": 100_000},
                *base_rows,
            ],
        },
    )
    per_layer = layer_sizes(
        sizes,
        [("base", "h1", "base:h1"), ("app", "h2", "app:new")],
        {"base": ("h1", "base:h1"), "app": ("h0", "app:old")},
    )
    assert [(x.name, x.size, x.previous) for x in per_layer] == [
        ("base", 100_000_000, 100_000_000),
        ("app", 4_900_000, 1_000_000),
    ]
    # 104.9 MB vs 95 MB last night: +10.4%, over 10%
    out = check_budget(
        loaded, "svc", size=104_900_000, previous_size=95_000_000, layers=per_layer,
        layer_tags={"base": "base:h1", "app": "app:new"}, sizes=sizes,
        reports=({"probe": {"pip": {"packages": {"a": "1"}}}}, {"probe": {"pip": {"packages": {"a": "2", "big-wheel": "9"}}}}),
    )  # fmt: skip
    assert not out.passed and out.blamed == "app"
    assert "image svc: grew +10.4% (95.0 MB -> 104.9 MB), over max_growth_pct 10%" in out.message
    assert "grew most in layer app" in out.message
    assert out.grew[0] == "4.8 MB: RUN /bin/sh -c pip install big-wheel"
    assert "pip +big-wheel 9" in out.grew and "pip a 1 -> 2" in out.grew


def test_budget_max_bytes_on_a_layer(loaded: LoadedSpec) -> None:
    sizes = FakeSizes({"base:h1": 100, "app:new": 6_000_100}, {})
    per_layer = [LayerSize("base", "h1", 100), LayerSize("app", "h2", 6_000_000)]
    out = check_budget(
        loaded, "svc", size=6_000_100, previous_size=None, layers=per_layer,
        layer_tags={"base": "base:h1", "app": "app:new"}, sizes=sizes,
    )  # fmt: skip
    assert not out.passed and out.blamed == "app"
    assert out.message.startswith("layer app: 6.0 MB is over max_bytes 5.0 MB")
    ok = check_budget(
        loaded, "svc", size=1_000, previous_size=990, layers=[LayerSize("app", "h2", 900)],
        layer_tags={}, sizes=sizes,
    )  # fmt: skip
    assert ok.passed and ok.message == "within budget"


def test_max_layer_bytes_names_the_step_and_leaves_weights_out(tmp_path: Path) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w" * 3_000_000)
    import hashlib

    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    text = SPEC.replace(
        "    budget: {max_bytes: 5000000}",
        f"    models: [{{src: w.bin, dest: /opt/models/w.bin, sha256: {sha}}}]",
    ).replace("budget: {max_growth_pct: 10}", "budget: {max_layer_bytes: 2000000}")
    (tmp_path / "imagekit.yaml").write_text(text)
    loaded = load_spec(tmp_path / "imagekit.yaml")
    base_rows = [{"CreatedBy": "debootstrap", "Size": 1_500_000}]
    app_rows = [
        {"CreatedBy": "COPY app/ /opt/app", "Size": 100_000},
        # the weights file: over the limit, but one file cannot be split (buildah names no path: its size says it)
        {"CreatedBy": "/bin/sh -c #(nop) ADD file:0f3c in / ", "Size": 3_000_512},
        {"CreatedBy": "RUN |2 IMAGEKIT_PART=heavy1 sh /tmp/imagekit/app.sh install", "Size": 2_500_000},
        *base_rows,
    ]
    sizes = FakeSizes({}, {"base:h1": base_rows, "app:h2": app_rows})
    tags = {"base": "base:h1", "app": "app:h2"}
    per_layer = [LayerSize("base", "h1", 1_500_000), LayerSize("app", "h2", 5_600_512)]
    out = check_budget(loaded, "svc", size=None, previous_size=None, layers=per_layer, layer_tags=tags, sizes=sizes)
    assert not out.passed and out.blamed == "app"
    assert out.message.startswith("layer app: a step of 2.5 MB is over max_layer_bytes 2.0 MB")
    problems = out.message.split("; grew most")[0]
    assert "IMAGEKIT_PART=heavy1" in problems and "ADD file" not in problems and "debootstrap" not in problems
    assert problems.count("over max_layer_bytes") == 1
    # the base's own step is under the limit; with a bigger limit every step passes
    roomy = text.replace("max_layer_bytes: 2000000", "max_layer_bytes: 2600000")
    (tmp_path / "imagekit.yaml").write_text(roomy)
    ok = check_budget(load_spec(tmp_path / "imagekit.yaml"), "svc", size=None, previous_size=None, layers=per_layer,
                      layer_tags=tags, sizes=sizes)  # fmt: skip
    assert ok.passed and ok.checked and ok.message == "within budget"


def test_package_changes_lists_added_and_changed() -> None:
    old = {"probe": {"dpkg": {"packages": {"libc6": "2.36-9", "gcc": "12"}}}}
    new = {"probe": {"dpkg": {"packages": {"libc6": "2.36-9+deb12u1", "gcc": "12", "cmake": "3.25"}}}}
    assert package_changes(old, new) == ["dpkg +cmake 3.25", "dpkg libc6 2.36-9 -> 2.36-9+deb12u1"]


def test_imagekit_plan_shows_refresh_due_from_the_store(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from imagekit.manifest.record import record_build

    (tmp_path / "imagekit.yaml").write_text(SPEC)
    loaded = load_spec(tmp_path / "imagekit.yaml")
    layers = plan_image(loaded, "svc", "docker").layers
    old = datetime.now(timezone.utc) - timedelta(days=9)
    record_build(
        loaded, "svc", "docker", layers, started=old, finished=old, image_ref="svc:1",
        image_digest="sha256:" + "1" * 64, passed=True, report={"ok": True},
    )  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "imagekit", "plan", "-f", str(tmp_path / "imagekit.yaml"), "--target", "docker",
         "--json"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (img,) = json.loads(res.stdout)["images"]
    status = {lp["name"]: (lp["status"], lp["reason"]) for lp in img["layers"]}
    assert status["base"][0] == "stale" and status["base"][1].startswith("refresh due (last built ")
    assert status["app"] == ("stale", "parent base is stale")


def test_layer_locks_let_one_build_make_a_shared_layer() -> None:
    import threading

    from imagekit.nightly.run import LayerLocks

    locks = LayerLocks()
    made: list[str] = []
    seen: list[bool] = []
    gate = threading.Barrier(4)

    def worker(i: int) -> None:
        gate.wait()
        with locks("imagekit/x-base:0123") as built_elsewhere:
            seen.append(built_elsewhere)
            if not built_elsewhere:
                made.append(f"worker {i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and sorted(seen) == [False, True, True, True]
    # a build that raised leaves the layer unbuilt: the next one builds it
    with pytest.raises(RuntimeError), locks("imagekit/x-app:4567") as first:
        assert first is False
        raise RuntimeError("layer failed")
    with locks("imagekit/x-app:4567") as second:
        assert second is False


def test_a_crash_in_one_image_leaves_the_others_and_the_reports(tmp_path: Path) -> None:
    import json

    from imagekit.errors import BuildFailed
    from imagekit.nightly.run import run_nightly

    (tmp_path / "imagekit.yaml").write_text(
        "version: 1\nname: crash\nlayers:\n  base: {from: {bootstrap: {suite: bookworm}}, cuda: 'none'}\n"
        "  a: {parent: base, run: ['true']}\n  b: {parent: base, run: ['false']}\n"
        "images:\n  one: {leaf: a}\n  two: {leaf: b}\n"
    )
    calls: list[str] = []

    def builder(_path: Any, _target: str, *, images: list[str], **_kw: Any) -> Any:
        calls.append(images[0])
        if images[0] == "one":
            raise BuildFailed("step failed", image="one", layer="a", log_tail=["E: boom"], log_path="/tmp/x.log")
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_nightly(tmp_path / "imagekit.yaml", target="docker", jobs=2, report_dir=tmp_path / "r", builder=builder)
    assert sorted(calls) == ["one", "two"]
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    runs = {r["image"]: r for r in doc["runs"]}
    assert doc["ok"] is False and runs["one"]["failed"] and runs["two"]["failed"]
    (check,) = runs["one"]["checks"]
    assert check["name"] == "build" and check["message"].startswith("one/a: step failed (log: /tmp/x.log)")
    assert "E: boom" in check["message"]
    assert runs["two"]["error"] == "unexpected error: RuntimeError: a bug"
    assert runs["one"]["channels"] == runs["two"]["channels"] == []
