"""imagekit benchmarks. Each benchmark prints one JSON line with its `name`, a `ratio` and the raw figures.

    python bench/run.py [--quick] [--json] [--only NAME ...]

The CPU-example ones are here; the seed-scale ones (the GPU example with 4 GiB of weights, a hand-tuned Dockerfile
side by side) are in seed_bench.py, the store ones in store_bench.py, a new node's cold start in cold_start.py,
buildah against BuildKit on the CPU example in engine_bench.py.
They run in the order listed in BENCHES
whatever the order of --only, because the seed ones share one workspace and one cold build. --quick skips the
seed-scale ones (each needs the ~6 GB CUDA build) and shrinks the rest.

Benchmarks measure; they never fail CI. Goals (from the nightly issue) are printed beside each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import DOCKER, TINY, remove_tags

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "examples" / "tts"
IMAGEKIT = [sys.executable, "-m", "imagekit"]
sys.path.insert(0, str(Path(__file__).resolve().parent))
GOALS = {
    "noop_plan": 0.05, "app_rebuild_docker": 0.20, "app_rebuild_ami": 1 / 3, "image_size": 0.65, "jobs": 0.65,
    # issue 13: seed scale
    "seed_app_rebuild": 0.02, "seed_push_app_change": 0.01, "seed_cold_runtime": 0.5,
    "seed_rebuild_warm_cache": 0.25, "seed_image_waste": 0.01, "handtuned_cold": 1.05, "handtuned_size": 1.0,
    "store_resolve_growth": 2.0, "store_list_growth": 12.0,
    # issue 22: zstd pulled by podman, pull to /ready ÷ gzip pulled by Docker
    "cold_start": 0.35,
}  # fmt: skip


def _write_big(path: Path, size: int) -> None:
    # Pseudo-random bytes so nothing below us can shortcut the read (sparse files, compression).
    block = os.urandom(1 << 20)
    with path.open("wb") as fh:
        written = 0
        while written < size:
            n = min(len(block), size - written)
            fh.write(block[:n])
            written += n


def bench_noop_plan(quick: bool) -> dict[str, Any]:
    """Cold plan (weights hashed) vs warm plan (digests from the cache) with a large weights file."""
    from imagekit.digests import DigestCache
    from imagekit.plan import plan
    from imagekit.spec import load_spec

    size = (256 if quick else 2048) * (1 << 20)
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-") as tmp:
        root = Path(tmp)
        (root / "app").mkdir()
        (root / "app" / "server.py").write_text("print('hi')\n")
        weights = root / "weights.bin"
        _write_big(weights, size)
        import hashlib

        h = hashlib.sha256()
        with weights.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        (root / "imagekit.yaml").write_text(
            "version: 1\nname: bench\nlayers:\n  base:\n    from: {docker: debian:bookworm}\n"
            "  app:\n    parent: base\n    copy: [{src: app/, dest: /opt/app}]\n"
            f"    models: [{{src: weights.bin, dest: /opt/w.bin, sha256: '{h.hexdigest()}'}}]\n"
            "images:\n  bench: {leaf: app, targets: [docker]}\n"
        )
        cache_path = root / "digests.json"
        loaded = load_spec(root / "imagekit.yaml")
        # a cold plan reads the weights from disk: write back and drop this file's pages from the page cache
        # (POSIX_FADV_DONTNEED on clean pages needs no root), as after a reboot or on a fresh CI checkout
        page_cache = _drop_page_cache(weights)
        t0 = time.perf_counter()
        plan(loaded, cache=DigestCache(cache_path))
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan(loaded, cache=DigestCache(cache_path))
        warm = time.perf_counter() - t0
    return {
        "name": "noop_plan",
        "ratio": warm / cold,
        "cold_s": cold,
        "warm_s": warm,
        "weights_bytes": size,
        "page_cache_dropped": page_cache,
    }


def _drop_page_cache(path: Path) -> bool:
    """fsync the file, then ask the kernel to forget its cached pages; False where that is not possible."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
NAIVE = Path(__file__).resolve().parent / "naive"


