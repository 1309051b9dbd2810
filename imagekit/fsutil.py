"""Small file helpers shared by everything that writes: atomic writes, so no half-written file is left."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644, exclusive: bool = False) -> None:
    """Write via a temp file and rename; with exclusive=True refuse to replace an existing file."""
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
