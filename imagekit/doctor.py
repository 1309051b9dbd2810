"""`imagekit doctor`: what this machine has for building and verifying images, each with a fix when missing."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imagekit.errors import ImagekitError, ToolMissing
from imagekit.runners import process

Capture = Callable[..., process.Result]
Which = Callable[[str], str | None]

# Debian's client has BuildKit built in (DOCKER_BUILDKIT=1); clients from 23.0 on need the buildx plugin for it.
DEBIAN_DOCKER = "/usr/bin/docker"
PROBE_TIMEOUT = 15.0


@dataclass(frozen=True)
class Check:
    """One thing doctor looked at: whether it is usable, what was found, and how to fix it when not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed_for: str = ""


@dataclass(frozen=True)
class Report:
    """Every check, in a stable order."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing."""
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """The --json document."""
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def require_all(self) -> None:
        """Raise ToolMissing naming what is missing (doctor --strict)."""
        missing = [c for c in self.checks if not c.ok]
        if missing:
            raise ToolMissing(
                "missing: " + ", ".join(c.name for c in missing) + " (see the fix lines above, or run without --strict)"
            )


def _probe(capture: Capture, argv: Sequence[str], env: Mapping[str, str] | None = None) -> process.Result | None:
    """Run a short query; None when the tool is absent, hangs, or cannot start."""
    try:
        return capture(list(argv), env=env, timeout=PROBE_TIMEOUT)
    except (ImagekitError, OSError):  # ToolMissing, CommandTimeout
        return None


