"""Nothing unasked-for: a Python package in the image that no lock of the chain names fails verify, naming it."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from conftest import EXAMPLES, REPO

from imagekit.plan import plan_image
from imagekit.spec import load_spec
from imagekit.verify.report import compare, excepted_packages
from imagekit.verify.unasked import find_unasked, layer_finder

FIXTURE = REPO / "tests" / "fixtures" / "probe-cpu.json"
CPU_SPEC = EXAMPLES / "tts" / "imagekit-cpu.yaml"
SITE = "/opt/venv/lib/python3.11/site-packages"


@pytest.fixture
def probe() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    data["pip"]["prefix"] = "/opt/venv"
    data["pip"]["locations"] = {name: SITE for name in data["pip"]["packages"]}
    return data


def _with(probe: dict[str, Any], name: str, version: str, location: str) -> dict[str, Any]:
    out = copy.deepcopy(probe)
    out["pip"]["packages"][name] = version
    out["pip"]["locations"][name] = location
    return out


def test_the_real_cpu_image_has_nothing_unasked(probe: dict[str, Any]) -> None:
    assert compare(probe, load_spec(CPU_SPEC), "tts-cpu") == []
    # pip and setuptools came with `python -m venv`: excepted, and listed
    listed = excepted_packages(probe, load_spec(CPU_SPEC), "tts-cpu")
    assert [x.split()[0] for x in listed] == ["pip"]  # setuptools is in the CPU lock
    assert "seeded by python -m venv" in listed[0]


def test_an_injected_package_in_the_venv_fails_naming_it(probe: dict[str, Any]) -> None:
    bad = _with(probe, "evil_pkg", "6.6.6", SITE)
    failures = compare(bad, load_spec(CPU_SPEC), "tts-cpu")
    assert len(failures) == 1
    assert failures[0].startswith(f"pip evil_pkg 6.6.6: installed in {SITE} but named by no lock of the chain")
    assert "requirements-cpu.lock" in failures[0]


def test_the_bases_system_packages_are_excepted_and_listed(probe: dict[str, Any]) -> None:
    ok = _with(probe, "python-apt", "2.6.0", "/usr/lib/python3/dist-packages")
    assert compare(ok, load_spec(CPU_SPEC), "tts-cpu") == []
    assert any(
        x.startswith("python-apt 2.6.0 (the base's system package")
        for x in excepted_packages(ok, load_spec(CPU_SPEC), "tts-cpu")
    )
    # pip-installed into the system (/usr/local) is not the base's: it must be named by a lock
    bad = _with(probe, "requests", "2.0", "/usr/local/lib/python3.11/dist-packages")
    assert [f.split(":")[0] for f in compare(bad, load_spec(CPU_SPEC), "tts-cpu")] == ["pip requests 2.0"]


def test_a_seed_name_outside_the_venv_is_not_excepted(probe: dict[str, Any]) -> None:
    bad = _with(probe, "pip", "80.0", "/usr/local/lib/python3.11/dist-packages")
    assert [f.split(":")[0] for f in compare(bad, load_spec(CPU_SPEC), "tts-cpu")] == ["pip pip 80.0"]


def test_an_untrusted_name_is_refused_not_echoed(probe: dict[str, Any]) -> None:
    bad = _with(probe, "\x1b[31mred", "1", SITE)
    found = find_unasked(bad, set())
    assert found.errors and "\x1b" not in found.errors[0]


def test_the_layer_it_appeared_in_is_the_first_layer_image_holding_it(probe: dict[str, Any]) -> None:
    loaded = load_spec(CPU_SPEC)
    layers = plan_image(loaded, "tts-cpu", "docker").layers
    asked: list[str] = []

    def probe_image(tag: str) -> dict[str, Any] | None:
        asked.append(tag)
        # the injected package is in the runtime layer's image and every image above it
        holds = any(tag.split(":")[0].endswith(f"-{lp.name}") for lp in layers[1:])
        return {"pip": {"packages": {"evil-pkg": "1"} if holds else {}}}

    layer_of = layer_finder(loaded, "tts-cpu", probe_image)
    failures = compare(_with(probe, "evil_pkg", "1", SITE), loaded, "tts-cpu", layer_of=layer_of)
    assert f"it appeared in layer {layers[1].name}" in failures[0]
    assert len(asked) == 2  # root, then the runtime layer: found, no more probing


def test_debians_pkg_resources_seed_is_excepted_and_only_that_version(probe: dict[str, Any]) -> None:
    """Debian's setuptools in a bullseye venv records `pkg_resources 0.0.0` (the indextts2 image has it)."""
    seed = _with(probe, "pkg_resources", "0.0.0", SITE)
    assert compare(seed, load_spec(CPU_SPEC), "tts-cpu") == []
    assert any(
        x.startswith("pkg_resources 0.0.0 (seeded") for x in excepted_packages(seed, load_spec(CPU_SPEC), "tts-cpu")
    )
    other = _with(probe, "pkg_resources", "1.0", SITE)
    assert [f.split(":")[0] for f in compare(other, load_spec(CPU_SPEC), "tts-cpu")] == ["pip pkg_resources 1.0"]
