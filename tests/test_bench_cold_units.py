"""bench/cold_start.py's CPU accounting and hash-speed probe, without the 20-minute run they belong to."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import cold_start


def test_proc_cpu_counts_a_running_process_and_its_ended_children() -> None:
    # a shell that burns ~0.6 s of CPU in a child it waits for, then sleeps: /proc/PID/stat's cutime carries it
    proc = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -c 'import time; t=time.process_time()\nwhile time.process_time()-t<0.6: pass'"
         "; sleep 30"],
    )  # fmt: skip
    try:
        before = cold_start._proc_cpu(proc.pid)
        deadline = time.monotonic() + 20
        while cold_start._proc_cpu(proc.pid) - before < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert 0.5 <= cold_start._proc_cpu(proc.pid) - before < 5
    finally:
        proc.kill()
        proc.wait()


def test_children_cpu_grows_by_what_a_waited_child_spent() -> None:
    before = cold_start._children_cpu()
    subprocess.run([sys.executable, "-c", "import time; t=time.process_time()\nwhile time.process_time()-t<0.4: pass"],
                   check=True)  # fmt: skip
    assert 0.35 <= cold_start._children_cpu() - before < 5


def test_go_toolchains_keeps_only_roots_with_a_go_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "go-a"
    (good / "bin").mkdir(parents=True)
    (good / "bin" / "go").write_text("#!/bin/sh\n")
    monkeypatch.setenv("IMAGEKIT_BENCH_GO", f"{good}:{tmp_path / 'missing'}:")
    assert cold_start._go_toolchains() == [good]


def test_hash_speed_reports_openssl_and_a_broken_toolchain_as_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "go-broken"
    (broken / "bin").mkdir(parents=True)
    go = broken / "bin" / "go"
    go.write_text("#!/bin/sh\necho 'no compiler here' >&2\nexit 3\n")
    go.chmod(0o755)
    monkeypatch.setenv("IMAGEKIT_BENCH_GO", str(broken))
    out = cold_start.hash_speed()
    assert out["hashlib_sha256_mb_s"] > 50
    assert len(out["go"]) == 1 and out["go"][0]["go"] == str(broken) and "no compiler here" in out["go"][0]["error"]
    assert set(out["engines_built_with"]) == {"dockerd", "podman"}
    if os.environ.get("CI"):  # setup-host.sh installs both engines: their Go versions are known
        assert all(v.startswith("go1.") for v in out["engines_built_with"].values()), out
