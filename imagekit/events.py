"""Progress events: the core reports through a callback; only cli/ turns them into terminal output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

EventKind = Literal["start", "step", "log", "done", "cached", "fail", "info", "warn"]


@dataclass(frozen=True)
class Event:
    """One thing that happened during long work, attributed to an image and layer where it applies."""

    kind: EventKind
    message: str = ""
    image: str = ""
    layer: str = ""
    target: str = ""


Reporter = Callable[[Event], None]


def silent(_event: Event) -> None:
    """A reporter that drops everything (tests, --json runs)."""
