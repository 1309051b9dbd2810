"""Cold start of a new node: the GPU example (with multi-GB weights) pushed to a local registry, pulled into an empty
engine, started and waited for /ready, side by side for each way of compressing and pulling it.

    python bench/run.py --only cold_start

Rows: gzip pulled by Docker (a second dockerd with its own data root, exec root, pidfile, socket, containerd and
bridge; with and without unpigz), gzip by podman, zstd by podman, zstd:chunked by podman (partial pulls on), and
the floor: the image's uncompressed layer tars (`docker save`) untarred from local disk. Each pull row splits its
time into download (every blob of the manifest fetched from the same registry in parallel to /dev/null, as the
engines fetch them), unpack (the engine's pull minus that download), start (`run -d` returns) and ready (/ready
answers 200). Also: a light pin change (filelock in a temporary copy of the lock) rebuilt and pushed again, the
bytes the second push added ÷ the image's compressed bytes, and whether the heavy layers' digests stayed.

Everything it makes (registries, the second engine, podman stores, the workspace, BuildKit records) is removed.
The container runs on the host network with the service on a free port: the second dockerd gets a bridge of its
own (never --bridge none, which deleted the main engine's docker0 once) and touches no iptables.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import seed_bench
from bench_common import DOCKER
from seed_bench import GIB, _docker, _start_registry

PODMAN_ULIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=8192:8192"]
OCI = "application/vnd.oci.image.manifest.v1+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sh(argv: list[str], *, env: dict[str, str] | None = None, timeout: int = 3600) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout,
                         env={**os.environ, **(env or {})})  # fmt: skip
    if res.returncode != 0:
        tail = (res.stdout + res.stderr).strip().splitlines()[-10:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {res.returncode}: " + " | ".join(tail))
    return res.stdout


def _manifest(registry: str, repo: str, tag: str) -> dict[str, Any]:
    req = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": f"{OCI}, {DOCKER_V2}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


def _download(registry: str, repo: str, manifest: dict[str, Any]) -> tuple[float, int]:
    """Every blob of the manifest fetched in parallel (3 at a time, as dockerd does) to nowhere: seconds, bytes."""

    def get(digest: str) -> int:
        n = 0
        with urllib.request.urlopen(f"http://{registry}/v2/{repo}/blobs/{digest}", timeout=600) as resp:
            while chunk := resp.read(1 << 20):
                n += len(chunk)
        return n

    digests = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(3) as pool:
        total = sum(pool.map(get, digests))
    return time.perf_counter() - t0, total


def _wait_ready(port: int, timeout: float = 600) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
                if resp.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"/ready did not answer 200 on port {port} within {timeout:.0f}s")


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's ended children and everything they waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a running process plus its ended children (utime, stime, cutime, cstime of /proc/PID/stat):
    a dockerd's pull, with the unpigz and docker-untar processes it ran for it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _service(port: int) -> list[str]:
    return ["python", "-m", "app.server", "--port", str(port)]


# --- the floor -------------------------------------------------------------------------------------------------------


def _untar_floor(ref: str, work: Path) -> dict[str, Any]:
    """`docker save` the image, then untar each layer tar (uncompressed, local disk) in order into one folder."""
    seed_bench._need_disk(2 * seed_bench._size(ref) / 1e9, "the untar floor")
    tar = work / "image.tar"
    _docker("save", "-o", str(tar), ref)
    saved = work / "saved"
    saved.mkdir()
    _sh(["tar", "-xf", str(tar), "-C", str(saved)])
    tar.unlink()
    layers = json.loads((saved / "manifest.json").read_text())[0]["Layers"]
    out = work / "rootfs"
    out.mkdir()
    subprocess.run(["sync"], check=False)
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    for layer in layers:
        _sh(["tar", "-xf", str(saved / layer), "-C", str(out)])
    seconds = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    size = sum((saved / layer).stat().st_size for layer in layers)
    shutil.rmtree(saved, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return {"row": "untar floor", "untar_s": round(seconds, 1), "cpu_s": round(cpu, 1), "uncompressed_bytes": size,
            "layers": len(layers)}  # fmt: skip


def _unmount_under(root: Path) -> None:
    """What a stopped engine left mounted under its folders (its netns, overlays), deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


