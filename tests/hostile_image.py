"""A hostile image for the verify tests (#21): built from the bootstrapped base, its `python` prints the probe
output a test chooses and plays a service that answers as the test chooses.

One small layer (two files) on the base the suite bootstraps anyway; each mode is one `ENV` line on top, so a
test costs a second or two of build. The mode is read from $HOSTILE_MODE inside the image.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from conftest import require_docker

# /usr/local/bin/python comes first on PATH: verify's probe and the service's command both run it
WRAPPER = '#!/bin/sh\nexec /usr/bin/python3 /opt/hostile/hostile.py "$@"\n'

HOSTILE_PY = r"""
import json, os, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = os.environ.get("HOSTILE_MODE", "ok")
TARGET = os.environ.get("HOSTILE_TARGET", "http://127.0.0.1:9/")


def real_probe():
    out = subprocess.run(["/usr/bin/python3", *sys.argv[1:]], capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def emit(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def probe():
    doc = real_probe()
    if MODE == "probe-huge":  # 1 GiB before the JSON
        block = "x" * (1 << 20) + "\n"
        for _ in range(1024):
            sys.stdout.write(block)
        emit(json.dumps(doc))
    elif MODE == "probe-list":
        emit("[1, 2, 3]")
    elif MODE == "probe-digits":
        emit(json.dumps(doc)[:-1] + ', "big": ' + "9" * 5000 + "}")
    elif MODE == "probe-surrogate":
        doc["python"]["version"] = "\ud800"
        emit(json.dumps(doc))
    elif MODE == "probe-deep":
        emit("[" * 100000 + "]" * 100000)
    elif MODE == "probe-shapes":
        doc.update(torch=[1], nvidia_smi="nope", pip={"packages": ["a"]}, models=[], user=7)
        emit(json.dumps(doc))
    elif MODE == "probe-names":
        doc["pip"]["packages"].update({"": "1.0", "evil pkg](http://x)": "1", "ok-name": "[red]1\x1b[2J"})
        emit(json.dumps(doc))
    elif MODE == "probe-markup":
        doc["os"]["pretty_name"] = "\\[link=http://attacker.example]x[/link]\x1b[32mALL CHECKS PASSED"
        emit(json.dumps(doc))
    else:
        emit(json.dumps(doc))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/ready":
            if MODE == "ready-redirect":
                return self.answer(302, b"", extra=[("Location", TARGET)])
            if MODE == "ready-drip":
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(100000):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(1)
                return
            if MODE == "ready-huge":
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 30))
                self.end_headers()
                block = b" " * (1 << 20)
                for _ in range(1024):
                    self.wfile.write(block)
                return
            return self.answer(200, b'{"ready": true}')
        if self.path == "/smoke":
            if MODE == "smoke-redirect":
                return self.answer(307, b"", extra=[("Location", TARGET)])
            if MODE == "smoke-ctype":
                return self.answer(200, b"x" * 10, ctype="[link=http://attacker.example]text/plain\x1b[32m")
            return self.answer(200, b"smoke ok", ctype="text/plain")
        return self.answer(404, b"")


if len(sys.argv) > 1 and sys.argv[1] == "serve":
    ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
else:
    probe()
"""

SPEC = """\
version: 1
name: ikt-hostile
layers:
  base:
    from: {bootstrap: {distro: debian, suite: bookworm}}
    cuda: "none"
    command: ["python", "serve"]
    port: 8000
images:
  hostile: {leaf: base, targets: [docker]}
verify:
  gpu: optional
  health: {path: /ready, timeout: %(timeout)s, interval: 0.5}
  smoke: {method: GET, path: /smoke, expect: {min_bytes: 1}}
"""


def _docker(*args: str, stdin: str | None = None) -> str:
    res = subprocess.run(
        [require_docker(), *args], input=stdin, capture_output=True, text=True, check=False, timeout=600
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def build_hostile_base(context: Path) -> str:
    """The hostile layer on the bootstrapped base (the caller removes the tag)."""
    from imagekit.runners.bootstrap import ensure_base
    from imagekit.runners.docker import DockerEngine
    from imagekit.spec import Bootstrap

    base = ensure_base(DockerEngine(), "base", Bootstrap(distro="debian", suite="bookworm")).tag
    context.mkdir(parents=True, exist_ok=True)
    (context / "hostile.py").write_text(HOSTILE_PY)
    (context / "python").write_text(WRAPPER)
    (context / "Dockerfile").write_text(
        f"FROM {base}\nCOPY hostile.py /opt/hostile/hostile.py\nCOPY python /usr/local/bin/python\n"
        'RUN chmod 0755 /usr/local/bin/python\nCMD ["python", "serve"]\n'
    )
    tag = f"imagekit-test-hostile:{uuid.uuid4().hex[:12]}"
    _docker("build", "-q", "--label", "imagekit.test=1", "-t", tag, str(context))
    return tag


def hostile_mode(base: str, mode: str, **env: str) -> str:
    """A tag of the hostile image playing `mode` (one ENV layer on `base`); the caller removes it."""
    lines = [f"FROM {base}", f"ENV HOSTILE_MODE={mode}"] + [f"ENV {k}={v}" for k, v in env.items()]
    tag = f"imagekit-test-hostile-mode:{uuid.uuid4().hex[:12]}"
    _docker("build", "-q", "--label", "imagekit.test=1", "-t", tag, "-", stdin="\n".join(lines) + "\n")
    return tag


def write_spec(folder: Path, *, timeout: float = 8) -> Path:
    """A spec whose one image is the hostile one, with health and smoke set."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "imagekit.yaml"
    path.write_text(SPEC % {"timeout": timeout})
    return path
