"""The one subprocess wrapper: argument lists (never a shell), line streaming, a bounded tail, group signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from imagekit.errors import ImagekitError, Interrupted, ToolMissing

LineCallback = Callable[[str], None]
TAIL_LINES = 40


class CommandTimeout(ImagekitError):
    """A command ran past its time limit; it was stopped (its process group signalled) before this was raised."""

    exit_code = 1


@dataclass
class Result:
    """How a process ended, with the last lines it printed (stdout and stderr merged)."""

    argv: list[str]
    returncode: int
    tail: list[str] = field(default_factory=list)
    output: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the process exited 0."""
        return self.returncode == 0


class Process:
    """A running child in its own process group, so a cancel reaches everything it started."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        on_line: LineCallback | None = None,
        log: IO[str] | None = None,
        stdin: IO[bytes] | int | None = subprocess.DEVNULL,
        capture: bool = False,
        tail_lines: int = TAIL_LINES,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.on_line = on_line
        self.log = log
        self.capture = capture
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self._chunks: list[str] = []
        self.t0 = time.monotonic()
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=stdin,
                cwd=cwd,
                env=full_env,
                start_new_session=True,  # own process group: killpg reaches children (packer's panicwrap)
            )
        except FileNotFoundError:
            raise ToolMissing(f"{self.argv[0]}: command not found (run `imagekit doctor`)") from None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in iter(self.popen.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.tail.append(line)
            if self.capture:
                self._chunks.append(line)
            if self.log is not None:
                self.log.write(line + "\n")
                self.log.flush()
            if self.on_line is not None:
                with contextlib.suppress(Exception):
                    self.on_line(line)
        self.popen.stdout.close()

    @property
    def pid(self) -> int:
        """The child's pid (also its process group id)."""
        return self.popen.pid

    def signal_group(self, sig: int = signal.SIGINT) -> None:
        """Send a signal to the child's whole process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for exit and for the reader to drain; CommandTimeout (the process still runs) after `timeout`."""
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"{Path(self.argv[0]).name} did not finish within {timeout:g}s") from None
        self._reader.join(timeout=10)
        return Result(self.argv, rc, list(self.tail), "\n".join(self._chunks), time.monotonic() - self.t0)

    def cancel(self, grace: float = 120.0) -> Result:
        """SIGINT to the group, wait up to `grace` for the tool's own cleanup, then SIGTERM, then SIGKILL."""
        for sig, wait_s in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            self.signal_group(sig)
            try:
                return self.wait(timeout=wait_s)
            except CommandTimeout:
                continue
        return self.wait()


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    on_line: LineCallback | None = None,
    log: IO[str] | None = None,
    stdin: IO[bytes] | int | None = subprocess.DEVNULL,
    capture: bool = False,
    timeout: float | None = None,
    cancel_grace: float = 120.0,
) -> Result:
    """Run to completion, streaming lines; on Ctrl-C/SIGTERM signal the whole group, wait, raise Interrupted."""
    proc = Process(argv, env=env, cwd=cwd, on_line=on_line, log=log, stdin=stdin, capture=capture)
    with forward_sigterm():
        try:
            return proc.wait(timeout=timeout)
        except CommandTimeout:
            proc.cancel(grace=10.0)
            raise
        except KeyboardInterrupt:
            proc.cancel(grace=cancel_grace)
            raise Interrupted(f"interrupted; {Path(proc.argv[0]).name} was stopped and cleaned up") from None


@contextlib.contextmanager
def forward_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while a child runs, so one cleanup path serves both."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def capture(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 60.0) -> Result:
    """Run a short command and keep all its output (for version probes and queries)."""
    return run(argv, env=env, capture=True, timeout=timeout)
