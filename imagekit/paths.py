"""Where imagekit keeps things outside the repo: caches, logs, the default key."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$IMAGEKIT_CACHE_DIR, else $XDG_CACHE_HOME/imagekit, else ~/.cache/imagekit."""
    explicit = os.environ.get("IMAGEKIT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imagekit"


def config_dir() -> Path:
    """$XDG_CONFIG_HOME/imagekit, default ~/.config/imagekit."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "imagekit"


def log_dir() -> Path:
    """Where full build and verify logs go."""
    return cache_dir() / "logs"


def work_dir(spec_root: Path) -> Path:
    """Per-spec scratch space next to the spec (git-ignored): renders for builds, reports."""
    return spec_root / ".imagekit"
