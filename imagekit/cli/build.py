"""build."""

from __future__ import annotations

from pathlib import Path

import typer

from imagekit.cli import app, run
from imagekit.cli.console import display, err, escape, print_json


@app.command()
def build(  # noqa: PLR0917 (typer options)
    file: Path | None = typer.Option(None, "-f", "--file", help="The spec file (default: ./imagekit.yaml)."),
    target: str = typer.Option(..., "--target", help="docker or ami."),
    image: list[str] = typer.Option([], "--image", help="Only this image (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Rebuild every layer, even when its hash is already built."),
    force_layer: list[str] = typer.Option(
        [],
        "--force-layer",
        help="Rebuild this layer (and what is on it) although its hash is built; repeatable, or several names "
        "separated by spaces or commas (a `plan --matrix` job's `force`). For AMIs it rebuilds the whole chain.",
    ),
    push: str | None = typer.Option(None, "--push", help="Push the final image to REGISTRY/REPO[:TAG]."),
    compression: str | None = typer.Option(
        None,
        "--compression",
        help="Push the layers compressed with gzip|zstd|zstd:chunked (through skopeo); overrides push.compression.",
        metavar="gzip|zstd|zstd:chunked",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the build result as JSON on stdout."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip boot-and-verify after the build."),
    gpu: str | None = typer.Option(
        None,
        "--gpu",
        help="required|optional: overrides verify.gpu for this run's verify.",
        metavar="required|optional",
    ),
    tag: list[str] = typer.Option(
        [],
        "--tag",
        help="Also tag the final image (repeatable), e.g. v1.5.0 or '{git_sha}'; recorded in the signed manifest.",
    ),
    verbose: bool = typer.Option(
        False,
        "-v",
        "--verbose",
        help="Stream every event and build log line (default: a live view on a terminal, "
        "one line per step start/end with heartbeats when piped or CI=true).",
    ),
    rehearse: bool = typer.Option(
        False, "--rehearse", help="AMI target without AWS: local moto EC2, sshd containers as instances."
    ),
) -> None:
    """Build images layer by layer (unchanged layers are reused); the docker engine is found via DOCKER_HOST."""
    from imagekit.api.build import build as api_build

    show = display(verbose=verbose)
    result = run(
        lambda: show.run(
            lambda: api_build(
                file,
                target,
                images=image or None,
                force=force,
                push=push,
                force_layers=[n for item in force_layer for n in item.replace(",", " ").split()],
                reporter=show,
                verify=not no_verify,
                rehearse=rehearse,
                gpu=gpu,
                tags=tag,
                compression=compression,
            )
        )
    )
    if json_out:
        print_json(result.to_json())
        return
    for res in result.images:
        built = ", ".join(res.built_layers) or "none (all reused)"
        err.print(f"[green]built[/] {escape(res.ref or res.image)}  layers built: {escape(built)}")
        if res.release_tags:
            err.print(f"  tagged {escape(', '.join(res.release_tags))}")
        if res.pushed:
            err.print(f"  pushed {escape(res.pushed)}")
        if res.verify_report:
            err.print(f"  verify report: {escape(res.verify_report)}")
        if res.manifest_id:
            err.print(f"  signed manifest: {escape(res.manifest_id)} -> {escape(res.manifest_path)}")
        if res.log_path:
            err.print(f"  log: {escape(res.log_path)}")
