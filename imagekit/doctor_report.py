"""What `imagekit doctor` found: one check per tool, and the report that says what a spec needs and lacks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from imagekit.errors import ToolMissing


@dataclass(frozen=True)
class Check:
    """One thing doctor looked at: whether it is usable, what was found, and how to fix it when not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed_for: str = ""
    needed: bool = False  # what was asked for (the spec's targets, --push) cannot work without it


@dataclass(frozen=True)
class Report:
    """Every check, in a stable order, and the spec they were judged against (empty: this machine in general)."""

    checks: list[Check] = field(default_factory=list)
    spec: str = ""

    @property
    def ok(self) -> bool:
        """True when nothing needed is missing."""
        return not self.missing

    @property
    def missing(self) -> list[Check]:
        """The needed checks that failed."""
        return [c for c in self.checks if c.needed and not c.ok]

    def to_json(self) -> dict[str, Any]:
        """The --json document."""
        return {
            "ok": self.ok,
            "spec": self.spec,
            "missing": [c.name for c in self.missing],
            "checks": [asdict(c) for c in self.checks],
        }

    def require_needed(self) -> None:
        """Raise ToolMissing (exit 1) naming each needed check that failed."""
        if self.missing:
            what = f"for {self.spec}" if self.spec else "for docker builds"
            names = ", ".join(c.name for c in self.missing)
            raise ToolMissing(f"missing {what}: {names} (each fix is above; --json lists them)")

    def require_all(self) -> None:
        """Raise ToolMissing naming what is missing (doctor --strict)."""
        missing = [c for c in self.checks if not c.ok]
        if missing:
            raise ToolMissing(
                "missing: " + ", ".join(c.name for c in missing) + " (see the fix lines above, or run without --strict)"
            )
