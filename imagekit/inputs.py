"""Bounded reading of everything imagekit is handed: regular files only, a size cap, JSON with a nesting bound.

A FIFO or a device given as a file would block or never end, a directory is a usage slip; all of them, and names
the kernel refuses (over 255 bytes), are reported as one clear error instead of hanging or crashing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagekit.errors import UsageError

# A spec, a trust file or a store record is a few KB; anything past this is a mistake or an attack.
MAX_INPUT_BYTES = 4 * 1024 * 1024
# A signed manifest embeds its report and package lists: bigger than a spec, still bounded.
MAX_RECORD_BYTES = 16 * 1024 * 1024
# JSON and YAML documents deeper than this are refused before a recursive parser sees them.
MAX_DEPTH = 64


class InputError(UsageError):
    """A file imagekit was given cannot be read as input: not a regular file, too big, not text."""

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(message)
        self.where = where


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_regular(path: Path, *, what: str, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; InputError (exit 2) for anything else.

    FileNotFoundError is passed through so callers keep their own "does not exist" message.
    """
    shown, where = f"{what} {clip(str(path))}", str(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer; it is refused right after.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise InputError(
                f"{what} {clip(str(path))}: the file name is too long (over 255 bytes)", where=str(path)
            ) from None
        if exc.errno == errno.ENOTDIR:
            raise InputError(
                f"{what} {clip(str(path))}: a part of the path is a file, not a folder", where=str(path)
            ) from None
        raise InputError(f"{shown}: cannot read: {exc.strerror or exc}", where=where) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{shown} is {_kind(st.st_mode)}: give a regular file", where=where)
        if st.st_size > limit:
            raise InputError(
                f"{what} {clip(str(path))} is {st.st_size} bytes; the limit is {limit} bytes", where=str(path)
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:  # the file grew while being read
                raise InputError(f"{shown} is over the limit of {limit} bytes", where=where)
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise InputError(f"{shown}: cannot read: {exc.strerror or exc}", where=where) from None
    finally:
        os.close(fd)


def read_text(path: Path, *, what: str, limit: int = MAX_INPUT_BYTES) -> str:
    """A regular file's UTF-8 text; InputError when it is not text."""
    raw = read_regular(path, what=what, limit=limit)
    shown, where = f"{what} {clip(str(path))}", str(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{shown}:{line}: not UTF-8 text", where=where) from None


# a JSON string (with its escapes) as one token, or a bracket: strings are skipped whole, in C, however long (a
# record's base64 payload is one string of ~10 KB)
_JSON_NESTING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def json_depth_ok(data: bytes | str, max_depth: int = MAX_DEPTH) -> bool:
    """True when no array/object in the JSON text nests deeper than max_depth (strings are skipped)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    depth = 0
    for m in _JSON_NESTING.finditer(raw):
        ch = raw[m.start()]
        if ch in b"[{":
            depth += 1
            if depth > max_depth:
                return False
        elif ch in b"]}":
            depth -= 1
    return True


class JsonInputError(ValueError):
    """A JSON document is too big, too deep or not JSON; the message says which."""


def load_json(
    data: bytes | str,
    *,
    limit: int = MAX_INPUT_BYTES,
    max_depth: int = MAX_DEPTH,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
    parse_int: Callable[[str], Any] | None = None,
    parse_float: Callable[[str], Any] | None = None,
    parse_constant: Callable[[str], Any] | None = None,
) -> Any:
    """json.loads with a size and a nesting bound; JsonInputError (a ValueError) on any problem. An error the
    object_pairs_hook raises that is not a ValueError goes through as it is. parse_int, parse_float and
    parse_constant bound numbers."""
    if len(data) > limit:
        raise JsonInputError(f"{len(data)} bytes is over the limit of {limit} bytes")
    if not json_depth_ok(data, max_depth):
        raise JsonInputError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(
            data,
            object_pairs_hook=object_pairs_hook,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=parse_constant,
        )
    except RecursionError:
        raise JsonInputError(f"nested deeper than {max_depth} levels") from None
    except (ValueError, TypeError) as exc:
        raise JsonInputError(f"not JSON: {exc}") from None


def printable(text: str) -> str:
    """Control characters (newline, ESC, NUL, DEL, C1) escaped: the value stays on one line, steers no terminal."""
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0 or ch in "\u2028\u2029":
            out.append(repr(ch)[1:-1] if ch in "\n\r\t" else f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


MAX_MESSAGE_VALUE = 200


def clip(text: str, limit: int = MAX_MESSAGE_VALUE) -> str:
    """A value as a message shows it: control characters escaped and cut to `limit` characters."""
    shown = printable(text)
    if len(shown) > limit:
        return f"{shown[:limit]}… ({len(text)} characters)"
    return shown


# What a report and a record keep of a list of findings: enough for a person, bounded for the record's readers.
MAX_LINES = 200
MAX_LINE_CHARS = 2000


def bound_lines(lines: list[str], *, limit: int = MAX_LINES, width: int = MAX_LINE_CHARS) -> list[str]:
    """At most `limit` lines of at most `width` characters each, the cut named in a last line."""
    out = [line if len(line) <= width else f"{line[:width]}… ({len(line) - width} more characters)" for line in
           lines[:limit]]  # fmt: skip
    if len(lines) > limit:
        out.append(f"… and {len(lines) - limit} more")
    return out


def is_file(path: Path) -> bool:
    """Path.is_file() that answers False for a name the kernel refuses (over 255 bytes) instead of raising."""
    try:
        return path.is_file()
    except OSError:
        return False


def exists(path: Path) -> bool:
    """Path.exists() that answers False for a name the kernel refuses instead of raising."""
    try:
        return path.exists()
    except OSError:
        return False
