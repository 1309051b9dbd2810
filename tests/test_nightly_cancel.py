"""Cancel under `nightly --jobs 2 --target all --rehearse`: SIGTERM while a docker build and a packer build are both
in flight stops both, lets Packer clean up inside the emulator, leaves no container and no record, exits 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_nightly
from conftest import DOCKER, REPO, require_packer

pytestmark = [pytest.mark.docker, pytest.mark.packer, pytest.mark.aws, pytest.mark.slow]
spec_name = test_nightly.spec_name  # the fixture: unique image names, removed afterwards

SPEC = test_nightly.AMI_SPEC.replace(
    "    copy: [{{src: app/, dest: /opt/app}}]\n",
    '    copy: [{{src: app/, dest: /opt/app}}]\n    run: ["echo provisioning-started", "sleep 600"]\n',
)


def _started(logs: Path, pattern: str, since: float) -> bool:
    return any(
        log.stat().st_mtime >= since and "provisioning-started" in log.read_text(errors="replace")
        for log in logs.glob(pattern)
    )


def _packers_under(root: Path) -> list[int]:
    """Packer processes working in a folder under root (their cwd is the template's folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if argv and Path(argv[0].decode(errors="replace")).name == "packer" and cwd.startswith(str(root)):
            found.append(int(entry.name))
    return found


def _containers(name: str) -> list[str]:
    out = subprocess.run([DOCKER, "ps", "-a", "--format", "{{.Names}} {{.Image}}"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    # rehearsal instances are named after the spec; verify containers run its images (imagekit-test/<name>)
    return [line for line in out.splitlines() if name in line]


def test_sigterm_during_docker_and_packer_builds_stops_everything(tmp_path: Path, spec_name: str) -> None:
    require_packer()
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "hello.txt").write_text("hi\n")
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(SPEC.format(name=spec_name))
    logs = Path(os.environ["IMAGEKIT_CACHE_DIR"]) / "logs"
    since = time.time()
    argv = [sys.executable, "-m", "imagekit", "nightly", "-f", str(spec), "--jobs", "2", "--target", "all",
            "--rehearse"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 1200
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            docker_in_flight = _started(logs, f"build-{spec_name}-svc-docker-*.log", since)
            packer_in_flight = _started(logs / "ami", f"{spec_name}-svc-app-*.log", since)
            if docker_in_flight and packer_in_flight:
                break
            assert time.monotonic() < deadline, "the two builds were never in flight together"
            time.sleep(0.5)
        assert _packers_under(tmp_path)  # packer is running now
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err.lower()
    assert _packers_under(tmp_path) == []
    # Packer's own cleanup ran inside the emulator: no instance, security group or key pair is left
    state = json.loads((tmp_path / ".imagekit" / "rehearsal" / "ec2.json").read_text())
    assert state["leftovers"] == {}
    assert _containers(spec_name) == []  # neither the rehearsal's stand-in instance nor a verify container
    assert sorted((tmp_path / "manifests").rglob("*.intoto.json")) == []  # no record of an unfinished build
