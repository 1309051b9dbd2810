"""The example TTS service: deterministic weights on the host; the service itself inside the built CPU image."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DOCKER, EXAMPLES
from tts_image import tts_cpu_image

from imagekit.verify.report import compare_wav

TTS = EXAMPLES / "tts"
WEIGHTS = TTS / "models" / "tts.pt"
MAKE_WEIGHTS = TTS / "scripts" / "make_weights.py"


# --- host: weights ---------------------------------------------------------------------------------------


def test_weights_are_regenerated_bit_for_bit(tmp_path: Path) -> None:
    out = tmp_path / "tts.pt"
    subprocess.run([sys.executable, str(MAKE_WEIGHTS), "-o", str(out)], check=True, capture_output=True, timeout=120)
    assert out.read_bytes() == WEIGHTS.read_bytes()
    check = subprocess.run(
        [sys.executable, str(MAKE_WEIGHTS), "--check"], check=False, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout


def test_both_specs_pin_the_committed_weights() -> None:
    digest = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    for spec in ("imagekit.yaml", "imagekit-cpu.yaml"):
        pins = re.findall(r'sha256: "([0-9a-f]{64})"', (TTS / spec).read_text(encoding="utf-8"))
        assert pins == [digest], spec


def test_weights_file_layout() -> None:
    raw = WEIGHTS.read_bytes()
    assert len(raw) < 5 * 1024 * 1024  # small enough to commit
    (hlen,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8 : 8 + hlen])
    meta = header.pop("__metadata__")
    assert meta["format"] == "imagekit-tts"
    end = 0
    for info in header.values():
        assert info["dtype"] == "F32"
        begin, stop = info["data_offsets"]
        count = 1
        for d in info["shape"]:
            count *= d
        assert stop - begin == 4 * count
        end = max(end, stop)
    assert 8 + hlen + end == len(raw)


# --- in the built image: the service ---------------------------------------------------------------------


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=check, timeout=300)


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


class Service:
    def __init__(self, image: str, *env: str) -> None:
        self.name = f"imagekit-test-tts-{uuid.uuid4().hex[:10]}"
        args = ["run", "-d", "--name", self.name, "--label", "imagekit.test=1", "-p", "127.0.0.1::7860"]
        for e in env:
            args += ["-e", e]
        _docker(*args, image)
        port = _docker("port", self.name, "7860/tcp").stdout.split()[0].rsplit(":", 1)[1]
        self.url = f"http://127.0.0.1:{port}"

    def wait(self, path: str, until: float = 120) -> tuple[int, dict[str, Any]]:
        deadline = time.monotonic() + until
        last: tuple[int, dict[str, Any]] = (0, {})
        while time.monotonic() < deadline:
            try:
                status, _, body = _http("GET", self.url + path)
                last = (status, json.loads(body))
                if status == 200:
                    return last
            except (OSError, ValueError):
                pass
            time.sleep(0.3)
        return last

    def synth(self, text: Any) -> tuple[int, str, bytes]:
        return _http("POST", self.url + "/synthesize", json.dumps({"text": text}).encode())

    def close(self) -> None:
        _docker("rm", "-f", self.name, check=False)


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    svc = Service(tts_cpu_image())
    try:
        yield svc
    finally:
        svc.close()


@pytest.mark.docker
def test_ready_reports_the_loaded_model(service: Service) -> None:
    assert service.wait("/health")[0] == 200
    assert service.wait("/ready") == (200, {"status": "ok", "model_loaded": True, "device": "cpu"})


@pytest.mark.docker
def test_chinese_text_gives_deterministic_16k_pcm_wav(service: Service) -> None:
    service.wait("/ready")
    status, ctype, body = service.synth("你好，世界")
    assert (status, ctype) == (200, "audio/wav")
    assert len(body) >= 8000
    with wave.open(io.BytesIO(body)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.getnframes() > 8000  # more than half a second for five characters
    assert service.synth("你好，世界")[2] == body  # no randomness at inference
    failures, metrics = compare_wav(body, (TTS / "reference" / "smoke.wav").read_bytes(), 0.02)
    assert failures == [], metrics
    other = service.synth("hello")[2]
    assert other != body
    assert len(service.synth("a")[2]) >= 8000  # one character still gives a well-formed clip


@pytest.mark.docker
def test_bad_requests_are_400(service: Service) -> None:
    service.wait("/ready")
    assert service.synth("")[0] == 400
    assert service.synth(7)[0] == 400
    assert _http("POST", service.url + "/synthesize", b"{not json")[0] == 400
    assert service.synth("x" * 1001)[0] == 413
    assert _http("GET", service.url + "/nope")[0] == 404


@pytest.mark.docker
def test_a_missing_weights_file_keeps_ready_at_503_with_the_error() -> None:
    svc = Service(tts_cpu_image(), "MODEL_PATH=/opt/models/missing.pt")
    try:
        assert svc.wait("/health")[0] == 200
        time.sleep(2)
        status, body = svc.wait("/ready", until=3)
        assert status == 503
        assert body["status"] == "error"
        assert body["model_loaded"] is False
        assert "missing.pt" in body["error"]
        assert svc.synth("hi")[0] == 503
    finally:
        svc.close()


@pytest.mark.docker
def test_the_service_stops_on_sigterm_promptly() -> None:
    svc = Service(tts_cpu_image())
    try:
        svc.wait("/ready")
        t0 = time.monotonic()
        _docker("stop", "-t", "20", svc.name)
        assert time.monotonic() - t0 < 10  # it handled SIGTERM as PID 1 instead of waiting for SIGKILL
        code = _docker("inspect", "-f", "{{.State.ExitCode}}", svc.name).stdout.strip()
        assert code == "0"
    finally:
        svc.close()
