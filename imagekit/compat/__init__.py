"""Compatibility matrix: pure lookups over package data (compat/data/*.yaml)."""

from __future__ import annotations

from imagekit.errors import Problem
from imagekit.spec import LoadedSpec


def check_spec(loaded: LoadedSpec) -> list[Problem]:
    """Problems where a chain's resolved versions do not work together (filled in by the compat module)."""
    return []
