"""YAML reading that remembers where every key came from, so errors can say file:line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]

# Bounds on what one document may expand to. A spec nests a handful of levels and has a few thousand nodes even
# with thousands of layers; an alias bomb of 300 bytes expands to hundreds of millions and must stop before that.
MAX_DEPTH = 64
MAX_NODES = 200_000
MAX_TEXT = 4 * 1024 * 1024


@dataclass
class Located:
    """Plain Python data from a YAML document plus the line of every key path in it."""

    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    duplicates: list[tuple[KeyPath, int]] = field(default_factory=list)

    def line_of(self, path: KeyPath) -> int:
        """Line of the longest prefix of `path` that the document has (1 when none)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return 1


class YamlSyntaxError(Exception):
    """The text is not YAML; carries the 1-based line and the parser's message."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"{line}: {message}")


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, out: Located) -> Any:
    out.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                key = str(key)
            child: KeyPath = (*path, key if isinstance(key, str | int) else str(key))
            if key in result:
                out.duplicates.append((child, key_node.start_mark.line + 1))
            out.lines[child] = key_node.start_mark.line + 1
            result[key] = _construct(loader, value_node, child, out)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            child = (*path, i)
            out.lines[child] = item.start_mark.line + 1
            items.append(_construct(loader, item, child, out))
        return items
    return loader.construct_object(node, deep=True)


def _prescan(text: str) -> None:
    """Walk the event stream (no recursion, no construction): bound nesting depth and alias expansion."""
    loader = yaml.SafeLoader(text)
    # sizes[i]: nodes counted so far in the i-th open collection, with its anchor
    stack: list[tuple[str | None, int]] = []
    anchors: dict[str, int] = {}
    total = 0
    try:
        while loader.check_event():
            event = loader.get_event()  # type: ignore[no-untyped-call]
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark else 1
                    raise YamlSyntaxError(line, f"nested deeper than {MAX_DEPTH} levels")
                stack.append((event.anchor, 1))
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                anchor, size = stack.pop()
                if anchor is not None:
                    anchors[anchor] = size
                add = size
            elif isinstance(event, yaml.ScalarEvent):
                if event.anchor is not None:
                    anchors[event.anchor] = 1
                add = 1
            elif isinstance(event, yaml.AliasEvent):
                add = anchors.get(event.anchor or "", 1)
            else:
                continue
            if stack:
                anchor, size = stack[-1]
                stack[-1] = (anchor, size + add)
            total += add
            if total > MAX_NODES or (stack and stack[-1][1] > MAX_NODES):
                line = event.start_mark.line + 1 if event.start_mark else 1
                raise YamlSyntaxError(
                    line, f"the document expands to more than {MAX_NODES} values (aliases repeat what they point at)"
                )
    finally:
        loader.dispose()


def _marked_error(exc: yaml.MarkedYAMLError) -> YamlSyntaxError:
    """A YAML error that knows where it is, as a YamlSyntaxError with its line."""
    mark = exc.problem_mark or exc.context_mark
    message = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
    return YamlSyntaxError(mark.line + 1 if mark else 1, message)


def load_located(text: str) -> Located:
    """Parse one YAML document, recording the line of every mapping key and list item."""
    if len(text) > MAX_TEXT:
        raise YamlSyntaxError(1, f"the document is {len(text)} characters; the limit is {MAX_TEXT}")
    try:
        _prescan(text)
    except yaml.MarkedYAMLError as exc:
        raise _marked_error(exc) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(_reader_line(text, exc), str(exc).splitlines()[0]) from exc
    try:
        # The reader rejects control characters as soon as the loader is built, before any parsing.
        loader = yaml.SafeLoader(text)
    except yaml.MarkedYAMLError as exc:
        raise _marked_error(exc) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(_reader_line(text, exc), str(exc).splitlines()[0]) from exc
    try:
        return _load(loader)
    finally:
        loader.dispose()


def _load(loader: yaml.SafeLoader) -> Located:
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _marked_error(exc) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, str(exc).splitlines()[0] if str(exc) else "invalid YAML") from exc
    out = Located(data=None)
    if node is None:
        return out
    try:
        out.data = _construct(loader, node, (), out)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise YamlSyntaxError(mark.line + 1 if mark else 1, exc.problem or "invalid YAML value") from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # Timestamps, huge numbers and deep aliases can make PyYAML's constructors raise plain errors.
        raise YamlSyntaxError(1, f"cannot read value: {exc}") from exc
    return out


def _reader_line(text: str, exc: yaml.YAMLError) -> int:
    """The line of a reader error (it carries a character position, not a mark)."""
    position = getattr(exc, "position", None)
    return text[:position].count("\n") + 1 if isinstance(position, int) else 1
