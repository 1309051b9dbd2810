"""Progress events: the core reports through a callback; only cli/ turns them into terminal output.

A unit of work is an (image, target, layer) triple: `start` opens it, `done`, `cached` or `fail` closes it, `step`
says what it is doing now, `progress` how far a download or bootstrap is (done of total, total None when unknown),
`log` is one raw line of a tool's output (shown with -v only; the full log is always in a file).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

EventKind = Literal["start", "step", "progress", "log", "done", "cached", "fail", "info", "warn"]


@dataclass(frozen=True)
class Event:
    """One thing that happened during long work, attributed to an image and layer where it applies."""

    kind: EventKind
    message: str = ""
    image: str = ""
    layer: str = ""
    target: str = ""
    done: float | None = None  # progress: how much is done (bytes, packages)
    total: float | None = None  # progress: of how much; None while unknown
    unit: str = ""  # progress: "B" for bytes, "" for a count


Reporter = Callable[[Event], None]


def silent(_event: Event) -> None:
    """A reporter that drops everything (tests, --json runs)."""
