"""A per-store lock so two runs on one store never build the same layer twice or interleave their records."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from imagekit.events import Event, Reporter, silent
from imagekit.paths import cache_dir


def lock_path(store_url: str) -> Path:
    """The lock file of a store (local folder or s3:// URL), kept in the cache folder."""
    key = hashlib.sha256(store_url.encode()).hexdigest()[:16]
    return cache_dir() / "locks" / f"store-{key}.lock"


@contextlib.contextmanager
def store_lock(store_url: str, *, reporter: Reporter = silent, what: str = "nightly") -> Iterator[None]:
    """Hold an exclusive lock on a store; says who holds it and waits when another run has it."""
    path = lock_path(store_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            reporter(Event("info", f"waiting for {holder} to release the lock on {store_url} ({path})"))
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            reporter(Event("info", f"got the lock on {store_url} after {time.monotonic() - t0:.1f}s"))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"{info.get('what', 'a run')} (pid {info.get('pid')} on {info.get('host')})"
    except (OSError, ValueError):
        return "another imagekit run"