# --- a second dockerd -----------------------------------------------------------------------------------------------


class EmptyDockerd:
    """A dockerd with its own data root, exec root (its own containerd), pidfile, socket and bridge; no iptables."""

    def __init__(self, root: Path, *, pigz: bool) -> None:
        self.root = root
        self.bridge = f"ikcs{uuid.uuid4().hex[:6]}"
        self.sock = root / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.pigz = pigz
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EmptyDockerd:
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> EmptyDockerd:
        self.root.mkdir(parents=True)
        net = f"10.{200 + os.getpid() % 50}.{int(self.bridge[-2:], 16)}"
        _sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        _sh(["ip", "addr", "add", f"{net}.1/24", "dev", self.bridge])
        _sh(["ip", "link", "set", self.bridge, "up"])
        env = {**os.environ}
        if not self.pigz:
            env["MOBY_DISABLE_PIGZ"] = "1"  # Docker 20.10 decompresses gzip in Go, on one core, as without pigz
        argv = ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "docker.pid"), "-H", self.host, "--bridge", self.bridge,
                "--iptables=false", "--ip-masq=false", "--containerd-namespace", self.bridge,
                "--containerd-plugins-namespace", f"{self.bridge}-plugins"]  # fmt: skip
        log = (self.root / "dockerd.log").open("wb")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        for _ in range(300):
            if subprocess.run([DOCKER, "-H", self.host, "info"], capture_output=True, check=False).returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"the empty dockerd did not start (log: {self.root / 'dockerd.log'})")

    def docker(self, *args: str, timeout: int = 3600) -> str:
        return _sh([DOCKER, "-H", self.host, *args], timeout=timeout)

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            subprocess.run([DOCKER, "-H", self.host, "rm", "-f", "ikcs"], capture_output=True, check=False)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        _unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def _docker_row(label: str, ref: str, work: Path, *, pigz: bool) -> dict[str, Any]:
    port = _free_port()
    with EmptyDockerd(work / f"dockerd-{uuid.uuid4().hex[:6]}", pigz=pigz) as node:
        assert node.proc is not None
        cpu0 = _proc_cpu(node.proc.pid)
        t0 = time.perf_counter()
        node.docker("pull", "-q", ref)
        pull = time.perf_counter() - t0
        cpu = _proc_cpu(node.proc.pid) - cpu0
        t1 = time.perf_counter()
        node.docker("run", "-d", "--name", "ikcs", "--network", "host", ref, *_service(port))
        start = time.perf_counter() - t1
        ready = _wait_ready(port)
    return {"row": label, "pull_s": round(pull, 1), "pull_cpu_s": round(cpu, 1), "start_s": round(start, 1),
            "ready_s": round(ready, 1)}  # fmt: skip


# --- podman --------------------------------------------------------------------------------------------------------


