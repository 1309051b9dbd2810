"""A rendered Dockerfile built for real with BuildKit on the engine (Debian docker.io 20.10, DOCKER_BUILDKIT=1).

The spec is tiny but uses every feature the renderer emits: a bootstrapped base, a venv installed in its layer's stage from a
hashed lock from a wheelhouse (pip reaches the index only through the CA secret), copied sources with a byte-code cache
that must stay out, weights that must be root-owned 0444, env with quoting, run steps, a non-root user, labels and
a health check. Layers are built one at a time from their parent's tagged image, exactly as the docker runner does,
and the same scripts are then run with no arguments the way Packer runs them on a VM (IMAGEKIT_TARGET=ami).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_docker

from imagekit.api.render import render
from imagekit.plan import plan_image
from imagekit.spec import Bootstrap, load_spec

pytestmark = pytest.mark.docker

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
MARKER = "imagekit-render-test-secret-marker-5f1c2a"
SPEC = """\
version: 1
name: rendertest
layers:
  base:
    from: {bootstrap: {distro: debian, suite: bookworm}}
    cuda: "none"
  runtime:
    parent: base
    python: "3.11"
    requirements: requirements.lock
  app:
    parent: runtime
    copy: [{src: app/, dest: /opt/app}]
    models:
      - {src: models/w.bin, dest: /opt/models/w.bin, sha256: "%(sha)s"}
    env: {GREETING: 'say "hi" to $USER', PYTHONPATH: /opt/app}
    run: ["python -c 'import imagekit_hello' && echo ran > /opt/app/ran.txt"]
    user: svc
    workdir: /opt/app
    command: ["python", "-m", "pkg"]
    port: 8080
images:
  rendertest:
    leaf: app
verify:
  gpu: optional
  health: {path: /ready, timeout: 30}
build:
  wheelhouse: wheels
"""


def _wheel() -> tuple[str, bytes]:
    """A minimal pure-python wheel, made here so the test needs no package from anywhere."""
    name = "imagekit_hello-1.0-py3-none-any.whl"
    files = {
        "imagekit_hello.py": b"GREETING = 'hello from the wheelhouse'\n",
        "imagekit_hello-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: imagekit-hello\nVersion: 1.0\n",
        "imagekit_hello-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: imagekit-test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    record += "imagekit_hello-1.0.dist-info/RECORD,,\n"
    files["imagekit_hello-1.0.dist-info/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            zf.writestr(info, data)
    return name, buf.getvalue()


def _docker(
    docker: str, *args: str, check: bool = True, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    proc = subprocess.run(
        [docker, *args], env=env, capture_output=True, text=True, check=False, timeout=900, input=None
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"docker {' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    docker = require_docker()
    from imagekit.runners.bootstrap import ensure_base
    from imagekit.runners.docker import DockerEngine

    # the bootstrapped base is shared with the docker runner's tests (tagged by its definition hash, made once)
    base = ensure_base(DockerEngine(), "base", Bootstrap(distro="debian", suite="bookworm"))
    root = tmp_path_factory.mktemp("render-docker")
    spec_dir = root / "spec"
    (spec_dir / "app" / "pkg" / "__pycache__").mkdir(parents=True)
    (spec_dir / "app" / "pkg" / "__init__.py").write_text("print('pkg ok')\n")
    (spec_dir / "app" / "pkg" / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"not byte code")
    (spec_dir / "models").mkdir()
    weights = b"weights of the render test\n" * 100
    (spec_dir / "models" / "w.bin").write_bytes(weights)
    (spec_dir / "wheels").mkdir()
    wheel_name, wheel = _wheel()
    (spec_dir / "wheels" / wheel_name).write_bytes(wheel)
    (spec_dir / "requirements.lock").write_text(
        f"imagekit-hello==1.0 --hash=sha256:{hashlib.sha256(wheel).hexdigest()}\n"
    )
    (spec_dir / "imagekit.yaml").write_text(SPEC % {"sha": hashlib.sha256(weights).hexdigest()})
    render(spec_dir / "imagekit.yaml", root)
    ca = root / "ca.pem"
    ca.write_text(f"# {MARKER}\n" + (HOST_CA.read_text() if HOST_CA.is_file() else ""))
    loaded = load_spec(spec_dir / "imagekit.yaml")
    hashes = {lp.name: lp.hash for lp in plan_image(loaded, "rendertest", "docker").layers}
    made: list[str] = []
    yield {"docker": docker, "root": root, "base": base.tag, "ca": ca, "hashes": hashes, "made": made}
    for tag in made:
        _docker(docker, "rmi", tag, check=False)


def _build(ws: dict[str, object], target: str, tag: str, *build_args: str) -> None:
    docker = str(ws["docker"])
    root = Path(str(ws["root"]))
    args = ["build", "--progress=plain", "-f", str(root / "dockerfiles" / "rendertest.Dockerfile"), "--target", target]
    args += ["--secret", f"id=ca,src={ws['ca']}", "-t", tag, "--build-arg", f"BASE_IMAGE={ws['base']}"]
    for arg in build_args:
        args += ["--build-arg", arg]
    _docker(docker, *args, str(root))
    made = ws["made"]
    assert isinstance(made, list)
    made.append(tag)


def _sh(ws: dict[str, object], image: str, script: str, *, user: str | None = None) -> str:
    args = ["run", "--rm", "--entrypoint", "sh"]
    if user:
        args += ["--user", user]
    return _docker(str(ws["docker"]), *args, image, "-c", script).stdout.strip()


@pytest.fixture(scope="module")
def final(workspace: dict[str, object]) -> str:
    """Build base, runtime and app one at a time, each child from its parent's tagged image."""
    hashes = workspace["hashes"]
    assert isinstance(hashes, dict)
    tags: dict[str, str] = {}
    for layer, parent in (("base", None), ("runtime", "base"), ("app", "runtime")):
        tag = f"imagekit-rendertest-{layer}:{hashes[layer][:16]}"
        extra = [f"IMAGEKIT_PARENT_{layer.upper()}={tags[parent]}"] if parent else []
        _build(workspace, layer, tag, *extra)
        tags[layer] = tag
    return tags["app"]


