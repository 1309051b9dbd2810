"""validate, plan, render, doctor."""

from __future__ import annotations

from pathlib import Path

import typer

from imagekit.cli import app, run
from imagekit.cli.console import cell, err, escape, out, print_json

SpecOpt = typer.Option(None, "-f", "--file", help="The spec file (default: ./imagekit.yaml).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


@app.command()
def validate(file: Path | None = SpecOpt, json_out: bool = JsonOpt) -> None:
    """Check a spec: keys, types, layer graph, paths, weight digests and the compatibility matrix."""
    from imagekit.api.spec import validate as api_validate
    from imagekit.compat.check import notes

    loaded = run(lambda: api_validate(file))
    # Notes are what the matrix could not check (e.g. a CPU torch newer than it); they never fail validation.
    found = [str(n) for n in run(lambda: notes(loaded))]
    if json_out:
        print_json({"ok": True, "spec": str(loaded.path), "images": sorted(loaded.spec.images), "notes": found})
    else:
        for note in found:
            err.print(f"[cyan]note:[/] {escape(note)}")
        err.print(
            f"[green]ok[/] {escape(str(loaded.path))}: {len(loaded.spec.layers)} layers, "
            f"{len(loaded.spec.images)} images"
        )


@app.command()
def plan(  # noqa: PLR0917 (typer options)
    file: Path | None = SpecOpt,
    target: str = typer.Option("all", "--target", help="docker, ami or all."),
    image: list[str] = typer.Option([], "--image", help="Only this image (repeatable)."),
    json_out: bool = JsonOpt,
    matrix: bool = typer.Option(
        False,
        "--matrix",
        help="Print the stale (image, target) jobs of a nightly run (refresh and upstream drift included) as one "
        'line of JSON, {"include": [{"image", "target", "layers", "force"}]}, for a CI matrix.',
    ),
    rehearse: bool = typer.Option(False, "--rehearse", help="With --matrix: plan against the rehearsal builds."),
) -> None:
    """Hash every layer and show which are cached and which need a build, and why."""
    from imagekit.api.spec import plan_spec
    from imagekit.errors import UsageError
    from imagekit.plan import ImagePlan, plan_json

    if matrix:
        from imagekit.api.fanout import plan_matrix
        from imagekit.cli.console import display, print_line_json

        show = display()
        print_line_json(
            run(lambda: show.run(lambda: plan_matrix(file, target=target, images=image or None, rehearse=rehearse,
                                                     reporter=show)))
        )  # fmt: skip
        return

    def go() -> list[ImagePlan]:
        if target not in ("docker", "ami", "all"):
            raise UsageError(f"--target must be docker, ami or all, not {target!r}")
        if rehearse:
            raise UsageError("--rehearse goes with --matrix (a plain plan reads the real builds)")
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
            # a reason can quote the store (a revocation's --reason) or an upstream: cells are text, not markup
            table.add_row(cell(p.name), cell(p.target), cell(lp.name), cell(lp.hash[:12]), f"[{style}]{lp.status}[/]",
                          cell(lp.reason))  # fmt: skip
    out.print(table)


@app.command()
def init(
    folder: Path | None = typer.Argument(None, help="The app folder (default: the current folder)."),
    cpu: bool = typer.Option(False, "--cpu", help="A CPU image on a debootstrapped Debian base (no CUDA)."),
) -> None:
    """Write a first imagekit.yaml for an app folder (requirements, torch, CUDA, models, server); never overwrites."""
    from imagekit.api.init import init as api_init
    from imagekit.spec import display_path

    result = run(lambda: api_init(folder, cpu=cpu))
    for line in result.found:
        err.print(f"[cyan]found[/] {escape(line)}")
    for note in result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    shown = display_path(result.path.absolute())
    err.print(f"[green]wrote[/] {escape(shown)} (it validates); next: imagekit plan -f {escape(shown)}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of imagekit.yaml (the file docs/imagekit.schema.json holds), for editors and CI."""
    import sys

    from imagekit.api.spec import schema_text

    sys.stdout.write(run(schema_text))


@app.command()
def doctor(  # noqa: PLR0917 (typer options)
    file: Path | None = typer.Option(
        None, "-f", "--file", help="Judge against this spec's targets (default: ./imagekit.yaml when present)."
    ),
    rehearse: bool = typer.Option(False, "--rehearse", help="AMI targets will be rehearsed (moto), not built on AWS."),
    push: str | None = typer.Option(None, "--push", help="Also check a stored login for this REGISTRY/REPO."),
    json_out: bool = JsonOpt,
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when anything is missing, needed or not."),
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="docker or buildah (also checks user namespaces, seccomp, the storage driver and a real buildah "
        "build); default: the spec's build.engine.",
        metavar="docker|buildah",
    ),
) -> None:
    """Check the tools a spec needs (engine, a real BuildKit build, packer, ...); exit 1 if a needed one is missing."""
    from imagekit.api.doctor import doctor as api_doctor

    report = run(lambda: api_doctor(file, rehearse=rehearse, push=push, engine=engine))
    if json_out:
        print_json(report.to_json())
    else:
        needed = ", ".join(c.name for c in report.checks if c.needed)
        out.print(f"[dim]needed for {escape(report.spec or 'docker builds')}: {escape(needed)}[/]")
        for check in report.checks:
            # MISS: needed and missing (exit 1); miss: missing, but nothing asked for needs it
            mark = "[green]  ok[/]" if check.ok else "[bold red]MISS[/]" if check.needed else "[yellow]miss[/]"
            out.print(f"{mark} [bold]{check.name:<16}[/] {escape(check.detail)}")
            if check.fix:
                out.print(f"     {'':<16} [dim]fix ({escape(check.needed_for)}):[/] {escape(check.fix)}")
    run(report.require_all if strict else report.require_needed)


@app.command()
def render(
    file: Path | None = SpecOpt,
    out_dir: Path | None = typer.Option(
        None, "-o", "--out", help="Write under this folder (default: the spec's folder; it is the build context)."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Write the Dockerfiles, provisioning scripts and Packer templates of a spec's images."""
    from imagekit.api.render import render as api_render

    files = run(lambda: api_render(file, out_dir))
    if json_out:
        print_json({"files": [f.to_json() for f in files]})
        return
    from imagekit.spec import display_path

    for f in files:
        out.print(f"{'wrote    ' if f.changed else 'unchanged'} {escape(display_path(f.path))}")
