"""Store benchmarks: `manifest resolve` and `manifest list` on a store of thousands of really signed records.

The records are made the way `imagekit build` records a build (record_build: in-toto statement, DSSE, ECDSA P-256
signature with the spec's key, written to a folder store); the channel is promoted the way `imagekit promote` does.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

SPEC = """\
version: 1
name: bench-store
layers:
  base:
    from: {docker: "debian:bookworm"}
  app:
    parent: base
    env: {APP: "1"}
images:
  app: {leaf: app}
signing: {key: keys/imagekit.key}
store: manifests
"""
PROMOTIONS = 5  # the channel's log: a few promotions, the same at every store size


def _fill(root: Path, upto: int, done: int) -> list[str]:
    """Record builds done+1..upto in root's store; their manifest ids."""
    from imagekit.manifest.record import record_build
    from imagekit.plan import plan_image
    from imagekit.spec import load_spec

    loaded = load_spec(root / "imagekit.yaml")
    layers = plan_image(loaded, "app", "docker").layers
    ids = []
    for n in range(done + 1, upto + 1):
        finished = f"2026-11-21T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z"
        digest = "sha256:" + hashlib.sha256(f"bench-{n}".encode()).hexdigest()
        rec = record_build(
            loaded, "app", "docker", layers,
            started="2026-11-21T01:00:00Z", finished=finished,
            image_ref=f"localhost:5000/bench-app:{n}", image_digest=digest, base="debian@sha256:" + "ab" * 32,
            report={"passed": True, "failures": []}, builders={"docker": "20.10.24"}, size_bytes=1000,
        )  # fmt: skip
        ids.append(rec.id)
    return ids


def _timed(fn: Any, repeat: int = 3) -> float:
    """Best of `repeat` wall times (the machine is shared: the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _workspace(tmp: str) -> Path:
    from imagekit.manifest.keys import keygen

    root = Path(tmp)
    (root / "imagekit.yaml").write_text(SPEC)
    keygen(root / "keys")
    (root / "imagekit.trust.yaml").write_text("keys:\n  - pem: keys/imagekit.pub\n")
    return root


def _measure(quick: bool) -> dict[str, Any]:
    """One store grown step by step (100, 1,000, 10,000 records), resolve and list timed at each step; run once and
    shared by both benchmarks because filling it is most of the cost (about 16 ms a signed record here)."""
    from imagekit.api.manifest import list_manifests, promote, resolve

    if quick in _MEASURED:
        return _MEASURED[quick]
    sizes = (100, 300) if quick else (100, 1000, 10_000)
    out: dict[str, Any] = {"resolve": {}, "list": {}, "reads": {}, "fill_s": 0.0}
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-store-") as tmp:
        root = _workspace(tmp)
        spec = root / "imagekit.yaml"
        trust = root / "imagekit.trust.yaml"
        done = 0
        last = ""
        for size in sizes:
            t0 = time.perf_counter()
            ids = _fill(root, size, done)
            if done == 0:
                for mid in ids[-PROMOTIONS:]:
                    promote(spec, "app", mid, "prod", who="bench", trust=trust)
                last = ids[-1]
            out["fill_s"] += time.perf_counter() - t0
            done = size
            resolve(spec, "app", "prod", trust=trust)  # warm-up: imports, key parsing
            out["resolve"][size] = _timed(lambda: resolve(spec, "app", "prod", trust=trust), repeat=20)
            out["reads"][size] = _store_calls(lambda: resolve(spec, "app", "prod", trust=trust))
            assert resolve(spec, "app", "prod", trust=trust)["manifest"] == last
            out["list"][size] = _timed(lambda: list_manifests(spec, trust=trust), repeat=3)
            assert len(list_manifests(spec, trust=trust)) == size
    _MEASURED[quick] = out
    return out


_MEASURED: dict[bool, dict[str, Any]] = {}


def _store_calls(fn: Any) -> dict[str, int]:
    """How many objects one call reads from the folder store, and how many keys it lists (the machine-independent
    figure: wall times of a few ms on a shared machine are noise)."""
    from imagekit.manifest.store import LocalBackend

    counts = {"objects_read": 0, "keys_listed": 0}
    read, keys = LocalBackend.read, LocalBackend.keys

    def counted_read(self: LocalBackend, key: str) -> bytes:
        counts["objects_read"] += 1
        return read(self, key)

    def counted_keys(self: LocalBackend, prefix: str) -> list[str]:
        found = keys(self, prefix)
        counts["keys_listed"] += len(found)
        return found

    LocalBackend.read = counted_read  # type: ignore[method-assign]
    LocalBackend.keys = counted_keys  # type: ignore[method-assign]
    try:
        fn()
    finally:
        LocalBackend.read, LocalBackend.keys = read, keys  # type: ignore[method-assign]
    return counts


def bench_store_resolve_growth(quick: bool) -> dict[str, Any]:
    """`resolve` (channel -> verified build) with 10,000 records in the store vs with 100."""
    m = _measure(quick)
    small, big = 100, max(m["resolve"])
    return {
        "name": "store_resolve_growth",
        "ratio": m["resolve"][big] / m["resolve"][small],
        **{f"resolve_at_{n}_s": t for n, t in m["resolve"].items()},
        "records": big,
        **{f"resolve_store_calls_at_{n}": c for n, c in m["reads"].items()},
        "channel_promotions": PROMOTIONS,
        "fill_s": m["fill_s"],
        "signatures": "ecdsa-p256, verified on read",
    }


def bench_store_list_growth(quick: bool) -> dict[str, Any]:
    """`manifest list` (every record read and its signature verified) at 10,000 records vs at 1,000."""
    m = _measure(quick)
    big = max(m["list"])
    small = 100 if quick else 1000
    return {
        "name": "store_list_growth",
        "ratio": m["list"][big] / m["list"][small],
        **{f"list_at_{n}_s": t for n, t in m["list"].items()},
        "records": big,
    }
