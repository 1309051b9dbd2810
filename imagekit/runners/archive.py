"""The Debian/Ubuntu archive over HTTP(S): the Packages index of a suite and a package file, bounded in size.

The scan reads the same mirror the build installs from. Answers are cached by URL for an hour under the cache
folder (an index changes a few times a day; a .deb at a pool path never changes), so a nightly re-scan of several
images reads each index once.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import time
import urllib.error
import urllib.request
from pathlib import Path

from imagekit.errors import ImagekitError
from imagekit.fsutil import atomic_write
from imagekit.paths import cache_dir

MAX_INDEX_BYTES = 64 * 1024 * 1024  # bookworm-security's amd64 Packages is ~3 MB uncompressed
MAX_DEB_BYTES = 32 * 1024 * 1024
INDEX_TTL = 3600.0


class ArchiveError(ImagekitError):
    """The archive did not answer, or answered with something too big."""

    exit_code = 1


def _cache(url: str) -> Path:
    return cache_dir() / "archive" / hashlib.sha256(url.encode()).hexdigest()


def get(url: str, *, limit: int, ttl: float | None = INDEX_TTL, timeout: float = 60.0) -> bytes:
    """The body at `url` (at most `limit` bytes), from the cache when younger than ttl (None: kept for good)."""
    cached = _cache(url)
    with contextlib.suppress(OSError):
        if ttl is None or time.time() - cached.stat().st_mtime < ttl:
            return cached.read_bytes()
    if not url.startswith(("http://", "https://")):
        raise ArchiveError(f"archive: {url}: only http:// and https:// mirrors are read")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (scheme checked above)
            body: bytes = resp.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise ArchiveError(f"archive: {url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ArchiveError(f"archive: {url}: {reason}") from None
    if len(body) > limit:
        raise ArchiveError(f"archive: {url}: more than {limit} bytes")
    with contextlib.suppress(OSError):
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, body)
    return body


def packages_index(base: str, suite: str, component: str, arch: str) -> str:
    """The text of `<base>/dists/<suite>/<component>/binary-<arch>/Packages(.xz)`."""
    stem = f"{base.rstrip('/')}/dists/{suite}/{component}/binary-{arch}/Packages"
    try:
        data = get(stem + ".xz", limit=MAX_INDEX_BYTES)
    except ArchiveError:
        data = b""
    if data:
        dec = lzma.LZMADecompressor()
        try:
            text = dec.decompress(data, max_length=MAX_INDEX_BYTES)
        except lzma.LZMAError as exc:
            raise ArchiveError(f"archive: {stem}.xz: {exc}") from None
        if not dec.eof:
            raise ArchiveError(f"archive: {stem}.xz: more than {MAX_INDEX_BYTES} bytes once unpacked")
        return text.decode("utf-8", "replace")
    return get(stem, limit=MAX_INDEX_BYTES).decode("utf-8", "replace")
