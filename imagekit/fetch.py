"""Remote model files (https://, s3://): downloaded once into a content-addressed cache, checked before use."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import ssl
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from imagekit.digests import CHUNK, sha256_file
from imagekit.errors import BuildFailed
from imagekit.events import Event, Reporter, silent
from imagekit.paths import cache_dir
from imagekit.spec import ModelFile


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
            for chunk in _chunks(model.src, ca_bundle=ca_bundle, timeout=timeout):
                h.update(chunk)
                out.write(chunk)
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


def _chunks(src: str, *, ca_bundle: Path | None, timeout: float) -> Iterator[bytes]:
    url = urlparse(src)
    if url.scheme == "s3":
        return _s3_chunks(url.netloc, url.path.lstrip("/"))
    if url.scheme in ("https", "http"):
        return _http_chunks(src, ca_bundle=ca_bundle, timeout=timeout)
    raise BuildFailed(f"model src {src!r}: only https://, http:// and s3:// are fetched")


def _http_chunks(src: str, *, ca_bundle: Path | None, timeout: float) -> Iterator[bytes]:
    ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    req = urllib.request.Request(src, headers={"User-Agent": "imagekit"})  # noqa: S310 (scheme checked above)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout, context=ctx)  # noqa: S310
    except OSError as exc:
        raise BuildFailed(f"cannot download model {src}: {exc}") from None
    with resp:
        while chunk := resp.read(CHUNK):
            yield chunk


def _s3_chunks(bucket: str, key: str) -> Iterator[bytes]:
    from imagekit.runners.aws import aws_errors, s3_client

    # boto3 honours AWS_ENDPOINT_URL / AWS_PROFILE / AWS_REGION like the aws CLI does
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except aws_errors() as exc:
        raise BuildFailed(f"cannot download model s3://{bucket}/{key}: {exc}") from None
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
