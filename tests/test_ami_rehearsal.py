"""The AMI target end to end through the rehearsal: moto server for EC2, sshd containers for instances, real packer.

One layered chain is built once per session (it shares the CPU example's bootstrap base) and reused by the tests
that follow: app-only rebuild, cancel, provisioning failure, gc. Every build goes through the `imagekit` CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import DOCKER, copy_example, require_docker, require_packer

IMAGEKIT = [sys.executable, "-c", "from imagekit.cli import main; main()"]
pytestmark = [pytest.mark.docker, pytest.mark.packer, pytest.mark.aws, pytest.mark.slow]

SPEC = """\
version: 1
name: {name}
layers:
  base:
    from:
      bootstrap: {{distro: debian, suite: bookworm}}
      ami: {{name: "debian-12-amd64-*", owners: ["136693071363"]}}
    cuda: "none"
  runtime:
    parent: base
    python: "3.11"
    env: {{RUNTIME_MARK: "{runtime_mark}"}}
  app:
    parent: runtime
    copy: [{{src: app/, dest: /opt/app/app}}]
    env: {{PYTHONPATH: /opt/app}}
    user: app
    workdir: /opt/app
    command: ["python", "-m", "app.server"]
    port: 7860
{app_extra}images:
  svc: {{leaf: app, targets: [docker, ami]}}
aws:
  region: us-east-1
  ami_regions: [eu-west-1]
  tags: {{team: test}}
verify:
  gpu: optional
  instance_type: g5.xlarge
  health: {{path: /ready, timeout: 60, interval: 0.2}}
  smoke: {{method: POST, path: /synthesize, json: {{text: "hi"}}, expect: {{status: 200, min_bytes: 16}}}}
"""

SERVER = """\
import http.server


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()
        self.wfile.write(b"ready")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"x" * 64)


