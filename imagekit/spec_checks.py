"""Checks of a spec beyond its types: raw text (control characters, sizes), system paths, the store URL.

imagekit.spec runs them for every command; they live here to keep the loader short.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from imagekit.errors import Problem
from imagekit.inputs import clip
from imagekit.spec_model import Layer, Spec
from imagekit.yamlsrc import KeyPath, Located


def loc_str(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# Bounds on what a spec may hold, so every command refuses the same oversized input before any work.
MAX_STRING = 4096
MAX_SCRIPT = 65536  # a `run` entry is shell, and may be a long one
MAX_ITEMS = 10_000  # layers, images, list entries, env keys
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every C0 control but tab, and DEL
# Where a value is a statement on one line (Dockerfile, systemd unit, shell assignment), a newline starts a new one.
# Only `run` entries (shell that runs as written) and the smoke request body may hold newlines; NUL is never allowed.
_MULTILINE = ("run",)


def check_text(located: Located, file: str) -> list[Problem]:
    """Problems with the raw values: NUL or control characters, oversized strings and collections."""
    problems: list[Problem] = []

    def bad(path: KeyPath, message: str, hint: str = "") -> None:
        problems.append(Problem(file, located.line_of(path), loc_str(path), message, hint))

    def check_str(path: KeyPath, text: str, *, multiline: bool, is_key: bool = False) -> None:
        what = "key" if is_key else "value"
        if "\x00" in text:
            bad(path, f"the {what} contains a NUL byte", "remove it")
        elif not multiline and _CONTROL.search(text):
            char = _CONTROL.search(text)
            assert char is not None
            bad(
                path,
                f"the {what} contains the control character '{clip(char.group())}'",
                "rendered files take this value as one line of a statement (a line break would start a new one); "
                "keep it to one printable line",
            )
        limit = MAX_SCRIPT if multiline else MAX_STRING
        if len(text) > limit:
            bad(path, f"the {what} is {len(text)} characters long; the limit is {limit}")

    # an explicit stack: a document nests at most yamlsrc.MAX_DEPTH levels, but keep this loop free of recursion
    stack: list[tuple[KeyPath, Any, bool, bool]] = [((), located.data, False, False)]
    while stack:
        path, node, multiline, free = stack.pop()
        if isinstance(node, dict):
            if len(node) > MAX_ITEMS:
                bad(path, f"{len(node)} entries; the limit is {MAX_ITEMS}")
            for key, value in node.items():
                child = (*path, key if isinstance(key, str | int) else str(key))
                if isinstance(key, str) and not free:
                    check_str(child, key, multiline=False, is_key=True)
                in_json = free or (key == "json" and len(path) >= 2 and path[-1] == "smoke")
                stack.append((child, value, multiline or (key in _MULTILINE and not free), in_json))
        elif isinstance(node, list):
            if len(node) > MAX_ITEMS:
                bad(path, f"{len(node)} entries; the limit is {MAX_ITEMS}")
            stack.extend(((*path, i), item, multiline, free) for i, item in enumerate(node))
        elif isinstance(node, str):
            if free:
                if "\x00" in node:
                    bad(path, "the value contains a NUL byte", "remove it")
            else:
                check_str(path, node, multiline=multiline)
    return problems


# Weights land read-only and root-owned; under these they would replace what the system runs or trusts.
SYSTEM_PATHS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run", "/sbin",
    "/sys", "/usr/bin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/sbin", "/usr/include",
    "/usr/share/ca-certificates", "/var/lib/apt", "/var/lib/dpkg", "/tmp",  # noqa: S108 - refused, not used
)  # fmt: skip


def system_path(dest: str) -> str | None:
    """The system folder a destination lies in (after normalising `..`), or None; `/` itself counts."""
    norm = posixpath.normpath("/" + dest.lstrip("/"))
    if norm == "/":
        return "/"
    for prefix in SYSTEM_PATHS:
        if norm == prefix or norm.startswith(prefix + "/"):
            return prefix
    return None


def root_of(spec: Spec, leaf: str) -> tuple[str, Layer] | None:
    """The root layer of a chain, or None when the chain is broken (unknown parent, cycle: reported elsewhere)."""
    seen: set[str] = set()
    name = leaf
    while name in spec.layers and name not in seen:
        seen.add(name)
        parent = spec.layers[name].parent
        if parent is None:
            return name, spec.layers[name]
        name = parent
    return None


def check_store(spec: Spec, root: Path, file: str, located: Located) -> list[Problem]:
    """`store:` is a folder or s3://bucket/prefix; a URL with credentials in it is refused by every command."""
    url = spec.store
    line = located.line_of(("store",))
    if url.startswith("s3://"):
        if not url[len("s3://") :].partition("/")[0]:
            return [Problem(file, line, "store", f"store {clip(url)!r}: expected s3://bucket/prefix")]
        return []
    if "://" in url:
        scheme = url.split("://", 1)[0]
        hint = "credentials do not belong in the spec; " if "@" in url.split("://", 1)[1].split("/", 1)[0] else ""
        return [
            Problem(
                file,
                line,
                "store",
                f"store scheme {clip(scheme)!r} is not supported",
                f"{hint}use a folder or s3://bucket/prefix",
            )
        ]
    if not url.strip():
        return [Problem(file, line, "store", "store is empty", "use a folder or s3://bucket/prefix")]
    folder = posixpath.normpath(posixpath.join(str(root), url)) if not url.startswith("~") else url
    in_kernel_fs = folder.startswith(("/proc/", "/sys/", "/dev/")) and not folder.startswith("/dev/shm/")  # noqa: S108 (a name compared, no file made)
    if folder == "/" or folder in _SYSTEM_FOLDERS or in_kernel_fs:
        # every command would list (and plan would walk) the whole of it
        return [Problem(file, line, "store", f"store {clip(url)!r} is a system folder", "use a folder of its own")]
    return []


_SYSTEM_FOLDERS = frozenset(
    {"/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys",
     "/tmp", "/usr", "/var"}  # noqa: S108 - refused, not used
)  # fmt: skip


MAX_COPY_ENTRIES = 200_000


def copy_tree_problem(root: Path, rel: str) -> str | None:
    """Why a `copy:` source cannot be copied the same way by both targets, or None.

    Docker keeps a symlink as a link while Packer's upload follows it (a host file in the AMI), and a socket,
    FIFO, device, dangling link or loop fails the build later: all are refused when the spec is read.
    """
    import os
    import stat

    start = root / rel
    entries = 0

    def check(path: Path) -> str | None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None  # a missing source is reported by the planner, with its line
        except OSError as exc:
            return f"{clip(str(path))}: {exc.strerror or exc}"
        shown = clip(str(path.relative_to(root)) if path != root else ".")
        if stat.S_ISLNK(mode):
            return f"{shown} is a symlink; the docker target keeps links and the AMI target follows them"
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return f"{shown} is a socket, named pipe or device: only files and folders can be copied"
        return None

    if (why := check(start)) is not None or not start.is_dir():
        return why
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in {"__pycache__", ".git"}]  # left out of every image
        for name in sorted(dirnames + filenames):
            entries += 1
            if entries > MAX_COPY_ENTRIES:
                return f"{clip(rel)} holds over {MAX_COPY_ENTRIES} entries"
            if (why := check(Path(dirpath) / name)) is not None:
                return why
    return None
