"""vmcheck on a systemd-booted instance: it waits for the service systemd started at boot, never a second copy.

There is no systemd-booted EC2 instance here: systemd is stood in for by its run folder and a `systemctl` on PATH
that answers `is-active` from a state file; the HTTP service is real.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imagekit.verify import vmcheck


@pytest.fixture
def slow_service() -> Iterator[int]:
    """A service that answers /ready with 503 for 1.5 s (a model loading), then 200; yields its port."""
    t0 = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ready = time.monotonic() - t0 > 1.5
            self.send_response(200 if ready else 503)
            self.end_headers()
            self.wfile.write(b"ok" if ready else b"loading")

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()


def _instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int, state: str) -> tuple[Path, Path]:
    """A check folder, a unit whose ExecStart would leave a mark if anything ran it, and systemd saying `state`."""
    mark = tmp_path / "started-by-vmcheck"
    unit = tmp_path / "imagekit-svc.service"
    unit.write_text(f"[Service]\nExecStart=/bin/sh -c 'touch {mark}'\n")
    run_dir = tmp_path / "run-systemd"
    run_dir.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "state").write_text(state)
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(f'#!/bin/sh\n[ "$1 $2" = "is-active imagekit-svc.service" ] && cat {tmp_path / "state"}\n')
    systemctl.chmod(0o755)
    monkeypatch.setattr(vmcheck, "SYSTEMD_RUN_DIR", str(run_dir))
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    folder = tmp_path / "check"
    folder.mkdir()
    check = {"unit": str(unit), "command": ["/bin/sh", "-c", f"touch {mark}"], "port": port,
             "health": {"path": "/ready", "timeout": 20, "interval": 0.1}}  # fmt: skip
    (folder / "check.json").write_text(json.dumps(check))
    return folder, mark


def test_waits_for_the_boot_started_service_instead_of_starting_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_service: int
) -> None:
    folder, mark = _instance(tmp_path, monkeypatch, slow_service, "activating")
    assert vmcheck.main(["vmcheck", str(folder)]) == 0
    report = json.loads((folder / "report.json").read_text())
    assert report["service"] == {"started": None, "by": "systemd at boot", "state": "activating"}
    assert not mark.exists()  # no second copy (a second model in GPU memory, or "address in use")
    assert report["health"]["ready"] is True and report["health"]["seconds_to_ready"] >= 1.0


def test_a_unit_that_failed_at_boot_is_a_failure_and_nothing_is_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_service: int
) -> None:
    folder, mark = _instance(tmp_path, monkeypatch, slow_service, "failed")
    assert vmcheck.main(["vmcheck", str(folder)]) == 1
    report = json.loads((folder / "report.json").read_text())
    assert report["failures"] == [
        "imagekit-svc.service is failed after boot, not running (journalctl -u on the instance)"
    ]
    assert not mark.exists() and "health" not in report


def test_with_no_systemd_it_starts_the_service_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_service: int
) -> None:
    folder, mark = _instance(tmp_path, monkeypatch, 1, "activating")  # port 1: nothing listens there
    monkeypatch.setattr(vmcheck, "SYSTEMD_RUN_DIR", str(tmp_path / "no-systemd"))
    check = json.loads((folder / "check.json").read_text())
    (folder / "check.json").write_text(json.dumps({**check, "health": None}))
    vmcheck.main(["vmcheck", str(folder)])
    service = json.loads((folder / "report.json").read_text())["service"]
    # started by hand from the unit's ExecStart (vmcheck stops it again at the end, so the mark may not be made)
    assert service == {"started": ["/bin/sh", "-c", f"touch {mark}"], "from_unit": True}