def test_layer_images_carry_their_hash_labels(workspace: dict[str, object], final: str) -> None:
    hashes = workspace["hashes"]
    assert isinstance(hashes, dict)
    out = _docker(str(workspace["docker"]), "inspect", final).stdout
    config = json.loads(out)[0]["Config"]
    labels = config["Labels"]
    for layer, digest in hashes.items():
        assert labels[f"dev.imagekit.layer.{layer}.hash"] == digest
    assert labels["dev.imagekit.pin.python"] == "3.11"
    assert labels["org.opencontainers.image.version"] == hashes["app"][:16]
    assert labels["org.opencontainers.image.title"] == "rendertest"
    assert config["User"] == "svc"
    assert config["Env"] and 'GREETING=say "hi" to $USER' in config["Env"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "8080/tcp" in config["ExposedPorts"]


def test_final_image_runs_non_root_with_read_only_weights(workspace: dict[str, object], final: str) -> None:
    assert _sh(workspace, final, "id -un; id -u").splitlines()[0] == "svc"
    assert _sh(workspace, final, "id -u") != "0"
    assert _sh(workspace, final, "stat -c '%U %a' /opt/models/w.bin /opt/models") == "root 444\nroot 755"
    assert _sh(workspace, final, "test -w /opt/models/w.bin && echo writable || echo read-only") == "read-only"
    assert _sh(workspace, final, "touch /opt/models/x 2>/dev/null && echo wrote || echo refused") == "refused"
    assert _sh(workspace, final, "cat /opt/app/ran.txt") == "ran"
    # the venv has the pinned wheel from the wheelhouse, and no compilers
    assert _sh(workspace, final, "python -c 'import imagekit_hello; print(imagekit_hello.GREETING)'") == (
        "hello from the wheelhouse"
    )
    assert _sh(workspace, final, "command -v gcc || echo no-gcc") == "no-gcc"
    assert _sh(workspace, final, "command -v python") == "/opt/venv/bin/python"
    # byte-code caches stayed out of the context (<Dockerfile>.dockerignore), so out of the image
    assert _sh(workspace, final, "find /opt/app -name __pycache__ | wc -l") == "0"


def test_no_secret_in_any_layer(workspace: dict[str, object], final: str) -> None:
    docker = str(workspace["docker"])
    proc = subprocess.run([docker, "save", final], capture_output=True, check=True, timeout=600)
    assert MARKER.encode() not in proc.stdout
    assert len(proc.stdout) > 1_000_000


def test_default_parent_args_resolve_to_the_earlier_stages(workspace: dict[str, object], final: str) -> None:
    """Built whole, `FROM ${IMAGEKIT_PARENT_APP}` defaults to the stage `runtime`: BuildKit on 20.10 accepts it."""
    tag = "imagekit-rendertest-whole:latest"
    _build(workspace, "app", tag)
    assert _sh(workspace, tag, "cat /opt/app/ran.txt; stat -c '%U %a' /opt/models/w.bin") == "ran\nroot 444"


@pytest.mark.slow
def test_the_same_scripts_provision_a_vm_like_host(workspace: dict[str, object]) -> None:
    """Packer's way: every phase of every layer, sources staged under IMAGEKIT_SRC, target ami, as root."""
    root = Path(str(workspace["root"]))
    script = (
        "set -e; for l in base runtime app; do sh /p/$l.sh >&2; done; "
        "stat -c '%U %a' /opt/models/w.bin; id -un svc; cat /opt/app/ran.txt; "
        "/opt/venv/bin/python -c 'import imagekit_hello'; "
        "dpkg -s build-essential >/dev/null 2>&1 && echo build-deps-left || echo build-deps-dropped; "
        "find /opt/app -name __pycache__ | wc -l; "
        # idempotent where cheap: a second run of the app layer changes nothing and succeeds
        "sh /p/app.sh >/dev/null 2>&1 && echo rerun-ok"
    )
    out = _docker(
        str(workspace["docker"]),
        "run", "--rm",
        "-e", "IMAGEKIT_TARGET=ami", "-e", "IMAGEKIT_SRC=/src", "-e", "PIP_FIND_LINKS=/src/wheels",
        "-e", "PIP_CERT=/run/secrets/ca",
        "-v", f"{root / 'spec'}:/src:ro", "-v", f"{root / 'provision'}:/p:ro",
        "-v", f"{workspace['ca']}:/run/secrets/ca:ro",
        str(workspace["base"]), "sh", "-c", script,
    ).stdout.strip().splitlines()  # fmt: skip
    assert out == ["root 444", "svc", "ran", "build-deps-dropped", "0", "rerun-ok"]


def test_no_compilers_for_a_lock_of_wheels(workspace: dict[str, object], final: str) -> None:
    hashes = workspace["hashes"]
    assert isinstance(hashes, dict)
    tag = "imagekit-rendertest-runtime-only:latest"
    _build(workspace, "runtime", tag, f"IMAGEKIT_PARENT_RUNTIME=imagekit-rendertest-base:{hashes['base'][:16]}")
    # the lock is all wheels: the install never needed compilers, so the runtime layer has none (they come in only
    # for an sdist and leave in the same RUN; tests/test_render_scripts.py runs that path), nor the final image
    assert _sh(workspace, tag, "command -v gcc || echo no-gcc") == "no-gcc"
    assert _sh(workspace, tag, "dpkg -s build-essential >/dev/null 2>&1 && echo left || echo none") == "none"
    assert _sh(workspace, tag, "ls /var/lib/imagekit/build-deps.runtime 2>/dev/null || echo no-record") == "no-record"
    assert _sh(workspace, tag, "/opt/venv/bin/python -c 'import imagekit_hello; print(1)'") == "1"
    assert _sh(workspace, final, "command -v gcc || echo no-gcc") == "no-gcc"
    # one stage per layer: the venv is installed where it lives, not copied from a builder stage
    text = (Path(str(workspace["root"])) / "dockerfiles" / "rendertest.Dockerfile").read_text()
    assert "COPY --from=" not in text and "-builder" not in text


def test_a_start_image_with_a_non_root_user_still_provisions(workspace: dict[str, object]) -> None:
    """Each stage switches to root for provisioning, whatever USER its start image ends with."""
    docker = str(workspace["docker"])
    nonroot = "imagekit-rendertest-nonroot:1"
    proc = subprocess.run(
        [docker, "build", "-t", nonroot, "-"],
        input=f"FROM {workspace['base']}\nUSER nobody\n",
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = workspace["made"]
    assert isinstance(made, list)
    made.append(nonroot)
    hashes = workspace["hashes"]
    assert isinstance(hashes, dict)
    tag = f"imagekit-rendertest-runtime-nonroot:{hashes['runtime'][:16]}"
    # the runtime layer creates /opt/venv and installs into it: it fails as `nobody`
    _build(workspace, "runtime", tag, f"IMAGEKIT_PARENT_RUNTIME={nonroot}")
    assert _sh(workspace, tag, "stat -c %U /opt/venv/bin/python") == "root"
