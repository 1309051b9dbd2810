"""The only place that owns rich: stderr console, the progress displays for Events, tables.

Three displays, one per audience (`display()` picks):
- a terminal: a live view, one line per image/target/layer with its state, elapsed time and current step, a bar
  for downloads and the base bootstrap, and a summary table at the end;
- piped output or CI=true (CI logs): one line when a unit starts and one when it ends (with its time), a heartbeat
  line every ~30 s while a long one runs, nothing of the tools' own output (the full log is in a file; a failure
  prints its last lines and the log's path);
- `-v`: every event and every log line as it comes, as before.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from imagekit.events import Event

# C0 controls but newline and tab, DEL, C1 (a lone 0x9b is a CSI on some terminals), line/paragraph separators
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def no_controls(text: str) -> str:
    """Text with every terminal control character shown as \\xNN: nothing read from a record, a report or the
    image under test can move the cursor, recolour the screen or draw a line of its own."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


class SafeConsole(Console):
    """A rich Console whose printed strings and Texts carry no control characters (the escape sequences rich
    writes for its own styles are added after this, when rendering)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Console.print with the control characters of every str and Text made visible first."""
        clean: list[Any] = []
        for obj in objects:
            if isinstance(obj, str):
                clean.append(no_controls(obj))
            elif isinstance(obj, Text) and _CONTROLS.search(obj.plain):
                clean.append(Text(no_controls(obj.plain), style=obj.style))
            else:
                clean.append(obj)
        super().print(*clean, **kwargs)


err = SafeConsole(stderr=True, highlight=False, soft_wrap=True)
# Piped output is read by people too (CI logs): tables get room instead of rich's 80-column default; $COLUMNS wins.
out = SafeConsole(
    highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
)

T = TypeVar("T")
Key = tuple[str, str, str]  # (image, target, layer)
HEARTBEAT_S = 30.0
CLOSING = ("done", "cached", "fail")


