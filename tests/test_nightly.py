"""The nightly job on the real Docker Engine with a tiny two-image spec on the shared bootstrapped Debian base.

Layers are a few bytes each (no torch), so every nightly run here takes seconds on the shared cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import DOCKER, REPO, require_docker, require_packer, running_registry

from imagekit.api.nightly import nightly
from imagekit.events import Event
from imagekit.locking import lock_path
from imagekit.manifest.channels import channel_log
from imagekit.manifest.ledger import spec_store
from imagekit.names import base_hash, refresh_epoch
from imagekit.nightly.report import NightlyResult
from imagekit.plan import plan_image
from imagekit.spec import Bootstrap, load_spec

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# The root layer must be named `base` with this bootstrap definition: its debootstrapped image
# (imagekit-base-base:<hash>) is then the one the CPU example and the docker tests already made.
SPEC = """\
version: 1
name: {name}
layers:
  base:
    from: {from_}
    cuda: "none"
    refresh: {{every_days: 7}}
    run: ["echo {name} > /etc/imagekit-nightly-test"]
  app1:
    parent: base
    copy: [{{src: app1/, dest: /opt/app1}}]
    run: [{app1_run}]
  app2:
    parent: base
    copy: [{{src: app2/, dest: /opt/app2}}]
images:
  one: {{leaf: app1, repository: imagekit-test/{name}-one}}
  two:
    leaf: app2
    repository: imagekit-test/{name}-two
{two_extra}
verify: {{gpu: optional}}
"""


BOOTSTRAP = "{bootstrap: {distro: debian, suite: bookworm}}"


def write_spec(
    folder: Path, name: str, *, two_extra: str = "", app1_run: str = "'true'", from_: str = BOOTSTRAP
) -> Path:
    """The test spec with two images sharing the `base` layer."""
    for app in ("app1", "app2"):
        (folder / app).mkdir(parents=True, exist_ok=True)
        (folder / app / "hello.txt").write_text(f"{app}\n")
    spec = folder / "imagekit.yaml"
    spec.write_text(SPEC.format(name=name, two_extra=two_extra, app1_run=app1_run, from_=from_))
    return spec


@pytest.fixture
def spec_name() -> Iterator[str]:
    """A unique spec name; every image tagged with it is removed afterwards (only ours)."""
    require_docker()
    name = f"ikn-{uuid.uuid4().hex[:8]}"
    yield name
    # by tag, and by digest for what a re-tag left untagged (the drift test's first upstream image)
    out = subprocess.run(
        [DOCKER, "images", "--digests", "--format", "{{.Repository}}:{{.Tag}} {{.Repository}}@{{.Digest}}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    mine = [ref for ref in out if name in ref and not ref.endswith((":<none>", "@<none>"))]
    if mine:
        subprocess.run([DOCKER, "rmi", "-f", *mine], capture_output=True, check=False)


def built(result: NightlyResult) -> list[tuple[str, str]]:
    """(image, layer) rebuilt by a run."""
    return sorted((b.image, b.layer) for b in result.built())


def channel_records(spec: Path, image: str, channel: str = "nightly") -> int:
    """How many records the channel's log holds."""
    store = spec_store(load_spec(spec))
    return len(store.read_log(channel_log(image, channel)))


def test_second_run_builds_nothing_and_moves_nothing(tmp_path: Path, spec_name: str) -> None:
    spec = write_spec(tmp_path, spec_name)
    first = nightly(spec, target="docker", jobs=2, report_dir=tmp_path / "r1")
    assert not first.failed, first.runs
    # the shared base layer is built once for both images
    assert built(first) == [("one", "app1"), ("two", "app2"), ("two", "base")] or built(first) == [
        ("one", "app1"),
        ("one", "base"),
        ("two", "app2"),
    ]
    assert all(r.channels == ["nightly"] for r in first.runs)
    records = {img: channel_records(spec, img) for img in ("one", "two")}
    assert records == {"one": 1, "two": 1}

    second = nightly(spec, target="docker", jobs=2, report_dir=tmp_path / "r2")
    assert not second.failed
    assert built(second) == []
    assert all(r.status == "unchanged" and r.channels == [] for r in second.runs)
    assert {img: channel_records(spec, img) for img in ("one", "two")} == records
    doc = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert doc["built"] == [] and doc["ok"] is True
    assert "nothing" in (tmp_path / "r2" / "report.md").read_text()


