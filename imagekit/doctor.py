"""`imagekit doctor`: what this machine has for building and verifying images, each with a fix when missing.

Given a spec, each check is marked needed or not from what the spec's images and targets use (a bootstrap base
needs debootstrap and root, the ami target packer and AWS credentials or the rehearsal's moto, `gpu: required` a
GPU on the docker host), and a needed check that fails makes doctor exit 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagekit.doctor_report import Check, Report
from imagekit.errors import ImagekitError
from imagekit.nightly.staleness import matrix_news
from imagekit.runners import process

if TYPE_CHECKING:
    from imagekit.spec import LoadedSpec

Capture = Callable[..., process.Result]
Which = Callable[[str], str | None]

# Debian's client has BuildKit built in (DOCKER_BUILDKIT=1); clients from 23.0 on need the buildx plugin for it.
DEBIAN_DOCKER = "/usr/bin/docker"
PROBE_TIMEOUT = 15.0
BUILD_TIMEOUT = 120.0  # the BuildKit probe; a busy shared engine can take a while to start a build


def _probe(
    capture: Capture, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float | None = None
) -> process.Result | None:
    """Run a short query; None when the tool is absent, hangs, or cannot start."""
    try:
        return capture(list(argv), env=env, timeout=timeout or PROBE_TIMEOUT)
    except (ImagekitError, OSError):  # ToolMissing, CommandTimeout
        return None


def _first_line(result: process.Result | None) -> str:
    if result is None:
        return ""
    lines = [ln.strip() for ln in result.output.splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _docker_binary(which: Which) -> tuple[str | None, str]:
    """The client BuildKit builds run through, as the build does: $IMAGEKIT_DOCKER_CLI, Debian's, else PATH's."""
    configured = os.environ.get("IMAGEKIT_DOCKER_CLI")
    if configured:
        return (configured if Path(configured).exists() else None), "IMAGEKIT_DOCKER_CLI"
    if Path(DEBIAN_DOCKER).exists():
        return DEBIAN_DOCKER, ""
    return which("docker"), ""


def _major(version: str) -> int:
    m = re.match(r"\d+", version)
    return int(m.group(0)) if m else 0


def try_buildkit(capture: Capture, docker: str) -> tuple[bool, str]:
    """Really build a two-line Dockerfile FROM scratch with BuildKit (no registry pull, nothing left in the engine)."""
    with tempfile.TemporaryDirectory(prefix="imagekit-doctor-") as tmp:
        ctx = Path(tmp)
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY probe /imagekit-probe\n", encoding="utf-8")
        (ctx / "probe").write_text("imagekit doctor\n", encoding="utf-8")
        out = ctx / "out.tar"
        argv = [docker, "build", "--progress=plain", "-f", str(ctx / "Dockerfile"), "-o", f"type=tar,dest={out}"]
        result = _probe(capture, [*argv, str(ctx)], env={"DOCKER_BUILDKIT": "1"}, timeout=BUILD_TIMEOUT)
        if result is None:
            return False, f"`{Path(docker).name} build` did not finish within {BUILD_TIMEOUT:.0f} s"
        try:
            with tarfile.open(out) as tar:
                built = "imagekit-probe" in tar.getnames()
        except (OSError, tarfile.TarError):
            built = False
        if result.ok and built:
            return True, f"built a FROM scratch image with BuildKit in {result.seconds:.1f}s"
        said = [ln.strip() for ln in result.output.splitlines() if ln.strip()]
        errors = [ln for ln in said if "error" in ln.lower() or "requires buildkit" in ln.lower()]
        return False, (errors or said or [f"exit {result.returncode}"])[-1]


def check_docker(capture: Capture, which: Which, *, build: bool = True) -> list[Check]:
    """The Docker Engine (server reachable) and BuildKit (a real build of a tiny Dockerfile, when build is set)."""
    engine_fix = "apt-get install docker.io, then start dockerd (systemctl start docker) and check `docker info`"
    docker, via = _docker_binary(which)
    if docker is None:
        if via:
            engine_fix = f"point IMAGEKIT_DOCKER_CLI at a docker client, or unset it to use {DEBIAN_DOCKER}"
        why = f"IMAGEKIT_DOCKER_CLI={os.environ.get('IMAGEKIT_DOCKER_CLI')} does not exist" if via else "no client"
        return [
            Check("docker engine", False, why, engine_fix, "docker builds and verify"),
            Check("buildkit", False, why, engine_fix, "docker builds"),
        ]
    shown = f"{docker} (IMAGEKIT_DOCKER_CLI)" if via else docker
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
    host = os.environ.get("DOCKER_HOST", "")
    at = f" at {host}" if host else ""
    if server:
        engine = Check(
            "docker engine", True, f"{shown}: client {client}, engine {server}{at}", "", "docker builds and verify"
        )
    else:
        said = [ln.strip() for ln in (result.output if result else "").splitlines() if ln.strip()[:1] not in ("", "{")]
        why = said[0] if said else "the engine did not answer"
        if "permission denied" in why.lower():
            engine_fix = "add your user to the docker group (or run as root): the socket refused you"
        engine = Check("docker engine", False, f"{shown}: {why}", engine_fix, "docker builds and verify")
    if not client:
        return [engine, Check("buildkit", False, f"{shown}: no client version", engine_fix, "docker builds")]
    if _major(client) >= 23:
        # 23.0 and newer clients build with BuildKit only through the buildx plugin
        bx = _probe(capture, [docker, "buildx", "version"])
        if bx is None or not bx.ok:
            fix = f"install docker-buildx (apt-get install docker-buildx) or use {DEBIAN_DOCKER} from docker.io"
            detail = f"docker {client} needs the buildx plugin, which is missing"
            return [engine, Check("buildkit", False, detail, fix, "docker builds")]
    if not server:
        detail = "not tried: the engine does not answer"
        return [engine, Check("buildkit", False, detail, "start the engine first (see docker engine)", "docker builds")]
    if not build:
        return [engine, Check("buildkit", True, f"docker {client} (not tried)", "", "docker builds")]
    ok, detail = try_buildkit(capture, docker)
    fix = (
        ""
        if ok
        else (
            f"BuildKit builds need Docker 18.09+ with DOCKER_BUILDKIT=1 ({DEBIAN_DOCKER} from docker.io has it) "
            "or the buildx plugin; see the engine's log"
        )
    )
    return [engine, Check("buildkit", ok, detail, fix, "docker builds")]


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
    """debootstrap and root, for bases built with no registry (from.bootstrap)."""
    fix = "apt-get install debootstrap (bootstrap bases run it as root)"
    # the build looks in /usr/sbin too: it is not on a non-root user's PATH on Debian
    path = which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if path is None:
        return Check("debootstrap", False, "debootstrap is not on PATH", fix, "bootstrap bases")
    line = _first_line(_probe(capture, [path, "--version"]))
    if os.geteuid() != 0:
        detail = f"{path}: {line or 'version unknown'}; not root: making a bootstrap base needs root"
        fix = "run the first build as root (sudo -E imagekit build ...); later builds reuse the base while tagged"
        return Check("debootstrap", False, detail, fix, "bootstrap bases")
    return Check("debootstrap", True, f"{path}: {line or 'version unknown'} (root)", "", "bootstrap bases")


def check_remote_gpu(capture: Capture, docker: str, host: str) -> Check:
    """A GPU on a remote engine: the engine offers the nvidia runtime (nvidia-container-toolkit)."""
    fix = f"install nvidia-container-toolkit on {host} and restart its dockerd, or set verify.gpu: optional"
    result = _probe(capture, [docker, "info", "--format", "{{json .Runtimes}}"])
    if result is None or not result.ok:
        return Check("gpu", False, f"{host}: `docker info` failed: {_first_line(result)}", fix, "GPU verification")
    if '"nvidia"' in result.output:
        return Check("gpu", True, f"{host}: the engine has the nvidia runtime", "", "GPU verification")
    return Check("gpu", False, f"{host}: the engine has no nvidia runtime", fix, "GPU verification")


def check_matrix(lookup: Callable[[], tuple[list[str] | None, str]] | None = None) -> Check:
    """Torch releases the package index has that the compatibility matrix lacks (one cached look-up, never raises)."""
    news = matrix_news(lookup)  # the same words as the nightly report
    fix = f"regenerate it: {news['regenerate']}" if news["missing"] else ""
    return Check("compat matrix", not news["missing"], news["summary"], fix, "torch pins newer than the matrix")


def check_extra(name: str, extra: str, what: str) -> Check:
    """An optional Python dependency (imagekit.extras), with the pip line that installs it."""
    from imagekit.extras import install_line, missing

    gone = missing(extra)
    if gone:
        return Check(name, False, f"not installed ({', '.join(gone)})", install_line(extra), what)
    return Check(name, True, f"installed (imagekit[{extra}])", "", what)


def _docker_config() -> dict[str, Any]:
    path = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def registry_host(dest: str) -> str:
    """The registry a --push REGISTRY/REPO goes to (Docker Hub when the first part is not a host)."""
    first = dest.split("/", 1)[0]
    if "/" in dest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def check_registry_login(dest: str, config: Mapping[str, Any] | None = None) -> Check:
    """A stored login for the registry of --push (auths, credHelpers or a credsStore in the docker config)."""
    host = registry_host(dest)
    doc = _docker_config() if config is None else config
    names = {host, f"https://{host}", f"http://{host}"}
    if host == "docker.io":
        names |= {"https://index.docker.io/v1/", "index.docker.io"}
    need = f"--push {dest}"
    if names & set(doc.get("auths") or {}):
        return Check("registry login", True, f"{host}: a login is stored", "", need)
    helpers = doc.get("credHelpers") or {}
    helper = next((helpers[n] for n in names if n in helpers), None)
    if helper:
        return Check("registry login", True, f"{host}: credential helper docker-credential-{helper}", "", need)
    if doc.get("credsStore"):
        detail = f"{host}: credential store docker-credential-{doc['credsStore']} (not queried)"
        return Check("registry login", True, detail, "", need)
    if host.split(":", 1)[0] in ("localhost", "127.0.0.1", "::1"):
        return Check("registry login", True, f"{host}: no login stored (a local registry usually needs none)", "", need)
    return Check("registry login", False, f"{host}: no login stored", f"docker login {host}", need)


def check_pull(capture: Capture, which: Which, docker: str | None, compression: str) -> list[Check]:
    """Whether this node's engines can pull layers compressed so (Docker < 23 cannot pull zstd), and unpigz."""
    server = ""
    if docker is not None:
        res = _probe(capture, [docker, "version", "--format", "{{.Server.Version}}"])
        server = _first_line(res) if res is not None and res.ok else ""
    podman = _first_line(_probe(capture, ["podman", "--version"])) if which("podman") else ""
    what = f"{compression} layers"
    zstd = compression.startswith("zstd")
    fix = "pull with podman (>= 4), containerd >= 1.5 or Docker >= 23, or push gzip (push.compression)"
    if not server:
        docker_pull = Check("pull (docker)", False, f"{what}: no docker engine answers", fix, "the image's nodes")
    elif zstd and _major(server) < 23:
        docker_pull = Check("pull (docker)", False, f"{what}: Docker {server} reads gzip layers only", fix, "the nodes")
    else:
        docker_pull = Check("pull (docker)", True, f"{what}: Docker {server}", "", "the image's nodes")
    detail = f"{what}: {podman}" if podman else "podman is not installed"
    pod = Check("pull (podman)", bool(podman), detail, "" if podman else "apt-get install podman", "the nodes")
    unpigz = which("unpigz")
    gz = Check(
        "unpigz",
        unpigz is not None,
        f"{unpigz}: Docker and containerd decompress gzip layers on every core"
        if unpigz
        else "not installed: "
        "Docker decompresses each gzip layer on one core (a 3 GB layer took 39 s here, unpigz 23 s)",
        "" if unpigz else "apt-get install pigz (Docker uses unpigz when it is on its PATH at start)",
        "gzip pulls",
    )
    return [docker_pull, pod, gz]