def _first_line(result: process.Result | None) -> str:
    if result is None:
        return ""
    lines = [ln.strip() for ln in result.output.splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _docker_binary(which: Which) -> str | None:
    if Path(DEBIAN_DOCKER).exists():
        return DEBIAN_DOCKER
    return which("docker")


def _major(version: str) -> int:
    m = re.match(r"\d+", version)
    return int(m.group(0)) if m else 0


def check_docker(capture: Capture, which: Which) -> list[Check]:
    """The Docker Engine (server reachable) and BuildKit (built into the client, or buildx)."""
    engine_fix = "apt-get install docker.io, then start dockerd (systemctl start docker) and check `docker info`"
    docker = _docker_binary(which)
    if docker is None:
        return [
            Check("docker engine", False, "no docker client found", engine_fix, "docker builds and verify"),
            Check("buildkit", False, "no docker client found", engine_fix, "docker builds"),
        ]
    result = _probe(capture, [docker, "version", "--format", "{{json .}}"])
    doc: dict[str, Any] = {}
    if result is not None:
        for ln in result.output.splitlines():
            if ln.startswith("{"):
                try:
                    doc = json.loads(ln)
                except ValueError:
                    doc = {}
                break
    client = str((doc.get("Client") or {}).get("Version") or "")
    server = str((doc.get("Server") or {}).get("Version") or "")
    if server:
        engine = Check(
            "docker engine", True, f"{docker}: client {client}, engine {server}", "", "docker builds and verify"
        )
    else:
        said = [ln.strip() for ln in (result.output if result else "").splitlines() if ln.strip()[:1] not in ("", "{")]
        why = said[0] if said else "the engine did not answer"
        if "permission denied" in why.lower():
            engine_fix = "add your user to the docker group (or run as root): the socket refused you"
        engine = Check("docker engine", False, f"{docker}: {why}", engine_fix, "docker builds and verify")
    if not client:
        buildkit = Check("buildkit", False, f"{docker}: no client version", engine_fix, "docker builds")
    elif _major(client) < 23:
        # Pre-23 clients build with BuildKit themselves when DOCKER_BUILDKIT=1 (engine 18.09 or newer).
        ok = not server or _major(server) >= 18
        buildkit = Check(
            "buildkit",
            ok,
            f"built into docker {client} (DOCKER_BUILDKIT=1)",
            "" if ok else "upgrade the Docker Engine to 18.09 or newer",
            "docker builds",
        )
    else:
        bx = _probe(capture, [docker, "buildx", "version"])
        ok = bx is not None and bx.ok
        buildkit = Check(
            "buildkit",
            ok,
            f"buildx {_first_line(bx)}" if ok else f"docker {client} needs the buildx plugin, which is missing",
            ""
            if ok
            else f"install docker-buildx (apt-get install docker-buildx) or use {DEBIAN_DOCKER} from docker.io",
            "docker builds",
        )
    return [engine, buildkit]


def check_packer(capture: Capture, which: Which) -> Check:
    """The packer binary and its version."""
    fix = "apt-get install packer (1.6.6 has amazon-ebs built in), or download packer from releases.hashicorp.com"
    path = which("packer")
    if path is None:
        return Check("packer", False, "packer is not on PATH", fix, "AMI builds")
    result = _probe(capture, [path, "version"])
    line = _first_line(result)
    m = re.search(r"v?(\d+\.\d+\.\d+)", line)
    if result is None or not result.ok or m is None:
        return Check("packer", False, f"{path}: `packer version` failed: {line or 'no output'}", fix, "AMI builds")
    return Check("packer", True, f"{path}: packer {m.group(1)}", "", "AMI builds")


def check_aws(session_factory: Callable[[], Any] | None = None) -> list[Check]:
    """AWS credentials and region from the usual chain, without calling AWS (instance metadata: 1 s, 1 try)."""
    from imagekit.runners.aws import aws_errors, offline_session

    unreadable: tuple[type[Exception], ...] = (*aws_errors(), ValueError, OSError)
    try:
        session = session_factory() if session_factory is not None else offline_session()
        creds = session.get_credentials()
        # botocore reads AWS_DEFAULT_REGION; AWS_REGION is what most other AWS tools (and SDKs) read.
        region = session.region_name or os.environ.get("AWS_REGION")
    except unreadable as exc:
        fix = "fix the AWS config files (~/.aws/config, ~/.aws/credentials) or the AWS_* environment"
        return [Check("aws credentials", False, f"cannot read the AWS configuration: {exc}", fix, "AMI builds")]
    if creds is None:
        cred = Check(
            "aws credentials",
            False,
            "no credentials in the environment, ~/.aws or instance metadata",
            "set AWS_PROFILE (aws configure / aws sso login) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            "AMI builds, S3 store, KMS keys",
        )
    else:
        cred = Check("aws credentials", True, f"found via {creds.method}", "", "AMI builds, S3 store, KMS keys")
    if region:
        reg = Check("aws region", True, region, "", "AMI builds")
    else:
        reg = Check(
            "aws region",
            False,
            "no default region",
            "set AWS_DEFAULT_REGION (or `aws configure set region us-east-1`); builds use the spec's aws.region",
            "AMI builds",
        )
    return [cred, reg]


def check_gpu(capture: Capture, which: Which) -> Check:
    """A visible NVIDIA GPU (nvidia-smi), with its compute capability from the matrix when known."""
    fix = "run on a GPU host (e.g. g5.xlarge) with the NVIDIA driver installed; or set verify.gpu: optional"
    path = which("nvidia-smi")
    if path is None:
        return Check("gpu", False, "nvidia-smi is not on PATH (no NVIDIA driver)", fix, "GPU verification")
    query = "--query-gpu=name,driver_version,compute_cap"
    result = _probe(capture, [path, query, "--format=csv,noheader"])
    if result is None or not result.ok:
        return Check("gpu", False, f"nvidia-smi failed: {_first_line(result) or 'no output'}", fix, "GPU verification")
    gpus = []
    for row in result.output.splitlines():
        parts = [p.strip() for p in row.split(",")]
        if len(parts) < 3 or not parts[0]:
            continue
        name, driver, cap = parts[:3]
        sm = "sm_" + cap.replace(".", "") if re.fullmatch(r"\d+\.\d+", cap) else cap
        gpus.append(f"{name} ({sm}, driver {driver})")
    if not gpus:
        return Check("gpu", False, "nvidia-smi lists no GPU", fix, "GPU verification")
    return Check("gpu", True, "; ".join(gpus), "", "GPU verification")


def check_debootstrap(capture: Capture, which: Which) -> Check:
    """debootstrap, for bases built with no registry (from.bootstrap)."""
    fix = "apt-get install debootstrap (bootstrap bases run it as root)"
    path = which("debootstrap")
    if path is None:
        return Check("debootstrap", False, "debootstrap is not on PATH", fix, "bootstrap bases")
    line = _first_line(_probe(capture, [path, "--version"]))
    root = "" if os.geteuid() == 0 else "; not root: bootstrap bases need root"
    return Check("debootstrap", True, f"{path}: {line or 'version unknown'}{root}", "", "bootstrap bases")


def diagnose(
    *,
    capture: Capture = process.capture,
    which: Which = shutil.which,
    aws_session: Callable[[], Any] | None = None,
) -> Report:
    """Look at every tool imagekit drives; missing tools are reported, never raised."""
    checks = [
        *check_docker(capture, which),
        check_packer(capture, which),
        *check_aws(aws_session),
        check_gpu(capture, which),
        check_debootstrap(capture, which),
    ]
    return Report(checks)
