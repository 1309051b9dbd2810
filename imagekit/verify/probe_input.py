"""The one boundary for what the probe prints: bounded JSON, parsed into the shape the judges expect.

The probe runs inside the image under test, whose `python` can print anything: a list where an object is
expected, 5,000-digit numbers, lone surrogates, deep nesting, empty package names, hundreds of MB. Everything the
report, the record, the SBOM and the terminal later see comes through here: sizes, depth, numbers and strings are
bounded, strings are valid Unicode, every known section has its type, package names and versions are what a
package manager could have installed. What does not fit is dropped and named as a problem: a failed check
(exit 1) with a report and a record, never a crash.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from imagekit.inputs import JsonInputError, clip, load_json

# A full probe (a few thousand dpkg and pip packages) is well under 1 MB; a record embeds it (base64 in a DSSE
# envelope) and must stay under the readers' MAX_RECORD_BYTES (16 MiB), with its SBOM beside it. The bound holds
# for the probe as imagekit writes it again (1e15 comes back as 1000000000000000.0), not only as it was read.
MAX_PROBE_BYTES = 4 * 1024 * 1024
# The SBOM lists every package (its purl three times: purl, bom-ref, the dependency graph; a `+` becomes `%2B`):
# at most ~200 bytes and 10 bytes per character of name and version each. The inventory is bounded so that the
# SBOM's envelope (base64: 4/3) stays well under MAX_RECORD_BYTES; a real image (a desktop has ~2,500 dpkg
# packages, a CUDA image ~500 pip and dpkg ones) needs a small part of it.
MAX_PACKAGES = 20_000  # per section (pip, dpkg)
MAX_SBOM_BYTES = 8 * 1024 * 1024
SBOM_ENTRY_BYTES = 256
SBOM_CHAR_BYTES = 10
# os-release(5): ID and VERSION_ID are lower-case 0-9, a-z, '.', '_', '-'; both go into every dpkg purl
OS_TOKEN = re.compile(r"[a-z0-9._-]{1,64}")
MAX_PROBE_DEPTH = 16
MAX_STRING = 4096
MAX_ITEMS = 50_000  # entries of one list or object
MAX_INT_DIGITS = 40

# name -> the type its value must have; a section of another type is replaced by {"error": ...}
DICT_SECTIONS = ("os", "python", "user", "torch", "nvidia_smi", "pip", "dpkg", "models", "cuda_libs", "cuda_check")
# PEP 508 names; Debian policy names; versions as either may write them
PIP_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?")
DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{0,199}")
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~:_!-]{0,199}")


class ProbeInputError(ValueError):
    """The probe's output is not a probe at all (not JSON, too big, too deep, not an object)."""


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"a number of {len(text)} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"a number out of range ({clip(text, 40)})")
    return value


