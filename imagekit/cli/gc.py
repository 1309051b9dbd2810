"""gc: retention for one target."""

from __future__ import annotations

from pathlib import Path

import typer

from imagekit.cli import app, run
from imagekit.cli.console import display, err, escape, print_json


@app.command()
def gc(  # noqa: PLR0917 (typer options)
    file: Path | None = typer.Option(None, "-f", "--file", help="The spec file (default: ./imagekit.yaml)."),
    target: str = typer.Option("ami", "--target", help="docker (untag old images) or ami (deregister old AMIs)."),
    image: str | None = typer.Option(None, "--image", help="Only this image's builds."),
    keep: int | None = typer.Option(None, "--keep", help="Builds to keep per image (and AMI layer) (default: spec)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be removed; remove nothing."),
    rehearse: bool = typer.Option(False, "--rehearse", help="Act on the local rehearsal's AMIs (moto), not AWS."),
    json_out: bool = typer.Option(False, "--json", help="Print the decisions as JSON on stdout."),
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="With --target docker: docker (DOCKER_HOST's engine) or buildah (containers-storage, no daemon); "
        "default: the spec's build.engine.",
    ),
) -> None:
    """Remove old builds: untag docker images, or deregister AMIs and their snapshots (channel targets kept)."""
    from imagekit.api.gc import gc as api_gc

    show = display()
    result = run(
        lambda: show.run(
            lambda: api_gc(
                file,
                target=target,
                keep=keep,
                image=image,
                dry_run=dry_run,
                rehearse=rehearse,
                engine=engine,
                reporter=show,
            )
        )
    )
    if json_out:
        print_json(result.to_json())
        return
    for line in result.lines():
        err.print(escape(line))
    if result.record:
        err.print(f"record: {escape(result.record)}")
