"""Boot-and-verify on an instance booted from the new AMI. Standard library only: it runs there, not here.

Usage on the instance: `python3 vmcheck.py DIR` where DIR holds check.json (rendered from the spec) and probe.py.
Starts the service unless its port already answers (a systemd unit may have started it), waits for the health
endpoint, sends the smoke request, runs the probe with the service's Python, and writes DIR/report.json.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ENV_FILES = ("/etc/imagekit/env", "/etc/environment")


def _env_from_files() -> dict[str, str]:
    env: dict[str, str] = {}
    for name in ENV_FILES:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError:
            continue
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.removeprefix("export ").partition("=")
            env[key.strip()] = value.strip().strip('"').strip("'")
    return env


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _request(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))  # noqa: S310
    if data is not None:
        req.add_header("Content-Type", "application/json")
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - the service on localhost
            payload = resp.read()
            status, ctype = resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        payload, status, ctype = exc.read(), exc.code, exc.headers.get("Content-Type", "")
    return {
        "status": status,
        "bytes": len(payload),
        "content_type": ctype,
        "latency_ms": round((time.monotonic() - t0) * 1000, 1),
        "body": payload,
    }


def main(argv: list[str]) -> int:
    """Run the checks; exit 0 when they pass, 1 when one fails (the report says which)."""
    folder = Path(argv[1] if len(argv) > 1 else ".")
    check = json.loads((folder / "check.json").read_text(encoding="utf-8"))
    env = {**os.environ, **_env_from_files(), **check.get("env", {})}
    report: dict[str, Any] = {"host": "ec2", "failures": []}
    service = None
    port = check.get("port")
    if check.get("command") and port and not _listening(int(port)):
        argv_cmd = list(check["command"])
        exe = shutil.which(argv_cmd[0], path=env.get("PATH"))
        if exe:
            argv_cmd[0] = exe
        if check.get("user") and os.geteuid() == 0 and shutil.which("runuser"):
            argv_cmd = ["runuser", "-u", check["user"], "--", *argv_cmd]
        log = (folder / "service.log").open("wb")
        service = subprocess.Popen(
            argv_cmd, cwd=check.get("workdir") or "/", env=env, stdout=log, stderr=subprocess.STDOUT
        )
        report["service"] = {"started": argv_cmd}
    health = check.get("health")
    if health and port:
        url = f"http://127.0.0.1:{port}{health['path']}"
        deadline = time.monotonic() + float(health.get("timeout", 600))
        result: dict[str, Any] = {"ok": False}
        while time.monotonic() < deadline:
            if service is not None and service.poll() is not None:
                result = {"ok": False, "error": f"the service exited with {service.returncode}"}
                break
            try:
                got = _request(url)
                if got["status"] == 200:
                    result = {
                        "ok": True,
                        "status": 200,
                        "seconds": round(float(health.get("timeout", 600)) - (deadline - time.monotonic()), 1),
                    }
                    break
                result = {"ok": False, "status": got["status"]}
            except OSError as exc:
                result = {"ok": False, "error": str(exc)}
            time.sleep(float(health.get("interval", 1.0)))
        report["health"] = result
        if not result["ok"]:
            report["failures"].append(f"health {health['path']}: {result.get('error') or result.get('status')}")
    smoke = check.get("smoke")
    if smoke and port and report.get("health", {"ok": True})["ok"]:
        got = _request(
            f"http://127.0.0.1:{port}{smoke['path']}", smoke["method"], smoke.get("json"), smoke.get("headers")
        )
        body = got.pop("body")
        (folder / "smoke.out").write_bytes(body)
        report["smoke"] = got
        expect = smoke.get("expect", {})
        if got["status"] != expect.get("status", 200):
            report["failures"].append(
                f"smoke {smoke['path']}: status {got['status']}, expected {expect.get('status', 200)}"
            )
        if got["bytes"] < expect.get("min_bytes", 1):
            report["failures"].append(
                f"smoke {smoke['path']}: {got['bytes']} bytes, expected >= {expect.get('min_bytes')}"
            )
    probe = folder / "probe.py"
    if probe.exists():
        python = shutil.which("python", path=env.get("PATH")) or shutil.which("python3") or sys.executable
        res = subprocess.run([python, str(probe)], env=env, capture_output=True, text=True, check=False)
        try:
            report["probe"] = json.loads(res.stdout)
        except ValueError:
            report["probe"] = None
            report["failures"].append(f"probe failed (exit {res.returncode}): {res.stderr.strip()[-300:]}")
    if service is not None:
        service.terminate()
        try:
            service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.kill()
    report["passed"] = not report["failures"]
    (folder / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
