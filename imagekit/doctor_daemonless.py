"""`imagekit doctor --engine buildah`: what the daemonless engine needs here, in a pod or on a host.

buildah, podman and skopeo installed; user namespaces (a non-root user needs them and /etc/subuid); seccomp (the
runtime's default profile blocks the mount and unshare calls buildah makes: `seccomp=unconfined`, or the default
profile plus SYS_ADMIN); the storage driver (overlay on a host, vfs inside a container, given as the flag: the
STORAGE_DRIVER variable alone is not enough, imagekit turns it into `--storage-driver`); the isolation (chroot in
a container); and a real `buildah build` of a FROM scratch Containerfile with the storage this environment gives.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from imagekit.doctor import Capture, Which, _first_line, _probe
from imagekit.doctor_report import Check

BUILD_TIMEOUT = 120.0
POD_FIX = (
    "run the pod with securityContext.seccompProfile.type: Unconfined (or the default profile plus capability "
    "SYS_ADMIN), STORAGE_DRIVER=vfs and BUILDAH_ISOLATION=chroot (docs/ci/tekton.yml)"
)


def in_container(root: Path = Path("/")) -> bool:
    """True inside a container or a Kubernetes pod (the marker files the runtimes write, or the service env)."""
    markers = (root / ".dockerenv", root / "run" / ".containerenv")
    return any(m.exists() for m in markers) or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _status_field(name: str, status: str) -> str:
    m = re.search(rf"^{name}:\s*(\S+)", status, re.MULTILINE)
    return m.group(1) if m else ""


def check_tool(capture: Capture, which: Which, name: str, why: str) -> Check:
    """One of buildah, podman, skopeo: its version, or the apt line."""
    path = which(name)
    version = _first_line(_probe(capture, [path, "--version"])) if path else ""
    if path and version:
        return Check(name, True, version, "", why)
    return Check(name, False, f"{name} is not installed", f"apt-get install {name} (scripts/setup-host.sh)", why)


def check_userns(*, root: bool, proc: Path = Path("/proc")) -> Check:
    """User namespaces: root in a container needs none; any other user needs them and subordinate ids."""
    try:
        limit = int((proc / "sys" / "user" / "max_user_namespaces").read_text().strip())
    except (OSError, ValueError):
        limit = -1
    detail = f"max_user_namespaces={limit}" if limit >= 0 else "max_user_namespaces unknown"
    if root:
        return Check("user namespaces", True, f"{detail}; running as root (chroot isolation needs none)", "",
                     "buildah builds")  # fmt: skip
    user = os.environ.get("USER", str(os.getuid()))
    subuid = Path("/etc/subuid")
    mapped = subuid.is_file() and any(ln.split(":", 1)[0] == user for ln in subuid.read_text().splitlines())
    ok = limit > 0 and mapped
    fix = "" if ok else (f"add `{user}:100000:65536` to /etc/subuid and /etc/subgid and allow user namespaces "
                         "(sysctl user.max_user_namespaces), or run the build step as root in the pod")  # fmt: skip
    return Check("user namespaces", ok, f"{detail}; {user} {'has' if mapped else 'has no'} subordinate ids", fix,
                 "buildah builds")  # fmt: skip


def check_seccomp(*, container: bool, status: str) -> Check:
    """Seccomp: a filter (mode 2) in a container is the runtime's default profile, which blocks buildah's mounts."""
    mode = _status_field("Seccomp", status)
    capeff = int(_status_field("CapEff", status) or "0", 16)
    sys_admin = bool(capeff & (1 << 21))
    if mode in ("", "0"):
        return Check("seccomp", True, "no seccomp filter", "", "buildah builds")
    if not container or sys_admin:
        why = "with CAP_SYS_ADMIN" if sys_admin else "on a host"
        return Check("seccomp", True, f"seccomp mode {mode} {why}", "", "buildah builds")
    return Check("seccomp", False, f"seccomp mode {mode} in a container without SYS_ADMIN", POD_FIX, "buildah builds")


def check_storage(*, container: bool, env: Mapping[str, str], driver_in_use: str, build_ok: bool) -> Check:
    """The storage driver: vfs inside a container (overlay on overlay usually fails), overlay on a host; a
    container where the real build with the driver in use passed is fine as it is."""
    driver = env.get("STORAGE_DRIVER", "")
    isolation = env.get("BUILDAH_ISOLATION", "")
    where = "in a container" if container else "on a host"
    detail = f"{where}: {driver_in_use or 'unknown'} (STORAGE_DRIVER={driver or '(unset)'}"
    detail += f", BUILDAH_ISOLATION={isolation or '(unset)'})"
    ok = build_ok or not container or (driver == "vfs" and isolation == "chroot")
    fix = "" if ok else "set STORAGE_DRIVER=vfs and BUILDAH_ISOLATION=chroot (imagekit passes it as --storage-driver)"
    return Check("storage driver", ok, detail, fix, "buildah builds")


def driver_in_use(capture: Capture, buildah: str, flags: list[str]) -> str:
    """The graph driver buildah opens with these flags (`buildah info`), "" when it cannot say."""
    res = _probe(capture, [buildah, *flags, "info"])
    m = re.search(r'"GraphDriverName":\s*"([^"]+)"', res.output if res is not None else "")
    return m.group(1) if m else ""


def try_buildah(capture: Capture, buildah: str, flags: list[str]) -> Check:
    """Really build a FROM scratch Containerfile with buildah (nothing tagged, nothing left in storage)."""
    with tempfile.TemporaryDirectory(prefix="imagekit-doctor-") as tmp:
        ctx = Path(tmp)
        (ctx / "Containerfile").write_text("FROM scratch\nCOPY probe /imagekit-probe\n", encoding="utf-8")
        (ctx / "probe").write_text("imagekit doctor\n", encoding="utf-8")
        out = ctx / "out"
        argv = [buildah, *flags, "build", "--layers=false", "-f", str(ctx / "Containerfile"),
                "--output", f"type=local,dest={out}", str(ctx)]  # fmt: skip
        res = _probe(capture, argv, timeout=BUILD_TIMEOUT)
        if res is not None and res.ok and (out / "imagekit-probe").is_file():
            return Check("buildah build", True, f"built a FROM scratch image in {res.seconds:.1f}s", "",
                         "buildah builds")  # fmt: skip
        said = [ln.strip() for ln in (res.output if res else "").splitlines() if ln.strip()]
        why = said[-1][:300] if said else f"did not finish within {BUILD_TIMEOUT:.0f}s"
        return Check("buildah build", False, f"`buildah build` failed: {why}", POD_FIX, "buildah builds")


def daemonless_checks(
    capture: Capture,
    which: Which,
    *,
    env: Mapping[str, str] | None = None,
    container: Callable[[], bool] = in_container,
    status: str | None = None,
    build: bool = True,
) -> list[Check]:
    """Every check of the buildah engine, in a stable order."""
    from imagekit.runners.buildah import storage_flags

    env = os.environ if env is None else env
    inside = container()
    if status is None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            status = ""
    checks = [
        check_tool(capture, which, "buildah", "buildah builds"),
        check_tool(capture, which, "podman", "verify with --engine buildah"),
        check_tool(capture, which, "skopeo", "--push with --engine buildah"),
        check_userns(root=os.geteuid() == 0),
        check_seccomp(container=inside, status=status),
    ]
    buildah = which("buildah")
    built = try_buildah(capture, buildah, storage_flags()) if build and buildah else None
    in_use = driver_in_use(capture, buildah, storage_flags()) if buildah else ""
    checks.append(check_storage(container=inside, env=env, driver_in_use=in_use, build_ok=bool(built and built.ok)))
    if built is not None:
        checks.append(built)
    return checks
