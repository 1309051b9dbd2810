"""The one wrapper around skopeo: copy images between transports (containers-storage, docker-daemon,
docker-archive, oci, a registry) with no daemon, and read the digest the destination registry stored.

A subject digest belongs to the tool that pushed: skopeo and `docker push` compress the same layers differently
and get different manifest digests, so the digest recorded is the one `--digestfile` reports, never recomputed.
Plain HTTP (no TLS verification) only for a registry on this machine (127.0.0.0/8, localhost), as
runners/registry.py and the Docker Engine do.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from imagekit.errors import BuildFailed, ToolMissing
from imagekit.runners import process

SKOPEO = "skopeo"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def skopeo_path() -> str:
    """The skopeo binary on PATH; ToolMissing (with the apt line) when it is not installed."""
    found = shutil.which(SKOPEO)
    if found is None:
        raise ToolMissing("skopeo is not installed (apt-get install skopeo; see scripts/setup-host.sh)")
    return found


def registry_host(transport_ref: str) -> str | None:
    """The registry host of a `docker://HOST/REPO[:TAG]` reference, None for other transports."""
    if not transport_ref.startswith("docker://"):
        return None
    return transport_ref[len("docker://") :].split("/", 1)[0]


def _is_local(host: str) -> bool:
    from imagekit.runners.registry import is_local

    return is_local(host)


def copy(
    src: str,
    dest: str,
    *,
    log: IO[str] | None = None,
    on_line: Callable[[str], None] | None = None,
    extra: Sequence[str] = (),
    timeout: float | None = None,
) -> str:
    """`skopeo copy SRC DEST` (transport references, e.g. `containers-storage:img:tag`, `docker://reg/repo:tag`);
    returns the manifest digest written at the destination (`--digestfile`). BuildFailed with skopeo's error."""
    argv = [skopeo_path(), "copy"]
    for flag, ref in (("--src-tls-verify=false", src), ("--dest-tls-verify=false", dest)):
        host = registry_host(ref)
        if host is not None and _is_local(host):
            argv.append(flag)
    with tempfile.TemporaryDirectory(prefix="imagekit-skopeo-") as tmp:
        digestfile = Path(tmp) / "digest"
        argv += ["--digestfile", str(digestfile), *extra, src, dest]
        if log is not None:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
        res = process.run(argv, log=log, on_line=on_line, capture=True, timeout=timeout)
        digest = digestfile.read_text(encoding="utf-8").strip() if digestfile.is_file() else ""
    if not res.ok:
        why = next((ln for ln in reversed(res.tail) if ln.strip()), f"exit {res.returncode}")
        raise BuildFailed(f"skopeo copy {src} -> {dest} failed: {why.strip()}", log_tail=res.tail[-15:])
    if not DIGEST_RE.match(digest):
        raise BuildFailed(f"skopeo copy {src} -> {dest} wrote no manifest digest (got {digest[:80]!r})")
    return digest


def version() -> str:
    """skopeo's version ("" when it cannot say)."""
    try:
        res = process.capture([skopeo_path(), "--version"], timeout=30)
    except (ToolMissing, process.CommandTimeout):
        return ""
    m = re.search(r"version (\S+)", res.output)
    return m.group(1) if res.ok and m else ""


def manifest_digest(ref: str, *, timeout: float = 120) -> str:
    """The manifest digest a transport reference resolves to now (`skopeo inspect`; nothing is copied)."""
    argv = [skopeo_path(), "inspect", "--format", "{{.Digest}}"]
    host = registry_host(ref)
    if host is not None and _is_local(host):
        argv.append("--tls-verify=false")
    res = process.capture([*argv, ref], timeout=timeout)
    digest = res.output.strip().splitlines()[-1] if res.ok and res.output.strip() else ""
    if not DIGEST_RE.match(digest):
        why = next((ln for ln in reversed(res.tail) if ln.strip()), f"exit {res.returncode}")
        raise BuildFailed(f"skopeo inspect {ref} failed: {why.strip()}")
    return digest
