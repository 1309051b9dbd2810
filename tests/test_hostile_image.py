"""verify against an image that lies (#21): odd probe shapes, 1 GiB of output, redirects, a dripping /ready,
markup in headers. Each ends in exit 1 with a report, never exit 3, with bounded memory and time, and no request
to any host but the service's."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_docker
from hostile_image import build_hostile_base, hostile_mode, write_spec

pytestmark = pytest.mark.docker

RUN_WITH_PEAK = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "sys.stderr.write('PEAK_KB=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    docker = require_docker()
    tag = build_hostile_base(tmp_path_factory.mktemp("hostile-ctx"))
    yield tag
    subprocess.run([docker, "rmi", "-f", tag], capture_output=True, check=False)


@pytest.fixture
def image(base: str) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(mode: str, **env: str) -> str:
        made.append(hostile_mode(base, mode, **env))
        return made[-1]

    yield make
    for tag in made:
        subprocess.run([require_docker(), "rmi", "-f", tag], capture_output=True, check=False)


@pytest.fixture
def bystander() -> Iterator[tuple[str, list[str]]]:
    """A server on this machine that the image would like imagekit to fetch from (as 169.254.169.254 on EC2)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"instance credentials")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/latest/meta-data/iam/", hits
    server.shutdown()
    server.server_close()


def _verify(spec: Path, ref: str) -> tuple[int, str, int, float]:
    """(exit code, stderr, peak memory of the imagekit process in KB, seconds)."""
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", RUN_WITH_PEAK, sys.executable, "-m", "imagekit", "verify", ref, "-f", str(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    peak = int(res.stderr.rsplit("PEAK_KB=", 1)[1].split()[0])
    return res.returncode, res.stderr.rsplit("PEAK_KB=", 1)[0], peak, time.monotonic() - t0


def _report(spec: Path) -> dict[str, Any]:
    reports = sorted((spec.parent / ".imagekit" / "reports").glob("*.json"))
    assert reports, "no report was written"
    doc = json.loads(reports[-1].read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("probe-list", "expected a JSON object"),
        ("probe-digits", "digits"),
        ("probe-surrogate", "lone surrogates"),
        ("probe-deep", "nested deeper"),
        ("probe-shapes", "expected an object"),
        ("probe-names", "is not a package"),
    ],
)
def test_odd_probe_shapes_fail_the_check_with_a_report(
    image: Callable[..., str], tmp_path: Path, mode: str, said: str
) -> None:
    spec = write_spec(tmp_path / "spec")
    code, err, _peak, _s = _verify(spec, image(mode))
    assert code == 1, err
    assert "unexpected error" not in err and "Traceback" not in err
    failures = " ".join(str(f) for f in _report(spec)["failures"])
    assert said in failures, failures


def test_a_probe_printing_1gib_keeps_memory_under_200mb(image: Callable[..., str], tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec")
    code, err, peak_kb, _s = _verify(spec, image("probe-huge"))
    assert code == 1, err
    assert "over" in " ".join(str(f) for f in _report(spec)["failures"])
    print(f"1 GiB probe: verify's peak RSS {peak_kb / 1024:.1f} MB")  # the figure, for the note (-rP)
    assert peak_kb < 200 * 1024, f"peak {peak_kb} KB"


def test_a_redirecting_ready_is_not_followed(
    image: Callable[..., str], tmp_path: Path, bystander: tuple[str, list[str]]
) -> None:
    url, hits = bystander
    spec = write_spec(tmp_path / "spec", timeout=4)
    code, err, _peak, _s = _verify(spec, image("ready-redirect", HOSTILE_TARGET=url))
    assert code == 1, err
    assert hits == []
    health = _report(spec)["health"]
    assert isinstance(health, dict) and health["last_status"] == 302 and not health["ready"]


def test_a_redirecting_smoke_is_not_followed(
    image: Callable[..., str], tmp_path: Path, bystander: tuple[str, list[str]]
) -> None:
    url, hits = bystander
    spec = write_spec(tmp_path / "spec")
    code, err, _peak, _s = _verify(spec, image("smoke-redirect", HOSTILE_TARGET=url))
    assert code == 1, err
    assert hits == []
    smoke = _report(spec)["smoke"]
    assert isinstance(smoke, dict) and smoke["status"] == 307


def test_a_dripping_ready_is_abandoned_at_its_timeout(image: Callable[..., str], tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec", timeout=6)
    code, err, _peak, seconds = _verify(spec, image("ready-drip"))
    assert code == 1, err
    health = _report(spec)["health"]
    assert isinstance(health, dict) and not health["ready"] and "TimeoutError" in str(health["last_body"])
    # probe (~2 s) + container start + 6 s of health + at most 5 s more; before, it waited for the drip to end
    print(f"dripping /ready, health.timeout 6 s: the whole verify took {seconds:.1f} s")
    assert seconds < 6 + 5 + 25, seconds


def test_a_1gib_ready_body_is_refused_with_bounded_memory(image: Callable[..., str], tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec", timeout=4)
    code, err, peak_kb, _s = _verify(spec, image("ready-huge"))
    assert code == 1, err
    print(f"1 GiB /ready body: verify's peak RSS {peak_kb / 1024:.1f} MB")
    assert peak_kb < 200 * 1024, f"peak {peak_kb} KB"


def test_markup_in_a_content_type_prints_as_text(image: Callable[..., str], tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec")
    code, err, _peak, _s = _verify(spec, image("smoke-ctype"))
    assert code == 0, err
    assert "[link=http://attacker.example]text/plain" in err and "\x1b" not in err
