"""Remote model files (https://, s3://): downloaded once into a content-addressed cache, checked before use."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import ssl
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from imagekit.digests import CHUNK, sha256_file
from imagekit.errors import BuildFailed
from imagekit.events import Event, Reporter, silent
from imagekit.paths import cache_dir
from imagekit.spec import ModelFile

PROGRESS_EVERY = 0.25  # seconds between download progress events


def models_cache() -> Path:
    """Where fetched model files live: <cache>/models/<sha256>."""
    return cache_dir() / "models"


def fetch_model(
    model: ModelFile,
    *,
    ca_bundle: Path | None = None,
    reporter: Reporter = silent,
    image: str = "",
    layer: str = "",
    timeout: float = 600.0,
) -> Path:
    """The cached file for a remote model: downloaded when missing, its sha256 checked against the pin.

    A mismatch raises BuildFailed and leaves nothing in the cache, so no build step ever sees the bytes.
    """
    dest = models_cache() / model.sha256
    if dest.is_file():
        # the cache is keyed by the pin; re-check in case someone edited the file in place
        if sha256_file(dest) == model.sha256:
            reporter(Event("cached", f"model {model.src} (sha256 {model.sha256[:12]})", image, layer))
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    reporter(Event("step", f"downloading {model.src}", image, layer))
    fd, tmp_name = tempfile.mkstemp(prefix=".part-", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            total, chunks = _chunks(model.src, ca_bundle=ca_bundle, timeout=timeout)
            got, said = 0, 0.0
            for chunk in chunks:
                h.update(chunk)
                out.write(chunk)
                got += len(chunk)
                if time.monotonic() - said >= PROGRESS_EVERY:
                    said = time.monotonic()
                    reporter(Event("progress", f"downloading {model.src}", image, layer, "", got, total, "B"))
        found = h.hexdigest()
        if found != model.sha256:
            raise BuildFailed(
                f"model {model.src} has sha256 {found}, the spec pins {model.sha256}; nothing was built "
                "(update the pin if the new weights are intended)",
                image=image,
                layer=layer,
            )
        os.replace(tmp, dest)
        dest.chmod(0o444)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def _chunks(src: str, *, ca_bundle: Path | None, timeout: float) -> tuple[int | None, Iterator[bytes]]:
    """The size (when the server says it) and the bytes of a remote model."""
    url = urlparse(src)
    if url.scheme == "s3":
        return _s3_chunks(url.netloc, url.path.lstrip("/"))
    if url.scheme in ("https", "http"):
        return _http_chunks(src, ca_bundle=ca_bundle, timeout=timeout)
    raise BuildFailed(f"model src {src!r}: only https://, http:// and s3:// are fetched")


def _http_chunks(src: str, *, ca_bundle: Path | None, timeout: float) -> tuple[int | None, Iterator[bytes]]:
    ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    req = urllib.request.Request(src, headers={"User-Agent": "imagekit"})  # noqa: S310 (scheme checked above)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout, context=ctx)  # noqa: S310
    except OSError as exc:
        raise BuildFailed(f"cannot download model {src}: {exc}") from None
    length = resp.headers.get("Content-Length")

    def read() -> Iterator[bytes]:
        with resp:
            while chunk := resp.read(CHUNK):
                yield chunk

    return (int(length) if length and length.isdigit() else None), read()


def _s3_chunks(bucket: str, key: str) -> tuple[int | None, Iterator[bytes]]:
    from imagekit.runners.aws import aws_errors, s3_client

    # boto3 honours AWS_ENDPOINT_URL / AWS_PROFILE / AWS_REGION like the aws CLI does
    try:
        obj = s3_client().get_object(Bucket=bucket, Key=key)
    except aws_errors() as exc:
        raise BuildFailed(f"cannot download model s3://{bucket}/{key}: {exc}") from None
    length = obj.get("ContentLength")
    return (int(length) if isinstance(length, int) else None), _read_body(obj["Body"])


def _read_body(body: Any) -> Iterator[bytes]:
    while chunk := body.read(CHUNK):
        yield chunk


def stage(src: Path, dest: Path) -> None:
    """Put a file at dest by hard link (same filesystem, no copy of multi-GB weights), else by copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        if dest.is_file() and os.path.samefile(src, dest):
            return
        dest.unlink()
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
