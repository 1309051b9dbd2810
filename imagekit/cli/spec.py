"""validate, plan, render, doctor."""

from __future__ import annotations

from pathlib import Path

import typer

from imagekit.cli import app, run
from imagekit.cli.console import err, out, print_json

SpecOpt = typer.Option(None, "-f", "--file", help="The spec file (default: ./imagekit.yaml).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


@app.command()
def validate(file: Path | None = SpecOpt, json_out: bool = JsonOpt) -> None:
    """Check a spec: keys, types, layer graph, paths, weight digests and the compatibility matrix."""
    from imagekit.api.spec import validate as api_validate

    loaded = run(lambda: api_validate(file))
    if json_out:
        print_json({"ok": True, "spec": str(loaded.path), "images": sorted(loaded.spec.images)})
    else:
        err.print(
            f"[green]ok[/] {loaded.path}: {len(loaded.spec.layers)} layers, {len(loaded.spec.images)} images"
        )


@app.command()
def plan(
    file: Path | None = SpecOpt,
    target: str = typer.Option("all", "--target", help="docker, ami or all."),
    image: list[str] = typer.Option([], "--image", help="Only this image (repeatable)."),
    json_out: bool = JsonOpt,
) -> None:
    """Hash every layer and show which are cached and which need a build, and why."""
    from imagekit.api.spec import plan_spec
    from imagekit.errors import UsageError
    from imagekit.plan import ImagePlan, plan_json

    def go() -> list[ImagePlan]:
        if target not in ("docker", "ami", "all"):
            raise UsageError(f"--target must be docker, ami or all, not {target!r}")
        return plan_spec(file, target=target, images=image or None)[1]

    plans = run(go)
    if json_out:
        print_json(plan_json(plans))
        return
    from rich.table import Table

    table = Table("image", "target", "layer", "hash", "status", "reason")
    for p in plans:
        for lp in p.layers:
            style = "green" if lp.status == "cached" else "yellow"
            table.add_row(p.name, p.target, lp.name, lp.hash[:12], f"[{style}]{lp.status}[/]", lp.reason)
    out.print(table)
