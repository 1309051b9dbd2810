"""RUN steps under buildah keep their network whichever store ran first.

buildah and podman choose a network backend per store: netavark for an empty store, CNI for one that already holds
images when it first needs a network. Both default bridges are 10.88.0.1/16, and once CNI's cni-podman0 exists
beside netavark's podman0 the host routes the subnet to one of them: RUN steps on the other get "Temporary failure
resolving". That failed this project's CI (a test's fresh store, seeded with a base before its first build, picked
CNI; the buildah builds after it could not apt-get). scripts/setup-host.sh pins netavark; `imagekit doctor --engine
buildah` says when the bridges clash. The unit tests feed the check recorded `ip -j -4 addr` shapes; the real test
does what the CI did: a fresh store seeded with an image, a RUN that resolves a name in it, then one in the main
store.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import require_tool

from imagekit.doctor_daemonless import backend_networks, check_bridges


def _addr(*links: tuple[str, str, int]) -> str:
    """`ip -j -4 addr` output: one entry per (interface, address, prefix length)."""
    out = [{"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]}]
    out += [{"ifname": n, "addr_info": [{"family": "inet", "local": a, "prefixlen": p, "scope": "global"}]}
            for n, a, p in links]  # fmt: skip
    return json.dumps(out)


def test_a_cni_bridge_beside_netavarks_is_caught_before_it_takes_the_network() -> None:
    netavark = {"podman0": ["10.88.0.0/16"]}
    # what this host had after the failing CI: cni-podman0 left up, podman0 made by the next netavark RUN
    both = check_bridges(_addr(("eth0", "192.0.2.2", 24), ("cni-podman0", "10.88.0.1", 16),
                               ("podman0", "10.88.0.1", 16)), "netavark", netavark)  # fmt: skip
    assert not both.ok
    assert "cni-podman0 and podman0 both hold 10.88.0.0/16" in both.detail
    assert "ip link delete cni-podman0" in both.fix and "netavark" in both.fix
    # between builds podman0 is gone and only the CNI bridge holds the subnet: the next RUN would clash
    latent = check_bridges(_addr(("eth0", "192.0.2.2", 24), ("cni-podman0", "10.88.0.1", 16)), "netavark", netavark)
    assert not latent.ok and "cni-podman0 holds 10.88.0.1/16" in latent.detail and "podman0" in latent.detail
    # a host network inside the containers' subnet is the same trouble, with another fix
    lan = check_bridges(_addr(("eth0", "10.88.5.7", 24)), "netavark", netavark)
    assert not lan.ok and "podman network create --subnet" in lan.fix
    # the backend's own bridge, docker0 and the uplink: fine
    fine = check_bridges(_addr(("eth0", "192.0.2.2", 24), ("docker0", "172.17.0.1", 16),
                               ("podman0", "10.88.0.1", 16)), "netavark", netavark)  # fmt: skip
    assert fine.ok, fine.detail
    assert check_bridges("", "netavark", netavark).ok  # nothing to read: said, not failed
    assert "not checked" in check_bridges("not json").detail


def test_the_backends_bridges_are_read_from_their_config(tmp_path: Path) -> None:
    nets = tmp_path / "containers" / "networks"
    nets.mkdir(parents=True)
    (nets / "build.json").write_text(json.dumps({"network_interface": "podman3",
                                                 "subnets": [{"subnet": "10.89.2.0/24"}]}))  # fmt: skip
    (nets / "broken.json").write_text("{")
    assert backend_networks("netavark", tmp_path) == {"podman0": ["10.88.0.0/16"], "podman3": ["10.89.2.0/24"]}
    cni = tmp_path / "cni" / "net.d"
    cni.mkdir(parents=True)
    (cni / "87-podman-bridge.conflist").write_text(json.dumps({"plugins": [
        {"type": "bridge", "bridge": "cni-podman0", "ipam": {"ranges": [[{"subnet": "10.88.0.0/16"}]]}},
        {"type": "portmap"}]}))  # fmt: skip
    assert backend_networks("cni", tmp_path) == {"cni-podman0": ["10.88.0.0/16"]}
    assert backend_networks("", tmp_path) == {}


def _sh_getent_tar(dest: Path) -> Path:
    """A root filesystem of the host's sh, getent and the C library they need: enough for a RUN that resolves."""
    files = {
        "/bin/sh": "bin/sh", "/usr/bin/getent": "usr/bin/getent", "/etc/nsswitch.conf": "etc/nsswitch.conf",
        "/lib/x86_64-linux-gnu/libc.so.6": "lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2": "lib64/ld-linux-x86-64.so.2",
    }  # fmt: skip
    with tarfile.open(dest, "w") as tar:
        for src, name in files.items():
            tar.add(str(Path(src).resolve()), arcname=name)
    return dest


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


@pytest.mark.buildah
def test_a_fresh_seeded_store_leaves_every_store_its_network(tmp_path: Path) -> None:
    from imagekit.api.doctor import doctor

    buildah, podman, skopeo = require_tool("buildah"), require_tool("podman"), require_tool("skopeo")
    rootfs = _sh_getent_tar(tmp_path / "rootfs.tar")
    (tmp_path / "Containerfile").write_text("FROM localhost/ik-nettest:1\nRUN getent hosts deb.debian.org\n")
    runroot = Path(tempfile.mkdtemp(prefix="ik-run-"))  # podman refuses a runroot over 50 characters
    fresh = [f"--root={tmp_path / 'storage'}", f"--runroot={runroot}", "--storage-driver=vfs"]
    tag = f"localhost/ik-nettest-{uuid.uuid4().hex[:8]}:1"
    try:
        # the image into the host's store, then copied into the fresh one with skopeo, as tests seed a base: the
        # fresh store holds an image before it first needs a network (podman import there would pick a backend first)
        imported = _run([podman, "import", str(rootfs), "localhost/ik-nettest:1"])
        assert imported.returncode == 0, imported.stdout + imported.stderr
        seeded = _run([skopeo, "copy", "--quiet", "containers-storage:localhost/ik-nettest:1",
                       f"containers-storage:[vfs@{tmp_path / 'storage'}+{runroot}]localhost/ik-nettest:1"])  # fmt: skip
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        for store in (fresh, []):  # the fresh store first, as in the CI that failed; then the host's own store
            built = _run([buildah, *store, "build", "--layers=false", "--pull=never", "-t", tag,
                          "-f", str(tmp_path / "Containerfile"), str(tmp_path)])  # fmt: skip
            assert built.returncode == 0, f"RUN had no network in store {store or 'default'}:\n{built.stdout[-2000:]}"
            assert "deb.debian.org" in built.stdout
            backend = _run([podman, *store, "info", "--format", "{{.Host.NetworkBackend}}"])
            assert backend.stdout.strip().splitlines()[-1] == "netavark", backend.stdout + backend.stderr
        checks = {c.name: c for c in doctor(engine="buildah").checks}
        assert checks["container network"].ok, checks["container network"].detail
    finally:
        for store in (fresh, []):
            _run([podman, *store, "rmi", "--force", tag, "localhost/ik-nettest:1"])
        shutil.rmtree(runroot, ignore_errors=True)