def _run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Run a command to completion; its wall time in seconds (raises with the output tail when it fails)."""
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        tail = (res.stdout + res.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(argv[:6])} ... exited {res.returncode}: " + " | ".join(tail))
    return seconds


def _imagekit(*args: str, env: dict[str, str] | None = None) -> float:
    return _run([*IMAGEKIT, *args], cwd=REPO, env=env)


def _example_copy(dest: Path, name: str) -> Path:
    """The CPU example copied (without scratch or store) under a spec name of its own, so tags never collide."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns(".imagekit", "manifests", "__pycache__"))
    spec = dest / "imagekit-cpu.yaml"
    text = spec.read_text().replace("name: tts-cpu\n", f"name: {name}\n")
    text = text.replace("repository: imagekit/tts-cpu", f"repository: imagekit-bench/{name}")
    # the example's store is the repo's manifests/ (../../manifests): the copy keeps its records to itself
    text = re.sub(r"(?m)^store: .*$", "store: manifests", text)
    spec.write_text(text)
    return spec


def bench_app_rebuild_docker(quick: bool) -> dict[str, Any]:
    """Incremental build after one app file changed vs a full --force build (both without verify)."""
    name = f"bench-app-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-") as tmp:
        root = Path(tmp) / "example"
        if quick:
            (root / "app").mkdir(parents=True)
            (root / "app" / "server.py").write_text("print('hi')\n")
            spec = root / "imagekit.yaml"
            spec.write_text(TINY.format(name=name))
            app_file = root / "app" / "server.py"
        else:
            spec = _example_copy(root, name)
            app_file = root / "app" / "server.py"
        try:
            # warm-up: every layer exists under its hash before the measured runs
            _imagekit("build", "-f", str(spec), "--target", "docker", "--no-verify")
            full = _imagekit("build", "-f", str(spec), "--target", "docker", "--no-verify", "--force")
            app_file.write_text(app_file.read_text() + "\n# benchmark: one changed line\n")
            incremental = _imagekit("build", "-f", str(spec), "--target", "docker", "--no-verify")
        finally:
            remove_tags(name)
    return {
        "name": "app_rebuild_docker",
        "ratio": incremental / full,
        "incremental_s": incremental,
        "full_force_s": full,
        "spec": "tiny (quick)" if quick else "examples/tts/imagekit-cpu.yaml",
        "verify": False,
    }


AMI_SPEC = """\
version: 1
name: {name}
layers:
  base:
    from:
      bootstrap: {{distro: debian, suite: bookworm}}
      ami: {{name: "debian-12-amd64-*", owners: ["136693071363"]}}
    cuda: "none"
  runtime:
    parent: base
    python: "3.11"
  app:
    parent: runtime
    copy: [{{src: app/, dest: /opt/app/app}}]
images:
  svc: {{leaf: app, targets: [docker, ami]}}
verify: {{gpu: optional}}
"""


def bench_app_rebuild_ami(quick: bool) -> dict[str, Any]:
    """Rehearsal (moto EC2 + sshd containers, real packer): `packer build` runs after an app-only change."""
    from imagekit.api.build import build

    name = f"bench-ami-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-") as tmp:
        root = Path(tmp)
        (root / "app").mkdir()
        (root / "app" / "server.py").write_text("print('v1')\n")
        (root / "imagekit.yaml").write_text(AMI_SPEC.format(name=name))
        try:
            t0 = time.perf_counter()
            cold = build(root / "imagekit.yaml", "ami", ["svc"], rehearse=True, verify=False)
            cold_s = time.perf_counter() - t0
            (root / "app" / "server.py").write_text("print('v2')\n")
            t0 = time.perf_counter()
            warm = build(root / "imagekit.yaml", "ami", ["svc"], rehearse=True, verify=False)
            warm_s = time.perf_counter() - t0
        finally:
            remove_tags(name)
    layers = len(warm.images[0].layers)
    built = [lr.name for lr in warm.images[0].layers if lr.status == "built"]
    return {
        "name": "app_rebuild_ami",
        "ratio": warm.layer_builds / layers,
        "layer_builds": f"{warm.layer_builds} of {layers}",
        "packer_builds_cold": cold.layer_builds,
        "packer_builds_after_app_change": warm.layer_builds,
        "built_after_app_change": built,
        "cold_s": cold_s,
        "app_change_s": warm_s,
        "rehearsal": True,
    }


