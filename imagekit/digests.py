"""sha256 of files, with a cache keyed by (path, size, mtime_ns, inode) so multi-GB weights are read once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
from pathlib import Path

from imagekit.fsutil import atomic_write
from imagekit.paths import cache_dir

CHUNK = 4 * 1024 * 1024
CACHE_MIN_BYTES = 1024 * 1024  # small files are cheaper to hash than to look up
_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    # O_NONBLOCK so a FIFO among the inputs is refused at once instead of blocking the run
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            from imagekit.inputs import InputError, clip

            raise InputError(
                f"{clip(str(path))} is not a regular file (a pipe, device or socket): it cannot be an input"
            )
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class DigestCache:
    """A JSON file of digests keyed by (path, size, mtime_ns, inode); any change to the file misses."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "digests.json"
        self._data: dict[str, str] | None = None
        self.hits = 0
        self.misses = 0

    def _load(self) -> dict[str, str]:
        if self._data is None:
            try:
                loaded = json.loads(self.path.read_text())
                self._data = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self._data = {}
        return self._data

    @staticmethod
    def key(path: Path, st: os.stat_result) -> str:
        """The cache key of a file as it is now."""
        return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"

    def digest(self, path: Path) -> str:
        """The file's sha256, from the cache when its size, mtime and inode are unchanged."""
        st = path.stat()
        if st.st_size < CACHE_MIN_BYTES:
            return sha256_file(path)
        key = self.key(path, st)
        with _lock:
            hit = self._load().get(key)
        if hit:
            self.hits += 1
            return hit
        self.misses += 1
        value = sha256_file(path)
        with _lock:
            data = self._load()
            resolved = str(path.resolve())
            for stale in [k for k in data if k.rsplit("|", 3)[0] == resolved]:
                del data[stale]
            data[key] = value
            with contextlib.suppress(OSError):
                atomic_write(self.path, json.dumps(data, sort_keys=True, indent=0))
        return value


def tree_digest(root: Path, cache: DigestCache) -> str:
    """Digest of a file or a folder tree: relative paths, exec bits and contents, in sorted order."""
    h = hashlib.sha256()
    if root.is_file():
        h.update(b"F" + cache.digest(root).encode())
        h.update(b"x" if os.access(root, os.X_OK) else b"-")
        return h.hexdigest()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in {"__pycache__", ".git"})
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            h.update(rel.encode() + b"\0")
            h.update(b"x" if os.access(full, os.X_OK) else b"-")
            h.update(cache.digest(full).encode() + b"\n")
    return h.hexdigest()


def _tree_files(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of the files tree_digest covers, sorted by path bytes."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in {"__pycache__", ".git"}]
        for name in filenames:
            if not name.endswith((".pyc", ".pyo")):
                full = Path(dirpath) / name
                out.append((full.relative_to(root).as_posix(), full))
    return sorted(out, key=lambda x: x[0].encode())


def dir_hash(root: Path, cache: DigestCache) -> str:
    """in-toto's `dirHash` of a folder: sha256 over `<sha256>  <path>` lines sorted by path (Go's dirhash Hash1, hex).

    The same as `find . -type f | cut -c3- | LC_ALL=C sort | xargs -r sha256sum | sha256sum` run in the folder,
    over the files the layer hash covers (no __pycache__, .git or compiled Python).
    """
    h = hashlib.sha256()
    for rel, full in _tree_files(root):
        h.update(f"{cache.digest(full)}  {rel}\n".encode())
    return h.hexdigest()


def real_digest(path: Path, cache: DigestCache) -> dict[str, str]:
    """What outside tools can recompute: a file's sha256, or a folder's dirHash."""
    return {"sha256": cache.digest(path)} if path.is_file() else {"dirHash": dir_hash(path, cache)}
