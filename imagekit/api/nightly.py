"""nightly: the scheduled job (plan, build what is stale, verify, record, gate, promote, gc, report)."""

from __future__ import annotations

from pathlib import Path

from imagekit.events import Reporter, silent
from imagekit.nightly.report import NightlyResult
from imagekit.nightly.run import run_nightly
from imagekit.nightly.staleness import Clock, utc_now


def nightly(
    path: Path | str | None,
    *,
    target: str = "all",
    jobs: int = 1,
    promote: str | None = None,
    report_dir: Path | None = None,
    rehearse: bool = False,
    reporter: Reporter = silent,
    clock: Clock = utc_now,
    engine: str | None = None,
) -> NightlyResult:
    """Run the nightly job over every image and target of a spec; the result says what failed (exit 1 if any).

    engine (docker | buildah): the docker target's image engine (buildah builds, podman verifies; default: the
    spec's build.engine)."""
    if rehearse and target in ("ami", "all"):
        from imagekit.extras import require

        require("rehearsal", "--rehearse")
    return run_nightly(
        path,
        target=target,
        jobs=jobs,
        promote=promote,
        report_dir=report_dir,
        rehearse=rehearse,
        reporter=reporter,
        clock=clock,
        engine_kind=engine,
    )


def collect(
    path: Path | str | None,
    *,
    since: str,
    target: str = "all",
    promote: str | None = None,
    report_dir: Path | None = None,
    rehearse: bool = False,
    reporter: Reporter = silent,
    engine: str | None = None,
) -> NightlyResult:
    """The last job of a fanned-out nightly: promote the jobs whose records verified, gc, and write the reports."""
    from imagekit.nightly.collect import collect_nightly, parse_since

    return collect_nightly(
        path, since=parse_since(since), target=target, promote=promote, report_dir=report_dir, rehearse=rehearse,
        reporter=reporter, engine_kind=engine,
    )  # fmt: skip
