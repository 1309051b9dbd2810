"""The progress displays: lines for CI logs (start/end, heartbeats), a live view with a summary on a terminal."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from imagekit.cli.console import LineDisplay, LiveDisplay, StreamDisplay, display
from imagekit.events import Event
from imagekit.runners.bootstrap import _progress


def _console(*, terminal: bool = False) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=140, highlight=False, soft_wrap=True), buf


def _lines(buf: io.StringIO) -> list[str]:
    return [ln for ln in buf.getvalue().splitlines() if ln.strip()]


def _layer(kind: str, message: str, layer: str = "runtime", **kw: object) -> Event:
    return Event(kind, message, "tts-cpu", layer, "docker", **kw)  # type: ignore[arg-type]


def test_piped_output_is_one_line_per_start_and_end() -> None:
    console, buf = _console()
    show = LineDisplay(console=console, heartbeat=60)
    show.run(
        lambda: [
            show(_layer("cached", "imagekit/tts-cpu-base:0123 (image exists)", "base")),
            show(_layer("start", "imagekit/tts-cpu-runtime:4567 (stale: new)")),
            *(show(_layer("step", f"[{i}/9] RUN step {i}")) for i in range(9)),
            *(show(_layer("log", f"#7 {i} Collecting package-{i}")) for i in range(500)),
            show(_layer("done", "imagekit/tts-cpu-runtime:4567 in 58s")),
            show(Event("warn", "key is not in the trust file")),
        ]
    )
    lines = _lines(buf)
    assert len(lines) == 4, lines
    assert "cached" in lines[0] and "tts-cpu/docker/base" in lines[0]
    assert "start" in lines[1] and "tts-cpu/docker/runtime" in lines[1]
    assert "done" in lines[2] and lines[2].lstrip().split()[0].endswith("s")  # the unit's time leads the end line
    assert "warn" in lines[3]
    assert not any("Collecting" in ln or "RUN step" in ln for ln in lines)


def test_heartbeat_names_the_current_step_while_a_long_step_runs() -> None:
    console, buf = _console()
    show = LineDisplay(console=console, heartbeat=0.2)
    show.start()
    try:
        show(_layer("start", "debootstrap debian/bookworm"))
        show(_layer("progress", "downloading packages (libc6 2.36)", done=12, total=None))
        time.sleep(0.7)
        beats = [ln for ln in _lines(buf) if "still running" in ln]
        assert 2 <= len(beats) <= 4, _lines(buf)
        assert "downloading packages (libc6 2.36) (12)" in beats[-1]
        long_run = "[2/2] RUN --mount=type=bind,source=x " + "--mount=type=secret,id=ca " * 10 + "sh runtime.sh install"
        show(_layer("step", long_run))
        show(_layer("log", "#7 41.2 imagekit[runtime]: install: lock (no deps) + torch==2.13.0"))
        time.sleep(0.5)
        beat = [ln for ln in _lines(buf) if "still running" in ln][-1]
        # one short line: the step elided in the middle, then the tool's last line without BuildKit's prefix
        assert "[2/2] RUN" in beat and "sh runtime.sh install" in beat and "…" in beat
        assert beat.endswith("| imagekit[runtime]: install: lock (no deps) + torch==2.13.0") and len(beat) < 200
        show(_layer("done", "base in 1s"))
        before = len(_lines(buf))
        time.sleep(0.5)
        assert len(_lines(buf)) == before  # nothing runs: no more heartbeats
    finally:
        show.stop()


def test_verbose_streams_every_line() -> None:
    console, buf = _console()
    show = StreamDisplay(show_log=True, console=console)
    for i in range(50):
        show(_layer("log", f"line {i}"))
    assert len(_lines(buf)) == 50


def test_terminal_live_view_then_a_summary_table() -> None:
    console, buf = _console(terminal=True)
    show = LiveDisplay(console=console)
    show.start()
    try:
        show(_layer("cached", "base image exists", "base"))
        show(_layer("start", "runtime (stale)"))
        show(_layer("progress", "downloading https://example.com/w.bin", done=5e6, total=2e7, unit="B"))
        view = Console(file=io.StringIO(), width=140, force_terminal=False)
        view.print(show.render())
        text = view.file.getvalue()  # type: ignore[attr-defined]
        assert "tts-cpu/docker/runtime" in text and "5.0 MB of 20.0 MB" in text and "downloading" in text
        show(_layer("fail", "exit 1"))
        show(_layer("start", "app", "app"))
    finally:
        show.stop()
    out = buf.getvalue()
    summary = out[out.rindex("summary") :]
    for word in ("base", "reused", "runtime", "fail", "app", "stopped"):
        assert word in summary, summary


def test_the_display_follows_where_output_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    tty, _ = _console(terminal=True)
    pipe, _ = _console()
    assert isinstance(display(console=tty), LiveDisplay)
    assert isinstance(display(console=pipe), LineDisplay)
    assert isinstance(display(verbose=True, console=tty), StreamDisplay)
    monkeypatch.setenv("CI", "true")
    assert isinstance(display(console=tty), LineDisplay)


def test_debootstrap_lines_become_progress() -> None:
    events: list[Event] = []
    on_line = _progress(events.append, "img", "base")
    packages = ["adduser", "libc6", "python3"]
    lines = ["I: Retrieving InRelease", "I: Retrieving Packages", "I: Validating Packages"]
    lines += [x for p in packages for x in (f"I: Retrieving {p} 1.0", f"I: Validating {p} 1.0")]
    lines += ["I: Chosen extractor for .deb packages: dpkg-deb"]
    lines += [f"I: Extracting {p}..." for p in packages]
    lines += ["I: Unpacking required packages..."] + [f"I: Unpacking {p}..." for p in packages]
    lines += ["I: Configuring required packages..."] + [f"I: Configuring {p}..." for p in packages]
    lines += ["I: Base system installed successfully.", "some other output"]
    for line in lines:
        on_line(line)
    progress = [e for e in events if e.kind == "progress"]
    assert [(e.done, e.total) for e in progress[:3]] == [(1, None), (2, None), (3, None)]
    assert [(e.done, e.total) for e in progress[3:]] == [(i, 9) for i in range(1, 10)]
    steps = [e.message for e in events if e.kind == "step"]
    assert "Unpacking required packages..." in steps and "Base system installed successfully." in steps
    assert all(e.target == "docker" and e.layer == "base" for e in events)


def test_verify_lines_name_each_step_and_the_image() -> None:
    console, buf = _console()
    show = LineDisplay(console=console, heartbeat=60, steps=True)
    show(Event("start", "probing tts-cpu:abc", image="tts-cpu", target="docker"))
    show(Event("step", "starting the service, waiting for /ready", image="tts-cpu", target="docker"))
    show(Event("step", "ready after 2.5s"))  # no image: it belongs to the unit that is running
    show(Event("done", "verified; report r.json", image="tts-cpu", target="docker"))
    lines = _lines(buf)
    assert len(lines) == 4, lines
    assert "starting the service" in lines[1] and "tts-cpu" in lines[1]
    assert "ready after 2.5s" in lines[2] and "tts-cpu" in lines[2]
    assert "done" in lines[3] and "verified" in lines[3]
    # a build's display prints no steps: its piped output stays one line per start and end
    quiet_console, quiet = _console()
    build = LineDisplay(console=quiet_console, heartbeat=60)
    build(_layer("start", "building"))
    build(_layer("step", "RUN install"))
    assert len(_lines(quiet)) == 1
