"""Small file helpers shared by everything that writes: atomic writes, so no half-written file is left."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

WHEEL_MAGIC = b"PK\x03\x04"  # a wheel is a zip file


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def refuse_special(path: Path, what: str = "output") -> None:
    """UsageError (exit 2) when `path` exists as anything but a regular file: a rename over it would replace a
    device node (/dev/null as root) or a symlink with a regular file, so imagekit never writes over those."""
    from imagekit.errors import UsageError
    from imagekit.inputs import clip

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"{what} {clip(str(path))}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(
            f"{what} {clip(str(path))} is {_kind(mode)}: imagekit replaces only regular files; pick another name"
        )


def owned_dir(root: Path, rel: str) -> Path:
    """root/rel made of real folders, created as needed; UsageError when a part of it under root is a symlink or
    not a folder (a committed `.imagekit/wheelhouse -> elsewhere` must not make imagekit write or delete there)."""
    from imagekit.errors import UsageError
    from imagekit.inputs import clip

    current = root
    for part in Path(rel).parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                current.mkdir()
            mode = os.lstat(current).st_mode
        if not stat.S_ISDIR(mode):
            raise UsageError(
                f"{clip(str(current))} is {_kind(mode)}: imagekit keeps its own files there and follows no links; "
                "remove it (imagekit recreates the folder)"
            )
    return current


def wheel_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The wheels of a wheelhouse (regular `*.whl` zip files, no links) and the names of what else lies there.

    A wheelhouse may be any folder of the host (/opt/wheels), so nothing but wheel files leaves it: a spec naming
    the folder of a signing key gets no key into the build context or the image.
    """
    wheels: list[Path] = []
    skipped: list[str] = []
    for entry in sorted(folder.iterdir()):
        ok = False
        with contextlib.suppress(OSError):
            if entry.name.endswith(".whl") and stat.S_ISREG(os.lstat(entry).st_mode):
                fd = os.open(entry, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
                try:
                    ok = os.read(fd, 4) == WHEEL_MAGIC
                finally:
                    os.close(fd)
        (wheels.append(entry) if ok else skipped.append(entry.name))
    return wheels, skipped


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644, exclusive: bool = False) -> None:
    """Write via a temp file and rename; with exclusive=True refuse to replace an existing file."""
    refuse_special(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if exclusive:
            # link() fails if the name exists, so two writers can never replace each other's record.
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_dir(path: Path, what: str) -> None:
    """Refuse (UsageError, exit 2) a path that exists and is not a folder, or that cannot be a folder; never creates."""
    from imagekit.errors import UsageError
    from imagekit.inputs import clip

    probe = path
    try:
        # the first existing ancestor must be a folder too: `-o file/sub` fails as clearly as `-o file`
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            where = "" if probe == path else f" ({clip(str(probe))} is a file)"
            raise UsageError(f"{what} {clip(str(path))} is not a folder{where}: pick a folder")
    except OSError as exc:
        raise UsageError(f"{what} {clip(str(path))}: {exc.strerror or exc}") from None