@dataclass
class Needs:
    """What a spec's images and targets need from this machine: check name -> why (absent: not needed)."""

    why: dict[str, str] = field(default_factory=dict)
    bases: list[str] = field(default_factory=list)  # bootstrap base tags; when all exist, debootstrap is idle

    def add(self, name: str, why: str) -> None:
        """Mark a check needed (the first reason is kept)."""
        self.why.setdefault(name, why)


DAEMONLESS_CHECKS = ("buildah", "podman", "skopeo", "user namespaces", "seccomp", "storage driver", "container network",
                     "buildah build")  # fmt: skip


def needs_of(
    loaded: LoadedSpec | None, *, rehearse: bool = False, push: str | None = None, engine: str = "docker"
) -> Needs:
    """Which checks the spec's targets need; without a spec, what a docker build needs (or a buildah one)."""
    from imagekit.names import base_tag

    needs = Needs()
    for check in DAEMONLESS_CHECKS:
        if engine == "buildah":  # images from buildah, booted on podman, pushed by skopeo: no Docker Engine
            needs.add(check, "--engine buildah")
    if os.environ.get("DOCKER_HOST", "").startswith("ssh://"):
        needs.add("paramiko", f"DOCKER_HOST={os.environ['DOCKER_HOST']}")
    if push:
        needs.add("registry login", f"--push {push}")
    if loaded is None:
        for check in ("docker engine", "buildkit") if engine == "docker" else ():
            needs.add(check, "docker builds")
        return needs
    for name, image in loaded.spec.images.items():
        root_name, root = loaded.chain(name)[0]
        src = root.from_
        boot = src.bootstrap if src is not None else None
        if boot is not None:
            needs.bases.append(base_tag(root_name, boot))
        if "docker" in image.targets:
            for check in ("docker engine", "buildkit") if engine == "docker" else ():
                needs.add(check, f"docker target of {name}")
            if boot is not None:
                needs.add("debootstrap", f"the bootstrap base of {name}")
            if loaded.verify_for(name).gpu == "required":
                needs.add("gpu", f"verify.gpu: required ({name}, docker target)")
        if "ami" in image.targets:
            needs.add("packer", f"ami target of {name}")
            if rehearse or src is None or src.ami is None:
                # no from.ami: such an image's AMIs can only be rehearsed (moto EC2, sshd containers)
                why = "--rehearse" if rehearse else f"ami target of {name} (no from.ami: a rehearsal)"
                needs.add("moto", why)
                needs.add("docker engine", f"{why}: sshd containers stand in for instances")
                needs.add("buildkit", f"{why}: the instance images")
                if boot is not None:
                    needs.add("debootstrap", f"the bootstrap base of {name}")
            else:
                needs.add("aws credentials", f"ami target of {name} on AWS")
    return needs


