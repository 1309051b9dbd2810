"""gc: AMI retention."""

from __future__ import annotations

from pathlib import Path

import typer

from imagekit.cli import app, run
from imagekit.cli.console import display, err, escape, print_json


@app.command()
def gc(  # noqa: PLR0917 (typer options)
    file: Path | None = typer.Option(None, "-f", "--file", help="The spec file (default: ./imagekit.yaml)."),
    image: str | None = typer.Option(None, "--image", help="Only this image's AMIs."),
    keep: int | None = typer.Option(None, "--keep", help="AMI builds to keep per image and layer (default: spec)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be removed; remove nothing."),
    rehearse: bool = typer.Option(False, "--rehearse", help="Act on the local rehearsal's AMIs (moto), not AWS."),
    json_out: bool = typer.Option(False, "--json", help="Print the decisions as JSON on stdout."),
) -> None:
    """Deregister old AMIs and delete their snapshots in every region (channel, newest verified, parents kept)."""
    from imagekit.api.ami import gc as api_gc

    show = display()
    result = run(
        lambda: show.run(
            lambda: api_gc(file, keep=keep, image=image, dry_run=dry_run, rehearse=rehearse, reporter=show)
        )
    )
    if json_out:
        print_json(result.to_json())
        return
    for d in result.decisions:
        amis = ", ".join(f"{r}:{i}" for r, i in d.amis.items())
        verb = ("would remove" if result.dry_run else "removed") if d.action == "remove" else "kept"
        err.print(f"{verb:12} {escape(d.image)}/{escape(d.layer)} {escape(amis)}  ({escape(d.reason)})")
    if result.record:
        err.print(f"record: {escape(result.record)}")
