"""`nixmig demo`: the whole flow against a throwaway local target."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        keep: bool = typer.Option(False, "--keep", help="Keep the temp directory (repo, journal, backups) afterwards."),
        restore_test: bool = typer.Option(
            True,
            "--restore-test/--no-restore-test",
            help="Restore the backup into a scratch database and compare row counts (apply --restore-test).",
        ),
    ) -> None:
        """Run the whole migration on a throwaway local target: a copy of the worked example,
        a local PostgreSQL cluster, a writer inserting all along, and a deploy that plays
        activation. Ends with the verification table and writes acknowledged vs found."""
        from nixmig.demo import run_demo

        code = run_demo(typer.echo, keep=keep, restore_test=restore_test)
        raise typer.Exit(code)
