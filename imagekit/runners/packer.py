"""The one packer wrapper: version detection, `packer init`, `packer build -machine-readable`, progress, cancel."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imagekit.errors import BuildFailed, ToolMissing
from imagekit.runners import process

# The oldest Packer imagekit drives (Debian's, amazon builder built in) and the first that needs required_plugins.
MIN_VERSION = (1, 6, 6)
PLUGINS_VERSION = (1, 7, 0)
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
# bash reports `/tmp/script_123.sh: line 7: foo: command not found`; imagekit's scripts also print `line N`.
_SCRIPT_LINE_RE = re.compile(r"(?:imagekit: failed at line |\.sh: line )(\d+)")


@dataclass(frozen=True)
class PackerInfo:
    """Which packer is used and what it supports."""

    path: str
    version: tuple[int, int, int]

    @property
    def needs_plugins(self) -> bool:
        """Current Packer (>= 1.7) installs the amazon plugin from a required_plugins block via `packer init`."""
        return self.version >= PLUGINS_VERSION

    @property
    def version_text(self) -> str:
        """The version as `1.6.6`."""
        return ".".join(str(v) for v in self.version)


@dataclass(frozen=True)
class MachineLine:
    """One line of `packer -machine-readable` output: timestamp, target, type, data fields."""

    timestamp: str
    target: str
    type: str
    data: tuple[str, ...]


@dataclass
class BuildOutcome:
    """What one `packer build` produced: artifact ids (`region:ami-…`), the log, and how long it took."""

    artifacts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    log_path: str = ""
    seconds: float = 0.0
    returncode: int = 0


def _unescape(text: str) -> str:
    return text.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").replace("\\r", "")


def parse_machine_line(line: str) -> MachineLine | None:
    """Split a machine-readable line; None for anything else (plain stderr from a crashing packer)."""
    parts = line.split(",")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    return MachineLine(parts[0], parts[1], parts[2], tuple(_unescape(p) for p in parts[3:]))


def find_packer(binary: str | None = None) -> PackerInfo:
    """Locate packer and read its version; ToolMissing when absent or too old."""
    path = binary or shutil.which("packer")
    if not path:
        raise ToolMissing("packer is not installed (Debian: apt-get install packer; or hashicorp.com releases)")
    res = process.capture([path, "version"])
    m = _VERSION_RE.search(res.output)
    if not res.ok or m is None:
        raise ToolMissing(f"cannot read the version of {path}: {' '.join(res.tail[-3:])}")
    version = (int(m[1]), int(m[2]), int(m[3]))
    if version < MIN_VERSION:
        raise ToolMissing(f"packer {'.'.join(map(str, version))} is too old; imagekit supports 1.6.6 and later")
    return PackerInfo(path, version)


def init(info: PackerInfo, template: Path, *, env: Mapping[str, str] | None = None, log_path: Path) -> None:
    """`packer init` for current Packer (installs the amazon plugin); a no-op for 1.6.6, which has it built in."""
    if not info.needs_plugins:
        return
    with log_path.open("a", encoding="utf-8") as log:
        res = process.run([info.path, "init", str(template)], env=env, log=log, cwd=template.parent)
    if not res.ok:
        raise BuildFailed("packer init failed", log_tail=res.tail[-15:], log_path=str(log_path))


VARS_FILE = "imagekit.pkrvars.json"


def _write_vars(folder: Path, variables: Mapping[str, str | list[str]]) -> Path:
    """The variables as a 0600 JSON var-file: a value (a pip index URL with a password) never stands in packer's
    argv, where the process list and the logged command line would show it. A list variable is a JSON list here
    (on the command line it was an HCL expression)."""
    from imagekit.fsutil import atomic_write

    path = folder / VARS_FILE
    atomic_write(path, json.dumps(dict(sorted(variables.items())), indent=1) + "\n", mode=0o600)
    return path


ProgressCallback = Callable[[str, str], None]


def build(
    info: PackerInfo,
    template: Path,
    *,
    variables: Mapping[str, str | list[str]],
    env: Mapping[str, str] | None = None,
    log_path: Path,
    on_progress: ProgressCallback | None = None,
    on_start: Callable[[process.Process], None] | None = None,
    cancel_grace: float = 300.0,
) -> BuildOutcome:
    """Run `packer build -machine-readable` in the template's folder.

    Progress (`ui,say` steps, `ui,message` output) goes to on_progress(kind, text); every line goes to the log.
    Ctrl-C/SIGTERM sends SIGINT to packer's whole process group (its panicwrap parent ignores a signal sent to
    its pid alone), waits for packer's cleanup (instance, security group, key pair) and raises Interrupted.
    """
    outcome = BuildOutcome(log_path=str(log_path))
    vars_file = _write_vars(template.parent, variables)
    argv = [info.path, "build", "-machine-readable", "-color=false", f"-var-file={VARS_FILE}", template.name]

    def on_line(line: str) -> None:
        parsed = parse_machine_line(line)
        if parsed is None:
            return
        if parsed.type == "artifact" and len(parsed.data) >= 3 and parsed.data[1] == "id":
            outcome.artifacts.extend(a for a in parsed.data[2].split(",") if a)
        elif parsed.type == "ui" and parsed.data:
            kind, text = parsed.data[0], parsed.data[1] if len(parsed.data) > 1 else ""
            if kind == "error":
                outcome.errors.append(text)
            if on_progress is not None:
                on_progress(kind, text)
        elif parsed.type == "error-count" and on_progress is not None:
            on_progress("error", f"{parsed.data[0] if parsed.data else '?'} build(s) errored")

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = process.Process(argv, env=env, cwd=template.parent, on_line=on_line, log=log, tail_lines=200)
        if on_start is not None:
            on_start(proc)
        try:
            result = _wait(proc, cancel_grace)
        finally:
            vars_file.unlink(missing_ok=True)
    outcome.returncode = result.returncode
    outcome.seconds = result.seconds
    outcome.tail = [_readable(line) for line in result.tail]
    return outcome


def _wait(proc: process.Process, grace: float) -> process.Result:
    from imagekit.errors import Interrupted

    with process.forward_sigterm():
        try:
            return proc.wait_or_cancel(grace)
        except Interrupted:
            raise Interrupted("interrupted; packer was stopped and cleaned up what it created") from None


def _readable(line: str) -> str:
    """A machine-readable line as a person would read it (its message), other lines unchanged."""
    parsed = parse_machine_line(line)
    if parsed is None:
        return line
    if parsed.type == "ui" and len(parsed.data) > 1:
        return parsed.data[1].rstrip()
    return ",".join((parsed.type, *parsed.data))


def script_line(lines: Sequence[str]) -> int | None:
    """The failing provisioning script's line number, when bash or the script printed it."""
    for line in reversed(lines):
        m = _SCRIPT_LINE_RE.search(line)
        if m:
            return int(m[1])
    return None


def read_manifest(path: Path) -> list[dict[str, object]]:
    """The builds recorded by the manifest post-processor (artifact_id `region:ami-…,region2:ami-…`)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    builds = doc.get("builds", []) if isinstance(doc, dict) else []
    return [b for b in builds if isinstance(b, dict)]


def amis_of(artifact_ids: Sequence[str]) -> dict[str, str]:
    """`us-east-1:ami-1,eu-west-1:ami-2` pieces -> {region: ami id}."""
    out: dict[str, str] = {}
    for piece in artifact_ids:
        for part in piece.split(","):
            region, _, ami = part.strip().partition(":")
            if ami.startswith("ami-"):
                out[region] = ami
    return out
