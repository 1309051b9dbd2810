"""Fast tests of the docker target's pieces: step parsing, base hashing, model fetch cache, secrets, staging."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imagekit.api import build as build_api
from imagekit.errors import BuildFailed, SpecError, UsageError
from imagekit.fetch import fetch_model, models_cache, stage
from imagekit.names import base_definition as definition
from imagekit.names import base_hash, base_tag
from imagekit.runners.bootstrap import remove_rootfs
from imagekit.runners.docker import is_error_line, parse_step, split_ref
from imagekit.spec import Bootstrap, ModelFile, load_spec
from imagekit.targets import docker as docker_target


def test_parse_step_reads_buildkit_plain_progress() -> None:
    step = parse_step("#7 [runtime 2/5] RUN sh /tmp/provision.sh")
    assert step is not None
    assert (step.number, step.stage, step.step, step.what) == (7, "runtime", "2/5", "RUN sh /tmp/provision.sh")
    assert str(step) == "[2/5] RUN sh /tmp/provision.sh"
    assert parse_step("#3 [internal] load metadata for docker.io/library/x") is None
    assert parse_step("#7 DONE 0.3s") is None
    assert is_error_line('#9 ERROR: process "/bin/sh -c exit 3" did not complete successfully: exit code: 3')
    assert is_error_line("error: failed to solve: rpc error")
    assert not is_error_line("#9 0.123 errors are fine in file names: error.log")


def test_base_hash_covers_the_definition() -> None:
    a = Bootstrap(distro="debian", suite="bookworm")
    assert base_hash(a) == base_hash(Bootstrap(distro="debian", suite="bookworm"))
    assert base_hash(a) != base_hash(Bootstrap(distro="debian", suite="trixie"))
    assert base_hash(a) != base_hash(Bootstrap(distro="debian", suite="bookworm", packages=("curl",)))
    assert base_hash(a) != base_hash(Bootstrap(distro="debian", suite="bookworm", mirror="http://m.example/debian"))
    # package order does not matter; the default mirror is spelled out so an explicit one hashes the same
    assert base_hash(Bootstrap(suite="bookworm", packages=("b", "a"))) == base_hash(
        Bootstrap(suite="bookworm", packages=("a", "b"))
    )
    assert base_hash(a) == base_hash(Bootstrap(suite="bookworm", mirror="http://deb.debian.org/debian"))
    assert {"python3", "python3-venv", "ca-certificates"} <= set(definition(a)["packages"])  # type: ignore[arg-type]
    assert base_tag("base", a) == f"imagekit-base-base:{base_hash(a)[:16]}"


def test_split_ref() -> None:
    assert split_ref("debian:bookworm") == ("debian", "bookworm")
    assert split_ref("localhost:5000/x/y") == ("localhost:5000/x/y", None)
    assert split_ref("localhost:5000/x/y:1") == ("localhost:5000/x/y", "1")
    assert split_ref("x@sha256:abc") == ("x", "sha256:abc")


def test_remove_rootfs_deletes_an_unmounted_tree(tmp_path: Path) -> None:
    root = tmp_path / "imagekit-bootstrap-x"
    (root / "rootfs" / "etc").mkdir(parents=True)
    (root / "rootfs" / "etc" / "os-release").write_text("x")
    remove_rootfs(root)
    assert not root.exists()


# --- remote models -------------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str], Path]]:
    """A local HTTPS file server with a self-signed certificate (the CA bundle a spec would name)."""
    import ssl

    cert, key = _self_signed(tmp_path)
    served = tmp_path / "served"
    served.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *_args: Any) -> None:
            pass

        def do_GET(self) -> None:
            hits.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", served, hits, cert
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_model_downloads_once_and_checks_sha(https_server: tuple[str, Path, list[str], Path]) -> None:
    url, served, hits, cert = https_server
    data = os.urandom(300_000)
    (served / "w.bin").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    model = ModelFile(src=f"{url}/w.bin", dest="/opt/models/w.bin", sha256=sha)
    first = fetch_model(model, ca_bundle=cert)
    assert first == models_cache() / sha
    assert first.read_bytes() == data
    again = fetch_model(model, ca_bundle=cert)
    assert again == first
    assert hits == ["/w.bin"]  # the second call came from the cache


def test_fetch_model_mismatch_leaves_nothing(https_server: tuple[str, Path, list[str], Path]) -> None:
    url, served, _, cert = https_server
    (served / "w.bin").write_bytes(b"not the pinned weights")
    model = ModelFile(src=f"{url}/w.bin", dest="/opt/models/w.bin", sha256="a" * 64)
    with pytest.raises(BuildFailed, match=r"the spec pins a{64}"):
        fetch_model(model, ca_bundle=cert, layer="app")
    assert not (models_cache() / ("a" * 64)).exists()
    assert not [p.name for p in models_cache().iterdir() if p.name.startswith(".part-")]


def test_stage_hardlinks(tmp_path: Path) -> None:
    src = tmp_path / "a.whl"
    src.write_bytes(b"wheel")
    dest = tmp_path / "ctx" / "wheelhouse" / "a.whl"
    stage(src, dest)
    assert dest.read_bytes() == b"wheel"
    assert os.path.samefile(src, dest)
    stage(src, dest)  # idempotent
    assert dest.read_bytes() == b"wheel"


# --- the build api without an engine ------------------------------------------------------------------------

SPEC = """\
version: 1
name: ikt-unit
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
  app:
    parent: base
    models:
      - {{src: "{url}", dest: /opt/models/w.bin, sha256: "{sha}"}}
