"""`imagekit verify` against the real CPU example image on a real Docker Engine: the good case and broken ones.

The broken cases reuse the one built image: they vary the spec (pins, timeouts, min_bytes), or derive a tiny
image from it (one-line Dockerfiles that corrupt the weights or point MODEL_PATH at nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DOCKER, EXAMPLES, copy_example
from tts_image import tts_cpu_image

from imagekit.errors import Interrupted, VerifyFailed
from imagekit.events import Event
from imagekit.verify.report import GPU_HINT

pytestmark = pytest.mark.docker

TTS = EXAMPLES / "tts"
SHA = "4bfe58c56b295277295388d9bef54cab32932c8f79d9f20b987a3fb65289319e"


def _docker(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, check=check, timeout=600, input=stdin, env=_env()
    )


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "DOCKER_BUILDKIT": "1"}


def _verify(spec: Path, ref: str) -> tuple[int, str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "imagekit", "verify", ref, "-f", str(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return out.returncode, out.stdout, out.stderr


def _report_of(err: str) -> dict[str, Any]:
    path = Path(err.split("report: ", 1)[1].split()[0])
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def _leftovers(err: str) -> list[str]:
    """Containers a verify run (known by its report) started that still exist: there must be none."""
    names = _report_of(err)["containers"]
    assert names, "the report lists no containers"
    ps = _docker("ps", "-a", "--format", "{{.Names}}", "--filter", "label=imagekit.verify")
    return sorted(set(names) & set(ps.stdout.split()))


@pytest.fixture(scope="module")
def image() -> str:
    return tts_cpu_image()


@pytest.fixture
def spec_copy(tmp_path: Path) -> Path:
    """A copy of the example folder, so a test can change the CPU spec without touching the repo."""
    folder = tmp_path / "tts"
    copy_example(folder)
    return folder / "imagekit-cpu.yaml"


def _edit(spec: Path, old: str, new: str) -> Path:
    text = spec.read_text(encoding="utf-8")
    assert old in text, old
    spec.write_text(text.replace(old, new), encoding="utf-8")
    return spec


@pytest.fixture
def derived(image: str, tmp_path: Path) -> Iterator[Any]:
    """Build tiny images FROM the built one; removed afterwards."""
    made: list[str] = []

    def make(dockerfile_tail: str, files: dict[str, bytes] | None = None) -> str:
        ctx = tmp_path / f"ctx-{len(made)}"
        ctx.mkdir()
        for name, data in (files or {}).items():
            (ctx / name).write_bytes(data)
        (ctx / "Dockerfile").write_text(f"FROM {image}\n{dockerfile_tail}\n")
        tag = f"imagekit-test-verify:{uuid.uuid4().hex[:12]}"
        _docker("build", "-q", "--label", "imagekit.test=1", "-t", tag, str(ctx))
        made.append(tag)
        return tag

    yield make
    for tag in made:
        _docker("rmi", "-f", tag, check=False)


def test_the_cpu_example_verifies(image: str) -> None:
    code, _, err = _verify(TTS / "imagekit-cpu.yaml", image)
    assert code == 0, err
    assert "verified" in err
    path = Path(err.split("report: ", 1)[1].split()[0])
    report = _report_of(err)
    assert report["ok"] is True
    assert report["failures"] == []
    assert report["probe"]["torch"]["version"] == "2.13.0+cpu"
    assert report["probe"]["models"]["/opt/models/tts.pt"]["sha256"] == SHA
    assert report["health"]["ready"] is True
    assert 0 < report["health"]["seconds_to_ready"] < 300
    smoke = report["smoke"]
    assert (smoke["status"], smoke["content_type"]) == (200, "audio/wav")
    assert smoke["bytes"] >= 8000
    assert smoke["latency_ms"] > 0
    assert smoke["audio"]["rms_diff"] <= 0.02
    assert path.parent == TTS / ".imagekit" / "reports"
    assert _leftovers(err) == []


def test_json_output_carries_the_report_path(image: str, spec_copy: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "imagekit", "verify", image, "-f", str(spec_copy), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is True
    assert Path(doc["report_path"]).is_file()


def test_a_torch_pin_that_differs_exits_1_naming_it(image: str, spec_copy: Path) -> None:
    _edit(spec_copy, 'torch: "2.13.0"', 'torch: "2.12.1"')
    code, _, err = _verify(spec_copy, image)
    assert code == 1, err
    assert "torch: expected 2.12.1, found 2.13.0+cpu" in err
    report = _report_of(err)
    assert report["ok"] is False
    assert report["failures"] == ["torch: expected 2.12.1, found 2.13.0+cpu"]
    assert _leftovers(err) == []


def test_weights_whose_sha256_differs_exit_1_naming_both_digests(image: str, derived: Any) -> None:
    good = (TTS / "models" / "tts.pt").read_bytes()
    bad = bytearray(good)
    for i in range(len(bad) - 4096, len(bad)):  # the head's weights live at the end: flip their bytes
        bad[i] ^= 0x5A
    ref = derived("COPY tts.pt /opt/models/tts.pt", {"tts.pt": bytes(bad)})
    code, _, err = _verify(TTS / "imagekit-cpu.yaml", ref)
    assert code == 1, err
    import hashlib

    found = hashlib.sha256(bytes(bad)).hexdigest()
    assert f"model /opt/models/tts.pt: expected sha256 {SHA}, found {found}" in err
    assert "audio differs from the reference" in err  # the golden check sees the other weights too
    assert _leftovers(err) == []


def test_a_service_that_never_becomes_healthy_exits_1(image: str, spec_copy: Path, derived: Any) -> None:
    ref = derived("ENV MODEL_PATH=/opt/models/missing.pt")
    # 20 s: long enough for the server to be up and answering 503 on a loaded 2-core machine (4 s was not)
    _edit(spec_copy, "health: {path: /ready, timeout: 300}", "health: {path: /ready, timeout: 20}")
    code, _, err = _verify(spec_copy, ref)
    assert code == 1, err
    assert "health: /ready did not answer 200 within 20s (last: 503" in err
    assert "missing.pt" in err
    assert _leftovers(err) == []


def test_a_smoke_response_too_short_exits_1(image: str, spec_copy: Path) -> None:
    _edit(spec_copy, "min_bytes: 8000", "min_bytes: 1000000")
    code, _, err = _verify(spec_copy, image)
    assert code == 1, err
    assert "smoke response too short: expected at least 1000000 bytes, found 29864" in err
    assert _leftovers(err) == []


def test_gpu_required_on_this_cpu_host_says_how_to_fix(image: str, spec_copy: Path) -> None:
    if "nvidia" in _docker("info", "--format", "{{json .Runtimes}}").stdout:
        pytest.skip("this engine has an NVIDIA runtime, so a GPU may well be visible")
    _edit(spec_copy, "gpu: optional", "gpu: required")
    code, _, err = _verify(spec_copy, image)
    assert code == 1, err
    assert GPU_HINT in " ".join(err.split())
    assert _leftovers(err) == []


def test_ctrl_c_removes_the_containers_and_raises_interrupted(image: str, spec_copy: Path) -> None:
    import docker

    from imagekit.api.verify import verify_docker

    created: list[str] = []
    real = docker.from_env()

    class Containers:
        def __getattr__(self, name: str) -> Any:
            return getattr(real.containers, name)

        def create(self, **kwargs: Any) -> Any:
            c = real.containers.create(**kwargs)
            created.append(c.id)
            return c

    class Client:
        api = real.api
        images = real.images
        containers = Containers()

    def interrupt_when_ready(event: Event) -> None:
        if event.message.startswith("ready after"):
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        verify_docker(spec_copy, image, reporter=interrupt_when_ready, client=Client())
    assert info.value.exit_code == 130
    assert len(created) == 2  # the probe and the service
    alive = _docker("ps", "-a", "-q", "--no-trunc").stdout.split()
    assert not set(created) & set(alive)
    real.close()


def test_an_image_that_is_not_there_is_a_usage_error(spec_copy: Path) -> None:
    code, _, err = _verify(spec_copy, "imagekit-test-verify:does-not-exist")
    assert code == 2
    assert "is not on the Docker host" in err


def test_verify_failed_carries_failures_and_report(image: str, spec_copy: Path) -> None:
    from imagekit.api.verify import verify_docker

    _edit(spec_copy, 'python: "3.11"', 'python: "3.12"')
    with pytest.raises(VerifyFailed) as info:
        verify_docker(spec_copy, image)
    assert info.value.failures == ["python: expected 3.12, found 3.11.2"]
    assert Path(info.value.report_path).parent == spec_copy.parent / ".imagekit" / "reports"


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_mid_verify_exits_130_and_removes_the_containers(sig: str, spec_copy: Path, derived: Any) -> None:
    import signal
    import time

    ref = derived("ENV MODEL_PATH=/opt/models/missing.pt")  # never ready: the service container stays up
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagekit", "verify", ref, "-f", str(spec_copy)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "starting the service" in line:
                break
        time.sleep(1.5)  # let the service container start
        proc.send_signal(getattr(signal, sig))
        rest = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + rest
    assert code == 130, err
    assert "containers were removed" in err
    partial = Path(err.split("partial report: ", 1)[1].split(")")[0])
    report = json.loads(partial.read_text(encoding="utf-8"))
    assert report["failures"][-1] == "interrupted"
    assert len(report["containers"]) == 2
    alive = _docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert not set(report["containers"]) & set(alive)


def test_a_remote_engine_gets_the_probe_as_text_not_a_mount(image: str) -> None:
    import docker

    from imagekit.verify.docker_host import DockerHost

    client = docker.from_env()
    try:
        # Pretend the engine is remote: the probe must then travel as `python -c` text, with no bind mount.
        host = DockerHost(client, docker_host="ssh://pretend-remote")
        doc = host.probe(image, ["/opt/models/tts.pt"], gpu=False)
    finally:
        client.close()
    assert doc["models"]["/opt/models/tts.pt"]["sha256"] == SHA
    assert doc["torch"]["version"] == "2.13.0+cpu"