def diagnose(
    loaded: LoadedSpec | None = None,
    *,
    rehearse: bool = False,
    push: str | None = None,
    capture: Capture = process.capture,
    which: Which = shutil.which,
    aws_session: Callable[[], Any] | None = None,
    build: bool = True,
    engine: str | None = None,
    extra: Sequence[Check] = (),
    index_lookup: Callable[[], tuple[list[str] | None, str]] | None = None,
) -> Report:
    """Look at every tool imagekit drives and mark what the spec needs; missing tools are reported, never raised."""
    # engine buildah (default: the spec's build.engine): `extra` holds doctor_daemonless's checks, no engine needed
    engine = engine or (loaded.spec.build.engine if loaded is not None else "docker")
    needs = needs_of(loaded, rehearse=rehearse, push=push, engine=engine)
    docker_checks = check_docker(capture, which, build=build)
    aws_checks = check_aws(aws_session)
    if loaded is not None:
        # builds use the spec's aws.region; the environment's default does not matter then
        region = loaded.spec.aws.region
        aws_checks = [aws_checks[0], Check("aws region", True, f"{region} (the spec's aws.region)", "", "AMI builds")]
    host = os.environ.get("DOCKER_HOST", "")
    docker, _ = _docker_binary(which)
    if host and not host.startswith("unix://") and docker is not None:
        gpu = check_remote_gpu(capture, docker, host)
    else:
        gpu = check_gpu(capture, which)
    deboot = check_debootstrap(capture, which)
    if needs.bases and docker_checks[0].ok and docker is not None and "debootstrap" in needs.why and engine == "docker":
        present = [t for t in needs.bases if (r := _probe(capture, [docker, "image", "inspect", t])) and r.ok]
        if len(present) == len(needs.bases):
            del needs.why["debootstrap"]
            deboot = replace(deboot, detail=f"{deboot.detail}; not needed now: {', '.join(present)} exists")
    checks = [
        *docker_checks,
        check_packer(capture, which),
        *aws_checks,
        gpu,
        deboot,
        check_extra("moto", "rehearsal", "--rehearse (local moto EC2)"),
        check_extra("paramiko", "ssh", "DOCKER_HOST=ssh://..."),
        check_matrix(index_lookup),  # never needed: a stale matrix is news, not a missing tool
    ]
    if push:
        checks.append(check_registry_login(push))
    compression = loaded.spec.push.compression if loaded is not None else None
    checks += check_pull(capture, which, docker, compression or "gzip")
    if compression:
        skopeo = _first_line(_probe(capture, ["skopeo", "--version"])) if which("skopeo") else ""
        fix = "" if skopeo else "apt-get install skopeo (see scripts/setup-host.sh)"
        checks.append(Check("skopeo", bool(skopeo), skopeo or "not installed", fix, f"push.compression {compression}"))
        needs.add("skopeo", f"push.compression: {compression}")
    checks += [c for c in extra if c.name not in {x.name for x in checks}]
    out = [replace(c, needed=True, needed_for=needs.why[c.name]) if c.name in needs.why else c for c in checks]
    return Report(out, loaded.file if loaded is not None else "")
