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

# A run-wide cancel (nightly --jobs N): Ctrl-C and SIGTERM reach the main thread only, while the children are
# waited on by worker threads. The main thread sets this; every worker then stops its own child's process group
# (waiting for the tool's cleanup, e.g. Packer terminating its instance) and raises Interrupted, and no new
# child starts.
_CANCEL = threading.Event()


def request_cancel() -> None:
    """Ask every child of this process, waited on by any thread, to stop and clean up (see Process.wait_or_cancel)."""
    _CANCEL.set()


def cancel_requested() -> bool:
    """True once request_cancel() was called (until reset_cancel())."""
    return _CANCEL.is_set()


def check_cancel(what: str = "interrupted") -> None:
    """Raise Interrupted when a cancel was requested: long waits outside a child (health polls) call this."""
    if _CANCEL.is_set():
        raise Interrupted(f"{what}: the run was cancelled")


def reset_cancel() -> None:
    """Forget a finished run's cancel, so the next run in this process starts children again."""
    _CANCEL.clear()


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
        cancellable: bool = True,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.on_line = on_line
        self.log = log
        self.capture = capture
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self._chunks: list[str] = []
        self.t0 = time.monotonic()
        if cancellable:  # cleanup commands (umount after a cancelled debootstrap) still run
            check_cancel(f"{Path(self.argv[0]).name} not started")
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

    def wait_or_cancel(self, grace: float = 120.0, timeout: float | None = None) -> Result:
        """Wait for exit; on Ctrl-C/SIGTERM (KeyboardInterrupt, main thread) or a run-wide cancel (any thread)
        stop the group with cancel(grace), then raise Interrupted. CommandTimeout after `timeout` (stopped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if _CANCEL.is_set():
                    self.cancel(grace=grace)
                    raise Interrupted(f"interrupted; {Path(self.argv[0]).name} was stopped and cleaned up")
                step = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
                try:
                    return self.wait(timeout=step)
                except CommandTimeout:
                    if deadline is not None and time.monotonic() >= deadline:
                        self.cancel(grace=10.0)
                        raise CommandTimeout(f"{Path(self.argv[0]).name} did not finish within {timeout:g}s") from None
        except KeyboardInterrupt:
            self.cancel(grace=grace)
            raise Interrupted(f"interrupted; {Path(self.argv[0]).name} was stopped and cleaned up") from None

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
    cancellable: bool = True,
) -> Result:
    """Run to completion, streaming lines; on Ctrl-C/SIGTERM or a run-wide cancel signal the whole group, wait,
    raise Interrupted. cancellable=False: a cleanup step, which a cancel neither refuses nor stops."""
    proc = Process(argv, env=env, cwd=cwd, on_line=on_line, log=log, stdin=stdin, capture=capture,
                   cancellable=cancellable)  # fmt: skip
    if not cancellable:
        try:
            return proc.wait(timeout=timeout)
        except CommandTimeout:
            proc.cancel(grace=10.0)
            raise
    with forward_sigterm():
        return proc.wait_or_cancel(cancel_grace, timeout)


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
