"""The nightly job's outputs: report.md for people, report.json for tools, junit.xml for CI systems."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imagekit.fsutil import atomic_write
from imagekit.inputs import printable

# the marks that open something inline (emphasis, code, links and images, HTML, table cells, headings); a value
# never starts a line here, so `.`, `-`, `+` and `(` stay as they are and versions stay readable
_MD_SPECIAL = re.compile(r"([\\`*{}\[\]<>&|!#~])")  # `_` only emphasises at word edges: kept readable
# what XML 1.0 cannot hold at all: C0 controls but tab/newline/CR, lone surrogates, U+FFFE/U+FFFF
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def md(value: object) -> str:
    """A value from outside (a package name, a version, a message of the image under test) as inert Markdown:
    one line, control characters visible, every mark escaped: no heading, link, image, table cell or HTML."""
    text = " ".join(printable(str(value)).split())
    # and no bare URL becomes a link (GFM autolinks http://, https://, www.)
    return _MD_SPECIAL.sub(r"\\\1", text).replace("://", "\\://").replace("www.", "www\\.")


def xml_text(value: object) -> str:
    """A value as XML 1.0 can hold it: the characters it refuses shown as \\xNN instead."""
    return _XML_INVALID.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", str(value))


@dataclass
class Check:
    """One pass/fail check of one image and target (build, verify, size budget, promote...)."""

    name: str
    passed: bool
    message: str = ""
    seconds: float = 0.0


@dataclass
class Rebuilt:
    """A layer the run rebuilt, and why."""

    image: str
    target: str
    layer: str
    reason: str


@dataclass
class ImageRun:
    """What the nightly job did for one image and target."""

    image: str
    target: str
    status: str = "unchanged"  # unchanged | ok | failed
    built: list[Rebuilt] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    manifest_id: str | None = None
    previous_id: str | None = None
    channels: list[str] = field(default_factory=list)
    size_bytes: int | None = None
    previous_size_bytes: int | None = None
    diff: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        """True when any check failed."""
        return self.status == "failed" or any(not c.passed for c in self.checks)


@dataclass
class NightlyResult:
    """A whole nightly run."""

    spec: str
    started: str
    finished: str = ""
    runs: list[ImageRun] = field(default_factory=list)
    gc: list[dict[str, Any]] = field(default_factory=list)
    matrix: dict[str, Any] | None = None  # torch releases the index has that the compat matrix lacks (news only)
    # the builds channels point at, scanned again (nightly/rescan.py): new findings are reported, not failed
    rescan: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when any image or target failed."""
        return any(r.failed for r in self.runs)

    def built(self) -> list[Rebuilt]:
        """Every layer rebuilt in this run."""
        return [b for r in self.runs for b in r.built]


def version_changes(run: ImageRun) -> list[dict[str, str | None]]:
    """The dpkg and pip packages whose version changed against the previous build: manager, name, old, new.

    Read from the diff of the two builds' verification probes (keys like `probe.dpkg.packages.libc6`); a package
    that came or went has None on the other side.
    """
    out: list[dict[str, str | None]] = []
    for change in (run.diff or {}).get("packages") or []:
        parts = [x for x in str(change.get("key", "")).replace("[", ".").replace("]", "").split(".") if x]
        manager = next((x for x in parts if x in ("dpkg", "pip")), None)
        if manager is None or "packages" not in parts or parts[-1] == "packages":
            continue
        name = ".".join(parts[parts.index("packages") + 1 :])
        old, new = change.get("old"), change.get("new")
        out.append({"manager": manager, "name": name, "old": None if old is None else str(old),
                    "new": None if new is None else str(new)})  # fmt: skip
    return sorted(out, key=lambda c: (str(c["manager"]), str(c["name"])))


def to_json(result: NightlyResult) -> dict[str, Any]:
    """report.json: `built` lists (image, target, layer) rebuilt, plus every run's checks and figures."""
    return {
        "spec": result.spec,
        "started": result.started,
        "finished": result.finished,
        "ok": not result.failed,
        "built": [asdict(b) for b in result.built()],
        "package_changes": [
            {"image": r.image, "target": r.target, **c} for r in result.runs for c in version_changes(r)
        ],
        "runs": [{**asdict(r), "failed": r.failed} for r in result.runs],
        "gc": result.gc,
        "compat_matrix": result.matrix,
        "rescan": result.rescan,
    }


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:,.1f} MB"


def _change(new: int | None, old: int | None) -> str:
    if new is None or old is None or old == 0:
        return ""
    pct = (new - old) * 100.0 / old
    return f" ({pct:+.1f}%)"


