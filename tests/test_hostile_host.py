"""The host is out of reach of a spec or an image under test (#21): no host file shipped, written or deleted
outside imagekit's folders, no request to any host but the service's, no credentials in argv."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_packer
from typer.testing import CliRunner

from imagekit.cli import app
from imagekit.errors import SpecError, UsageError
from imagekit.fsutil import atomic_write, owned_dir, wheel_files
from imagekit.paths import work_dir
from imagekit.runners import packer as pk
from imagekit.spec import load_spec
from imagekit.targets import docker as docker_target
from imagekit.verify import http as service_http

WHEEL = b"PK\x03\x04 a wheel"


def _spec(root: Path, *, wheelhouse: str = "wheels", copy_src: str = "app") -> Path:
    (root / "app").mkdir(exist_ok=True)
    (root / "app" / "main.py").write_text("print('hi')\n")
    path = root / "imagekit.yaml"
    path.write_text(
        f"""\
version: 1
name: ikt-hostile
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
  app:
    parent: base
    copy:
      - {{src: {copy_src}, dest: /srv/app}}
images:
  one: {{leaf: app}}
build:
  wheelhouse: {wheelhouse}
"""
    )
    return path


# --- a wheelhouse brings wheel files only ----------------------------------------------------------------------


def test_a_host_wheelhouse_gives_wheels_only_never_the_key_beside_them(tmp_path: Path) -> None:
    host = tmp_path / "host-keys"  # a host folder holding a signing key, named as the wheelhouse
    host.mkdir()
    (host / "signing.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    (host / "fake.whl").write_text("-----BEGIN PRIVATE KEY----- renamed\n")  # a .whl that is no zip
    (host / "good-1.0-py3-none-any.whl").write_bytes(WHEEL)
    (host / "link.whl").symlink_to(host / "good-1.0-py3-none-any.whl")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    loaded = load_spec(_spec(spec_dir, wheelhouse=str(host), copy_src="./"))
    events: list[str] = []
    assert docker_target._stage_wheelhouse(loaded, "one", lambda e: events.append(e.message)) == ".imagekit/wheelhouse"
    staged = sorted(p.name for p in (spec_dir / ".imagekit" / "wheelhouse").iterdir())
    assert staged == ["good-1.0-py3-none-any.whl"]
    assert any("left out" in e and "signing.key" in e for e in events)
    # the same filter serves the AMI target's build-extra folder
    assert [p.name for p in wheel_files(host)[0]] == ["good-1.0-py3-none-any.whl"]


# --- staging folders are imagekit's own, never a link elsewhere ---------------------------------------------


def test_a_committed_wheelhouse_symlink_deletes_nothing_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    (spec_dir / "wheels").mkdir()
    (spec_dir / "wheels" / "a-1-py3-none-any.whl").write_bytes(WHEEL)
    (spec_dir / ".imagekit").mkdir()
    (spec_dir / ".imagekit" / "wheelhouse").symlink_to(outside)
    loaded = load_spec(_spec(spec_dir))
    with pytest.raises(UsageError, match="symlink"):
        docker_target._stage_wheelhouse(loaded, "one", lambda _e: None)
    assert (outside / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]


def test_a_symlinked_work_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".imagekit").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="symlink"):
        work_dir(tmp_path)
    with pytest.raises(UsageError, match="symlink"):
        owned_dir(tmp_path, ".imagekit/models")


# --- writers never rename over a link or a special file ---------------------------------------------------------


def test_writers_refuse_symlinks_and_special_files(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_text("original")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(UsageError, match="symlink"):
        atomic_write(link, "{}")
    assert link.is_symlink() and target.read_text() == "original"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="named pipe"):
        atomic_write(fifo, "{}")
    assert fifo.is_fifo()
    atomic_write(target, "new")  # a regular file is replaced as before
    assert target.read_text() == "new"


# --- copy: the same on both targets; special files refused at validate ----------------------------------------


@pytest.mark.parametrize("kind", ["symlink-out", "symlink-in", "dangling", "loop", "fifo", "socket"])
def test_copy_folders_with_links_or_special_files_exit_2_at_validate(tmp_path: Path, kind: str) -> None:
    path = _spec(tmp_path)
    app_dir = tmp_path / "app"
    if kind == "symlink-out":
        (app_dir / "key").symlink_to("/etc/hostname")
    elif kind == "symlink-in":
        (app_dir / "alias.py").symlink_to("main.py")
    elif kind == "dangling":
        (app_dir / "gone").symlink_to(tmp_path / "nothing-here")
    elif kind == "loop":
        (app_dir / "loop").symlink_to(app_dir / "loop")
    elif kind == "fifo":
        os.mkfifo(app_dir / "pipe")
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(app_dir / "sock"))
        sock.close()
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert "copy[0].src" in str(caught.value)
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output


# --- requests to the service: no redirects, one host, bounded ------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def servers() -> Iterator[dict[str, object]]:
    hits: dict[str, list[str]] = {"other": [], "svc": []}
    state: dict[str, object] = {"hits": hits}

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits["other"].append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"metadata secrets")

        def log_message(self, *args: object) -> None:
            pass

    other = _Server(("127.0.0.1", 0), Other)
    other_url = f"http://127.0.0.1:{other.server_address[1]}"

    class Svc(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            hits["svc"].append(self.path)
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", other_url + "/latest/meta-data/")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/drip":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    try:
                        self.wfile.write(b".")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.5)
            elif self.path == "/huge":
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 30))
                self.end_headers()
                block = b"x" * (1 << 20)
                try:
                    for _ in range(1024):
                        self.wfile.write(block)
                except OSError:
                    return
            else:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    svc = _Server(("127.0.0.1", 0), Svc)
    for server in (other, svc):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    state["svc"] = f"http://127.0.0.1:{svc.server_address[1]}"
    yield state
    for server in (other, svc):
        server.shutdown()
        server.server_close()


def test_a_redirect_is_an_answer_never_followed(servers: dict[str, object]) -> None:
    base = str(servers["svc"])
    status, headers, body = service_http.request(base, "GET", "/redirect", timeout=5, limit=1024)
    assert status == 302 and body == b"" and "location" in headers
    hits = servers["hits"]
    assert isinstance(hits, dict) and hits["other"] == []


def test_the_path_cannot_move_the_host(servers: dict[str, object]) -> None:
    base = str(servers["svc"])
    for path in ("//evil.example/x", "@evil.example/x", "http://evil.example/"):
        status, _h, _b = service_http.request(base, "GET", path, timeout=5, limit=1024)
        assert status == 200  # answered by the service itself
    hits = servers["hits"]
    assert isinstance(hits, dict) and hits["other"] == [] and len(hits["svc"]) == 3


def test_a_dripping_answer_is_cut_at_its_deadline(servers: dict[str, object]) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        service_http.request(str(servers["svc"]), "GET", "/drip", timeout=2, limit=1 << 20)
    assert time.monotonic() - t0 < 4


def test_a_1gib_answer_is_refused_at_the_limit(servers: dict[str, object]) -> None:
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(service_http.ServiceHTTPError, match="over"):
        service_http.request(str(servers["svc"]), "GET", "/huge", timeout=30, limit=service_http.HEALTH_BODY_LIMIT)
    _now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 * 1024 * 1024


# --- credentials never stand in packer's argv --------------------------------------------------------------------


@pytest.mark.packer
def test_packer_variables_go_through_a_var_file_not_argv(tmp_path: Path) -> None:
    info = pk.find_packer(require_packer())
    template = tmp_path / "t.pkr.hcl"
    template.write_text(
        """\
variable "build_env" { type = string }
source "null" "x" { communicator = "none" }
build {
  sources = ["source.null.x"]
  provisioner "shell-local" { inline = ["test '${var.build_env}' = 'PIP_INDEX_URL=https://u:s3cret@idx/simple'"] }
}
"""
    )
    seen: list[list[str]] = []
    outcome = pk.build(
        info,
        template,
        variables={"build_env": "PIP_INDEX_URL=https://u:s3cret@idx/simple"},
        log_path=tmp_path / "log",
        on_start=lambda proc: seen.append(list(proc.popen.args)),  # type: ignore[arg-type]
    )
    assert outcome.returncode == 0, outcome.tail
    assert seen and not any("s3cret" in a for a in seen[0])
    assert "s3cret" not in (tmp_path / "log").read_text()
    assert not (tmp_path / pk.VARS_FILE).exists()  # removed after the build