def bench_image_size(quick: bool) -> dict[str, Any]:
    """Our final image vs bench/naive/Dockerfile (one FROM, compilers and pip cache kept, weights before code)."""
    from imagekit.names import base_tag
    from imagekit.spec import Bootstrap

    name = f"bench-size-{uuid.uuid4().hex[:6]}"
    if quick:
        return {"name": "image_size", "ratio": None, "skipped": "needs the full CPU example build; run without --quick"}
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-") as tmp:
        root = Path(tmp) / "example"
        spec = _example_copy(root, name)
        try:
            ours_s = _imagekit("build", "-f", str(spec), "--target", "docker", "--no-verify")
            ours = _image_size(f"imagekit-bench/{name}:latest")
            # the naive build's context: the example plus the same offline torch wheel (hard-linked)
            (root / "wheels").mkdir()
            for whl in Path("/opt/wheels").glob("*.whl"):
                try:
                    os.link(whl, root / "wheels" / whl.name)
                except OSError:
                    shutil.copy2(whl, root / "wheels" / whl.name)
            base = base_tag("base", Bootstrap(distro="debian", suite="bookworm"))
            env = {**os.environ, "DOCKER_BUILDKIT": "1"}
            naive_s = _run(
                [DOCKER, "build", "-f", str(NAIVE / "Dockerfile"), "--build-arg", f"BASE_IMAGE={base}",
                 "--secret", f"id=ca,src={CA_BUNDLE}", "-t", f"imagekit-bench/{name}-naive:latest", str(root)],
                env=env,
            )  # fmt: skip
            naive = _image_size(f"imagekit-bench/{name}-naive:latest")
        finally:
            remove_tags(name)
    return {
        "name": "image_size",
        "ratio": ours / naive,
        "ours_bytes": ours,
        "naive_bytes": naive,
        "ours_build_s": ours_s,
        "naive_build_s": naive_s,
        "naive_dockerfile": "bench/naive/Dockerfile",
    }


