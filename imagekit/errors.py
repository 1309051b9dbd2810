"""The one error root. Exceptions carry what failed, where, and what to try; they never log or exit."""

from __future__ import annotations

from dataclasses import dataclass


class ImagekitError(Exception):
    """Root of every error imagekit raises on purpose; `exit_code` is what the CLI exits with."""

    exit_code = 3

    def lines(self) -> list[str]:
        """The one-line messages to print for this error."""
        return [str(self)]


class UsageError(ImagekitError):
    """A command was called with options that do not fit together."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem in a spec file, located by file, line and key path."""

    file: str
    line: int
    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.path}:" if self.path else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}:{key} {self.message}{hint}"


class SpecError(ImagekitError):
    """The spec is invalid; carries one Problem per thing wrong."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.path, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class CompatError(SpecError):
    """The versions a spec pins do not work together according to the compatibility matrix."""


class BuildFailed(ImagekitError):
    """A build step failed; names the image, layer, the log tail and the log file."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        image: str = "",
        layer: str = "",
        log_tail: list[str] | None = None,
        log_path: str = "",
    ) -> None:
        self.image = image
        self.layer = layer
        self.log_tail = list(log_tail or [])
        self.log_path = log_path
        where = "/".join(x for x in (image, layer) if x)
        super().__init__(f"{where}: {message}" if where else message)

    def lines(self) -> list[str]:
        out = [str(self)]
        if self.log_tail:
            out.append("last lines of the log:")
            out.extend(f"  | {line}" for line in self.log_tail)
        if self.log_path:
            out.append(f"full log: {self.log_path}")
        return out


class VerifyFailed(ImagekitError):
    """Boot-and-verify found the image does not match its pins or does not serve."""

    exit_code = 1

    def __init__(self, message: str, *, failures: list[str] | None = None, report_path: str = "") -> None:
        self.failures = list(failures or [])
        self.report_path = report_path
        super().__init__(message)

    def lines(self) -> list[str]:
        out = [str(self)]
        out.extend(f"  - {f}" for f in self.failures)
        if self.report_path:
            out.append(f"report: {self.report_path}")
        return out


class StoreError(ImagekitError):
    """The manifest store could not be read or written."""

    exit_code = 1


class SignatureError(ImagekitError):
    """A signature did not verify, or a key could not be used."""

    exit_code = 1


class ToolMissing(ImagekitError):
    """An external tool (docker, packer, debootstrap) is not available."""

    exit_code = 1


class Interrupted(ImagekitError):
    """The user interrupted a run (Ctrl-C or SIGTERM); cleanup has been done."""

    exit_code = 130