def _podman_row(label: str, ref: str, work: Path, *, partial: bool = False) -> dict[str, Any]:
    root = work / f"podman-{uuid.uuid4().hex[:6]}"
    (root / "root").mkdir(parents=True)
    conf = root / "storage.conf"
    run = Path(tempfile.mkdtemp(prefix="ikcs-", dir="/tmp"))  # podman refuses a runroot over 50 characters
    conf.write_text(
        f'[storage]\ndriver = "overlay"\nrunroot = "{run}"\ngraphroot = "{root / "root"}"\n'
        + ('[storage.options]\npull_options = {enable_partial_images = "true", use_hard_links = "false"}\n'
           if partial else "")
    )  # fmt: skip
    env = {"CONTAINERS_STORAGE_CONF": str(conf)}
    pod = ["podman", "--root", str(root / "root"), "--runroot", str(run), "--storage-driver", "overlay"]
    port = _free_port()
    try:
        cpu0 = _children_cpu()
        t0 = time.perf_counter()
        _sh([*pod, "pull", "-q", "--tls-verify=false", ref], env=env)
        pull = time.perf_counter() - t0
        cpu = _children_cpu() - cpu0
        t1 = time.perf_counter()
        _sh([*pod, "run", "-d", "--name", "ikcs", "--network", "host", *PODMAN_ULIMITS, ref, *_service(port)],
            env=env)  # fmt: skip
        start = time.perf_counter() - t1
        ready = _wait_ready(port)
    finally:
        subprocess.run([*pod, "rm", "-f", "ikcs"], capture_output=True, check=False, env={**os.environ, **env})
        subprocess.run([*pod, "rmi", "-af"], capture_output=True, check=False, env={**os.environ, **env})
        for folder in (root, run):
            _unmount_under(folder)
            shutil.rmtree(folder, ignore_errors=True)
    return {"row": label, "pull_s": round(pull, 1), "pull_cpu_s": round(cpu, 1), "start_s": round(start, 1),
            "ready_s": round(ready, 1)}  # fmt: skip


# --- what the engines' hashing costs here -----------------------------------------------------------------------


def _go_toolchains() -> list[Path]:
    """GOROOTs to measure: IMAGEKIT_BENCH_GO (colon-separated) or Debian's /usr/lib/go-*."""
    listed = os.environ.get("IMAGEKIT_BENCH_GO")
    roots = [Path(x) for x in listed.split(":") if x] if listed else sorted(Path("/usr/lib").glob("go-*"))
    return [r for r in roots if (r / "bin" / "go").is_file()]


def hash_speed() -> dict[str, Any]:
    """SHA-256 on one core, MB/s: Go's crypto/sha256 as each toolchain found builds it (bench/gohash), OpenSSL's
    through hashlib; and the Go each engine here was built with (they hash every layer, compressed and not)."""
    rows: list[dict[str, Any]] = []
    program = Path(__file__).parent / "gohash" / "main.go"
    for root in _go_toolchains():
        with tempfile.TemporaryDirectory(prefix="ikgo-") as cache:
            env = {"GOROOT": str(root), "GO111MODULE": "off", "GOTOOLCHAIN": "local", "GOCACHE": cache,
                   "GOFLAGS": ""}  # fmt: skip
            try:
                rows.append(json.loads(_sh([str(root / "bin" / "go"), "run", str(program)], env=env)))
            except (RuntimeError, ValueError) as exc:
                rows.append({"go": str(root), "error": str(exc)[:300]})
    buf = bytes(1 << 20)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    for _ in range(2048):
        digest.update(buf)
    openssl = 2048 * len(buf) / (time.perf_counter() - t0) / 1e6
    built: dict[str, str] = {}
    for name, argv in {
        "dockerd": [DOCKER, "version", "--format", "{{.Server.GoVersion}}"],
        "podman": ["podman", "version", "--format", "{{.Client.GoVersion}}"],
    }.items():
        try:
            built[name] = _sh(argv).strip()
        except (RuntimeError, OSError) as exc:
            built[name] = f"unknown ({str(exc)[:100]})"
    return {"go": rows, "hashlib_sha256_mb_s": round(openssl), "engines_built_with": built}


# --- pushes ---------------------------------------------------------------------------------------------------------