def _image_size(ref: str) -> int:
    res = subprocess.run(
        [DOCKER, "image", "inspect", "-f", "{{.Size}}", ref], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise RuntimeError(f"no image {ref}: {res.stderr.strip()}")
    return int(res.stdout.strip())


JOBS_SPEC = """\
version: 1
name: {name}
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
    cuda: "none"
  left:
    parent: base
    python: "3.11"
    requirements: left.txt
  right:
    parent: base
    python: "3.11"
    requirements: right.txt
images:
  left: {{leaf: left, repository: imagekit-bench/{name}-left}}
  right: {{leaf: right, repository: imagekit-bench/{name}-right}}
verify: {{gpu: optional}}
"""
# What each image's own layer does: pip installs from PyPI (network and disk bound, the usual shape of a Python
# layer). CPU-bound layers gain little from --jobs on this 2-core machine shared with other work.
JOBS_PKGS = {
    True: ("six==1.16.0 idna==3.10", "certifi==2024.8.30 urllib3==2.2.3"),
    False: ("numpy==2.1.3 scipy==1.14.1", "pandas==2.2.3 pyarrow==18.0.0"),
}


def bench_jobs(quick: bool) -> dict[str, Any]:
    """`imagekit nightly --jobs 2` vs `--jobs 1` on two independent images (fresh layers each time)."""
    name = f"bench-jobs-{uuid.uuid4().hex[:6]}"
    left, right = JOBS_PKGS[quick]
    times: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-") as tmp:
        try:
            for jobs in (1, 2):
                root = Path(tmp) / f"jobs{jobs}"
                root.mkdir()
                (root / "imagekit.yaml").write_text(JOBS_SPEC.format(name=name))
                # a fresh comment in each lock: new layer hashes and no BuildKit cache hit, as on a real change
                for side, pkgs in (("left", left), ("right", right)):
                    (root / f"{side}.txt").write_text(f"# {uuid.uuid4().hex}\n" + "\n".join(pkgs.split()) + "\n")
                times[jobs] = _imagekit("nightly", "-f", str(root / "imagekit.yaml"), "--target", "docker",
                                        "--jobs", str(jobs), "--json")  # fmt: skip
        finally:
            remove_tags(name)
    return {"name": "jobs", "ratio": times[2] / times[1], "jobs1_s": times[1], "jobs2_s": times[2]}


def _seed(name: str) -> Callable[[bool], dict[str, Any]]:
    """A seed-scale benchmark, run only without --quick (it needs the full CUDA build)."""

    def run(quick: bool) -> dict[str, Any]:
        if quick:
            return {"name": name, "ratio": None, "skipped": "needs the ~6 GB GPU example build; run without --quick"}
        import seed_bench

        fn: Callable[[bool], dict[str, Any]] = getattr(seed_bench, f"bench_{name}")
        return fn(quick)

    return run


def _store(name: str) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        import store_bench

        fn: Callable[[bool], dict[str, Any]] = getattr(store_bench, f"bench_{name}")
        return fn(quick)

    return run


def _buildah_engine(quick: bool) -> dict[str, Any]:
    import engine_bench

    return engine_bench.bench_buildah_engine(quick)


def _cold_start(quick: bool) -> dict[str, Any]:
    import cold_start

    return cold_start.bench_cold_start(quick)


SEED_BENCHES = (
    # the push comes first: it pushes the cold image, then makes the app change seed_app_rebuild times
    "seed_push_app_change", "seed_app_rebuild", "seed_image_waste", "seed_rebuild_warm_cache", "seed_cold_runtime",
    "handtuned_cold", "handtuned_size",
)  # fmt: skip
BENCHES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "noop_plan": bench_noop_plan,
    "app_rebuild_docker": bench_app_rebuild_docker,
    "app_rebuild_ami": bench_app_rebuild_ami,
    "image_size": bench_image_size,
    "jobs": bench_jobs,
    "store_resolve_growth": _store("store_resolve_growth"),
    "store_list_growth": _store("store_list_growth"),
    **{name: _seed(name) for name in SEED_BENCHES},
    "cold_start": _cold_start,
    "buildah_engine": _buildah_engine,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smaller inputs, for a smoke run.")
    parser.add_argument("--json", action="store_true", help="Print only the JSON lines.")
    parser.add_argument("--only", nargs="*", default=None, help="Run only these benchmarks.")
    args = parser.parse_args()
    unknown = sorted(set(args.only or ()) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (benchmarks: {', '.join(BENCHES)})")
    names = [name for name in BENCHES if args.only is None or name in args.only]
    load = os.getloadavg()[0]
    machine = f"{os.cpu_count()} CPUs, load average {load:.2f} at start (figures are wall times unless named cpu_s)"
    try:
        for name in names:
            t0 = time.perf_counter()
            try:
                row = BENCHES[name](args.quick)
            except Exception as exc:  # a benchmark that cannot run says why and the others still run
                row = {"name": name, "ratio": None, "error": f"{type(exc).__name__}: {exc}"}
            _print_row(row, name, args, machine, time.perf_counter() - t0)
    finally:
        if "seed_bench" in sys.modules:
            sys.modules["seed_bench"].cleanup()
    return 0


def _print_row(row: dict[str, Any], name: str, args: argparse.Namespace, machine: str, seconds: float) -> None:
    row["goal"] = GOALS.get(name)
    row["quick"] = args.quick
    row["machine"] = machine
    row["bench_s"] = round(seconds, 1)
    if row.get("ratio") is not None and row["goal"] is not None:
        row["meets_goal"] = row["ratio"] <= row["goal"] + 1e-9
    print(json.dumps(row, sort_keys=True), flush=True)
    if not args.json:
        print(f"  {name}: ratio {row.get('ratio')} (goal <= {row['goal']})", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
