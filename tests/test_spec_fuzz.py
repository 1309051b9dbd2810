"""Property tests: whatever the loader is fed, it returns a LoadedSpec or raises a clean SpecError."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagekit.compat import check_spec
from imagekit.errors import SpecError
from imagekit.spec import LoadedSpec, parse_spec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tts" / "imagekit.yaml"
# IMAGEKIT_FUZZ_EXAMPLES=5000 for a long local run; the default keeps the suite fast.
SETTINGS = settings(
    max_examples=int(os.environ.get("IMAGEKIT_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["12.4", "none", "2.5.1", "3.11", "550", "docker", "ami", "app", "base", "/opt/x", "../x"]),
)
keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["version", "name", "layers", "images", "leaf", "parent", "from", "cuda", "torch", "models"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    return folder / "imagekit.yaml"


def _load(text: str, path: Path) -> None:
    try:
        loaded = parse_spec(text, path)
    except SpecError as exc:
        assert exc.problems, "a SpecError must carry at least one problem"
        for problem in exc.problems:
            assert problem.line >= 0
            assert str(problem).startswith(problem.file)
        return
    assert isinstance(loaded, LoadedSpec)
    # A spec that loads must also go through the matrix cleanly (problems are fine, exceptions are not).
    for problem in check_spec(loaded):
        assert problem.line >= 1 and problem.path


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text(spec_path: Path, text: str) -> None:
    _load(text, spec_path)


@SETTINGS
@given(doc=values)
def test_arbitrary_structured_yaml(spec_path: Path, doc: Any) -> None:
    _load(yaml.safe_dump(doc, allow_unicode=True), spec_path)


@SETTINGS
@given(doc=st.dictionaries(keys, values, max_size=6))
def test_arbitrary_top_level_mapping(spec_path: Path, doc: dict[str, Any]) -> None:
    base = {"version": 1, "name": "x", "layers": {"a": {"from": {"docker": "x"}}}, "images": {"x": {"leaf": "a"}}}
    _load(yaml.safe_dump({**base, **doc}, allow_unicode=True), spec_path)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for key, val in node.items():
            out.append((*prefix, key))
            out.extend(_paths(val, (*prefix, key)))
    elif isinstance(node, list):
        for i, val in enumerate(node):
            out.append((*prefix, i))
            out.extend(_paths(val, (*prefix, i)))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@SETTINGS
@given(data=st.data())
def test_mutated_example(spec_path: Path, data: st.DataObject) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        paths = _paths(doc)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = _parent(doc, path)
        last = path[-1]
        op = data.draw(st.sampled_from(["drop", "rename", "swap", "value", "duplicate"]), label="op")
        if op == "drop":
            del parent[last]
        elif op == "rename" and isinstance(parent, dict):
            new = data.draw(keys, label="new key")
            parent[new] = parent.pop(last)
        elif op == "swap":
            current = parent[last]
            parent[last] = data.draw(
                st.sampled_from([[current], {"x": current}, str(current), 7, 3.5, None, True, []]), label="swap"
            )
        elif op == "value":
            parent[last] = data.draw(values, label="value")
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    _load(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), spec_path)


def test_the_unmutated_example_loads(spec_path: Path) -> None:
    # Without its files next to it the example still parses: file checks live in validate, not the loader.
    loaded = parse_spec(EXAMPLE.read_text(), spec_path)
    assert sorted(loaded.spec.layers) == ["app", "base", "runtime"]
