"""nightly."""

from __future__ import annotations

from pathlib import Path

import typer

from imagekit.cli import app, run
from imagekit.cli.console import display, err, escape, out, print_json


@app.command()
def nightly(  # noqa: PLR0917 (typer options)
    file: Path | None = typer.Option(None, "-f", "--file", help="The spec file (default: ./imagekit.yaml)."),
    target: str = typer.Option("all", "--target", help="docker, ami or all."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Build this many images/targets at once."),
    promote: str | None = typer.Option(None, "--promote", help="Also move this channel on success."),
    report: Path | None = typer.Option(None, "--report", help="Write report.md, report.json and junit.xml here."),
    rehearse: bool = typer.Option(False, "--rehearse", help="AMI target on a local moto EC2 (no AWS account)."),
    json_out: bool = typer.Option(False, "--json", help="Print report.json's content on stdout."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also show every build log line."),
    collect: bool = typer.Option(
        False,
        "--collect",
        help="Build nothing: the last job of a run fanned out with `plan --matrix` and one `build` per job. Read "
        "the store's records of the jobs made since --since, move the channels only for jobs that verified, gc, "
        "report.",
    ),
    since: str | None = typer.Option(
        None, "--since", help="With --collect: when the plan job started (ISO 8601 UTC, `date -u +%Y-%m-%dT%H:%M:%SZ`)."
    ),
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="The docker target's engine: docker (BuildKit on DOCKER_HOST) or buildah (buildah builds, podman "
        "verifies, gc in containers-storage; no daemon); default: the spec's build.engine.",
    ),
) -> None:
    """The scheduled job: rebuild only what changed or is due, verify, sign, move `nightly`, gc, report.

    Exit 1 when any image or target failed (the others still ran and were promoted).
    """
    from imagekit.api.nightly import collect as api_collect
    from imagekit.api.nightly import nightly as api_nightly
    from imagekit.errors import UsageError
    from imagekit.nightly.report import NightlyResult, to_json, to_markdown

    show = display(verbose=verbose)

    def go() -> NightlyResult:
        if collect:
            if since is None:
                raise UsageError("--collect needs --since, the time the plan job started (it picks this run's records)")
            if jobs != 1:
                raise UsageError("--collect builds nothing, so --jobs does not apply")
            return api_collect(file, since=since, target=target, promote=promote, report_dir=report,
                               rehearse=rehearse, reporter=show, engine=engine)  # fmt: skip
        if since is not None:
            raise UsageError("--since goes with --collect")
        return api_nightly(
            file,
            target=target,
            jobs=jobs,
            promote=promote,
            report_dir=report,
            rehearse=rehearse,
            reporter=show,
            engine=engine,
        )

    result = run(lambda: show.run(go))
    if json_out:
        print_json(to_json(result))
    else:
        out.print(to_markdown(result), markup=False, highlight=False)
    if report is not None:
        err.print(f"reports: {escape(str(report / 'report.md'))}, report.json, junit.xml")
    if result.failed:
        raise typer.Exit(1)
