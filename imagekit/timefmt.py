"""The one timestamp format of records, reports and build results: UTC, ISO 8601, seconds, a trailing Z."""

from __future__ import annotations

from datetime import datetime, timezone


def iso_utc(t: datetime | None = None) -> str:
    """`2026-11-21T06:30:00Z` for t (a naive datetime is taken as UTC), or for now."""
    t = t or datetime.now(timezone.utc)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