def test_refresh_due_rebuilds_the_base_and_everything_on_it(tmp_path: Path, spec_name: str) -> None:
    spec = write_spec(tmp_path, spec_name)
    first = nightly(spec, target="docker", jobs=2)
    assert not first.failed
    base_tag = f"imagekit/{spec_name}-base:{_hash16(spec, 'base')}"
    base_id = _image_id(base_tag)

    # six days later nothing is due; eight days later the base's weekly refresh is
    later = datetime.now(timezone.utc) + timedelta(days=6)
    assert built(nightly(spec, target="docker", clock=lambda: later)) == []
    much_later = datetime.now(timezone.utc) + timedelta(days=8)
    refreshed = nightly(spec, target="docker", jobs=2, clock=lambda: much_later, report_dir=tmp_path / "r")
    assert not refreshed.failed, refreshed.runs
    layers = built(refreshed)
    assert layers.count(("one", "base")) + layers.count(("two", "base")) == 1  # built once, shared
    assert ("one", "app1") in layers and ("two", "app2") in layers
    reasons = {(b.image, b.layer): b.reason for b in refreshed.built()}
    assert any(r.startswith("refresh due") for (_, layer), r in reasons.items() if layer == "base")
    assert all(r.channels == ["nightly"] for r in refreshed.runs)
    # the layer really was rebuilt (no BuildKit cache): a new image under the same hash tag
    assert _image_id(base_tag) != base_id
    # on a renewed base: the refresh period's bootstrapped base is another debootstrap than the first run's
    boot = load_spec(spec).spec.layers["base"].from_.bootstrap  # type: ignore[union-attr]
    assert boot is not None
    first_base = base_tag_of(boot, refresh_epoch(7, datetime.now(timezone.utc)))
    renewed_base = base_tag_of(boot, refresh_epoch(7, much_later))
    assert first_base != renewed_base and _image_id(first_base) != _image_id(renewed_base)
    # and the refreshed layer was built on it (an imported base is one filesystem layer, the bottom of its children)
    assert _bottom_layer(base_tag) == _bottom_layer(renewed_base) != _bottom_layer(first_base)
    # the refreshed build is new: the day after, nothing is due
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    assert built(nightly(spec, target="docker", clock=lambda: tomorrow)) == []


def base_tag_of(boot: Bootstrap, epoch: int) -> str:
    """The tag of the bootstrapped base of layer `base` for a refresh period."""
    return f"imagekit-base-base:{base_hash(boot, epoch)[:16]}"


def _bottom_layer(ref: str) -> str:
    """The diff id of an image's first filesystem layer."""
    res = subprocess.run([DOCKER, "image", "inspect", "-f", "{{json .RootFS.Layers}}", ref], check=False,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)[0]  # type: ignore[no-any-return]


def _hash16(spec: Path, layer: str) -> str:
    p = plan_image(load_spec(spec), "one", "docker")
    return next(lp.hash[:16] for lp in p.layers if lp.name == layer)


def _image_id(ref: str) -> str:
    res = subprocess.run(
        [DOCKER, "image", "inspect", "-f", "{{.Id}}", ref], check=False, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "imagekit", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or dict(os.environ),
    )


