"""imagekit benchmarks on the CPU example. Each benchmark prints one JSON line with a `ratio` and raw figures.

    python bench/run.py [--quick] [--json] [--only NAME ...]

Benchmarks measure; they never fail CI. Goals (from the nightly issue) are printed beside each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "examples" / "tts"
IMAGEKIT = [sys.executable, "-m", "imagekit"]
GOALS = {"noop_plan": 0.05, "app_rebuild_docker": 0.20, "app_rebuild_ami": 1 / 3, "image_size": 0.65, "jobs": 0.65}


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
        # drop the page cache's advantage as far as we can without root tricks: the cold run reads the file
        t0 = time.perf_counter()
        plan(loaded, cache=DigestCache(cache_path))
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan(loaded, cache=DigestCache(cache_path))
        warm = time.perf_counter() - t0
    return {"name": "noop_plan", "ratio": warm / cold, "cold_s": cold, "warm_s": warm, "weights_bytes": size}


BENCHES: dict[str, Callable[[bool], dict[str, Any]]] = {"noop_plan": bench_noop_plan}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smaller inputs, for a smoke run.")
    parser.add_argument("--json", action="store_true", help="Print only the JSON lines.")
    parser.add_argument("--only", nargs="*", default=None, help="Run only these benchmarks.")
    args = parser.parse_args()
    names = args.only or list(BENCHES)
    for name in names:
        try:
            row = BENCHES[name](args.quick)
        except Exception as exc:  # a benchmark that cannot run says why and the others still run
            row = {"name": name, "ratio": None, "error": f"{type(exc).__name__}: {exc}"}
        row["goal"] = GOALS.get(name)
        row["quick"] = args.quick
        if row.get("ratio") is not None and row["goal"] is not None:
            row["meets_goal"] = row["ratio"] <= row["goal"] + 1e-9
        print(json.dumps(row, sort_keys=True), flush=True)
        if not args.json:
            print(f"  {name}: ratio {row.get('ratio')} (goal <= {row['goal']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
