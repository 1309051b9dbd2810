"""Shared test helpers: tool requirements (fail under CI, skip locally) and the --update-golden switch."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite golden files from the current output.")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def _missing(what: str) -> None:
    # Under CI a missing tool is a failure, never a silent skip.
    if IN_CI:
        pytest.fail(f"{what} is required under CI (CI=true) but is not available")
    pytest.skip(f"{what} not available")


def require_docker() -> str:
    """The Debian docker client path, once the engine answers; fails under CI, skips locally."""
    try:
        ok = subprocess.run([DOCKER, "info"], check=False, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        _missing("a Docker Engine (dockerd)")
    return DOCKER


def require_packer() -> str:
    """The packer binary path; fails under CI, skips locally."""
    path = shutil.which("packer")
    if not path:
        _missing("packer")
    assert path
    return path


def remove_buildah_images(name: str) -> None:
    """Untag every containers-storage image whose name:tag holds `name` (a test's own unique spec name)."""
    listed = subprocess.run(["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"], capture_output=True, text=True,
                            check=False, timeout=300).stdout.split()  # fmt: skip
    mine = [ref for ref in listed if name in ref]
    if mine:
        subprocess.run(["buildah", "rmi", *mine], capture_output=True, check=False, timeout=300)


def require_tool(name: str) -> str:
    """Any other binary on PATH; fails under CI, skips locally."""
    path = shutil.which(name)
    if not path:
        _missing(name)
    assert path
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep digest caches and logs of tests out of the user's ~/.cache, one folder per session.
    if "IMAGEKIT_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("IMAGEKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "imagekit-cache"))
    # and the default signing key out of the user's ~/.config: a fresh config folder per test
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1 (a free port) for the session; sets AWS_ENDPOINT_URL and dummy credentials."""
    import socket
    import sys
    import time
    import urllib.request

    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        _missing("moto_server (pip install 'moto[server]')")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start on {url}")
                time.sleep(0.2)
        os.environ.update(
            AWS_ENDPOINT_URL=url,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        os.environ.pop("AWS_PROFILE", None)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_PROFILE")


def copy_example(dest: Path, name: str = "tts") -> Path:
    """A copy of examples/<name> without its scratch, whose specs record into a store inside the copy.

    The examples record into the repository's manifests/ (`store: ../../manifests`); a copy elsewhere must not
    follow that path out of its own folder.
    """
    import re

    shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns(".imagekit", "manifests", "__pycache__"))
    for spec in dest.glob("*.yaml"):
        text = spec.read_text(encoding="utf-8")
        spec.write_text(re.sub(r"(?m)^store: .*$", "store: manifests", text), encoding="utf-8")
    return dest


JS = REPO / "tests" / "js"


@pytest.fixture(scope="session")
def sigstore_js() -> list[str]:
    """`node tests/js/verify-bundle.js`: @sigstore/verify from npm (npm ci here when setup-host.sh has not run it)."""
    node = require_tool("node")
    if not (JS / "node_modules" / "@sigstore" / "verify").is_dir():
        npm = require_tool("npm")
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
        if proc.returncode != 0:
            _missing(f"@sigstore/verify (npm ci in tests/js failed: {proc.stderr.strip()[-300:]})")
    return [node, str(JS / "verify-bundle.js")]


@contextlib.contextmanager
def running_registry(folder: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1:<free port>, storage under folder, no auth; its
    address and process (stopped on exit, unless the test stopped it first)."""
    import socket
    import time
    import urllib.request

    binary = require_tool("docker-registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = folder / "registry.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'registry-data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("docker-registry did not start")
        yield f"127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def docker_registry(tmp_path: Path) -> Iterator[str]:
    """A running docker-registry's address (the engine trusts 127.0.0.0/8 over plain HTTP)."""
    with running_registry(tmp_path) as (address, _proc):
        yield address