def _constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def _string(value: str, problems: list[str], where: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become '?'
        problems.append(f"{where or 'a value'}: not valid Unicode (lone surrogates replaced)")
    if len(value) > MAX_STRING:
        problems.append(f"{where or 'a value'}: {len(value)} characters, cut to {MAX_STRING}")
        value = value[:MAX_STRING]
    return value


def _bound(value: Any, problems: list[str], where: str) -> Any:
    if isinstance(value, str):
        return _string(value, problems, where)
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            problems.append(f"{where}: {len(value)} items, cut to {MAX_ITEMS}")
        return [_bound(v, problems, f"{where}[{i}]") for i, v in enumerate(value[:MAX_ITEMS])]
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            problems.append(f"{where}: {len(value)} keys, cut to {MAX_ITEMS}")
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_ITEMS:
                break
            key = _string(k, problems, f"{where} key")
            out[key] = _bound(v, problems, f"{where}.{clip(key, 60)}" if where else clip(key, 60))
        return out
    return value  # None, bool, bounded int, finite float


def _packages(section: dict[str, Any], name_re: re.Pattern[str], what: str, problems: list[str]) -> None:
    packages = section.get("packages")
    if packages is None:
        return
    if not isinstance(packages, dict):
        problems.append(f"{what}.packages: expected an object of name -> version, found {type(packages).__name__}")
        section["packages"] = {}
        return
    kept: dict[str, str] = {}
    for name, version in packages.items():
        if not name_re.fullmatch(name) or not isinstance(version, str) or not VERSION.fullmatch(version):
            problems.append(f"{what}.packages: {clip(name, 80)!r} = {clip(str(version), 80)!r} is not a package")
            continue
        kept[name] = version
    section["packages"] = kept


def sbom_cost(packages: dict[str, str]) -> int:
    """An upper bound of what these packages add to the SBOM document, in bytes."""
    return sum(SBOM_ENTRY_BYTES + SBOM_CHAR_BYTES * (len(k) + len(v)) for k, v in packages.items())


def _inventory(probe: dict[str, Any], problems: list[str]) -> None:
    """Bound the package lists the SBOM is made of: a section over MAX_PACKAGES, or an inventory whose SBOM would
    pass MAX_SBOM_BYTES, is dropped (a failed check) rather than signed into a record no reader takes."""
    sections = {name: probe[name] for name in ("pip", "dpkg") if isinstance(probe.get(name), dict)}
    for name, section in sections.items():
        packages = section.get("packages")
        if isinstance(packages, dict) and len(packages) > MAX_PACKAGES:
            problems.append(f"{name}.packages: {len(packages)} packages, more than {MAX_PACKAGES}; not listed")
            section["packages"] = {}
    costs = {n: sbom_cost(s.get("packages") or {}) for n, s in sections.items()}
    if sum(costs.values()) > MAX_SBOM_BYTES:
        counts = " and ".join(f"{len(sections[n].get('packages') or {})} {n}" for n in costs)
        problems.append(f"packages: {counts} packages would make an SBOM over {MAX_SBOM_BYTES} bytes; not listed")
        for section in sections.values():
            section["packages"] = {}
    os_info = probe.get("os")
    if isinstance(os_info, dict):
        for key in ("id", "version_id"):
            value = os_info.get(key)
            if value is not None and not (isinstance(value, str) and OS_TOKEN.fullmatch(value)):
                problems.append(f"os.{key}: {clip(str(value), 80)!r} is not an os-release token")
                del os_info[key]


def _list_of_dicts(section: dict[str, Any], key: str, what: str, problems: list[str]) -> None:
    items = section.get(key)
    if items is None:
        return
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        problems.append(f"{what}.{key}: expected a list of objects")
        section[key] = [x for x in items if isinstance(x, dict)] if isinstance(items, list) else []


def parse_probe(raw: bytes | str, *, last_line: bool = False) -> tuple[dict[str, Any], list[str]]:
    """(the probe as the judges read it, what had to be dropped or cut); ProbeInputError when it is no probe.

    last_line: the output of a run, where the probe's JSON is the last line and whatever the image printed before
    it is not part of it (a saved probe file may be pretty-printed over many lines).
    """
    text = raw.strip()
    if not text:
        raise ProbeInputError("not JSON: empty")
    last = text.splitlines()[-1] if last_line else text
    try:
        data = load_json(
            last,
            limit=MAX_PROBE_BYTES,
            max_depth=MAX_PROBE_DEPTH,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except JsonInputError as exc:
        raise ProbeInputError(clip(str(exc), 200)) from None
    if not isinstance(data, dict):
        raise ProbeInputError(f"expected a JSON object, found {type(data).__name__}")
    problems: list[str] = []
    probe: dict[str, Any] = _bound(data, problems, "")
    written = len(json.dumps(probe, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace"))
    if written > MAX_PROBE_BYTES:
        raise ProbeInputError(f"{written} bytes once parsed (numbers written out); the limit is {MAX_PROBE_BYTES}")
    for name in DICT_SECTIONS:
        if name in probe and not isinstance(probe[name], dict):
            problems.append(f"{name}: expected an object, found {type(probe[name]).__name__}")
            probe[name] = {"error": f"not an object ({type(probe[name]).__name__})"}
    _packages(probe.get("pip") or {}, PIP_NAME, "pip", problems)
    _packages(probe.get("dpkg") or {}, DEB_NAME, "dpkg", problems)
    _inventory(probe, problems)
    _list_of_dicts(probe.get("nvidia_smi") or {}, "gpus", "nvidia_smi", problems)
    _list_of_dicts(probe.get("torch") or {}, "devices", "torch", problems)
    _list_of_dicts(probe.get("cuda_check") or {}, "devices", "cuda_check", problems)
    models = probe.get("models") or {}
    for path in [p for p, entry in models.items() if not isinstance(entry, dict)]:
        problems.append(f"models.{clip(path, 80)}: expected an object")
        models[path] = {"error": "not an object"}
    return probe, [f"probe: {p}" for p in problems[:50]] + (
        [f"probe: … and {len(problems) - 50} more"] if len(problems) > 50 else []
    )
