"""The `nixmig` command. Thin: parse arguments, call the engine, render.

Heavy libraries (paramiko, docker, psycopg, pyrage, tree-sitter) are imported
inside the commands that need them, so `nixmig --help` stays fast.
"""

from __future__ import annotations

import os
import sys

# Plain click-style help and usage errors: rich's help renderer alone costs more
# than all of typer's import (bench/startup.py). Set TYPER_USE_RICH=1 to get it back.
os.environ.setdefault("TYPER_USE_RICH", "0")

import typer

from nixmig import __version__
from nixmig.cli import demo, gc, init, migrate, patch, plain, reencrypt, scan, secret
from nixmig.cli.common import state
from nixmig.errors import NixmigError, UsageError

app = typer.Typer(
    name="nixmig",
    cls=plain.Group,  # option values coerced without pydantic where typer's result is plain
    help="Move NixOS services off hardcoded credentials onto agenix secrets, safely.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Command groups and commands are registered here, one line each.
app.add_typer(secret.app, name="secret")
scan.register(app)
init.register(app)
patch.register(app)
migrate.register(app)
gc.register(app)
demo.register(app)
reencrypt.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nixmig {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    state.debug = debug


def main() -> None:
    """Entry point: run the app and turn errors into one line and an exit code."""
    try:
        app(prog_name="nixmig")
    except NixmigError as exc:
        sys.exit(_report(exc, 2 if isinstance(exc, UsageError) else 1))
    except KeyboardInterrupt:
        typer.echo("nixmig: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: still one line unless --debug
        sys.exit(_report(exc, 1, internal=True))


def _report(exc: BaseException, code: int, *, internal: bool = False) -> int:
    if state.debug or "--debug" in sys.argv:
        import traceback

        traceback.print_exception(exc)
    if internal:
        typer.echo(
            f"nixmig: internal error: {type(exc).__name__}: {exc} (run again with --debug and report it)",
            err=True,
        )
    else:
        typer.echo(f"nixmig: error: {exc}", err=True)
    return code