def to_markdown(result: NightlyResult) -> str:
    """report.md: what rebuilt and why, version changes, verification figures, sizes and their change.

    Every value is escaped for Markdown (md): names, versions and messages come from the image under test.
    """
    lines = [f"# imagekit nightly — {'FAILED' if result.failed else 'ok'}", ""]
    lines += [
        f"- spec: {md(result.spec)}",
        f"- started: {md(result.started)}",
        f"- finished: {md(result.finished)}",
    ]
    if result.matrix is not None:
        fix = f" — regenerate it: `{result.matrix['regenerate']}`" if result.matrix.get("missing") else ""
        lines.append(f"- compatibility matrix: {md(str(result.matrix['summary']))}{fix}")
    lines.append("")
    lines += ["| image | target | status | rebuilt | manifest | size | channels |", "|---|---|---|---|---|---|---|"]
    for r in result.runs:
        status = "FAILED" if r.failed else r.status
        rebuilt = ", ".join(b.layer for b in r.built) or "nothing"
        size = _size(r.size_bytes) + _change(r.size_bytes, r.previous_size_bytes)
        lines.append(
            f"| {md(r.image)} | {md(r.target)} | {md(status)} | {md(rebuilt)} | {md((r.manifest_id or '—')[:12])} | "
            f"{md(size)} | {md(', '.join(r.channels) or '—')} |"
        )
    built = result.built()
    if built:
        lines += ["", "## Rebuilt layers", ""]
        lines += [f"- {md(f'{b.image}/{b.target}/{b.layer}')}: {md(b.reason)}" for b in built]
    for r in result.runs:
        where = md(f"{r.image}/{r.target}")
        failed = [c for c in r.checks if not c.passed]
        if failed or r.error:
            lines += ["", f"## Failures: {where}", ""]
            if r.error:
                lines.append(f"- {md(r.error)}")
            lines += [f"- {md(c.name)}: {md(c.message)}" for c in failed]
        if r.verification:
            figures = ", ".join(f"{k}: {v}" for k, v in sorted(r.verification.items()))
            lines += ["", f"## Verification: {where}", "", f"- {md(figures)}"]
        changed = version_changes(r)
        if changed:
            lines += ["", f"## Package versions changed: {where} (against {md(r.previous_id)})", ""]
            for c in changed:
                lines.append(f"- {md(c['manager'])} {md(c['name'])}: {md(c['old'] or '(new)')} -> "
                             f"{md(c['new'] or '(removed)')}")  # fmt: skip
        if r.diff:
            lines += ["", f"## Changes since the previous build: {where}", ""]
            for key, value in sorted(r.diff.items()):
                if value:
                    lines.append(f"- {md(key)}: {md(json.dumps(value, sort_keys=True, ensure_ascii=False)[:400])}")
    lines += _rescan_markdown(result.rescan)
    if result.gc:
        lines += ["", "## Retention (gc)", ""]
        lines += [f"- {md(json.dumps(g, sort_keys=True))}" for g in result.gc]
    return "\n".join(lines) + "\n"


def to_junit(result: NightlyResult) -> str:
    """junit.xml: one test case per image, target and check; a failure element per failed check."""
    suites = ET.Element("testsuites", name="imagekit-nightly")
    total = sum(len(r.checks) for r in result.runs)
    failures = sum(1 for r in result.runs for c in r.checks if not c.passed)
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="imagekit-nightly",
        tests=str(total),
        failures=str(failures),
        errors="0",
        skipped="0",
        timestamp=xml_text(result.started),
    )
    for r in result.runs:
        for c in r.checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=xml_text(f"{r.image}.{r.target}"),
                name=xml_text(c.name),
                time=f"{c.seconds:.3f}",
            )
            if not c.passed:
                fail = ET.SubElement(case, "failure", message=xml_text(c.message[:500]), type="imagekit")
                fail.text = xml_text(c.message)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_reports(result: NightlyResult, out_dir: Path) -> dict[str, Path]:
    """Write report.md, report.json and junit.xml atomically; returns their paths."""
    paths = {"markdown": out_dir / "report.md", "json": out_dir / "report.json", "junit": out_dir / "junit.xml"}
    atomic_write(paths["markdown"], to_markdown(result))
    atomic_write(paths["json"], json.dumps(to_json(result), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    atomic_write(paths["junit"], to_junit(result))
    return paths


def _rescan_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """report.md lines: each channel build re-scanned, its new findings listed (package names escaped: the image's)."""
    if not rows:
        return []
    lines = ["", "## Re-scan of the builds channels point at (no rebuild)", ""]
    for r in rows:
        where = md(f"{r.get('image', '?')} {str(r.get('manifest', ''))[:12]} ({', '.join(r.get('channels', []))})")
        if r.get("error"):
            lines.append(f"- {where}: could not re-scan: {md(r['error'])}")
            continue
        verdict = "gate passes" if r.get("gate_passes_now") else "gate would FAIL"
        lines.append(f"- {where}: {md(r.get('findings', 0))} finding(s), {len(r.get('new', []))} new; {verdict}")
        lines += [f"  - new: {md(line)}" for line in r.get("new", [])]
    return lines
