"""`imagekit doctor --engine buildah`: what the daemonless engine needs here, in a pod or on a host.

buildah, podman and skopeo installed; user namespaces (a non-root user needs them and /etc/subuid); seccomp (the
runtime's default profile blocks the mount and unshare calls buildah makes: `seccomp=unconfined`, or the default
profile plus SYS_ADMIN); the storage driver (overlay on a host, vfs inside a container, given as the flag: the
STORAGE_DRIVER variable alone is not enough, imagekit turns it into `--storage-driver`); the isolation (chroot in
a container); the container network (two bridges on one subnet); and a real `buildah build` of a FROM scratch
Containerfile with the storage this environment gives.

The network check exists because buildah and podman choose their network backend per store: netavark for an empty
store, CNI for a store that already holds images when it first needs a network (an upgrade rule of
containers/common). Both backends' default bridges (cni-podman0, podman0) are 10.88.0.1/16; once both exist the
host routes the subnet to one of them and every RUN step on the other has no network (apt: "Temporary failure
resolving"). That happened to this project's CI when a test's fresh store picked CNI. scripts/setup-host.sh pins
`network_backend = "netavark"` in containers.conf.d and removes a CNI bridge left behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
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


NETAVARK_DEFAULT = {"podman0": ["10.88.0.0/16"]}  # netavark's built-in "podman" network (no file for it)


def backend_networks(backend: str, etc: Path = Path("/etc")) -> dict[str, list[str]]:
    """The bridges the network backend in use makes and their subnets: netavark's built-in default plus
    /etc/containers/networks/*.json, or the CNI bridge plugins of /etc/cni/net.d/*.conflist."""
    nets: dict[str, list[str]] = {}
    if backend == "netavark":
        nets.update(NETAVARK_DEFAULT)
        for f in sorted((etc / "containers" / "networks").glob("*.json")):
            with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
                data = json.loads(f.read_text(encoding="utf-8"))
                nets[str(data["network_interface"])] = [str(x["subnet"]) for x in data.get("subnets", [])]
    elif backend == "cni":
        for f in sorted((etc / "cni" / "net.d").glob("*.conflist")):
            with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
                for plugin in json.loads(f.read_text(encoding="utf-8")).get("plugins", []):
                    if plugin.get("type") == "bridge" and plugin.get("bridge"):
                        ranges = plugin.get("ipam", {}).get("ranges", [])
                        nets[str(plugin["bridge"])] = [str(r["subnet"]) for rs in ranges for r in rs if "subnet" in r]
    return nets


def _interfaces(addr_json: str) -> list[tuple[str, ipaddress.IPv4Network, str]] | None:
    """(interface, subnet, address) for each global IPv4 address `ip -j -4 addr` lists; None when unreadable."""
    try:
        links = json.loads(addr_json or "null")
    except ValueError:
        return None
    if not isinstance(links, list):
        return None
    found = []
    for link in links:
        if not isinstance(link, dict):
            continue
        for info in link.get("addr_info", []):
            if not isinstance(info, dict) or info.get("family") != "inet" or info.get("scope") == "host":
                continue
            with contextlib.suppress(KeyError, ValueError):
                iface = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
                if isinstance(iface.network, ipaddress.IPv4Network):
                    found.append((str(link.get("ifname", "?")), iface.network, str(iface)))
    return found


def check_bridges(addr_json: str, backend: str = "", networks: Mapping[str, list[str]] | None = None) -> Check:
    """Container RUN steps can reach the network: no two interfaces hold one IPv4 subnet, and no interface but the
    backend's own bridge holds a subnet the backend gives its containers (a CNI bridge left beside netavark's, or a
    host network on 10.88/16): the host would route the containers' replies to the other interface."""
    why = "RUN steps that download"
    networks = networks or {}
    found = _interfaces(addr_json)
    if found is None:
        return Check("container network", True, "`ip -j addr` gave nothing to read; not checked", "", why)
    problems: list[str] = []
    stale: set[str] = set()
    by_net: dict[ipaddress.IPv4Network, set[str]] = {}
    for name, net, _ in found:
        by_net.setdefault(net, set()).add(name)
    for net, names in sorted(by_net.items(), key=str):
        if len(names) > 1:
            problems.append(f"{' and '.join(sorted(names))} both hold {net}")
            stale |= {n for n in names if n not in networks}
    for bridge, subnets in sorted(networks.items()):
        for sub in subnets:
            with contextlib.suppress(ValueError):
                want = ipaddress.ip_network(sub, strict=False)
                for name, net, addr in found:
                    if name != bridge and net.overlaps(want) and len(by_net.get(net, ())) == 1:
                        problems.append(f"{name} holds {addr}, inside {want} that {backend}'s {bridge} uses")
                        stale.add(name)
    if not problems:
        detail = f"{len(by_net)} subnet(s), each on one interface"
        if backend:
            own = ", ".join(f"{b} {s[0]}" for b, s in sorted(networks.items()) if s)
            detail += f"; {backend} bridges: {own}"
        return Check("container network", True, detail, "", why)
    cni = sorted(n for n in stale if n.startswith("cni-"))
    if cni:
        fix = (
            f"`ip link delete {' '.join(cni)}` (a CNI bridge left beside netavark's: a store that held images "
            'before its first network picked CNI) and pin network_backend = "netavark" in '
            "/etc/containers/containers.conf.d/ (scripts/setup-host.sh does both)"
        )
    else:
        fix = "give the container network another subnet (`podman network create --subnet`) or remove the other one"
    return Check("container network", False, "; ".join(problems) + ": containers there get no network", fix, why)


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


def network_check(capture: Capture, which: Which) -> Check:
    """check_bridges on this host: `ip -j -4 addr` and the backend podman picks for the store in use."""
    from imagekit.runners.buildah import storage_flags

    ip, podman = which("ip"), which("podman")
    addrs = _probe(capture, [ip, "-j", "-4", "addr"]) if ip else None
    asked = [podman, *storage_flags(), "info", "--format", "{{.Host.NetworkBackend}}"] if podman else None
    info = _probe(capture, asked) if asked else None
    said = [ln.strip() for ln in info.output.splitlines()] if info is not None and info.ok else []
    backend = next((ln for ln in said if ln in ("netavark", "cni")), "")  # stderr's notices come in the same output
    return check_bridges(addrs.output if addrs is not None and addrs.ok else "", backend, backend_networks(backend))


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
        network_check(capture, which),
    ]
    buildah = which("buildah")
    built = try_buildah(capture, buildah, storage_flags()) if build and buildah else None
    in_use = driver_in_use(capture, buildah, storage_flags()) if buildah else ""
    checks.append(check_storage(container=inside, env=env, driver_in_use=in_use, build_ok=bool(built and built.ok)))
    if built is not None:
        checks.append(built)
    return checks
