"""Seed-scale benchmarks: the GPU example (CUDA 12.4 wheels, ~6 GB) plus a generated 4 GiB weights file.

All of them share one workspace and one cold build, run in one process side by side (bench/run.py --only ...):
seed_app_rebuild, seed_push_app_change, seed_cold_runtime, seed_rebuild_warm_cache, seed_image_waste,
handtuned_cold, handtuned_size. No registry can be pulled from here, so the example's `from.docker` (NVIDIA's CUDA
image) is swapped for the bootstrapped Debian bookworm base, as the CPU example does; CUDA itself comes from the
nvidia-*-cu12 wheels of the lock, the same bytes a CUDA base would carry for torch. Nothing runs on a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import DOCKER

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "tts"
HANDTUNED = Path(__file__).resolve().parent / "handtuned"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
GIB = 1 << 30
TORCH = "2.5.1"


def _docker(*args: str, check: bool = True, timeout: int = 3600) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([DOCKER, *args], capture_output=True, text=True, check=False, timeout=timeout)
    if check and res.returncode != 0:
        tail = (res.stdout + res.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"docker {' '.join(args[:3])} ... exited {res.returncode}: " + " | ".join(tail))
    return res


def _write_random(path: Path, size: int) -> str:
    """size pseudo-random bytes (nothing compresses or dedupes them); their sha256."""
    h = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 4 << 20))
            fh.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def _diff_ids(ref: str) -> list[str]:
    layers: list[str] = json.loads(_docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", ref).stdout)
    return layers


def _size(ref: str) -> int:
    return int(_docker("image", "inspect", "-f", "{{.Size}}", ref).stdout.strip())


@dataclass
class Seed:
    """The shared workspace: the GPU example copy, its weights and what the benchmarks measured on it."""

    root: Path
    name: str
    spec: Path
    weights_bytes: int
    image: str = "tts-inference"
    figures: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


_SEED: dict[bool, Seed] = {}


def seed_workspace(quick: bool, weights: int | None = None) -> Seed:
    """Copy the GPU example under a unique spec name with a bootstrapped base and a 4 GiB weights file (once;
    `weights` bytes instead when the first caller asks, as the cold-start benchmark does)."""
    if quick in _SEED:
        return _SEED[quick]
    name = f"bench-seed-{uuid.uuid4().hex[:6]}"
    _MARKERS.append(name)
    size = weights or ((64 << 20) if quick else 4 * GIB)
    # the weights file on tmpfs when it has room: the engine's disk (shared) then holds only BuildKit's copies
    shm = Path("/dev/shm")
    where = shm if shm.is_dir() and shutil.disk_usage(shm).free > size + (8 << 30) else None
    if where is None:
        _need_disk(size * 3 / 1e9 + 25, "the seed workspace")
    root = Path(tempfile.mkdtemp(prefix="imagekit-bench-seed-", dir=where))
    shutil.copytree(EXAMPLE, root / "ex", ignore=shutil.ignore_patterns(".imagekit", "manifests", "__pycache__"))
    ex = root / "ex"
    sha = _write_random(ex / "models" / "big.bin", size)
    # IMAGEKIT_BENCH_SEED_RUNTIME=cpu: the CPU example's runtime (torch from /opt/wheels, ~1 GB) under the same
    # 4 GiB of weights, for the weight-layer rows when the engine's disk or time cannot take the CUDA runtime
    cpu = os.environ.get("IMAGEKIT_BENCH_SEED_RUNTIME") == "cpu"
    source = ex / ("imagekit-cpu.yaml" if cpu else "imagekit.yaml")
    text = source.read_text()
    text = text.replace("name: tts\n", f"name: {name}\n").replace("name: tts-cpu\n", f"name: {name}\n")
    text = text.replace("    repository: imagekit/tts-cpu\n", f"    repository: imagekit-bench/{name}\n")
    text = re.sub(r"(?m)^      docker: nvidia/cuda:.*$", "      bootstrap: {distro: debian, suite: bookworm}", text)
    text = re.sub(r"(?m)^store: .*$", "store: manifests", text)
    text = text.replace(
        "    models:\n",
        f'    models:\n      - {{src: models/big.bin, dest: /opt/models/big.bin, sha256: "{sha}"}}\n',
        1,
    )
    # a second image whose leaf is the runtime layer: the runtime benchmarks build and time just that
    text = text.replace(
        "images:\n",
        f"images:\n  rt:\n    leaf: runtime\n    targets: [docker]\n    repository: imagekit-bench/{name}-rt\n",
        1,
    )
    text = text.replace("    budget: {max_growth_pct: 10}\n", f"    repository: imagekit-bench/{name}\n")
    spec = ex / "imagekit.yaml"
    spec.write_text(text)
    seed = Seed(root, name, spec, size, image="tts-cpu" if cpu else "tts-inference")
    _SEED[quick] = seed
    return seed


# BuildKit cache records this process's builds made: (start, end) of each of its docker builds. The engine is
# shared, so cleanup prunes a record only when it was made inside one of these windows and either names this run
# (its cache mount id, its nonce) or is one of the multi-GB snapshots our builds leave (a venv, the weights).
_WINDOWS: list[tuple[str, str]] = []
_MARKERS: list[str] = ["IMAGEKIT_CACHE="]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


def _buildkit_records() -> list[dict[str, Any]]:
    import docker

    records: list[dict[str, Any]] = docker.from_env(timeout=600).df().get("BuildCache") or []
    return records


def _windowed(fn: Any) -> Any:
    start = _now()
    try:
        return fn()
    finally:
        _WINDOWS.append((start, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 2))))


def prune_own_records(*, builder_only: bool = False) -> int:
    """Prune the BuildKit records of this run's builds (see _WINDOWS); bytes reclaimed as the engine reports.
    builder_only: just the install RUN's snapshot, BuildKit's copy of the venv that the exported image holds anyway
    (the layer cache of the other steps, the context and the package cache mount stay)."""
    mine = []
    for rec in _buildkit_records():
        created = str(rec.get("CreatedAt", ""))[:19]
        if rec.get("InUse") or not any(a <= created <= b for a, b in _WINDOWS):
            continue
        desc = str(rec.get("Description", ""))
        named = any(m in desc for m in _MARKERS)
        big = int(rec.get("Size", 0)) >= 256 << 20 and rec.get("Type") in ("regular", "source.local")
        if builder_only:
            if rec.get("Type") == "regular" and "IMAGEKIT_CACHE=" in desc:
                mine.append(str(rec["ID"]))
        elif named or big:
            mine.append(str(rec["ID"]))
    freed = 0
    for rid in mine:
        out = _docker("builder", "prune", "-f", "--filter", f"id={rid}", check=False).stdout
        m = re.search(r"Total reclaimed space: ([0-9.]+)([kMG]?B)", out)
        if m:
            freed += int(float(m.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[m.group(2)])
    return freed


def cleanup() -> None:
    """Remove every image, file and cache the seed benchmarks made (only theirs: names carry the workspace's)."""
    for seed in _SEED.values():
        _remove_images(seed)
        shutil.rmtree(seed.root, ignore_errors=True)
    if _WINDOWS:
        prune_own_records()
    _SEED.clear()


def _remove_images(seed: Seed) -> None:
    out = _docker("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
    mine = [ref for ref in out if seed.name in ref]
    if mine:
        _docker("rmi", "-f", *mine, check=False)


def _free_gb() -> float:
    return shutil.disk_usage("/var/lib/docker" if Path("/var/lib/docker").exists() else "/").free / 1e9


def _need_disk(gb: float, what: str) -> None:
    """Refuse to start a step that would fill the engine's disk (shared with others): say so in the row instead."""
    free = _free_gb()
    if free < gb + 5:
        raise RuntimeError(f"{what} needs about {gb:.0f} GB and {free:.0f} GB are free (5 GB kept for others)")


def _build(
    seed: Seed, *, images: list[str] | None = None, force: bool = False, force_layers: tuple[str, ...] = ()
) -> tuple[Any, float]:
    """imagekit build (docker, no verify) of the workspace; the result and its wall time."""
    from imagekit.api.build import build

    t0 = time.perf_counter()
    res = _windowed(lambda: build(seed.spec, "docker", images, force, verify=False, force_layers=force_layers))
    return res, time.perf_counter() - t0


def _cold(seed: Seed) -> dict[str, Any]:
    """The cold build of the whole image (base bootstrapped already), timed per layer; once per workspace."""
    if "cold" in seed.figures:
        return dict(seed.figures["cold"])
    # --force: every step runs again (the base's apt step is the same text in every GPU-example build), as the
    # hand-tuned build runs with --no-cache; the package cache mount is the spec's own and starts empty
    _need_disk(seed.weights_bytes * 2 / 1e9 + 17, "the cold build")
    res, wall = _build(seed, images=[seed.image], force=True)
    prune_own_records(builder_only=True)  # ~6 GB nobody needs once the runtime image holds its venv
    img = res.image(seed.image)
    seed.figures["cold"] = {
        "wall_s": wall,
        "layers_s": {lr.name: lr.seconds for lr in img.layers},
        "statuses": [lr.status for lr in img.layers],
        "ref": img.ref,
        "runtime_tag": img.layers[1].tag,
        "base_tag": img.layers[0].tag,
        "size_bytes": _size(img.ref),
    }
    return dict(seed.figures["cold"])


def _app_change(seed: Seed) -> dict[str, Any]:
    """One line of app code changed, then an incremental build; once per workspace."""
    if "app_change" in seed.figures:
        return dict(seed.figures["app_change"])
    cold = _cold(seed)
    before = _diff_ids(cold["ref"])
    server = seed.spec.parent / "app" / "server.py"
    server.write_text(server.read_text() + "\n# benchmark: one changed line\n")
    res, wall = _build(seed, images=[seed.image])
    img = res.image(seed.image)
    after = _diff_ids(img.ref)
    parent = _diff_ids(cold["runtime_tag"])
    # weight layers: the app layer's COPYs of the model files, which the Dockerfile puts first, right on the parent,
    # in the spec's order (big.bin, then tts.pt)
    models = [seed.spec.parent / "models" / "big.bin", seed.spec.parent / "models" / "tts.pt"]
    weights_before = before[len(parent) : len(parent) + len(models)]
    weights_after = after[len(parent) : len(parent) + len(models)]
    changed = [i for i, (a, b) in enumerate(zip(weights_before, weights_after, strict=True)) if a != b]
    seed.figures["app_change"] = {
        "wall_s": wall,
        "statuses": [lr.status for lr in img.layers],
        "ref": img.ref,
        "weight_layers": len(weights_after),
        "weight_layers_changed": len(changed),
        "weights_bytes_rewritten": sum(models[i].stat().st_size for i in changed),
        "image_layers_changed": sum(1 for a, b in zip(before, after, strict=False) if a != b),
    }
    return dict(seed.figures["app_change"])


def bench_seed_app_rebuild(quick: bool) -> dict[str, Any]:
    """App-only rebuild ÷ cold build of the GPU example with 4 GiB of weights (no verify)."""
    seed = seed_workspace(quick)
    cold = _cold(seed)
    change = _app_change(seed)
    return {
        "name": "seed_app_rebuild",
        "ratio": change["wall_s"] / cold["wall_s"],
        "cold_s": cold["wall_s"],
        "cold_layers_s": cold["layers_s"],
        "app_rebuild_s": change["wall_s"],
        "statuses_after_app_change": change["statuses"],
        "weights_bytes": seed.weights_bytes,
        "weight_layers": change["weight_layers"],
        "weight_layers_changed": change["weight_layers_changed"],
        "weights_bytes_rewritten": change["weights_bytes_rewritten"],
        "image_bytes": cold["size_bytes"],
        "verify": False,
    }


# --- push ----------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_registry(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's docker-registry on 127.0.0.1 with its own config (no auth) and storage, as the tests start it."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    port = _free_port()
    config = data.parent / "registry.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {data}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("docker-registry did not start")


def _blob_bytes(data: Path) -> int:
    blobs = data / "docker" / "registry" / "v2" / "blobs"
    return sum(p.stat().st_size for p in blobs.rglob("data") if p.is_file()) if blobs.is_dir() else 0


def _push(ref: str, dest: str) -> float:
    t0 = time.perf_counter()
    _docker("tag", ref, dest)
    _docker("push", dest)
    seconds = time.perf_counter() - t0
    _docker("rmi", dest, check=False)
    return seconds


def _compressed_bytes(registry: str, repo: str, tag: str) -> int:
    req = urllib.request.Request(
        f"http://{registry}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        manifest = json.loads(resp.read())
    return int(manifest["config"]["size"]) + sum(int(x["size"]) for x in manifest["layers"])


def bench_seed_push_app_change(quick: bool) -> dict[str, Any]:
    """Push the cold image, change app code, push again: bytes the 2nd push uploaded ÷ the image's compressed bytes."""
    seed = seed_workspace(quick)
    if "app_change" in seed.figures:
        # the push must see the image before the change: build it again from the original code for a fair first push
        raise RuntimeError("run seed_push_app_change before seed_app_rebuild in one process (run.py orders them)")
    cold = _cold(seed)
    _need_disk(cold["size_bytes"] * 0.8 / 1e9, "the registry's copy of the image")
    data = Path(tempfile.mkdtemp(prefix="imagekit-bench-registry-")) / "data"
    data.mkdir(parents=True)
    proc, registry = _start_registry(data)
    repo = f"imagekit-bench/{seed.name}"
    try:
        first_s = _push(cold["ref"], f"{registry}/{repo}:first")
        first_bytes = _blob_bytes(data)
        compressed = _compressed_bytes(registry, repo, "first")
        change = _app_change(seed)
        second_s = _push(change["ref"], f"{registry}/{repo}:second")
        second_bytes = _blob_bytes(data) - first_bytes
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data.parent, ignore_errors=True)
    return {
        "name": "seed_push_app_change",
        "ratio": second_bytes / compressed,
        "second_push_uploaded_bytes": second_bytes,
        "first_push_uploaded_bytes": first_bytes,
        "image_compressed_bytes": compressed,
        "first_push_s": first_s,
        "second_push_s": second_s,
        "registry": "Debian docker-registry (distribution 2.8) on 127.0.0.1; uploaded = new blob bytes in its storage",
    }


# --- the runtime layer ---------------------------------------------------------------------------------------------

PLAIN = """\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
USER root
# the same work a user would write by hand: the interpreter from apt, a venv, `pip install -r lock`
RUN --mount=type=secret,id=ca --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \\
    echo {nonce} && apt-get update -q && apt-get install -y -q --no-install-recommends python3.11 python3.11-venv \\
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv \\
    && PIP_CERT=/run/secrets/ca /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements.lock \\
       torch=={torch}
"""


def bench_seed_cold_runtime(quick: bool) -> dict[str, Any]:
    """The runtime layer from an empty cache: imagekit (uv, cache mount) ÷ plain `pip install -r lock`, same base."""
    seed = seed_workspace(quick)
    cold = _cold(seed)
    ours = cold["layers_s"]["runtime"]
    ctx = seed.root / "plain"
    ctx.mkdir(exist_ok=True)
    shutil.copy2(seed.spec.parent / "requirements.lock", ctx / "requirements.lock")
    (ctx / "Dockerfile").write_text(PLAIN.format(nonce=seed.name, torch=TORCH))
    tag = f"imagekit-bench/{seed.name}-plain:latest"
    _need_disk(6, "the plain pip build")
    t0 = time.perf_counter()
    res = _windowed(lambda: subprocess.run(
        [DOCKER, "build", "--no-cache", "--build-arg", f"BASE_IMAGE={cold['base_tag']}",
         "--secret", f"id=ca,src={CA_BUNDLE}", "-t", tag, str(ctx)],
        env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True, text=True, check=False,
    ))  # fmt: skip
    plain = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError("plain pip build failed: " + " | ".join((res.stdout + res.stderr).splitlines()[-10:]))
    plain_size = _size(tag) - _size(cold["base_tag"])
    _docker("rmi", tag, check=False)
    prune_own_records()  # its multi-GB venv snapshot: the hand-tuned build comes next
    return {
        "name": "seed_cold_runtime",
        "ratio": ours / plain,
        "imagekit_runtime_s": ours,
        "plain_pip_s": plain,
        "plain_pip_layer_bytes": plain_size,
        "installer": "uv (pinned) with a BuildKit cache mount, empty at the start",
    }


def bench_seed_rebuild_warm_cache(quick: bool) -> dict[str, Any]:
    """`build --force` of the runtime layer with warm caches ÷ its cold build."""
    seed = seed_workspace(quick)
    cold = _cold(seed)
    res, _ = _build(seed, images=["rt"], force_layers=("runtime",))
    img = res.image("rt")
    runtime = next(lr for lr in img.layers if lr.name == "runtime")
    assert runtime.status == "built", runtime
    return {
        "name": "seed_rebuild_warm_cache",
        "ratio": runtime.seconds / cold["layers_s"]["runtime"],
        "warm_force_s": runtime.seconds,
        "cold_s": cold["layers_s"]["runtime"],
        "statuses": [lr.status for lr in img.layers],
    }


# --- waste ---------------------------------------------------------------------------------------------------------


def image_waste(ref: str) -> dict[str, int]:
    """Bytes stored in more than one layer (as dive counts wasted space): every copy of a path that a later layer
    overwrites or deletes. Streams `docker save`, so a 10 GB image needs no disk."""
    proc = subprocess.Popen([DOCKER, "save", ref], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    per_layer: dict[str, dict[str, int]] = {}
    whiteouts: dict[str, set[str]] = {}
    order: list[str] = []
    with tarfile.open(fileobj=proc.stdout, mode="r|") as outer:
        for member in outer:
            if member.name.endswith("/layer.tar") and member.isfile():
                files: dict[str, int] = {}
                gone: set[str] = set()
                fh = outer.extractfile(member)
                assert fh is not None
                with tarfile.open(fileobj=fh, mode="r|") as inner:
                    for m in inner:
                        folder, _, base = m.name.rpartition("/")
                        if base == ".wh..wh..opq":  # an opaque folder: everything below it from lower layers
                            gone.add(folder)
                        elif base.startswith(".wh."):
                            gone.add(f"{folder}/{base[4:]}" if folder else base[4:])
                        elif m.isfile():
                            files[m.name] = m.size
                per_layer[member.name] = files
                whiteouts[member.name] = gone
            elif member.name == "manifest.json":
                fh = outer.extractfile(member)
                assert fh is not None
                order = json.loads(fh.read())[0]["Layers"]
    proc.wait()
    if not order:
        raise RuntimeError(f"docker save {ref}: no manifest.json")
    seen: dict[str, int] = {}  # path -> size of its live copy so far
    wasted = total = 0
    for layer in order:
        for path in whiteouts.get(layer, set()):
            hidden = [p for p in seen if p == path or p.startswith(path + "/")]
            for p in hidden:
                wasted += seen.pop(p)
        for path, size in per_layer.get(layer, {}).items():
            total += size
            if path in seen:
                wasted += seen[path]
            seen[path] = size
    return {"wasted_bytes": wasted, "stored_file_bytes": total}


def bench_seed_image_waste(quick: bool) -> dict[str, Any]:
    """Bytes in more than one layer of the final image ÷ the image's bytes."""
    seed = seed_workspace(quick)
    cold = _cold(seed)
    ref = seed.figures.get("app_change", cold)["ref"]
    waste = image_waste(ref)
    size = _size(ref)
    return {"name": "seed_image_waste", "ratio": waste["wasted_bytes"] / size, **waste, "image_bytes": size}


# --- hand-tuned ----------------------------------------------------------------------------------------------------


def _handtuned(seed: Seed) -> dict[str, Any]:
    if "handtuned" in seed.figures:
        return dict(seed.figures["handtuned"])
    cold = _cold(seed)
    from imagekit.names import base_tag
    from imagekit.spec import Bootstrap

    text = (HANDTUNED / "Dockerfile").read_text()
    # a cache of its own, empty at the start, as imagekit's is for the benchmark's fresh spec name
    text = text.replace("id=handtuned-uv", f"id=handtuned-{seed.name}")
    text = text.replace("    python3.11 -m venv /opt/venv", f"    echo {seed.name} && python3.11 -m venv /opt/venv", 1)
    assert seed.name in text, "bench/handtuned/Dockerfile changed: the venv line is where the run's marker goes"
    dockerfile = seed.root / "handtuned.Dockerfile"
    dockerfile.write_text(text)
    (seed.root / "handtuned.Dockerfile.dockerignore").write_text("**/__pycache__\n.imagekit\nmanifests\n")
    tag = f"imagekit-bench/{seed.name}-handtuned:latest"
    base = base_tag("base", Bootstrap(distro="debian", suite="bookworm"))
    # the imagekit images are measured: give their disk back before the second 10 GB image
    _remove_images(seed)
    prune_own_records()
    _need_disk(seed.weights_bytes * 2 / 1e9 + 17, "the hand-tuned build")
    t0 = time.perf_counter()
    res = _windowed(lambda: subprocess.run(
        [DOCKER, "build", "--no-cache", "-f", str(dockerfile), "--build-arg", f"BASE_IMAGE={base}",
         "--secret", f"id=ca,src={CA_BUNDLE}", "-t", tag, str(seed.spec.parent)],
        env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True, text=True, check=False,
    ))  # fmt: skip
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError("hand-tuned build failed: " + " | ".join((res.stdout + res.stderr).splitlines()[-10:]))
    seed.figures["handtuned"] = {"s": seconds, "bytes": _size(tag), "imagekit_s": cold["wall_s"],
                                 "imagekit_bytes": cold["size_bytes"]}  # fmt: skip
    _docker("rmi", tag, check=False)
    return dict(seed.figures["handtuned"])


def bench_handtuned_cold(quick: bool) -> dict[str, Any]:
    """imagekit's cold build ÷ bench/handtuned/Dockerfile's cold build, same payload, same base, same run."""
    h = _handtuned(seed_workspace(quick))
    return {"name": "handtuned_cold", "ratio": h["imagekit_s"] / h["s"], "imagekit_cold_s": h["imagekit_s"],
            "handtuned_cold_s": h["s"], "handtuned": "bench/handtuned/Dockerfile"}  # fmt: skip


def bench_handtuned_size(quick: bool) -> dict[str, Any]:
    """imagekit's image bytes ÷ the hand-tuned image's bytes."""
    h = _handtuned(seed_workspace(quick))
    return {"name": "handtuned_size", "ratio": h["imagekit_bytes"] / h["bytes"], "imagekit_bytes": h["imagekit_bytes"],
            "handtuned_bytes": h["bytes"], "handtuned": "bench/handtuned/Dockerfile"}  # fmt: skip
