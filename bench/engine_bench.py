"""The daemonless engine against BuildKit: the CPU example built cold and after an app-only change, per engine.

For each engine (docker = BuildKit on the Docker Engine, buildah) the CPU example is copied under a fresh spec name
(its own layer tags, its own package cache mount, which starts empty) and built twice without verify: cold
(`--force`: every step runs, nothing from a layer cache; the bootstrapped base is there already, as in the seed
rows) and after one changed line of app code (only the app layer is built). buildah works in a containers-storage
of its own (overlay, like the host's default store; its cache mounts in a TMPDIR of its own), which starts with just
the base copied in and is removed afterwards with everything in it; the BuildKit side's tags and cache records go as
the other rows' do.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_common import TINY, remove_tags

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "tts"
ENGINES = ("docker", "buildah")


def _workspace(root: Path, name: str, quick: bool) -> tuple[Path, Path, str]:
    """The spec (the CPU example, or a three-layer one with --quick) under `name`; its app file; its image."""
    if quick:
        (root / "app").mkdir(parents=True)
        (root / "app" / "server.py").write_text("print('hi')\n")
        spec = root / "imagekit.yaml"
        spec.write_text(TINY.format(name=name))
        return spec, root / "app" / "server.py", "svc"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".imagekit", "manifests", "__pycache__"))
    spec = root / "imagekit-cpu.yaml"
    text = spec.read_text().replace("name: tts-cpu\n", f"name: {name}\n")
    text = text.replace("repository: imagekit/tts-cpu", f"repository: imagekit-bench/{name}")
    spec.write_text(re.sub(r"(?m)^store: .*$", "store: manifests", text))
    return spec, root / "app" / "server.py", "tts-cpu"


@contextlib.contextmanager
def _own_storage(folder: Path) -> Iterator[list[str]]:
    """buildah, podman and skopeo (through imagekit's storage variables) on a containers-storage of this run, its
    cache mounts in a TMPDIR of this run; yields buildah's argv for it. All of it is removed on the way out."""
    keys = ("STORAGE_DRIVER", "IMAGEKIT_STORAGE_ROOT", "IMAGEKIT_STORAGE_RUNROOT", "TMPDIR")
    saved = {k: os.environ.get(k) for k in keys}
    root, runroot, tmp = folder / "storage", folder / "run", folder / "tmp"
    tmp.mkdir(parents=True)
    os.environ.update(
        STORAGE_DRIVER="overlay", IMAGEKIT_STORAGE_ROOT=str(root), IMAGEKIT_STORAGE_RUNROOT=str(runroot),
        TMPDIR=str(tmp),
    )  # fmt: skip
    tempfile.tempdir = None  # Python's own temp files follow TMPDIR too (read again on next use)
    argv = ["buildah", "--storage-driver=overlay", f"--root={root}", f"--runroot={runroot}"]
    try:
        yield argv
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tempfile.tempdir = None
        subprocess.run([*argv, "rm", "--all"], capture_output=True, check=False, timeout=600)
        subprocess.run([*argv, "rmi", "--all", "--force"], capture_output=True, check=False, timeout=600)
        # containers-storage bind-mounts its overlay folder on itself (a private mount): unmount what is under ours
        for mnt in sorted(_mounts_under(folder), key=len, reverse=True):
            subprocess.run(["umount", mnt], capture_output=True, check=False, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def _mounts_under(folder: Path) -> list[str]:
    prefix = str(folder.resolve()) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p.startswith(prefix)]


def _seed_base(spec: Path, engine: Any, buildah: list[str] | None) -> str:
    """The bootstrapped base in the engine before anything is timed (copied into a new store; else made)."""
    from imagekit.names import base_hash, base_repository
    from imagekit.runners.bootstrap import ensure_base
    from imagekit.spec import load_spec

    boot = load_spec(spec).spec.layers["base"].from_.bootstrap  # type: ignore[union-attr]
    assert boot is not None
    ref = f"{base_repository('base')}:{base_hash(boot)[:16]}"
    if buildah is not None:
        store = f"[overlay@{os.environ['IMAGEKIT_STORAGE_ROOT']}+{os.environ['IMAGEKIT_STORAGE_RUNROOT']}]"
        for src in (f"docker-daemon:{ref}", f"containers-storage:localhost/{ref}"):
            res = subprocess.run(["skopeo", "copy", "--quiet", src, f"containers-storage:{store}localhost/{ref}"],
                                 capture_output=True, text=True, check=False, timeout=900)  # fmt: skip
            if res.returncode == 0:
                break
    base = ensure_base(engine, "base", boot)
    return f"{ref} ({'copied in' if not base.built else f'bootstrapped in {base.seconds:.0f} s'})"


def _build(spec: Path, kind: str, image: str, *, force: bool) -> tuple[float, dict[str, float], list[str]]:
    """`imagekit build --target docker --engine KIND --no-verify [--force]`: wall time, seconds and status per layer."""
    from imagekit.api.build import build

    t0 = time.perf_counter()
    res = build(spec, "docker", [image], force, verify=False, engine_kind=kind)
    wall = time.perf_counter() - t0
    img = res.image(image)
    return wall, {lr.name: lr.seconds for lr in img.layers}, [f"{lr.name}:{lr.status}" for lr in img.layers]


def _engine_run(kind: str, quick: bool, tmp: Path) -> dict[str, Any]:
    """Cold and app-only builds of the example with one engine; the figures."""
    from imagekit.targets.engines import open_engine

    name = f"bench-eng-{kind[:3]}-{uuid.uuid4().hex[:6]}"
    spec, app_file, image = _workspace(tmp / name, name, quick)
    out: dict[str, Any] = {"spec_name": name}
    own = _own_storage(tmp / f"{name}-store") if kind == "buildah" else contextlib.nullcontext(None)
    # BuildKit's cache records are pruned by the time windows of their builds (seed_bench), buildah's go with its store
    windowed = _windows() if kind == "docker" else (lambda fn: fn())
    try:
        with own as buildah:
            engine = open_engine(kind)
            out["base"] = _seed_base(spec, engine, buildah)
            out["load_before"] = round(os.getloadavg()[0], 2)
            cold, cold_layers, cold_status = windowed(lambda: _build(spec, kind, image, force=True))
            app_file.write_text(app_file.read_text() + "\n# benchmark: one changed line\n")
            app, app_layers, app_status = windowed(lambda: _build(spec, kind, image, force=False))
            out["load_after"] = round(os.getloadavg()[0], 2)
            info = engine.inspect(f"imagekit-bench/{name}:latest")
            out["image_bytes"] = info.size if info is not None else None
            if buildah is not None:
                cache = Path(os.environ["TMPDIR"])
                # buildah 1.28 keeps `--mount=type=cache` folders in $TMPDIR/buildah-cache (here: this run's)
                # (not /var/tmp/buildah-cache, which would outlive this run)
                out["cache_mount_in_own_tmpdir"] = (cache / "buildah-cache" / f"imagekit-pkgs-{name}").is_dir()
                out["cache_mount_in_var_tmp"] = Path("/var/tmp/buildah-cache", f"imagekit-pkgs-{name}").exists()
    finally:
        if kind == "docker":
            remove_tags(name)
    version = open_engine(kind).version()
    out.update(
        version=version, cold_s=round(cold, 1), cold_layers_s=cold_layers, cold_status=cold_status,
        app_s=round(app, 1), app_layers_s=app_layers, app_status=app_status,
    )  # fmt: skip
    return out


def _windows() -> Any:
    """seed_bench's windows: the BuildKit records a docker build makes are pruned at the end of bench/run.py."""
    import seed_bench

    return seed_bench._windowed


def bench_buildah_engine(quick: bool) -> dict[str, Any]:
    """buildah ÷ BuildKit on the CPU example: a cold build (ratio) and an app-only rebuild (app_ratio)."""
    import seed_bench

    seed_bench._MARKERS.append("bench-eng-")  # this row's cache mounts are named after its spec names
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-engine-", dir="/var/tmp") as tmp:
        rows = {kind: _engine_run(kind, quick, Path(tmp)) for kind in ENGINES}
    bk, bah = rows["docker"], rows["buildah"]
    return {
        "name": "buildah_engine",
        "ratio": bah["cold_s"] / bk["cold_s"],
        "app_ratio": bah["app_s"] / bk["app_s"],
        "buildkit": bk,
        "buildah": bah,
        "order": "BuildKit first, then buildah (a package mirror or proxy may be warmer for the second)",
        "spec": "tiny (quick)" if quick else "examples/tts/imagekit-cpu.yaml",
        "verify": False,
    }