def print_json(doc: Any) -> None:
    """Machine output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_line_json(doc: Any) -> None:
    """Machine output on one line (`echo "matrix=$(...)" >> $GITHUB_OUTPUT` takes exactly one line)."""
    sys.stdout.write(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def escape(text: str) -> str:
    """Text from outside (logs, messages, records, the image under test) made inert for rich: no control
    characters, and every `[` that could open a tag escaped, backslashes before it included (turning `[` into
    `\\[` alone is not enough: in `\\[red]` the doubled backslash escapes itself and the tag opens)."""
    from rich.markup import escape as rich_escape

    return rich_escape(no_controls(text))


def cell(text: object) -> Text:
    """A table cell from outside: plain Text, never read as markup (a str cell would be)."""
    return Text(no_controls(str(text)))


def in_ci() -> bool:
    """True under a CI system (CI=true, as GitHub Actions, GitLab, Tekton tasks and most others set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def where(key: Key) -> str:
    """image/target/layer, leaving out what is empty."""
    return "/".join(x for x in key if x)


def duration(seconds: float) -> str:
    """12.3s, 2m05s, 1h02m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


_BUILDKIT_PREFIX = re.compile(r"^#\d+ (?:\d+\.\d+ )?")


def short(text: str, limit: int) -> str:
    """One line of at most `limit` characters: whitespace collapsed, the middle elided."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return f"{text[:half]}…{text[-(limit - 1 - half) :]}"


def _amount(value: float, unit: str) -> str:
    if unit == "B":
        for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if value >= scale:
                return f"{value / scale:.1f} {name}"
        return f"{value:.0f} B"
    return f"{value:.0f}"


@dataclass
class Unit:
    """One image/target/layer as the displays track it."""

    key: Key
    state: str  # running, done, cached, fail
    started: float
    message: str = ""
    step: str = ""
    ended: float | None = None
    done: float | None = None
    total: float | None = None
    unit: str = ""
    said: float = 0.0  # when a line about it was last printed (heartbeats)
    timed: bool = True  # False when it only ended (no start event): there is no time of its own to show
    last_log: str = ""  # the last line of the tool's output, without BuildKit's "#7 12.3 " prefix

    def doing(self) -> str:
        """What it is doing now, short enough for one line: the step, and the tool's last line when there is one."""
        step = short(self.step or self.message, 70)
        return f"{step} | {short(self.last_log, 70)}" if self.last_log else step

    def elapsed(self, now: float) -> float:
        """Seconds from start to end (or to now while running)."""
        return (self.ended if self.ended is not None else now) - self.started

    def progress(self) -> str:
        """'12.0 MB of 40.0 MB' / '120 of 450' / '' when there is none."""
        if self.done is None:
            return ""
        if self.total:
            return f"{_amount(self.done, self.unit)} of {_amount(self.total, self.unit)}"
        return _amount(self.done, self.unit)


class Display:
    """Tracks units from Events (thread-safe: nightly --jobs reports from several threads); subclasses print."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or err
        self.units: dict[Key, Unit] = {}
        self.lock = threading.RLock()
        self.t0 = time.monotonic()

    # the core calls the display as its Reporter
    def __call__(self, event: Event) -> None:
        with self.lock:
            self.handle(event, self.track(event))

    def track(self, event: Event) -> Unit | None:
        """Update the unit an event belongs to; steps and progress without one go to the latest running unit."""
        now = time.monotonic()
        key: Key = (event.image, event.target, event.layer)
        unit = self.units.get(key)
        if event.kind == "start" or (event.kind in CLOSING and (unit is None or unit.state != "running")):
            unit = Unit(key, "running", now, event.message, said=now, timed=event.kind == "start")
            self.units.pop(key, None)
            self.units[key] = unit  # re-inserted: the order of the view is the order work started
        elif event.kind in ("step", "progress", "log") and (unit is None or unit.state != "running"):
            unit = self._latest_running(event.image)
        if unit is None:
            return None
        if event.kind in CLOSING:
            unit.state, unit.ended, unit.message = event.kind, now, event.message
            unit.done = unit.total = None
        elif event.kind == "step":
            unit.step, unit.last_log = event.message, ""
            unit.done = unit.total = None
        elif event.kind == "log":
            line = _BUILDKIT_PREFIX.sub("", event.message).strip()
            if line:
                unit.last_log = line
        elif event.kind == "progress":
            unit.done, unit.total, unit.unit = event.done, event.total, event.unit
            if event.message:
                unit.step = event.message
        return unit

    def _latest_running(self, image: str) -> Unit | None:
        running = [u for u in self.units.values() if u.state == "running"]
        mine = [u for u in running if image and u.key[0] == image]
        candidates = mine or running
        return candidates[-1] if candidates else None

    def handle(self, event: Event, unit: Unit | None) -> None:
        """Print what this display prints for an event (called under the lock)."""

    def start(self) -> None:
        """Begin showing (threads, live regions)."""

    def stop(self) -> None:
        """Stop showing and print what comes at the end."""

    def run(self, fn: Callable[[], T]) -> T:
        """Show while fn runs; stopped (and the summary printed) before its error reaches the exit-code boundary."""
        self.start()
        try:
            return fn()
        finally:
            self.stop()

    def _line(self, kind: str, key: Key, message: str, seconds: float | None) -> None:
        style = StreamDisplay.STYLES.get(kind, "")
        label = f"[{style}]{kind:>6}[/]" if style else f"{kind:>6}"
        at = f"[dim]{duration(seconds):>7}[/] " if seconds is not None else " " * 8
        name = f" [bold]{escape(where(key))}[/]" if where(key) else ""
        self.console.print(f"{at}{label}{name} {escape(message)}")


class StreamDisplay(Display):
    """Every event as one line (and with show_log every tool line): what `-v` prints."""

    STYLES: ClassVar[dict[str, str]] = {
        "start": "bold",
        "done": "green",
        "cached": "dim",
        "fail": "bold red",
        "warn": "yellow",
        "info": "cyan",
        "step": "",
        "log": "dim",
        "beat": "dim",
    }

    def __init__(self, *, show_log: bool = False, console: Console | None = None) -> None:
        super().__init__(console)
        self.show_log = show_log

    def handle(self, event: Event, unit: Unit | None) -> None:
        if event.kind == "progress" or (event.kind == "log" and not self.show_log):
            return
        key: Key = (event.image, event.target, event.layer)
        since = unit.started if unit is not None and unit.key == key else self.t0
        self._line(event.kind, key, event.message, time.monotonic() - since)


# the old name, kept for callers outside this module
ProgressPrinter = StreamDisplay


class LineDisplay(Display):
    """For CI logs and pipes: a line when a unit starts and when it ends, heartbeats while it runs."""

    def __init__(self, *, console: Console | None = None, heartbeat: float = HEARTBEAT_S, steps: bool = False) -> None:
        super().__init__(console)
        self.heartbeat = heartbeat
        self.steps = steps  # a line per step too (verify's few: probing, starting the service, smoke)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def handle(self, event: Event, unit: Unit | None) -> None:
        key: Key = (event.image, event.target, event.layer)
        if event.kind == "start":
            self._line("start", key, event.message, None)
        elif event.kind in CLOSING:
            timed = unit is not None and unit.key == key and unit.timed and event.kind != "cached"
            self._line(event.kind, key, event.message, unit.elapsed(time.monotonic()) if unit and timed else None)
        elif event.kind in ("info", "warn") or (self.steps and event.kind == "step"):
            if event.kind == "step" and unit is not None:
                unit.said = time.monotonic()  # the step's line counts as news: the next heartbeat waits
            self._line(event.kind, unit.key if unit is not None and not any(key) else key, event.message, None)

    def beat(self) -> None:
        """One heartbeat: a line for each unit that has run a heartbeat's time without a line about it."""
        with self.lock:
            now = time.monotonic()
            for unit in self.units.values():
                if unit.state == "running" and now - unit.said >= self.heartbeat * 0.95:
                    unit.said = now
                    progress = unit.progress()
                    note = f"still running: {unit.doing()}" + (f" ({progress})" if progress else "")
                    self._line("…", unit.key, note, unit.elapsed(now))

    def _beats(self) -> None:
        while not self._stop.wait(max(self.heartbeat / 3, 0.05)):
            self.beat()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beats, name="imagekit-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class LiveDisplay(Display):
    """For a terminal: a live view of every unit, then a summary table."""

    ICONS: ClassVar[dict[str, str]] = {
        "running": "[yellow]…[/]",
        "done": "[green]✓[/]",
        "cached": "[dim]=[/]",
        "fail": "[bold red]✗[/]",
    }

    def __init__(self, *, console: Console | None = None) -> None:
        super().__init__(console)
        self.live: Live | None = None

    def handle(self, event: Event, unit: Unit | None) -> None:
        # notes and failures stay in the scrollback above the live view; the rest is in the view
        if event.kind in ("info", "warn", "fail") and self.live is not None:
            key: Key = (event.image, event.target, event.layer)
            self._line(event.kind, key, event.message, None)

    def render(self) -> RenderableType:
        """The live view: one row per unit."""
        with self.lock:
            now = time.monotonic()
            table = Table.grid(padding=(0, 1))
            table.add_column(width=1)
            table.add_column(style="bold", no_wrap=True)
            table.add_column(justify="right", style="dim", no_wrap=True)
            table.add_column(no_wrap=True, overflow="ellipsis")
            for unit in self.units.values():
                detail: RenderableType
                if unit.state == "running" and unit.done is not None:
                    bar = ProgressBar(total=unit.total, completed=unit.done, width=24, pulse=not unit.total)
                    row = Table.grid()
                    row.add_row(
                        bar, Text(no_controls(f" {unit.progress()}  {unit.step or unit.message}"), overflow="ellipsis")
                    )
                    detail = row
                else:
                    detail = Text(
                        no_controls(unit.doing() if unit.state == "running" else unit.message), overflow="ellipsis"
                    )
                took = duration(unit.elapsed(now)) if unit.timed else "-"
                table.add_row(self.ICONS[unit.state], where(unit.key) or "-", took, detail)
            return table

    def summary(self) -> Table:
        """What ran, how it ended and how long it took."""
        now = time.monotonic()
        table = Table("image", "target", "layer", "result", "time", "", title="summary", title_justify="left")
        for unit in self.units.values():
            style = {"done": "green", "cached": "dim", "fail": "bold red"}.get(unit.state, "yellow")
            result = "reused" if unit.state == "cached" else ("stopped" if unit.state == "running" else unit.state)
            took = duration(unit.elapsed(now)) if unit.timed else "-"
            note = Text(no_controls(unit.message), overflow="ellipsis", no_wrap=True)
            table.add_row(
                cell(unit.key[0]), cell(unit.key[1]), cell(unit.key[2] or "-"), f"[{style}]{result}[/]", took, note
            )
        return table

    def start(self) -> None:
        self.live = Live(console=self.console, get_renderable=self.render, refresh_per_second=4, transient=True)
        self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.units:
            self.console.print(self.summary())


def display(*, verbose: bool = False, steps: bool = False, console: Console | None = None) -> Display:
    """The display for where stderr goes: -v streams everything, a terminal gets the live view, else lines (with
    steps: a line for each step as well)."""
    console = console or err
    if verbose:
        return StreamDisplay(show_log=True, console=console)
    if console.is_terminal and not in_ci():
        return LiveDisplay(console=console)
    return LineDisplay(console=console, steps=steps)
