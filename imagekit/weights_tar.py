"""Root-owned weights go in as a reproducible tar, so their layer keeps its digest when a layer below changes.

A `COPY w.pt /opt/models/w.pt` layer holds the folders it creates or touches (`opt/`, `opt/models/`) stamped with the
build's time, so a rebuild of any layer below (a light pin in the runtime's lock) gives the weights' layer a new digest,
and the push uploads GBs of unchanged weights again; buildah does the same on an app-only rebuild. An `ADD w.tar /` of a
tar whose every entry has a fixed owner, mode and time extracts to the same layer on any parent (BuildKit and buildah
both set an extracted folder's time from its header; checked here with Docker 20.10.24 and buildah 1.28: the same
diff id on two parents, where COPY gave two). `COPY --link` would do it too, but needs a Dockerfile frontend that
Debian's Docker 20.10 does not ship.

The tar holds the dest's folders (root:root 0755, as COPY makes missing ones) and the file (root:root 0444), all
with time 0. So it is used only for root-owned weights (no `mode:`) under a folder of the image's own, not under the
system's (/usr, /var, /home, /tmp, ... and the merged-/usr links /bin, /lib, /sbin), whose owners and modes a tar
must not reset: those keep COPY. The tar is written next to the build context under .imagekit/weights/, named by the
weights' sha256 and dest, checked against the sha256 while it is written, and reused while it is there.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from imagekit.errors import BuildFailed
from imagekit.fsutil import owned_dir
from imagekit.names import MODELS_DIR
from imagekit.spec import LoadedSpec
from imagekit.spec_model import ModelFile

WEIGHT_TARS_DIR = ".imagekit/weights"
FORMAT = "imagekit-weights-tar/1"  # part of every tar's name: a change to the layout below makes new names
SYSTEM_TOP = frozenset(
    [
        "bin",
        "boot",
        "dev",
        "etc",
        "home",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "media",
        "proc",
        "root",
        "run",
        "sbin",
        "sys",
        "tmp",
        "usr",
        "var",
    ]
)
PRUNE_AFTER_S = 7 * 86400
_BLOCK = 512
_CHUNK = 1 << 20


def as_tar(model: ModelFile) -> bool:
    """True when the weights go in by `ADD <tar> /`: root-owned (no mode) and under a folder of the image's own."""
    parts = PurePosixPath(model.dest).parts
    return model.mode is None and len(parts) >= 3 and parts[1] not in SYSTEM_TOP


def tar_name(model: ModelFile) -> str:
    """The tar's spec-relative path, from what decides its bytes (sha256, dest, format)."""
    key = hashlib.sha256(f"{FORMAT}\0{model.sha256}\0{model.dest}".encode()).hexdigest()[:32]
    return f"{WEIGHT_TARS_DIR}/{key}.tar"


def _info(name: str, *, size: int = 0, folder: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name + ("/" if folder else ""))
    info.type = tarfile.DIRTYPE if folder else tarfile.REGTYPE
    info.mode = 0o755 if folder else 0o444
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_tar(src: BinaryIO, size: int, model: ModelFile, out: BinaryIO) -> str:
    """Write the tar of one weights file read from src (size bytes) to out; returns the sha256 of what was read."""
    parts = PurePosixPath(model.dest).parts[1:]
    for i in range(1, len(parts)):
        out.write(_info("/".join(parts[:i]), folder=True).tobuf(tarfile.GNU_FORMAT))
    out.write(_info("/".join(parts), size=size).tobuf(tarfile.GNU_FORMAT))
    digest = hashlib.sha256()
    left = size
    while left:
        chunk = src.read(min(_CHUNK, left))
        if not chunk:
            raise OSError(f"ended {left} bytes early")
        digest.update(chunk)
        out.write(chunk)
        left -= len(chunk)
    out.write(b"\0" * (-size % _BLOCK))
    out.write(b"\0" * (2 * _BLOCK))  # the end-of-archive marker
    return digest.hexdigest()


def stage_tar(root: Path, model: ModelFile, src: Path, *, image: str = "", layer: str = "") -> Path:
    """<root>/<tar_name(model)>, written (temp file, then rename) unless already there; BuildFailed when src's bytes
    are not the pinned sha256."""
    dest = root / tar_name(model)
    folder = owned_dir(root, WEIGHT_TARS_DIR)
    if dest.is_file() and not dest.is_symlink():
        os.utime(dest)  # in use: prune_tars leaves it for another week
        return dest
    tmp = folder / f".{dest.name}.{os.getpid()}.tmp"
    try:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            found = write_tar(fin, os.fstat(fin.fileno()).st_size, model, fout)
        if found != model.sha256:
            raise BuildFailed(
                f"weights {model.src} changed while staged: sha256 {found}, the spec pins {model.sha256}",
                image=image,
                layer=layer,
            )
        os.replace(tmp, dest)
    except OSError as exc:
        raise BuildFailed(f"weights {model.src}: cannot stage {dest}: {exc}", image=image, layer=layer) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def prune_tars(root: Path, keep: set[str], *, older_than_s: float = PRUNE_AFTER_S) -> list[Path]:
    """Remove the tars under <root>/.imagekit/weights that the spec does not name and no build staged or used for
    older_than_s (another spec in the same folder may still use one: it touches its tars on every build)."""
    folder = root / WEIGHT_TARS_DIR
    if not folder.is_dir() or folder.is_symlink():
        return []
    removed: list[Path] = []
    now = time.time()
    for path in folder.glob("*.tar"):
        if f"{WEIGHT_TARS_DIR}/{path.name}" in keep or path.is_symlink() or not path.is_file():
            continue
        if now - path.stat().st_mtime > older_than_s:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def stage_weight_tars(loaded: LoadedSpec, image: str, *, present_only: bool = False) -> list[Path]:
    """Stage the tar of every root-owned weights file of the image's chain (remote ones must be fetched into
    .imagekit/models first, or are skipped with present_only), and drop tars no build has used for a week."""
    staged: list[Path] = []
    for layer_name, layer in loaded.chain(image):
        for model in layer.models:
            if not as_tar(model):
                continue
            src = loaded.root / MODELS_DIR / model.sha256 if model.is_remote else loaded.local(model.src)
            if present_only and not src.is_file():
                continue
            staged.append(stage_tar(loaded.root, model, src, image=image, layer=layer_name))
    keep = {tar_name(m) for layer in loaded.spec.layers.values() for m in layer.models if as_tar(m)}
    prune_tars(loaded.root, keep)
    return staged
