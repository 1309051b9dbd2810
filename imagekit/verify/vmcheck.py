"""Boot-and-verify on an instance booted from the new AMI. Standard library only: it runs there, not here.

Usage on the instance: `python3 vmcheck.py DIR` where DIR holds check.json (rendered from the spec) and probe.py.
Reports whether the image's systemd unit (check.json's "unit") is present and enabled. Where systemd runs (a real
instance), the service is the one systemd started at boot: the check waits for it (a model that loads for a
minute is `activating`, its port still closed) and never starts a second copy; a unit that failed at boot is a
failure. With no systemd (a rehearsal instance is a container) it starts the service by hand unless its port
already answers, as the unit would: the unit's ExecStart, Environment, User and WorkingDirectory (read from the
unit file, so the check exercises what boots; check.json's values only when there is no unit). It waits for
the health endpoint, sends the smoke request, runs the probe with the service's Python, and writes the facts to
DIR/report.json. The policy (pins, status, size, reference audio) is applied back home, as for the docker target.
"""

from __future__ import annotations

import base64
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
MAX_BODY = 32 * 1024 * 1024
WANTS_DIR = "/etc/systemd/system/multi-user.target.wants"
SYSTEMD_RUN_DIR = "/run/systemd/system"  # exists exactly when systemd is PID 1 (sd_booted)
RUNNING_STATES = ("active", "activating", "reloading")
_C_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


def unit_words(text: str, *, exec_line: bool) -> list[str]:
    """Split a systemd value into words as systemd does for what imagekit writes: double or single quotes with C
    escapes, then %% -> % (specifiers) and, on an Exec line, $$ -> $."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        word: list[str] = []
        while i < n and not text[i].isspace():
            ch = text[i]
            if ch in "\"'":
                quote, i = ch, i + 1
                while i < n and text[i] != quote:
                    if text[i] == "\\" and i + 1 < n:
                        word.append(_C_ESCAPES.get(text[i + 1], text[i + 1]))
                        i += 2
                        continue
                    word.append(text[i])
                    i += 1
                i += 1
                continue
            if ch == "\\" and i + 1 < n:
                word.append(_C_ESCAPES.get(text[i + 1], text[i + 1]))
                i += 2
                continue
            word.append(ch)
            i += 1
        value = "".join(word).replace("%%", "%")
        words.append(value.replace("$$", "$") if exec_line else value)
    return words


def read_unit(path: str) -> dict[str, Any]:
    """The unit's presence, enablement (its multi-user.target.wants link) and what it starts."""
    unit = Path(path)
    wants = Path(WANTS_DIR) / unit.name
    found: dict[str, Any] = {
        "path": path,
        "present": unit.is_file(),
        "enabled": wants.exists() and os.path.realpath(wants) == os.path.realpath(unit),
        "wants": str(wants),
    }
    if not found["present"]:
        return found
    env: dict[str, str] = {}
    for raw in unit.read_text(encoding="utf-8").splitlines():
        key, sep, value = raw.strip().partition("=")
        if not sep or raw.lstrip().startswith(("#", ";")):
            continue
        if key == "ExecStart":
            found["exec_start"] = unit_words(value, exec_line=True)
        elif key == "Environment":
            for word in unit_words(value, exec_line=False):
                name, _, val = word.partition("=")
                env[name] = val
        elif key in ("User", "Group", "WorkingDirectory"):
            found[key.lower()] = value.strip()
    found["environment"] = env
    return found


def _as_user(argv: list[str], user: str | None) -> tuple[list[str], dict[str, Any]]:
    """Run argv as the service's user: runuser for a name, Popen's user/group for a numeric id (no passwd entry)."""
    if not user or os.geteuid() != 0:
        return argv, {}
    if user.isdigit():
        return argv, {"user": int(user), "group": int(user), "extra_groups": []}
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *argv], {}
    return argv, {}


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


def systemd_state(unit_path: str) -> str | None:
    """`systemctl is-active` of the unit where systemd runs; None where it does not (no boot-started service)."""
    if not os.path.isdir(SYSTEMD_RUN_DIR) or shutil.which("systemctl") is None:
        return None
    res = subprocess.run(
        ["systemctl", "is-active", os.path.basename(unit_path)], capture_output=True, text=True, check=False
    )
    return res.stdout.strip() or "unknown"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx from the service is its answer: never followed (on EC2 it could point at 169.254.169.254)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)
_BODY_LIMIT = 64 * 1024 * 1024  # as the docker verify host reads at most


def _request(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))  # noqa: S310
    if data is not None:
        req.add_header("Content-Type", "application/json")
    t0 = time.monotonic()
    try:
        with _OPENER.open(req, timeout=120) as resp:
            payload = resp.read(_BODY_LIMIT + 1)
            status, ctype = resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        payload, status, ctype = exc.read(_BODY_LIMIT + 1), exc.code, exc.headers.get("Content-Type", "")
    return {
        "status": status,
        "bytes": len(payload),
        "content_type": ctype,
        "latency_ms": round((time.monotonic() - t0) * 1000, 1),
        "body": payload,
    }


