"""verify: boot an image on a Docker host and check it against its spec."""

from __future__ import annotations

from pathlib import Path

import typer

from imagekit.cli import app, run
from imagekit.cli.console import err, escape, print_json


@app.command()
def verify(
    image_ref: str = typer.Argument(..., help="The image to verify, e.g. tts-inference:0123456789abcdef."),
    file: Path | None = typer.Option(None, "-f", "--file", help="The spec file (default: ./imagekit.yaml)."),
    image: str | None = typer.Option(None, "--image", help="Which spec image it is (default: the only one)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Boot IMAGE_REF (GPUs requested when verify.gpu is required), probe it, check health and smoke, write a report.

    DOCKER_HOST picks the engine, e.g. DOCKER_HOST=ssh://gpu-host for a GPU machine.
    """
    from imagekit.api.verify import verify_docker
    from imagekit.events import Event

    def show(event: Event) -> None:
        if not json_out and event.kind in ("start", "step", "warn"):
            err.print(f"[dim]{escape(event.message)}[/]")

    report, path = run(lambda: verify_docker(file, image_ref, image, show))
    if json_out:
        print_json({**report.model_dump(mode="json", by_alias=True), "report_path": str(path)})
        return
    smoke = report.smoke
    if smoke and smoke.status is not None:
        err.print(f"smoke: {smoke.status} {smoke.content_type} {smoke.bytes} bytes in {smoke.latency_ms} ms")
    err.print(f"[green]verified[/] {escape(image_ref)} ({report.image})")
    err.print(f"report: {path}")
