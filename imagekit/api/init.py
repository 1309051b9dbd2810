"""init: write a first imagekit.yaml for an app folder, never over an existing one."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from imagekit.errors import Problem, SpecError, UsageError
from imagekit.spec import SPEC_FILENAME, display_path


@dataclass
class InitResult:
    """The spec init wrote and what it found in the folder."""

    path: Path
    found: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def init(folder: Path | str | None = None, *, cpu: bool = False) -> InitResult:
    """Inspect an app folder, write <folder>/imagekit.yaml that `imagekit validate` accepts; exit 2 if it exists."""
    from imagekit.api.spec import validate
    from imagekit.digests import DigestCache
    from imagekit.scaffold import choose_pins, inspect_app, render_spec

    root = Path(folder) if folder is not None else Path.cwd()
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder (imagekit init [DIR] looks at an app folder)")
    target = root / SPEC_FILENAME
    if target.exists():
        raise UsageError(
            f"{display_path(target.absolute())} already exists; init never overwrites it "
            "(edit it, or move it away and run init again)"
        )
    cache = DigestCache()
    facts = inspect_app(root, cache.digest)
    try:
        pins = choose_pins(facts, cpu=cpu)
    except ValueError as exc:
        raise UsageError(
            f"{facts.torch_source or root}: {exc}; pass --cpu for a CPU image, or pin a torch release the matrix knows"
        ) from None
    text = render_spec(facts, pins)
    try:
        # exclusive create: a file that appeared meanwhile is not overwritten either
        with open(target, "x", encoding="utf-8") as fh:
            fh.write(text)
    except FileExistsError:
        raise UsageError(f"{display_path(target.absolute())} already exists; init never overwrites it") from None
    try:
        validate(target)
    except SpecError as exc:
        # what init writes must validate; leave nothing half-right behind
        with contextlib.suppress(OSError):
            os.unlink(target)
        problems = [*exc.problems, Problem(str(target), 0, "", "imagekit init wrote a spec that does not validate")]
        raise SpecError(problems) from None
    return InitResult(target, facts.found, list(pins.notes))
