"""verify: boot an image on a Docker host and check it against its spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from imagekit.cli import app, run
from imagekit.cli.console import display, err, escape, print_json


@app.command()
def verify(  # noqa: PLR0917 (typer options)
    image_ref: str | None = typer.Argument(
        None, help="The image to verify, e.g. tts-inference:0123456789abcdef (not with --probe-file)."
    ),
    file: Path | None = typer.Option(None, "-f", "--file", help="The spec file (default: ./imagekit.yaml)."),
    image: str | None = typer.Option(None, "--image", help="Which spec image it is (default: the only one)."),
    gpu: str | None = typer.Option(
        None, "--gpu", help="required|optional: overrides verify.gpu for this run.", metavar="required|optional"
    ),
    probe_file: Path | None = typer.Option(
        None,
        "--probe-file",
        help="Judge a saved probe (python -m imagekit.verify.probe MODEL... > probe.json) instead; no container.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="docker (boot on DOCKER_HOST's engine) or buildah (boot with podman, no daemon); "
        "default: the spec's build.engine.",
        metavar="docker|buildah",
    ),
) -> None:
    """Boot IMAGE_REF (GPUs requested when the GPU policy is required), probe it, check health and smoke; report.

    DOCKER_HOST picks the engine, e.g. DOCKER_HOST=ssh://gpu-host for a GPU machine. With --probe-file, the pins
    and the GPU rules are judged on a probe saved on another host (exit 0 pass, 1 failed checks, 2 not a probe).
    """
    from imagekit.api.verify import verify_docker, verify_probe_file
    from imagekit.errors import UsageError
    from imagekit.events import Event

    # the same display as build: a live view on a terminal, start/end lines and heartbeats in a CI log or a pipe
    # (a health wait of minutes is not silent); nothing on stderr but errors under --json
    shown = None if json_out else display(steps=True)

    def show(event: Event) -> None:
        if shown is not None:
            shown(event)

    def call() -> Any:
        if probe_file is not None:
            if image_ref is not None:
                raise UsageError("give IMAGE_REF or --probe-file, not both")
            return verify_probe_file(file, probe_file, image, show, gpu=gpu)
        if image_ref is None:
            raise UsageError("verify needs IMAGE_REF (an image on the Docker host) or --probe-file PROBE.json")
        return verify_docker(file, image_ref, image, show, gpu=gpu, engine=engine)

    report, path = run(call if shown is None else lambda: shown.run(call))
    if json_out:
        print_json({**report.model_dump(mode="json", by_alias=True), "report_path": str(path)})
        return
    smoke = report.smoke
    if smoke and smoke.status is not None:
        said = f"smoke: {smoke.status} {smoke.content_type} {smoke.bytes} bytes in {smoke.latency_ms} ms"
        err.print(said, markup=False)  # the content type is the service's
    err.print(f"[green]verified[/] {escape(report.image_ref)} ({report.image}, gpu {report.gpu_policy})")
    err.print(f"report: {path}", markup=False)