http.server.HTTPServer(("127.0.0.1", 7860), Handler).serve_forever()
# version: {version}
"""


@dataclass
class Chain:
    """A spec folder whose AMI chain the session built once."""

    root: Path
    result: dict[str, Any]
    seconds: float


def write_spec(root: Path, name: str, *, runtime_mark: str = "1", app_extra: str = "", version: str = "1") -> Path:
    (root / "app").mkdir(parents=True, exist_ok=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "server.py").write_text(SERVER.format(version=version))
    spec = root / "imagekit.yaml"
    spec.write_text(SPEC.format(name=name, runtime_mark=runtime_mark, app_extra=app_extra))
    return spec


def cli(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    argv = [*IMAGEKIT, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def build(root: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    res = cli("build", "-f", str(root / "imagekit.yaml"), "--target", "ami", "--rehearse", "--json", *extra)
    return res, time.monotonic() - t0


def state(root: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((root / ".imagekit" / "rehearsal" / "ec2.json").read_text())
    return doc


def tags_of(root: Path) -> dict[str, dict[str, str]]:
    return {a["ami_id"]: a["tags"] for a in state(root)["amis"]}


def _all_packer_runs() -> list[tuple[str, int, str]]:
    """Every `packer build` any log so far records: (log, line number, template)."""
    logs = Path(os.environ["IMAGEKIT_CACHE_DIR"]) / "logs" / "ami"
    runs = []
    for log in logs.glob("*.log"):
        for i, line in enumerate(log.read_text(errors="replace").splitlines()):
            if line.startswith("$ ") and " build -machine-readable " in line:
                runs.append((log.name, i, line.rsplit(" ", 1)[-1]))
    return runs


def packer_runs_since(before: list[tuple[str, int, str]]) -> list[str]:
    """Templates of every `packer build` started after the snapshot `before` (counted from the logs, not clocks)."""
    seen = set(before)
    return sorted(t for (log, i, t) in _all_packer_runs() if (log, i, t) not in seen)


def containers(prefix: str) -> list[str]:
    out = subprocess.run(
        [DOCKER, "ps", "-a", "--filter", "label=imagekit.rehearsal=instance", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [c for c in out if c.startswith(prefix)]


def manifests(root: Path) -> list[Path]:
    return sorted((root / "manifests").rglob("*.intoto.json"))


@pytest.fixture(scope="session")
def session_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require_docker()
    require_packer()
    base = tmp_path_factory.mktemp("ami-session")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEKIT_CACHE_DIR", str(base / "cache"))
        # the default signing key (and so the trust of rehearsal manifests) stays inside the test session
        mp.setenv("XDG_CONFIG_HOME", str(base / "config"))
        mp.delenv("AWS_PROFILE", raising=False)
        yield base
    # the session's rehearsal AMIs are images in the shared engine: remove those it made (stand-ins stay cached)
    tags = set()
    for state_file in base.glob("*/.imagekit/rehearsal/ec2.json"):
        for ami in json.loads(state_file.read_text())["amis"]:
            if "imagekit:rehearsal-standin" not in ami["tags"]:
                tags.add(f"imagekit-rehearsal-ami:{ami['ami_id']}")
    if tags:
        subprocess.run([DOCKER, "rmi", *sorted(tags)], capture_output=True, check=False)


@pytest.fixture(autouse=True)
def _session_settings(session_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every build of the session signs with one key and logs to one place (conftest isolates them per test)
    monkeypatch.setenv("IMAGEKIT_CACHE_DIR", str(session_env / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(session_env / "config"))


@pytest.fixture(scope="session")
def chain(session_env: Path) -> Chain:
    root = session_env / "chain"
    write_spec(root, "imagekit-ami-test")
    res, seconds = build(root)
    assert res.returncode == 0, res.stderr[-4000:]
    return Chain(root, json.loads(res.stdout), seconds)


def test_full_chain_three_amis_each_from_its_parent_verified_and_recorded(chain: Chain) -> None:
    (img,) = chain.result["images"]
    layers = {lr["name"]: lr for lr in img["layers"]}
    assert [lr["status"] for lr in img["layers"]] == ["built", "built", "built"]
    ami = {name: lr["tag"].split(":", 1)[1] for name, lr in layers.items()}
    tags = tags_of(chain.root)
    assert tags[ami["runtime"]]["imagekit:parent-ami"] == ami["base"]
    assert tags[ami["app"]]["imagekit:parent-ami"] == ami["runtime"]
    for name, lr in layers.items():
        assert tags[ami[name]]["imagekit:layer-hash"] == lr["hash"]
        assert tags[ami[name]]["team"] == "test"
    # the copy in eu-west-1 carries the same tags (copy_image does not, imagekit copies them)
    copies = [a for a in state(chain.root)["amis"] if a["region"] == "eu-west-1"]
    assert sorted(a["tags"]["imagekit:layer"] for a in copies) == ["app", "base", "runtime"]
    # the chain is real: each AMI is an image of the provisioned container
    for ami_id in ami.values():
        assert (
            subprocess.run(
                [DOCKER, "image", "inspect", f"imagekit-rehearsal-ami:{ami_id}"], capture_output=True, check=False
            ).returncode
            == 0
        )
    report = json.loads(Path(img["verify_report"]).read_text())
    assert report["ok"] is True and report["target"] == "ami"
    assert report["health"]["ready"] is True and report["smoke"]["bytes"] == 64
    assert report["image_ref"] == f"aws:us-east-1:{ami['app']}"
    assert "rehearsal" in img["ref"]
    assert state(chain.root)["leftovers"] == {}
    assert containers("imagekit-rehearsal-imagekit-ami-test") == []
    (manifest,) = manifests(chain.root)
    envelope = json.loads(manifest.read_text())
    import base64

    statement = json.loads(base64.b64decode(envelope["payload"]))
    subjects = {s["name"] for s in statement["subject"]}
    # every region copy of the leaf AMI is a subject
    assert f"aws:us-east-1:{ami['app']}" in subjects
    assert any(s.startswith("aws:eu-west-1:ami-") for s in subjects)
    assert "rehearsal" in json.dumps(statement).lower()


def test_app_only_change_rebuilds_only_the_app_ami(chain: Chain) -> None:
    (chain.root / "app" / "server.py").write_text(SERVER.format(version="2"))
    before = _all_packer_runs()
    res, seconds = build(chain.root)
    assert res.returncode == 0, res.stderr[-4000:]
    (img,) = json.loads(res.stdout)["images"]
    assert [(lr["name"], lr["status"]) for lr in img["layers"]] == [
        ("base", "reused"),
        ("runtime", "reused"),
        ("app", "built"),
    ]
    # exactly one layer `packer build` (app), plus the boot-and-verify run of the new leaf
    assert packer_runs_since(before) == ["app.pkr.hcl", "verify.pkr.hcl"]
    first = {lr["name"]: lr["tag"] for lr in chain.result["images"][0]["layers"]}
    now = {lr["name"]: lr["tag"] for lr in img["layers"]}
    assert now["runtime"] == first["runtime"] and now["app"] != first["app"]
    assert tags_of(chain.root)[now["app"].split(":", 1)[1]]["imagekit:parent-ami"] == first["runtime"].split(":", 1)[1]
    print(f"\nrehearsal cold build {chain.seconds:.1f}s, app-only rebuild {seconds:.1f}s")


def _variant(chain: Chain, name: str, app_extra: str) -> Path:
    root = chain.root.parent / name
    shutil.rmtree(root, ignore_errors=True)
    write_spec(root, "imagekit-ami-test", app_extra=app_extra)
    # the same EC2 state and spec name: base and runtime are reused, only the changed app layer is built
    (root / ".imagekit" / "rehearsal").mkdir(parents=True)
    shutil.copyfile(chain.root / ".imagekit" / "rehearsal" / "ec2.json", root / ".imagekit" / "rehearsal" / "ec2.json")
    return root


def test_sigint_during_provisioning_cleans_up_and_exits_130(chain: Chain) -> None:
    root = _variant(chain, "cancel", '    run: ["echo provisioning-started", "sleep 300"]\n')
    logs = Path(os.environ["IMAGEKIT_CACHE_DIR"]) / "logs" / "ami"
    since = time.time()
    argv = [*IMAGEKIT, "build", "-f", str(root / "imagekit.yaml"), "--target", "ami"]
    proc = subprocess.Popen([*argv, "--rehearse"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        started = False
        while time.monotonic() < deadline and not started:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            for log in logs.glob("imagekit-ami-test-svc-app-*.log"):
                if log.stat().st_mtime >= since and "provisioning-started" in log.read_text(errors="replace"):
                    started = True
            time.sleep(0.5)
        assert started, "the app layer's provisioning never started"
        assert containers("imagekit-rehearsal-imagekit-ami-test-app-")  # the stand-in instance is up
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err.lower()
    # packer's own cleanup ran inside the emulator: no instance, security group or key pair is left
    assert state(root)["leftovers"] == {}
    assert containers("imagekit-rehearsal-imagekit-ami-test-app-") == []
    assert manifests(root) == []


def test_failing_provisioner_exits_1_naming_layer_line_and_log(chain: Chain) -> None:
    root = _variant(chain, "failing", '    run: ["echo about-to-fail", "false"]\n')
    res, _ = build(root)
    assert res.returncode == 1, res.stderr[-3000:]
    err = res.stderr
    assert "svc/app: provisioning failed" in err
    assert " line " in err  # the failing line of provision/app.sh, as bash reported it
    assert "about-to-fail" in err  # the log tail
    log_line = next(line for line in err.splitlines() if line.startswith("full log: "))
    assert Path(log_line.removeprefix("full log: ").strip()).exists()
    assert manifests(root) == []
    assert containers("imagekit-rehearsal-imagekit-ami-test-app-") == []


def test_gc_keeps_channel_newest_verified_and_parents_removes_the_rest(chain: Chain) -> None:
    from imagekit.api.manifest import promote
    from imagekit.manifest.ledger import open_ledger
    from imagekit.retention.ami import protected_amis, run_gc
    from imagekit.spec import load_spec
    from imagekit.targets.ami.rehearsal import rehearsal

    spec = chain.root / "imagekit.yaml"
    # the first build goes to a channel (rehearsal builds need --allow-rehearsal to be promoted)
    first = open_ledger(load_spec(spec)).entries("svc")[0]
    assert first.build is not None and first.build.rehearsal
    promote(spec, "svc", first.id, "prod", why="test", allow_rehearsal=True)
    channel_ami = first.build.amis["us-east-1"]
    assert channel_ami == chain.result["images"][0]["layers"][2]["tag"].split(":", 1)[1]
    old_runtime = chain.result["images"][0]["layers"][1]["tag"].split(":", 1)[1]
    # one more app build, then a runtime change: runtime and app rebuilt
    (chain.root / "app" / "server.py").write_text(SERVER.format(version="3"))
    res, _ = build(chain.root)
    assert res.returncode == 0, res.stderr[-3000:]
    write_spec(chain.root, "imagekit-ami-test", runtime_mark="2", version="3")
    res, _ = build(chain.root)
    assert res.returncode == 0, res.stderr[-3000:]
    newest = {lr["name"]: lr["tag"].split(":", 1)[1] for lr in json.loads(res.stdout)["images"][0]["layers"]}

    dry = cli("gc", "-f", str(spec), "--keep", "1", "--rehearse", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] is True
    would_remove = [d for d in planned["decisions"] if d["action"] == "remove"]
    assert {d["layer"] for d in would_remove} == {"app"}

    loaded = load_spec(spec)
    log = Path(os.environ["IMAGEKIT_CACHE_DIR"]) / "gc.log"
    with rehearsal(chain.root / ".imagekit" / "rehearsal", "us-east-1", log, ("eu-west-1",)) as r:
        before = {a.id for region in ("us-east-1", "eu-west-1") for a in r.aws.describe_images(region)}
        assert {d["amis"]["us-east-1"] for d in would_remove} <= before  # the dry run removed nothing
        result = run_gc(
            r.aws,
            loaded.spec.name,
            ["us-east-1", "eu-west-1"],
            keep=1,
            protected=protected_amis(loaded, None),
            primary_region="us-east-1",
        )
        removed = result.removed
        kept = {d.amis["us-east-1"]: d.reason for d in result.decisions if d.action == "keep"}
        assert channel_ami in kept and "channel" in kept[channel_ami]
        assert old_runtime in kept and "parent" in kept[old_runtime]
        assert newest["app"] in kept and newest["runtime"] in kept and newest["base"] in kept
        assert removed and {d.layer for d in removed} == {"app"}
        assert {d.name for d in removed} == {d["name"] for d in would_remove}
        after = {a.id for region in ("us-east-1", "eu-west-1") for a in r.aws.describe_images(region)}
        gone = {ami for d in removed for ami in d.amis.values()}
        assert len(gone) == 2 * len(removed)  # each build in both regions
        assert not gone & after
        import boto3

        for region in ("us-east-1", "eu-west-1"):
            ec2 = boto3.client(
                "ec2",
                region_name=region,
                endpoint_url=r.url,
                aws_access_key_id="x",
                aws_secret_access_key="x",
            )
            snaps = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
            assert not {s for d in removed for s in d.snapshots} & snaps
        # as `imagekit gc --rehearse` does: the removed AMIs' images leave the Docker engine
        r.forget(sorted(gone))
        for ami_id in gone:
            probe = subprocess.run(
                [DOCKER, "image", "inspect", f"imagekit-rehearsal-ami:{ami_id}"], capture_output=True, check=False
            )
            assert probe.returncode != 0
    # the next rehearsal no longer sees them either
    assert not gone & set(tags_of(chain.root))


def test_cpu_example_rehearsal_three_amis_then_app_only(session_env: Path) -> None:
    """The CPU example (torch 2.13.0+cpu from the wheelhouse when present) as layered AMIs, verified and recorded."""

    root = session_env / "cpu-example"
    copy_example(root)
    spec = root / "imagekit-cpu.yaml"
    text = spec.read_text()
    # the example lists only the docker target; the same spec builds AMIs once `ami` is listed; with the boot's
    # pre-read of weights and venv on (aws.prewarm)
    spec.write_text(text.replace("targets: [docker]", "targets: [docker, ami]") + "aws: {prewarm: true}\n")
    t0 = time.monotonic()
    res = cli("build", "-f", str(spec), "--target", "ami", "--rehearse", "--json")
    cold = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-4000:]
    (img,) = json.loads(res.stdout)["images"]
    assert [lr["status"] for lr in img["layers"]] == ["built", "built", "built"]
    report = json.loads(Path(img["verify_report"]).read_text())
    assert report["ok"] is True, report["failures"]
    assert report["probe"]["torch"]["version"].startswith("2.13.0")
    assert report["smoke"]["content_type"] == "audio/wav"
    # the app AMI starts the service at boot: its unit is installed, enabled, and what vmcheck started
    unit = report["service_unit"]
    assert unit["path"] == "/etc/systemd/system/imagekit-tts-cpu.service"
    assert unit["present"] is True and unit["enabled"] is True, unit
    assert unit["exec_start"] == ["/opt/venv/bin/python", "-m", "app.server", "--port", "7860"]
    assert unit["user"] == "app" and unit["workingdirectory"] == "/opt/app"
    assert unit["environment"]["PATH"].startswith("/opt/venv/bin:")
    # the pre-read ran before the service (by vmcheck: the rehearsal's sshd containers boot no systemd) and read
    # the weights and torch's libraries
    prewarm = report["prewarm"]
    assert prewarm["by"] == "vmcheck before the service" and prewarm["files"] >= 2, prewarm
    assert prewarm["bytes"] > 100 << 20 and prewarm["seconds"] >= 0, prewarm
    print(f"\nprewarm: {prewarm}")
    server = root / "app" / "server.py"
    server.write_text(server.read_text() + "\n# app-only change\n")
    before = _all_packer_runs()
    t0 = time.monotonic()
    res = cli("build", "-f", str(spec), "--target", "ami", "--rehearse", "--json")
    app_only = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-4000:]
    (img,) = json.loads(res.stdout)["images"]
    assert [lr["status"] for lr in img["layers"]] == ["reused", "reused", "built"]
    assert packer_runs_since(before) == ["app.pkr.hcl", "verify.pkr.hcl"]
    assert len(manifests(root)) == 2
    print(f"\nCPU example rehearsal: cold build {cold:.1f}s, app-only rebuild {app_only:.1f}s")