images:
  one: {{leaf: app}}
  two: {{leaf: app, targets: [ami]}}
build:
  wheelhouse: wheels
  pip_index_url: https://pypi.example/simple
  ca_bundle: ca.pem
"""


class NoEngine:
    """Fails the test if anything reaches the engine."""

    calls: list[str]

    def __init__(self) -> None:
        self.calls = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        raise AssertionError(f"engine.{name} called")


def _spec(tmp_path: Path, url: str = "https://example.invalid/w.bin", sha: str = "b" * 64) -> Path:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMARKER\n-----END CERTIFICATE-----\n")
    path = tmp_path / "imagekit.yaml"
    path.write_text(SPEC.format(url=url, sha=sha))
    return path


def test_model_mismatch_stops_before_any_engine_call(
    tmp_path: Path, https_server: tuple[str, Path, list[str], Path]
) -> None:
    url, served, hits, cert = https_server
    (served / "w.bin").write_bytes(b"other bytes")
    spec = _spec(tmp_path, f"{url}/w.bin")
    (tmp_path / "ca.pem").write_bytes(cert.read_bytes())  # build.ca_bundle: the server's certificate
    engine = NoEngine()
    with pytest.raises(BuildFailed) as info:
        build_api.build(spec, "docker", verify=False, engine=engine)  # type: ignore[arg-type]
    assert hits == ["/w.bin"]
    assert "has sha256" in str(info.value)
    assert info.value.layer == "app"
    assert info.value.exit_code == 1
    assert engine.calls == []


def test_select_images(tmp_path: Path) -> None:
    loaded = load_spec(_spec(tmp_path))
    assert build_api.select_images(loaded, "docker", None) == ["one"]
    assert build_api.select_images(loaded, "ami", None) == ["two"]
    with pytest.raises(UsageError, match="does not list target docker"):
        build_api.select_images(loaded, "docker", ["two"])
    with pytest.raises(SpecError, match="unknown image 'nope'"):
        build_api.select_images(loaded, "docker", ["nope"])


def test_secrets_are_files_outside_the_context(tmp_path: Path) -> None:
    loaded = load_spec(_spec(tmp_path))
    with docker_target._secrets(loaded) as secrets:
        assert secrets["ca"] == tmp_path / "ca.pem"
        pipconf = secrets["pipconf"]
        text = pipconf.read_text()
        assert "index-url = https://pypi.example/simple" in text
        assert "cert = /run/secrets/ca" in text
        assert tmp_path not in pipconf.parents
        assert pipconf.stat().st_mode & 0o077 == 0
    assert not pipconf.exists()


def test_wheelhouse_is_mirrored_or_skipped(tmp_path: Path) -> None:
    loaded = load_spec(_spec(tmp_path))
    assert docker_target._stage_wheelhouse(loaded, "one", lambda _e: None) is None  # absent: pip uses the index
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "a-1-py3-none-any.whl").write_bytes(b"PK\x03\x04a")
    staged = tmp_path / ".imagekit" / "wheelhouse"
    staged.mkdir(parents=True)
    (staged / "stale.whl").write_bytes(b"old")
    assert docker_target._stage_wheelhouse(loaded, "one", lambda _e: None) == ".imagekit/wheelhouse"
    assert sorted(p.name for p in staged.iterdir()) == ["a-1-py3-none-any.whl"]


def test_children_start_from_their_parents_tagged_image(tmp_path: Path) -> None:
    loaded = load_spec(_spec(tmp_path))
    # the rendered Dockerfile names the arg after the child stage (IMAGEKIT_PARENT_<CHILD>)
    assert docker_target._parent_args(loaded, "one", {}) == {}
    assert docker_target._parent_args(loaded, "one", {"base": "imagekit/ikt-unit-base:0123"}) == {
        "IMAGEKIT_PARENT_APP": "imagekit/ikt-unit-base:0123"
    }
    text = docker_target._render(loaded, "one", None).read_text()
    assert "FROM ${IMAGEKIT_PARENT_APP} AS app" in text
    assert (tmp_path / ".imagekit" / "render" / "one.Dockerfile.dockerignore").is_file()
    assert (tmp_path / ".imagekit" / "render" / "provision" / "app.sh").is_file()


def test_cli_rejects_an_unknown_target(tmp_path: Path) -> None:
    from imagekit.cli import app

    result = CliRunner().invoke(app, ["build", "-f", str(_spec(tmp_path)), "--target", "vm"])
    assert result.exit_code == 2
    assert "--target must be docker or ami" in result.output


class NoImages:
    """An engine that has no images and must not be asked to import one."""

    def inspect(self, _ref: str) -> None:
        return None

    def import_tarball(self, *_args: Any, **_kwargs: Any) -> str:
        raise AssertionError("nothing to import after a failed debootstrap")


def test_failed_debootstrap_raises_and_cleans_up(tmp_path: Path) -> None:
    from imagekit.runners.bootstrap import ensure_base

    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root")
    from conftest import require_tool

    require_tool("debootstrap")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    log = tmp_path / "bootstrap.log"
    with log.open("w") as fh, pytest.raises(BuildFailed) as info:
        ensure_base(
            NoImages(),  # type: ignore[arg-type]
            "base",
            Bootstrap(distro="debian", suite="imagekit-no-such-suite"),
            log=fh,
            workdir=scratch,
        )
    assert info.value.layer == "base"
    assert "debootstrap imagekit-no-such-suite failed" in str(info.value)
    assert info.value.log_tail
    assert list(scratch.iterdir()) == []  # the temporary rootfs folder is gone


def test_an_unreachable_docker_host_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagekit.errors import ToolMissing
    from imagekit.runners.docker import DockerEngine

    # nothing listens on the discard port: the SDK follows DOCKER_HOST, and the error says where it looked
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    with pytest.raises(ToolMissing, match=r"cannot reach a Docker Engine at tcp://127\.0\.0\.1:9") as info:
        DockerEngine().exists("anything")
    assert info.value.exit_code == 1


class StampingEngine:
    """Builds succeed; the built image carries the hash the Dockerfile was rendered with."""

    def __init__(self, stamped: str) -> None:
        self.stamped = stamped
        self.removed: list[str] = []

    def build(self, *_args: Any, **_kwargs: Any) -> Any:
        from imagekit.runners.process import Result

        return Result(["docker", "build"], 0, [], "", 0.1)

    def inspect(self, _ref: str) -> Any:
        from imagekit.runners.docker import ImageInfo

        return ImageInfo(id="sha256:1", labels={"dev.imagekit.layer.app.hash": self.stamped})

    def remove_image(self, ref: str) -> None:
        self.removed.append(ref)


def test_a_layer_whose_files_changed_mid_build_is_not_kept(tmp_path: Path) -> None:
    from imagekit.plan import LayerPlan

    loaded = load_spec(_spec(tmp_path))
    lp = LayerPlan("app", "1" * 64, "stale", "not built yet")
    log = tmp_path / "build.log"

    def layer(engine: StampingEngine) -> Any:
        with log.open("w") as fh:
            return docker_target._build_layer(
                loaded, "one", lp, "imagekit/ikt-unit-app:1111111111111111", engine=engine,  # type: ignore[arg-type]
                dockerfile=tmp_path / "x.Dockerfile", context=tmp_path, build_args={}, secrets={}, force=False,
                log=fh, log_path=log, reporter=lambda _e: None,
            )  # fmt: skip

    same = StampingEngine("1" * 64)
    assert layer(same).status == "built"
    assert same.removed == []
    moved = StampingEngine("2" * 64)
    with pytest.raises(BuildFailed, match="changed while it was building"):
        layer(moved)
    assert moved.removed == ["imagekit/ikt-unit-app:1111111111111111"]