def test_one_image_failing_verification_lets_the_other_finish(tmp_path: Path, spec_name: str) -> None:
    # image two demands a GPU this machine does not have: its verification fails
    spec = write_spec(tmp_path, spec_name, two_extra="    verify: {gpu: required}")
    report = tmp_path / "report"
    proc = _cli("nightly", "-f", str(spec), "--target", "docker", "--promote", "canary", "--report", str(report))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr
    assert "# imagekit nightly — FAILED" in stdout  # the Markdown summary at the end of a terminal run
    doc = json.loads((report / "report.json").read_text())
    runs = {r["image"]: r for r in doc["runs"]}
    assert runs["one"]["failed"] is False and runs["one"]["channels"] == ["nightly", "canary"]
    assert runs["two"]["failed"] is True and runs["two"]["channels"] == []
    assert channel_records(spec, "one", "canary") == 1
    assert channel_records(spec, "two") == 0 and channel_records(spec, "two", "canary") == 0
    failed_checks = [(r["image"], c["name"]) for r in doc["runs"] for c in r["checks"] if not c["passed"]]
    assert ("two", "verify") in failed_checks

    # the JUnit XML parses and has exactly one <failure> per failed check
    root = ET.parse(report / "junit.xml").getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == sum(len(r["checks"]) for r in doc["runs"])
    failures = [(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None]
    assert sorted(failures) == sorted((f"{img}.docker", name) for img, name in failed_checks)
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == str(len(failed_checks))


def test_size_budget_breach_fails_the_gate_and_names_the_layer(tmp_path: Path, spec_name: str) -> None:
    spec = write_spec(tmp_path, spec_name, two_extra="    budget: {max_growth_pct: 10}")
    first = nightly(spec, target="docker")
    assert not first.failed
    nightly_before = channel_records(spec, "two")
    # app2 grows by 24 MB (incompressible), far past 10% of a ~170 MB image
    (tmp_path / "app2" / "blob.bin").write_bytes(os.urandom(24 << 20))
    second = nightly(spec, target="docker", report_dir=tmp_path / "r")
    two = next(r for r in second.runs if r.image == "two")
    one = next(r for r in second.runs if r.image == "one")
    assert two.failed and not one.failed
    gate = next(c for c in two.checks if c.name == "size budget")
    assert not gate.passed
    assert "grew most in layer app2" in gate.message and "max_growth_pct 10%" in gate.message
    assert "COPY" in gate.message or "blob" in gate.message  # the biggest step of that layer is named
    assert two.channels == [] and channel_records(spec, "two") == nightly_before
    md = (tmp_path / "r" / "report.md").read_text()
    assert "size budget" in md and "app2" in md
    # the gate runs before the record: the over-budget build is stored as a failed build, never promotable
    from imagekit.api.manifest import show_manifest

    shown = show_manifest(spec, str(two.manifest_id))
    assert shown["verified"] is False and any("size budget" in f for f in shown["failures"])
    # and it does not count as cached: the next run checks it again and fails again
    third = nightly(spec, target="docker")
    assert next(r for r in third.runs if r.image == "two").failed


def test_a_step_over_max_layer_bytes_fails_the_build_and_weights_are_left_out(tmp_path: Path, spec_name: str) -> None:
    import hashlib

    spec = write_spec(tmp_path, spec_name)
    weights = os.urandom(24 << 20)  # one file: over the limit too, but it cannot be split
    (tmp_path / "w.bin").write_bytes(weights)
    (tmp_path / "app2" / "blob.bin").write_bytes(os.urandom(24 << 20))  # the copy step: 24 MB in one blob
    model = f"{{src: w.bin, dest: /opt/models/w.bin, sha256: {hashlib.sha256(weights).hexdigest()}}}"
    text = spec.read_text().replace(
        "    copy: [{src: app2/, dest: /opt/app2}]\n",
        f"    copy: [{{src: app2/, dest: /opt/app2}}]\n    models: [{model}]\n"
        "    budget: {max_layer_bytes: 20000000}\n",
    )
    spec.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "imagekit", "build", "-f", str(spec), "--target", "docker", "--image", "two"],
        capture_output=True, text=True, check=False, timeout=1200, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if "max_layer_bytes" in x)
    problem = line.split("; grew most")[0]
    assert "layer app2: a step of 25.2 MB is over max_layer_bytes 20.0 MB" in problem
    assert "/opt/app2" in problem and "w.bin" not in problem and problem.count("over max_layer_bytes") == 1
    assert "recorded as failed" in line


