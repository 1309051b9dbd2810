"""Nothing unasked-for: every Python package in the image's environment must be named by a lock of the chain.

A dependency a base brought along or a package a compromised build step slipped in passes the pin comparison
(it compares only what the locks name); this check looks the other way, from the image to the locks. Excepted,
and listed in the report: the base's own system packages (Debian's, under /usr/lib/python3*, which dpkg owns and
the SBOM lists as Debian packages) and the packages `python -m venv` seeds into the venv (pip, setuptools).

The probe's pip section is untrusted input: names must look like project names, versions and locations are
clipped before they reach a message, and a list beyond MAX_PACKAGES is itself a failure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imagekit.errors import ImagekitError
from imagekit.inputs import clip
from imagekit.spec import LoadedSpec
from imagekit.verify.probe_input import MAX_PACKAGES  # one bound for the inventory

# Debian's python3-* packages live here (dpkg owns them); /usr/local and the venv are pip's
SYSTEM_SITE = re.compile(r"^/usr/lib/python3(\.\d+)?/(dist|site)-packages/?$")
# what `python -m venv` puts in a new venv (ensurepip); python >= 3.12 seeds pip alone
VENV_SEEDS = frozenset({"pip", "setuptools"})
# Debian's patched setuptools seeds a `pkg_resources 0.0.0` record beside it (seen in the indextts2 image: bullseye,
# Python 3.9); that exact entry is part of the seed, any other version of the name is not
DEBIAN_SEED = ("pkg-resources", "0.0.0")
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?$")


def normalize(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Unasked:
    """The image's Python packages that no lock names, and those excepted (with why)."""

    found: list[tuple[str, str, str]] = field(default_factory=list)  # (name, version, location)
    excepted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def pip_entry_name(entry: str) -> str:
    """The project a `pip:` entry names ('six==1.17.0', 'uvicorn[standard]>=0.30' -> 'six', 'uvicorn')."""
    return normalize(re.split(r"[=<>!~\[; @]", entry.strip(), maxsplit=1)[0])


def find_unasked(probe: Mapping[str, Any], asked: set[str]) -> Unasked:
    """The probe's installed Python packages checked against the names the chain's locks give (normalized)."""
    pip = probe.get("pip")
    if not isinstance(pip, dict) or "error" in pip:
        return Unasked()  # compare() reports a missing pip section when there are pins
    packages = pip.get("packages")
    locations = pip.get("locations")
    if not isinstance(packages, dict):
        return Unasked()
    if len(packages) > MAX_PACKAGES:
        return Unasked(errors=[f"pip: the probe listed {len(packages)} packages (more than {MAX_PACKAGES})"])
    if not isinstance(locations, dict):
        # a probe from before locations were reported: the system's packages cannot be told apart
        locations = {}
    prefix = str(pip.get("prefix") or "")
    found: list[tuple[str, str, str]] = []
    excepted: list[str] = []
    errors: list[str] = []
    for raw_name, raw_version in packages.items():
        name, version = str(raw_name), clip(str(raw_version), 64)
        if not _NAME.match(name):
            errors.append(f"pip: the probe listed a package whose name is not a project name: {clip(name, 80)!r}")
            continue
        location = str(locations.get(raw_name) or "")
        key = normalize(name)
        if key in asked:
            continue
        if SYSTEM_SITE.match(location):
            excepted.append(f"{name} {version} (the base's system package, {clip(location, 120)})")
        elif (key in VENV_SEEDS or (key, version) == DEBIAN_SEED) and (
            not prefix or location.startswith(prefix.rstrip("/") + "/")
        ):
            excepted.append(f"{name} {version} (seeded by python -m venv into {clip(prefix or location, 120)})")
        else:
            found.append((name, version, clip(location, 200)))
    return Unasked(sorted(found, key=lambda t: normalize(t[0])), sorted(excepted), errors)


def unasked_failures(
    unasked: Unasked, sources: list[str], layer_of: Callable[[str], str | None] | None = None
) -> list[str]:
    """One failure per unasked package: its name, version, where it is and the layer it appeared in."""
    named = ", ".join(sources) or "none: the chain has no lock"
    out = list(unasked.errors)
    for name, version, location in unasked.found:
        layer = layer_of(name) if layer_of is not None else None
        where = f"it appeared in layer {layer}" if layer else "the layer it came from is not known here"
        out.append(
            f"pip {name} {version}: installed in {location or 'the image'} but named by no lock of the chain "
            f"({named}); {where}. Add it to that layer's lock, or remove what installed it"
        )
    return out


def layer_finder(
    loaded: LoadedSpec, image: str, probe_image: Callable[[str], Mapping[str, Any] | None]
) -> Callable[[str], str | None]:
    """layer_of(package): the first layer of the chain (root first) whose tagged image holds that Python package.

    Only asked when a package no lock names was found; probe_image(tag) runs the probe in a layer's image (None
    when the engine does not have it), once per layer.
    """
    from imagekit.names import layer_tag
    from imagekit.plan import plan_image

    seen: dict[str, set[str] | None] = {}

    def installed(tag: str) -> set[str] | None:
        if tag not in seen:
            probe = probe_image(tag) or {}
            pip = probe.get("pip")
            pkgs = pip.get("packages") if isinstance(pip, dict) else None
            seen[tag] = {normalize(str(k)) for k in pkgs} if isinstance(pkgs, dict) else None
        return seen[tag]

    def layer_of(package: str) -> str | None:
        try:
            layers = plan_image(loaded, image, "docker").layers
        except ImagekitError:
            return None
        for lp in layers:
            found = installed(layer_tag(loaded.spec.name, lp.name, lp.hash))
            if found is not None and normalize(package) in found:
                return lp.name
        return None

    return layer_of
