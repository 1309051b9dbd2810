"""The only place that owns rich: stderr console, progress display for Events, tables."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, ClassVar

from rich.console import Console

from imagekit.events import Event

err = Console(stderr=True, highlight=False, soft_wrap=True)
# Piped output is read by people too (CI logs): tables get room instead of rich's 80-column default; $COLUMNS wins.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)


def print_json(doc: Any) -> None:
    """Machine output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_line_json(doc: Any) -> None:
    """Machine output on one line (`echo "matrix=$(...)" >> $GITHUB_OUTPUT` takes exactly one line)."""
    sys.stdout.write(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
    sys.stdout.flush()


class ProgressPrinter:
    """Turns core Events into one line per step on stderr, with elapsed time per image/layer."""

    STYLES: ClassVar[dict[str, str]] = {
        "start": "bold",
        "done": "green",
        "cached": "dim",
        "fail": "bold red",
        "warn": "yellow",
        "info": "cyan",
        "step": "",
        "log": "dim",
    }

    def __init__(self, *, show_log: bool = False) -> None:
        self.show_log = show_log
        self.started: dict[tuple[str, str, str], float] = {}
        self.t0 = time.monotonic()

    def __call__(self, event: Event) -> None:
        key = (event.image, event.target, event.layer)
        if event.kind == "start":
            self.started[key] = time.monotonic()
        if event.kind == "log" and not self.show_log:
            return
        where = "/".join(x for x in (event.image, event.target, event.layer) if x)
        since = self.started.get(key, self.t0)
        elapsed = f"{time.monotonic() - since:6.1f}s"
        style = self.STYLES.get(event.kind, "")
        label = f"[{style}]{event.kind:>6}[/]" if style else f"{event.kind:>6}"
        prefix = f"[dim]{elapsed}[/] {label} [bold]{where}[/]" if where else f"[dim]{elapsed}[/] {label}"
        err.print(f"{prefix} {escape(event.message)}")


def escape(text: str) -> str:
    """Escape rich markup in text that came from outside (logs, messages)."""
    return text.replace("[", "\\[")
