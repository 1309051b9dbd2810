"""How current the compatibility matrix is: the index's torch releases it lacks, counted by doctor and nightly.

One look-up of the index, cached for a day; an unreachable index is said, never an error. The index here is a real
HTTP server on 127.0.0.1 answering PEP 691 JSON (and a closed port for the offline case).
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagekit import compat, doctor
from imagekit.nightly.report import NightlyResult, to_json, to_markdown
from imagekit.nightly.staleness import matrix_news
from imagekit.runners import pypi

KNOWN = [r.version for r in compat.matrix().torch]
FILES = [
    *(f"torch-{v}-cp312-cp312-manylinux_2_28_x86_64.whl" for v in KNOWN if v.startswith("2.1")),
    "torch-2.16.0-cp312-cp312-manylinux_2_28_x86_64.whl",
    "torch-2.16.0-cp312-cp312-win_amd64.whl",
    "torch-2.16.1-3-cp313-cp313-manylinux_2_28_x86_64.whl",  # a build tag, as 2.10.0 has on PyPI
    "torch-2.17.0-cp314-cp314t-manylinux_2_28_x86_64.whl",  # free-threaded only: not counted
    "torch-1.11.0-cp39-cp39-manylinux1_x86_64.whl",  # older than the matrix: not counted
    "torch-2.16.0.tar.gz",
]


@pytest.fixture
def index() -> Iterator[tuple[str, list[int]]]:
    hits: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(1)
            if self.path != "/simple/torch/":
                self.send_error(404)
                return
            body = json.dumps({"meta": {"api-version": "1.1"}, "files": [{"filename": f} for f in FILES]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", pypi.SIMPLE_JSON)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple", hits
    finally:
        server.shutdown()
        server.server_close()


def test_the_index_releases_the_matrix_lacks_are_counted_with_one_cached_lookup(
    index: tuple[str, list[int]], tmp_path: Path
) -> None:
    url, hits = index
    cache = tmp_path / "torch-index.json"
    versions, source = pypi.torch_versions_cached(url, path=cache)
    assert versions is not None and source == url
    fresh = compat.freshness(versions, source)
    assert fresh.missing == ("2.16.0", "2.16.1") and fresh.newest_known == "2.15.0"
    assert fresh.summary().startswith(f"2 torch release(s) on {url} missing from the matrix (2.16.0, 2.16.1)")
    # the second look-up is the cache's: no request
    again, where = pypi.torch_versions_cached(url, path=cache)
    assert again == versions and where == f"{url} (cached)" and len(hits) == 1


def test_an_unreachable_index_is_said_never_raised(tmp_path: Path) -> None:
    versions, source = pypi.torch_versions_cached("http://127.0.0.1:9/simple", path=tmp_path / "c.json", timeout=2)
    assert versions is None and "unreachable" in source
    check = doctor.check_matrix(lambda: (versions, source))
    assert check.ok and not check.needed and "not compared with the index" in check.detail


def test_doctor_names_the_count_and_the_regenerate_command(index: tuple[str, list[int]], tmp_path: Path) -> None:
    url, _ = index
    check = doctor.check_matrix(lambda: pypi.torch_versions_cached(url, path=tmp_path / "c.json"))
    assert not check.ok and not check.needed  # news, never a reason for doctor to fail a build
    assert (
        "2 torch release(s)" in check.detail and check.fix == "regenerate it: python scripts/gen_compat.py --from-index"
    )
    up_to_date = doctor.check_matrix(lambda: (KNOWN, url))
    assert up_to_date.ok and "up to date" in up_to_date.detail


def test_the_nightly_report_says_how_many_releases_the_matrix_lacks(
    index: tuple[str, list[int]], tmp_path: Path
) -> None:
    url, _ = index
    result = NightlyResult(spec="imagekit.yaml", started="2026-12-04T00:00:00Z")
    result.matrix = matrix_news(lambda: pypi.torch_versions_cached(url, path=tmp_path / "c.json"))
    text = to_markdown(result)
    assert "- compatibility matrix: 2 torch release(s) on" in text
    assert "regenerate it: `python scripts/gen_compat.py --from-index`" in text
    assert to_json(result)["compat_matrix"]["missing"] == ["2.16.0", "2.16.1"]
    offline = NightlyResult(spec="imagekit.yaml", started="2026-12-04T00:00:00Z")
    offline.matrix = matrix_news(lambda: (None, "http://127.0.0.1:9/simple unreachable (refused)"))
    assert "not compared with the index" in to_markdown(offline) and "regenerate" not in to_markdown(offline)