def prewarm(step: dict[str, Any], *, run: bool) -> dict[str, Any] | None:
    """The pre-read step's result: run now (no systemd started it) or as the boot's ExecStartPre left it."""
    result = Path(step["result"])
    if run:
        subprocess.run(["sh", step["script"], str(result)], capture_output=True, check=False, timeout=3600)
    try:
        found = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {**found, "by": "vmcheck before the service" if run else "systemd at boot (ExecStartPre)"}


def main(argv: list[str]) -> int:
    """Gather the facts; exit 1 when something could not run at all (the report says what)."""
    folder = Path(argv[1] if len(argv) > 1 else ".")
    check = json.loads((folder / "check.json").read_text(encoding="utf-8"))
    report: dict[str, Any] = {"host": "ec2", "failures": []}
    env = {**os.environ, **_env_from_files(), **check.get("env", {})}
    command, user, workdir = check.get("command"), check.get("user"), check.get("workdir")
    unit = read_unit(check["unit"]) if check.get("unit") else None
    if unit is not None:
        report["service_unit"] = unit
        if unit.get("exec_start"):
            # start what boots: the unit's own command line, environment, user and folder
            env = {**os.environ, **unit["environment"]}
            command, user, workdir = unit["exec_start"], unit.get("user"), unit.get("workingdirectory")
    service = None
    port = check.get("port")
    state = systemd_state(check["unit"]) if check.get("unit") and unit and unit.get("present") else None
    if check.get("prewarm") and state is None:
        report["prewarm"] = prewarm(check["prewarm"], run=True)
    if state is not None:
        report["service"] = {"started": None, "by": "systemd at boot", "state": state}
        if state not in RUNNING_STATES:
            report["failures"].append(
                f"{os.path.basename(check['unit'])} is {state} after boot, not running (journalctl -u on the instance)"
            )
    elif command and port and not _listening(int(port)):
        argv_cmd = list(command)
        exe = shutil.which(argv_cmd[0], path=env.get("PATH"))
        if exe:
            argv_cmd[0] = exe
        argv_cmd, as_user = _as_user(argv_cmd, user)
        log = (folder / "service.log").open("wb")
        service = subprocess.Popen(
            argv_cmd, cwd=workdir or "/", env=env, stdout=log, stderr=subprocess.STDOUT, **as_user
        )
        report["service"] = {"started": argv_cmd, "from_unit": bool(unit and unit.get("exec_start"))}
    health = check.get("health")
    if health and port and (state is None or state in RUNNING_STATES):
        url = f"http://127.0.0.1:{port}{health['path']}"
        timeout = float(health.get("timeout", 600))
        t0 = time.monotonic()
        result: dict[str, Any] = {"path": health["path"], "ready": False, "timeout": timeout}
        while time.monotonic() - t0 < timeout:
            if service is not None and service.poll() is not None:
                result["last_body"] = f"the service exited with {service.returncode}"
                break
            if state is not None and state in RUNNING_STATES:
                state = systemd_state(check["unit"]) or state
                if state not in RUNNING_STATES:
                    result["last_body"] = f"{os.path.basename(check['unit'])} became {state} while loading"
                    report["service"]["state"] = state
                    break
            try:
                got = _request(url)
                result["last_status"] = got["status"]
                result["last_body"] = got["body"][:300].decode("utf-8", "replace")
                if got["status"] == 200:
                    result["ready"] = True
                    result["seconds_to_ready"] = round(time.monotonic() - t0, 3)
                    break
            except OSError as exc:
                result["last_body"] = str(exc)
            time.sleep(float(health.get("interval", 1.0)))
        report["health"] = result
    if check.get("prewarm") and state is not None:
        report["prewarm"] = prewarm(check["prewarm"], run=False)  # the unit's ExecStartPre ran before the service
    smoke = check.get("smoke")
    if smoke and port and report.get("health", {"ready": True})["ready"]:
        try:
            got = _request(
                f"http://127.0.0.1:{port}{smoke['path']}", smoke["method"], smoke.get("json"), smoke.get("headers")
            )
            body = got.pop("body")
            got["body_b64"] = base64.b64encode(body[:MAX_BODY]).decode()
        except OSError as exc:
            got = {"error": str(exc)}
        report["smoke"] = {"method": smoke["method"], "path": smoke["path"], **got}
    probe = folder / "probe.py"
    if probe.exists():
        python = shutil.which("python", path=env.get("PATH")) or shutil.which("python3") or sys.executable
        models = [str(m) for m in check.get("models", [])]
        argv_probe = [python, str(probe), *models]
        # the probe sees what the service sees: its user, its environment
        argv_probe, as_user = _as_user(argv_probe, user)
        res = subprocess.run(
            argv_probe, env=env, cwd=workdir or "/", capture_output=True, text=True, check=False, **as_user
        )
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
