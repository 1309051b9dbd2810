"""Where imagekit keeps things outside the repo: caches, logs, the default key."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$IMAGEKIT_CACHE_DIR, else $XDG_CACHE_HOME/imagekit, else ~/.cache/imagekit."""
    explicit = os.environ.get("IMAGEKIT_CACHE_DIR")
    if explicit:
        return _folder(Path(explicit), "IMAGEKIT_CACHE_DIR")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return _folder(Path(base) / "imagekit", "the cache folder ($XDG_CACHE_HOME/imagekit)")


def _folder(path: Path, what: str) -> Path:
    """path, unless it exists as something other than a folder (UsageError: everything below it would fail)."""
    try:
        if path.exists() and not path.is_dir():
            from imagekit.errors import UsageError

            raise UsageError(f"{what} {path} is a file, not a folder: point it at a folder")
    except OSError:
        pass  # a name the kernel refuses: the first write below says so
    return path


def config_dir() -> Path:
    """$XDG_CONFIG_HOME/imagekit, default ~/.config/imagekit."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "imagekit"


def log_dir() -> Path:
    """Where full build and verify logs go."""
    return cache_dir() / "logs"


def work_dir(spec_root: Path) -> Path:
    """Per-spec scratch space next to the spec (git-ignored): renders for builds, reports.

    A committed `.imagekit` symlink would make every write and delete below it land elsewhere: refused (exit 2).
    """
    path = spec_root / ".imagekit"
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        from imagekit.errors import UsageError

        raise UsageError(f"{path} is a symlink or a file: imagekit keeps its own files there; remove it")
    return path
