"""The `imagekit` command: a thin typer app. Each command parses options, calls one api function, prints."""

from __future__ import annotations

import errno
import importlib
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
import typer.core

from imagekit.errors import BuildFailed, ImagekitError, SpecError

# typer 0.20+ runs commands on its own copy of click; older ones on click itself
_click = getattr(typer.core, "_click", None) or importlib.import_module("click")


class _Group(typer.core.TyperGroup):
    """The command group: options click rejects before any command runs still get `--json`'s error document."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        self._argv = list(args)
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _click.exceptions.ClickException as exc:
            argv = getattr(self, "_argv", [])
            if "--json" in argv[: argv.index("--") if "--" in argv else len(argv)]:
                from imagekit.cli.console import print_json

                where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else ""
                print_json({"error": {"message": one_line(exc.format_message()), "where": where,
                                      "exit_code": exc.exit_code}})  # fmt: skip
            raise


app = typer.Typer(
    name="imagekit",
    cls=_Group,
    help="Golden machine images for GPU inference services: validate, plan, render, build, verify, sign.",
    no_args_is_help=True,
    # typer's --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

T = TypeVar("T")


def _version(value: bool) -> None:
    if value:
        from imagekit import __version__

        typer.echo(f"imagekit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", help="Print imagekit's version and exit.", callback=_version, is_eager=True
    ),
) -> None:
    """Golden machine images for GPU inference services: validate, plan, render, build, verify, sign."""


def run(fn: Callable[[], T]) -> T:
    """The one boundary that maps outcomes to exit codes: 1 build/verify, 2 spec/usage, 3 bug, 130 Ctrl-C."""
    from imagekit.cli.console import err, escape

    try:
        return fn()
    except ImagekitError as exc:
        lines = [one_line(line) for line in exc.lines()]
        _json_error(" ".join(lines) if isinstance(exc, SpecError) else lines[0], where_of(exc), exc.exit_code)
        # Spec problems already read FILE:LINE: key: what; other errors get an "error:" lead-in.
        lead = "" if isinstance(exc, SpecError) else "[bold red]error:[/] "
        for i, line in enumerate(lines):
            err.print((lead if i == 0 else "") + escape(line))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _json_error("interrupted", "", 130)
        err.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            _crash(exc)
        # always the user's input: a path the kernel refuses, wherever it was first touched
        message = one_line(f"{exc.filename or 'a path'}: the file name is too long (over 255 bytes)")
        _json_error(message, one_line(str(exc.filename or "")), 2)
        err.print(f"[bold red]error:[/] {escape(message)}")
        raise typer.Exit(2) from None
    except Exception as exc:
        _crash(exc)


def _crash(exc: BaseException) -> NoReturn:
    """Exit 3: an unexpected exception, with the traceback in a log file."""
    from imagekit.cli.console import err, escape

    fd, log = tempfile.mkstemp(prefix="imagekit-crash-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exception(exc, file=fh)
    message = one_line(f"{type(exc).__name__}: {exc}")
    _json_error(f"unexpected error: {message} (a bug in imagekit; traceback in {log})", "", 3)
    err.print(f"[bold red]unexpected error:[/] {escape(message)}")
    err.print(f"this is a bug in imagekit; the traceback is in {log}")
    raise typer.Exit(3) from None


MAX_LINE = 2000


def one_line(text: str) -> str:
    """A message as one printable line: control characters escaped, cut when very long (values of 100 KB)."""
    from imagekit.inputs import printable

    shown = printable(text)
    return shown if len(shown) <= MAX_LINE else f"{shown[:MAX_LINE]}… ({len(shown) - MAX_LINE} more characters)"


def where_of(exc: ImagekitError) -> str:
    """Where an error happened, as `--json` reports it: file:line, image/layer, or ''."""
    if isinstance(exc, SpecError) and exc.problems:
        first = exc.problems[0]
        return one_line(f"{first.file}:{first.line}" if first.line else first.file)
    if isinstance(exc, BuildFailed):
        return one_line("/".join(x for x in (exc.image, exc.layer) if x))
    return one_line(str(getattr(exc, "where", "")))


def _json_requested() -> bool:
    """Whether the running command was given --json (every command names that option json_out)."""
    import importlib

    # typer 0.20+ runs commands on its own copy of click; older ones on click itself
    for name in ("typer._click.globals", "click.globals"):
        try:
            ctx = importlib.import_module(name).get_current_context(silent=True)
        except ModuleNotFoundError:
            continue
        if ctx is not None:
            return bool(ctx.params.get("json_out"))
    return False


def _json_error(message: str, where: str, code: int) -> None:
    """On a failed `--json` run, stdout still gets JSON: {"error": {"message", "where", "exit_code"}}."""
    if not _json_requested():
        return
    from imagekit.cli.console import print_json

    print_json({"error": {"message": message, "where": where, "exit_code": code}})


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
