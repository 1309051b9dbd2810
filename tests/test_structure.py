"""The package's structural rules, read from its own source with `ast`, so they stay true as it changes.

- no import circle between imagekit's modules (lazy imports inside functions count; `if TYPE_CHECKING:` ones don't);
- the docker SDK, boto3/botocore and subprocess are imported only by their wrappers in imagekit/runners/ and by
  what runs inside an image or VM (imagekit/verify/probe.py, imagekit/verify/vmcheck.py);
- renderers and the planner import no runner (and no target);
- no import guard (`except ImportError`) around an import of imagekit's own modules;
- no module over 500 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "imagekit"
MAX_LINES = 500
# external module -> the only imagekit modules that may import it
WRAPPED = {
    "docker": {"imagekit.runners.docker"},
    "requests": {"imagekit.runners.docker", "imagekit.runners.registry"},  # transport errors of docker SDK, oras
    "oras": {"imagekit.runners.registry"},
    "boto3": {"imagekit.runners.aws"},
    "botocore": {"imagekit.runners.aws"},
    "subprocess": {"imagekit.runners.process", "imagekit.verify.probe", "imagekit.verify.vmcheck"},
}
PURE = ("imagekit.render", "imagekit.plan", "imagekit.names")  # renderers, the planner, the shared names
NOT_FOR_PURE = ("imagekit.runners", "imagekit.targets", "imagekit.api", "imagekit.verify")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import that runs (module level or inside functions)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (item for child in node.orelse for item in _imports(ast.Module([child], [])))
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in MODULES:  # `from imagekit.verify import vmcheck` imports a module
                    yield full, node.lineno
        yield from _imports(node)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps = {mod for mod, _ in _imports(ast.parse(path.read_text(encoding="utf-8")))}
        graph[name] = {d for d in deps if d in MODULES and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_rules_see_the_package() -> None:
    # a rule over nothing would pass vacuously: the walk finds the modules and their imports
    graph = _graph()
    assert {"imagekit.api.build", "imagekit.targets.docker", "imagekit.runners.docker"} <= set(graph)
    assert "imagekit.targets" in graph["imagekit.api.build"]
    assert "imagekit.verify.vmcheck" in MODULES


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize("external", sorted(WRAPPED))
def test_external_tools_only_through_their_wrappers(external: str) -> None:
    offenders = []
    for name, path in MODULES.items():
        for mod, line in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if (mod == external or mod.startswith(external + ".")) and name not in WRAPPED[external]:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {mod}")
    assert offenders == []


def test_renderers_and_the_planner_import_no_runner() -> None:
    offenders = []
    for name, path in MODULES.items():
        if not name.startswith(PURE):
            continue
        for mod, line in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if mod.startswith(NOT_FOR_PURE):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {mod}")
    assert offenders == []


def test_no_import_guard_around_imagekit_modules() -> None:
    offenders = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Try):
                continue
            guarded = [m for stmt in node.body for m, _ in _imports(ast.Module([stmt], [])) if m.startswith("imagekit")]
            names = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if guarded and any("ImportError" in n or "ModuleNotFoundError" in n for n in names):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} guards {guarded[0]}")
    assert offenders == []


def test_no_module_over_500_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in MODULES.values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
