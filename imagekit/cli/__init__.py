"""The `imagekit` command: a thin typer app. Each command parses options, calls one api function, prints."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import TypeVar

import typer

from imagekit.errors import ImagekitError, SpecError

app = typer.Typer(
    name="imagekit",
    help="Golden machine images for GPU inference services: validate, plan, render, build, verify, sign.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

T = TypeVar("T")


def run(fn: Callable[[], T]) -> T:
    """The one boundary that maps outcomes to exit codes: 1 build/verify, 2 spec/usage, 3 bug, 130 Ctrl-C."""
    from imagekit.cli.console import err, escape

    try:
        return fn()
    except ImagekitError as exc:
        # Spec problems already read FILE:LINE: key: what; other errors get an "error:" lead-in.
        lead = "" if isinstance(exc, SpecError) else "[bold red]error:[/] "
        for i, line in enumerate(exc.lines()):
            err.print((lead if i == 0 else "") + escape(line))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:
        fd, log = tempfile.mkstemp(prefix="imagekit-crash-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            traceback.print_exc(file=fh)
        err.print(f"[bold red]unexpected error:[/] {escape(type(exc).__name__)}: {escape(str(exc))}")
        err.print(f"this is a bug in imagekit; the traceback is in {log}")
        raise typer.Exit(3) from None


def _register() -> None:
    # Each module adds its commands to `app`; importing them here keeps the order of `--help` stable.
    import importlib

    for name in ("spec", "build", "verify", "manifest", "keys", "gc", "nightly"):
        importlib.import_module(f"imagekit.cli.{name}")


_register()


def _one_line_help(typer_app: typer.Typer) -> None:
    # click cuts short help at 45 characters; give each command its whole first docstring line instead.
    for info in typer_app.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None) or ""
        if doc and info.short_help is None:
            info.short_help = doc.strip().splitlines()[0]
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _one_line_help(group.typer_instance)


_one_line_help(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