def test_concurrent_runs_wait_for_the_lock_and_build_each_layer_once(tmp_path: Path, spec_name: str) -> None:
    # app1 sleeps while it builds, so the first run surely holds the lock when the second starts
    spec = write_spec(tmp_path, spec_name, app1_run="'sleep 3'")
    lock = lock_path(spec_store(load_spec(spec)).url)
    a = _cli("nightly", "-f", str(spec), "--target", "docker", "--report", str(tmp_path / "a"))
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.stat().st_size > 0):
        assert a.poll() is None, a.communicate()
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.05)
    b = _cli("nightly", "-f", str(spec), "--target", "docker", "--report", str(tmp_path / "b"))
    _out_a, err_a = a.communicate(timeout=600)
    _out_b, err_b = b.communicate(timeout=600)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    assert "waiting for imagekit nightly" in err_b and f"pid {a.pid}" in err_b
    built_a = [(x["image"], x["layer"]) for x in json.loads((tmp_path / "a" / "report.json").read_text())["built"]]
    built_b = [(x["image"], x["layer"]) for x in json.loads((tmp_path / "b" / "report.json").read_text())["built"]]
    assert len(built_a) == 3 and built_b == []
    assert len(set(built_a + built_b)) == len(built_a + built_b)
    # the store is intact: every manifest verifies, one per image, each channel moved once
    listing = subprocess.run(
        [sys.executable, "-m", "imagekit", "manifest", "list", "-f", str(spec), "--json"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    manifests = json.loads(listing.stdout)
    assert sorted(m["image"] for m in manifests) == ["one", "two"]
    assert all(m["signature"] == "ok" and m["verified"] for m in manifests)
    assert channel_records(spec, "one") == 1 and channel_records(spec, "two") == 1


@dataclass
class Registry:
    """A running docker-registry: its address, and a way to take it away mid-test."""

    address: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1:<free port> (the engine trusts 127.0.0.0/8 over plain HTTP)."""
    with running_registry(tmp_path) as (address, proc):
        yield Registry(address, proc)


def _docker(*args: str) -> None:
    res = subprocess.run([DOCKER, *args], check=False, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def test_upstream_drift_of_a_from_docker_base(tmp_path: Path, spec_name: str, registry: Registry) -> None:
    from imagekit.runners.bootstrap import ensure_base
    from imagekit.runners.docker import DockerEngine
    from imagekit.spec import Bootstrap

    base = ensure_base(DockerEngine(), "base", Bootstrap(distro="debian", suite="bookworm")).tag
    upstream = f"{registry.address}/{spec_name}-upstream:bookworm"
    _docker("tag", base, upstream)
    _docker("push", upstream)
    spec = write_spec(tmp_path, spec_name, from_=f'{{docker: "{upstream}"}}')
    first = nightly(spec, target="docker")
    assert not first.failed, first.runs
    assert built(nightly(spec, target="docker")) == []  # the registry still serves the same digest

    # upstream publishes a new image under the same tag
    yesterday = _image_id(upstream)
    container = f"{spec_name}-upstream"
    _docker("run", "--name", container, base, "sh", "-c", "echo security-update > /etc/upstream-v2")
    try:
        _docker("commit", container, upstream)
    finally:
        _docker("rm", container)
    _docker("push", upstream)
    # while this engine still holds yesterday's image under that tag (as a build host that pulled it before would)
    _docker("tag", yesterday, upstream)
    drifted = nightly(spec, target="docker", jobs=2)
    assert not drifted.failed, drifted.runs
    layers = built(drifted)
    assert layers.count(("one", "base")) + layers.count(("two", "base")) == 1
    assert ("one", "app1") in layers and ("two", "app2") in layers
    base_reason = next(b.reason for b in drifted.built() if b.layer == "base")
    assert base_reason.startswith(f"upstream changed ({upstream} now sha256:")
    # the rebuild pulled the new upstream and built on it, so the same drift is not reported again the next night
    out = subprocess.run([DOCKER, "run", "--rm", f"imagekit/{spec_name}-base:{_hash16(spec, 'base')}", "cat",
                          "/etc/upstream-v2"], capture_output=True, text=True, check=False, timeout=300)  # fmt: skip
    assert out.stdout.strip() == "security-update", out.stderr
    assert _image_id(upstream) != yesterday
    assert built(nightly(spec, target="docker")) == []

    # with the registry gone the run says so and treats the base as unchanged
    events: list[Event] = []
    registry.stop()
    quiet = nightly(spec, target="docker", reporter=events.append)
    assert built(quiet) == [] and not quiet.failed
    warns = [e.message for e in events if e.kind == "warn"]
    assert any(f"cannot reach the registry of {upstream}" in w for w in warns), warns


AMI_SPEC = """\
version: 1
name: {name}
layers:
  base:
    from:
      bootstrap: {{distro: debian, suite: bookworm}}
      ami: {{name: "debian-12-amd64-*", owners: ["136693071363"]}}
    cuda: "none"
  app:
    parent: base
    copy: [{{src: app/, dest: /opt/app}}]
images:
  svc: {{leaf: app, targets: [docker, ami], repository: imagekit-test/{name}}}
verify: {{gpu: optional}}
"""


@pytest.mark.packer
@pytest.mark.aws
def test_both_targets_in_one_run_with_the_ami_rehearsal(tmp_path: Path, spec_name: str) -> None:
    require_packer()
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "hello.txt").write_text("hi\n")
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(AMI_SPEC.format(name=spec_name))
    first = nightly(spec, target="all", jobs=2, rehearse=True)
    assert not first.failed, first.runs
    assert built(first) == [("svc", "app"), ("svc", "app"), ("svc", "base"), ("svc", "base")]
    assert sorted((r.target, tuple(r.channels)) for r in first.runs) == [
        ("ami", ("nightly",)),
        ("docker", ("nightly",)),
    ]
    ami = next(r for r in first.runs if r.target == "ami")
    assert ami.manifest_id and any(g["target"] == "ami" for g in first.gc)
    second = nightly(spec, target="all", jobs=2, rehearse=True)
    assert built(second) == [] and all(r.status == "unchanged" and not r.channels for r in second.runs)


def test_docker_gc_untags_builds_beyond_keep_but_not_a_rollback_target(tmp_path: Path, spec_name: str) -> None:
    spec = write_spec(tmp_path, spec_name)
    spec.write_text(spec.read_text().replace("images:\n", "retention: {keep: 1}\nimages:\n"))
    app1_tags = []
    runs = []
    for version in range(3):
        (tmp_path / "app1" / "hello.txt").write_text(f"app1 v{version}\n")
        runs.append(nightly(spec, target="docker"))
        assert not runs[-1].failed, runs[-1].runs
        app1_tags.append(f"imagekit/{spec_name}-app1:{_hash16(spec, 'app1')}")
    gc = {g["image"]: g for g in runs[-1].gc}
    first_one = runs[0].runs[0].manifest_id
    # v0 fell out of keep=1 and is no channel's head or rollback target; v1 is nightly's rollback target
    assert gc["one"]["removed_builds"] == [first_one]
    assert f"imagekit-test/{spec_name}-one:{app1_tags[0].rsplit(':', 1)[1]}" in gc["one"]["removed_tags"]
    assert app1_tags[0] in gc["one"]["removed_tags"]
    assert not _exists(app1_tags[0]) and _exists(app1_tags[1]) and _exists(app1_tags[2])
    # the shared base and image two (unchanged, one build) keep everything
    assert _exists(f"imagekit/{spec_name}-base:{_hash16(spec, 'base')}")
    assert gc["two"]["removed_tags"] == []


def _exists(ref: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", ref], capture_output=True, check=False).returncode == 0
