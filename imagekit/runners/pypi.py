"""The one client of the Python package index: a project's files (PEP 691 JSON), a release's wheel metadata (pip).

Used by scripts/gen_compat.py (which regenerates the compatibility matrix from the index) and by doctor/nightly
(how many torch releases the index has that the matrix lacks: one look-up, cached, never an error offline).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagekit.runners.process import run

DEFAULT_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
# pip matches each --platform tag exactly: every manylinux x86_64 tag torch and NVIDIA's wheels use (2_5..2_28)
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(28, 4, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
WHEEL_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9_.]+)-(?P<ver>\d+(?:\.\d+)+)(?:-\d[A-Za-z0-9_.]*)?-cp(?P<py>3\d+)-cp3\d+(?P<abi>m|t)?-(?P<plat>[A-Za-z0-9_.]+)\.whl$"
)
_PIP_SOURCES = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX")
CACHE_SECONDS = 24 * 3600
MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class IndexRelease:
    """One release's manylinux x86_64 CPython wheels on the index: its version and the Pythons it has wheels for."""

    version: str
    python: tuple[str, ...]
    files: tuple[str, ...]


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def project_files(project: str, index: str = DEFAULT_INDEX, timeout: float = 30) -> list[str]:
    """Every file name the index lists for a project (one request, PEP 691 JSON)."""
    url = f"{index.rstrip('/')}/{project}/"
    req = urllib.request.Request(url, headers={"Accept": SIMPLE_JSON})  # noqa: S310 (an https index URL)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        body = resp.read(MAX_BYTES + 1)
    if len(body) > MAX_BYTES:
        raise ValueError(f"{url}: answer larger than {MAX_BYTES} bytes")
    doc = json.loads(body)
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list):
        raise ValueError(f"{url}: no 'files' list in the answer (not a PEP 691 index?)")
    return [str(f["filename"]) for f in files if isinstance(f, dict) and isinstance(f.get("filename"), str)]


def linux_releases(files: Iterable[str], since: str = "0") -> list[IndexRelease]:
    """Releases (oldest first, from `since` on) with manylinux x86_64 CPython wheels, and their Pythons."""
    rows: dict[str, tuple[set[str], set[str]]] = {}
    for name in files:
        m = WHEEL_RE.match(name)
        if m is None or "x86_64" not in m["plat"] or "linux" not in m["plat"] or m["abi"] == "t":
            continue
        if _vkey(m["ver"]) < _vkey(since):
            continue
        pys, names = rows.setdefault(m["ver"], (set(), set()))
        pys.add(f"3.{m['py'][1:]}")
        names.add(name)
    return [
        IndexRelease(v, tuple(sorted(rows[v][0], key=_vkey)), tuple(sorted(rows[v][1])))
        for v in sorted(rows, key=_vkey)
    ]


def wheel_metadata(project: str, version: str, python: str, index: str = DEFAULT_INDEX) -> dict[str, Any]:
    """The core metadata of a release's manylinux x86_64 wheel for one Python (pip --dry-run --report, --no-deps).

    pip reads no config file and none of the PIP_* variables that add sources or limits (find-links, extra indexes,
    constraints of this machine), so only the index answers.
    """
    with tempfile.TemporaryDirectory(prefix="imagekit-pip-") as tmp:
        report_path = Path(tmp) / "report.json"
        argv = [
            "env", *(f"--unset={k}" for k in _PIP_SOURCES), "PIP_CONFIG_FILE=" + os.devnull,
            sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report",
            str(report_path), "--no-deps", "--only-binary", ":all:", "--python-version", python,
            "--target", str(Path(tmp) / "t"), "--index-url", index,
        ]  # fmt: skip
        for plat in PLATFORMS:
            argv += ["--platform", plat]
        result = run([*argv, f"{project}=={version}"], capture=True, timeout=600)
        if result.returncode != 0:
            tail = "\n".join(result.tail[-5:])
            raise RuntimeError(f"pip could not read {project}=={version} for Python {python}: {tail}")
        report = json.loads(report_path.read_text(encoding="utf-8"))
    (item,) = report["install"]
    meta = dict(item["metadata"])
    meta["_wheel"] = str(item["download_info"]["url"]).rsplit("/", 1)[-1]
    return meta


# --- the cached count doctor and nightly report -----------------------------------------------------------------


def cache_file() -> Path:
    """Where the one look-up of torch's releases is cached (XDG cache folder)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imagekit" / "torch-index.json"


def torch_versions_cached(
    index: str | None = None, *, path: Path | None = None, max_age: float = CACHE_SECONDS, timeout: float = 10
) -> tuple[list[str] | None, str]:
    """Torch releases with manylinux x86_64 wheels on the index, from a cache younger than a day or one look-up.

    The index is IMAGEKIT_TORCH_INDEX when set (a mirror), else PyPI. Returns (versions, where) or (None, why)
    when the index cannot be reached and nothing is cached: never raises.
    """
    index = index or os.environ.get("IMAGEKIT_TORCH_INDEX") or DEFAULT_INDEX
    path = path or cache_file()
    cached: dict[str, Any] | None = None
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = None
    fresh = isinstance(cached, dict) and cached.get("index") == index
    if fresh and isinstance(cached, dict) and time.time() - float(cached.get("time", 0)) < max_age:
        return [str(v) for v in cached.get("versions", [])], f"{index} (cached)"
    try:
        versions = [r.version for r in linux_releases(project_files("torch", index, timeout))]
    except (OSError, ValueError, urllib.error.URLError, TimeoutError) as exc:
        if fresh and isinstance(cached, dict):
            return [str(v) for v in cached.get("versions", [])], f"{index} (cached, stale: {exc})"
        return None, f"{index} unreachable ({exc})"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"index": index, "time": time.time(), "versions": versions}), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a cache that cannot be written only costs the next look-up
    return versions, index
