"""HTTP front of the example TTS service (stdlib http.server, nothing else to install).

GET  /health      liveness: 200 while the process serves
GET  /ready       {"status": "ok"|"loading"|"error", "model_loaded": bool, "device": "cuda:0"|"cpu"}: 200 once
                  the model is loaded, else 503 (verify reads `device` to see that the model runs on the GPU)
POST /synthesize  {"text": "..."} -> audio/wav (16-bit PCM mono, 16 kHz)

python -m app.server --port 7860   (weights from $MODEL_PATH or --model)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from app.model import MAX_CHARS, SAMPLE_RATE, TinyTTS, to_wav

log = logging.getLogger("tts")


class State:
    """What the handlers share: the model once loaded, or why loading failed."""

    def __init__(self) -> None:
        self.model: TinyTTS | None = None
        self.device = ""  # where the loaded weights are, e.g. cuda:0
        self.error: str | None = None
        self.lock = threading.Lock()  # one inference at a time keeps latency and output stable

    def load(self, path: str, device: str) -> None:
        """Load the weights; records the error instead of raising, so /ready can say what went wrong."""
        t0 = time.monotonic()
        try:
            model = TinyTTS.from_file(path).to(device)
            model.synthesize("warm up")
            self.device = str(next(model.parameters()).device)
            self.model = model
            log.info("model loaded from %s on %s in %.2fs", path, device, time.monotonic() - t0)
        except Exception as exc:  # a bad weights file must show in /ready, not kill the server silently
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load from %s: %s", path, self.error)


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to `state`."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "imagekit-tts/1"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(
                status,
                json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8"),
                "application/json; charset=utf-8",
            )

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/health":
                self._json(200, {"status": "ok"})
            elif path == "/ready":
                loaded = state.model is not None
                status = "ok" if loaded else ("error" if state.error else "loading")
                body: dict[str, Any] = {"status": status, "model_loaded": loaded}
                if loaded:
                    body["device"] = state.device
                if state.error:
                    body["error"] = state.error
                self._json(200 if loaded else 503, body)
            else:
                self._json(404, {"error": f"no route {path}"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if path != "/synthesize":
                self._json(404, {"error": f"no route {path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > 1 << 20:
                self._json(400, {"error": "bad or too large Content-Length"})
                return
            try:
                req = json.loads(self.rfile.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                self._json(400, {"error": f"body is not UTF-8 JSON: {exc}"})
                return
            text = req.get("text") if isinstance(req, dict) else None
            if not isinstance(text, str) or not text.strip():
                self._json(400, {"error": 'expected {"text": "<non-empty string>"}'})
                return
            if len(text) > MAX_CHARS:
                self._json(413, {"error": f"text longer than {MAX_CHARS} characters"})
                return
            model = state.model
            if model is None:
                self._json(503, {"error": "model not loaded yet", "status": "loading"})
                return
            t0 = time.monotonic()
            with state.lock:
                wav = to_wav(model.synthesize(text), SAMPLE_RATE)
            log.info("synthesized %d chars -> %d bytes in %.1f ms", len(text), len(wav), 1000 * (time.monotonic() - t0))
            self._send(200, wav, "audio/wav")

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the model loads in the background so /health answers at once."""
    ap = argparse.ArgumentParser(description="imagekit example TTS service")
    ap.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7860")))
    ap.add_argument("--model", default=os.environ.get("MODEL_PATH", "/opt/models/tts.pt"))
    ap.add_argument("--device", default=os.environ.get("DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    # Reproducible output: no randomness at inference, and one thread so float sums run in one order.
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = False  # on a GPU, the same convolution algorithm every run
    torch.backends.cudnn.deterministic = True
    state = State()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    server.daemon_threads = True

    def stop(signum: int, _frame: object) -> None:
        # As PID 1 in a container SIGTERM has no default action; shut down from another thread (serve_forever
        # would deadlock if shutdown() were called on its own thread).
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=state.load, args=(args.model, args.device), daemon=True).start()
    log.info(
        "listening on %s:%d (model %s, device %s, torch %s)",
        args.host,
        args.port,
        args.model,
        args.device,
        torch.__version__,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