def _registry(work: Path, name: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    data = work / f"registry-{name}" / "data"
    data.mkdir(parents=True)
    proc, address = _start_registry(data)
    return proc, address, data


def _skopeo_push(ref: str, dest: str, fmt: str, level: int = 3) -> float:
    t0 = time.perf_counter()
    _sh(["skopeo", "copy", "--dest-tls-verify=false", "--format", "oci", "--dest-compress-format", fmt,
         "--dest-compress-level", str(level), f"docker-daemon:{ref}", f"docker://{dest}"])  # fmt: skip
    return time.perf_counter() - t0


def _previous_release(name: str, current: str) -> str | None:
    """The release the index lists right after `current` (pip's own index, newest first), read off the index."""
    out = _sh([sys.executable, "-m", "pip", "index", "versions", name])
    listed = next((ln.split(":", 1)[1] for ln in out.splitlines() if ln.startswith("Available versions:")), "")
    versions = [v.strip() for v in listed.split(",") if v.strip()]
    return versions[versions.index(current) + 1] if current in versions[:-1] else None


def _light_pin(seed: Any, registry: str, repo: str, data: Path, first: dict[str, Any]) -> dict[str, Any]:
    """Change filelock's pin in the workspace's lock (a copy) to the index's previous release, rebuild, push
    again: what moved. filelock is a light pin (no venv_layers group matches it) that torch depends on."""
    lock = seed.spec.parent / "requirements.lock"
    text = lock.read_text()
    pinned = re.search(r"(?m)^filelock==(\S+)$", text)
    if pinned is None:
        return {"error": "the lock has no filelock==VERSION line to change"}
    other = _previous_release("filelock", pinned.group(1))
    if other is None:
        return {"error": f"the index serves no filelock release before {pinned.group(1)}"}
    lock.write_text(text.replace(pinned.group(0), f"filelock=={other}"))
    before = seed_bench._blob_bytes(data)
    res, wall = seed_bench._build(seed, images=[seed.image])
    img = res.image(seed.image)
    t0 = time.perf_counter()
    _docker("tag", img.ref, f"{registry}/{repo}:light")
    _docker("push", f"{registry}/{repo}:light")
    push_s = time.perf_counter() - t0
    _docker("rmi", f"{registry}/{repo}:light", check=False)
    added = seed_bench._blob_bytes(data) - before
    second = _manifest(registry, repo, "light")
    compressed = sum(int(x["size"]) for x in second["layers"]) + int(second["config"]["size"])
    old = [x["digest"] for x in first["layers"]]
    now = [x["digest"] for x in second["layers"]]
    changed = [i for i, (a, b) in enumerate(zip(old, now, strict=False)) if a != b]
    return {
        "rebuild_s": round(wall, 1),
        "statuses": [lr.status for lr in img.layers],
        "second_push_s": round(push_s, 1),
        "second_push_added_bytes": added,
        "image_compressed_bytes": compressed,
        "ratio": added / compressed,
        "layers": len(now),
        "changed_layer_indexes": changed,
        "unchanged_below_first_change": changed[0] if changed else len(now),
    }


def bench_cold_start(quick: bool) -> dict[str, Any]:
    """zstd pulled by podman, pull to /ready ÷ gzip pulled by Docker (and ÷ the untar floor)."""
    if quick:
        return {
            "name": "cold_start",
            "ratio": None,
            "skipped": "needs the ~6 GB GPU example build; run without --quick",
        }
    weights = int(float(os.environ.get("IMAGEKIT_BENCH_COLD_WEIGHTS_GIB", "2")) * GIB)
    seed = seed_bench.seed_workspace(quick, weights=weights)
    # not --force (seed_bench._cold): a forced build's RUNs carry a one-off IMAGEKIT_REBUILD, so the light pin
    # change below could not reuse the heavy RUNs; the spec's name (and package cache) is this run's own
    res, build_s = seed_bench._build(seed, images=[seed.image])
    ref = res.image(seed.image).ref
    cold = {"ref": ref, "size_bytes": seed_bench._size(ref), "build_s": round(build_s, 1)}
    work = Path(tempfile.mkdtemp(prefix="imagekit-bench-cold-", dir="/var/tmp"))
    rows: list[dict[str, Any]] = []
    procs: list[subprocess.Popen[bytes]] = []
    light: dict[str, Any] = {}
    try:
        floor = _untar_floor(ref, work)
        rows.append(floor)
        repo = f"imagekit-bench/{seed.name}"
        # gzip: what `docker push` writes (Docker's gzip); zstd and zstd:chunked through skopeo, as imagekit pushes
        pushes: dict[str, tuple[str, str, Path, float]] = {}
        # zstd:chunked compressed at ~2 MB/s here (skopeo 1.9, a 169 MB image in 92 s): opt in
        chunked = os.environ.get("IMAGEKIT_BENCH_COLD_CHUNKED") == "1"
        for fmt in ("gzip", "zstd", *(("zstd:chunked",) if chunked else ())):
            proc, registry, data = _registry(work, fmt.replace(":", "-"))
            procs.append(proc)
            dest = f"{registry}/{repo}:cold"
            if fmt == "gzip":
                t0 = time.perf_counter()
                _docker("tag", ref, dest)
                _docker("push", dest)
                _docker("rmi", dest, check=False)
                seconds = time.perf_counter() - t0
            else:
                seconds = _skopeo_push(ref, dest, fmt)
            pushes[fmt] = (registry, dest, data, seconds)
        manifests = {fmt: _manifest(reg, repo, "cold") for fmt, (reg, _d, _p, _s) in pushes.items()}
        plan = [
            ("gzip / Docker (unpigz)", "gzip", "docker", True),
            ("gzip / Docker (no unpigz)", "gzip", "docker", False),
            ("gzip / podman", "gzip", "podman", False),
            ("zstd / podman", "zstd", "podman", False),
            ("zstd:chunked / podman (partial pulls on)", "zstd:chunked", "podman", True),
        ]
        for label, fmt, engine, flag in plan:
            if fmt not in pushes:
                rows.append({"row": label, "skipped": "IMAGEKIT_BENCH_COLD_CHUNKED=1 runs it (slow to compress here)"})
                continue
            registry, dest, _data, push_s = pushes[fmt]
            manifest = manifests[fmt]
            download, moved = _download(registry, repo, manifest)
            try:
                if engine == "docker":
                    row = _docker_row(label, dest, work, pigz=flag)
                else:
                    row = _podman_row(label, dest, work, partial=flag)
            except Exception as exc:  # one engine that cannot do it says why; the others still run
                row = {"row": label, "error": f"{type(exc).__name__}: {exc}"[:500]}
            row.update({
                "push_s": round(push_s, 1),
                "bytes_moved": moved,
                "layer_media_types": sorted({x["mediaType"].rsplit(".", 1)[-1] for x in manifest["layers"]}),
                "download_s": round(download, 1),
            })  # fmt: skip
            if "pull_s" in row:
                row["unpack_s"] = round(max(0.0, row["pull_s"] - download), 1)
                row["pull_to_ready_s"] = round(row["pull_s"] + row["start_s"] + row["ready_s"], 1)
            rows.append(row)
        registry, _dest, data, _s = pushes["gzip"]
        light = _light_pin(seed, registry, repo, data, manifests["gzip"])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    by = {r["row"]: r for r in rows}
    zstd = by.get("zstd / podman", {}).get("pull_to_ready_s")
    gz = by.get("gzip / Docker (unpigz)", {}).get("pull_to_ready_s")
    gz_plain = by.get("gzip / Docker (no unpigz)", {}).get("pull_to_ready_s")
    return {
        "name": "cold_start",
        "ratio": round(zstd / gz, 3) if zstd and gz else None,
        "ratio_vs_no_unpigz": round(zstd / gz_plain, 3) if zstd and gz_plain else None,
        "ratio_vs_floor": round(zstd / floor["untar_s"], 2) if zstd else None,
        "rows": rows,
        "light_pin": light,
        "hash_speed": hash_speed(),
        "cores": os.cpu_count(),
        "image_bytes": cold["size_bytes"],
        "build_s": cold["build_s"],
        "weights_bytes": weights,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "versions": {
            "docker": _docker("version", "--format", "{{.Server.Version}}").stdout.strip(),
            "podman": _sh(["podman", "--version"]).strip(),
            "skopeo": _sh(["skopeo", "--version"]).strip(),
        },
    }
