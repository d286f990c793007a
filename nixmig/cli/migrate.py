"""`nixmig plan | apply | status | rollback`: the migration engine from the command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer

from nixmig.cli.common import JsonOption, print_json

ConfigOpt = typer.Option(Path("nixmig.toml"), "-c", "--config", help="Path to nixmig.toml.")
MigrationOpt = typer.Option(None, "--migration", "-m", help="Migration name (default: the only one).")
IdentityOpt = typer.Option(
    None,
    "--identity",
    "-i",
    help="Operator identity (ssh private key or age key file): test-reads the backup, and rollback needs it.",
)

RestoreTestOpt = typer.Option(
    False,
    "--restore-test",
    help="Also restore the backup into a scratch target (a container from the same image, or a scratch "
    "database on the same cluster) and compare every table's row count with the dump's own snapshot; "
    "the scratch target is removed afterwards. Needs --identity.",
)


class _Progress:
    """One line per phase; on a terminal a rich spinner runs while a phase works."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.status: Any = None
        self.console: Any = None
        if sys.stdout.isatty():
            from rich.console import Console

            self.console = Console(highlight=False)

    def emit(self, message: str) -> None:
        if self.console is not None:
            self.console.print(f"    {message}", markup=False)
        else:
            typer.echo(f"    {message}")

    def on_phase(self, phase: str, state: str, secs: float | None) -> None:
        if state in ("running", "undoing") or (state == "done" and secs is None):
            self.n += 1
        head = f"[{self.n}/{self.total}] {phase}"
        if state in ("running", "undoing"):
            line = f"==> {head}: {state}"
            if self.console is not None:
                self.console.print(line, markup=False)
                self.status = self.console.status(f"{head} …")
                self.status.start()
            else:
                typer.echo(line)
            return
        if self.status is not None:
            self.status.stop()
            self.status = None
        text = f"==> {head}: done before, skipped" if secs is None else f"    {phase} {state} in {secs:.1f}s"
        if self.console is not None:
            self.console.print(text, markup=False)
        else:
            typer.echo(text)


def _ctx(config: Path, migration: str | None, identity: list[Path] | None, *, quiet: bool = False) -> Any:
    from nixmig import config as cfgmod
    from nixmig import engine
    from nixmig.secrets.age import load_identities

    cfg = cfgmod.load(config)
    name = engine.pick_migration(cfg, migration)
    return engine.make_context(
        cfg,
        name,
        identities=load_identities(identity or []),
        emit=(lambda _m: None) if quiet else (lambda m: typer.echo(f"    {m}")),
    )


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        config: Path = ConfigOpt,
        migration: str | None = MigrationOpt,
        restore_test: bool = RestoreTestOpt,
        json_out: bool = JsonOption,
    ) -> None:
        """Print what `apply` would do: every phase, its commands and SQL (secrets masked)."""
        from nixmig import engine

        ctx = _ctx(config, migration, None, quiet=True)
        ctx.restore_test = restore_test
        steps = engine.plan(ctx)
        if json_out:
            print_json(
                [
                    {
                        "phase": s.phase,
                        "state": s.state,
                        "actions": [{"kind": a.kind, "text": a.text} for a in s.actions],
                    }
                    for s in steps
                ]
            )
            return
        typer.echo(f"migration {ctx.name}: {ctx.service.role}@{ctx.runtime.describe()} on {ctx.host_name}")
        for i, s in enumerate(steps, 1):
            typer.echo(f"{i}. {s.phase} [{s.state}] — {s.title}")
            for a in s.actions:
                typer.echo(f"     {a.kind:6} {a.text}")

    @app.command("apply")
    def apply_cmd(
        config: Path = ConfigOpt,
        migration: str | None = MigrationOpt,
        identity: list[Path] | None = IdentityOpt,
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (deploy-rs, CI)."),
        restore_test: bool = RestoreTestOpt,
    ) -> None:
        """Run the migration; resumes at the first unfinished phase after a crash."""
        from nixmig import engine
        from nixmig.errors import UsageError

        ctx = _ctx(config, migration, identity)
        ctx.restore_test = restore_test
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError("not a terminal and no --yes", hint="pass --yes to apply non-interactively")
            typer.confirm(f"apply migration {ctx.name} on {ctx.host_name}?", abort=True)
        progress = _Progress(len(engine.phases_for(ctx.migration.strategy)))
        ctx.emit = progress.emit
        start = time.monotonic()
        try:
            engine.apply(ctx, on_phase=progress.on_phase)
        finally:
            ctx.close()
        typer.echo(f"migration {ctx.name} on {ctx.host_name}: done in {time.monotonic() - start:.1f}s")

    @app.command("status")
    def status_cmd(
        config: Path = ConfigOpt,
        migration: str | None = MigrationOpt,
        json_out: bool = JsonOption,
    ) -> None:
        """Show each phase's state and timing from the journal."""
        from nixmig import engine

        ctx = _ctx(config, migration, None, quiet=True)
        rows = []
        for p in engine.phases_for(ctx.migration.strategy):
            step = ctx.journal.steps.get(p.name)
            rows.append(
                {
                    "phase": p.name,
                    "state": step.state if step else "pending",
                    "seconds": round(step.seconds, 2) if step and step.seconds is not None else None,
                    "error": step.error if step else None,
                }
            )
        if json_out:
            print_json(
                {"migration": ctx.name, "host": ctx.host_name, "rolled_back": ctx.journal.rolled_back, "phases": rows}
            )
            return
        typer.echo(f"migration {ctx.name} on {ctx.host_name}{' (rolled back)' if ctx.journal.rolled_back else ''}")
        for r in rows:
            secs = f"{r['seconds']:.1f}s" if r["seconds"] is not None else ""
            typer.echo(f"  {r['phase']:10} {r['state']:8} {secs:>8}  {r['error'] or ''}")

    @app.command("rollback")
    def rollback_cmd(
        config: Path = ConfigOpt,
        migration: str | None = MigrationOpt,
        identity: list[Path] | None = IdentityOpt,
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    ) -> None:
        """Undo the completed phases in reverse: old password restored, previous config deployed."""
        from nixmig import engine
        from nixmig.errors import UsageError

        ctx = _ctx(config, migration, identity)
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError("not a terminal and no --yes", hint="pass --yes to roll back non-interactively")
            typer.confirm(f"roll back migration {ctx.name} on {ctx.host_name}?", abort=True)
        progress = _Progress(len(engine.phases_for(ctx.migration.strategy)))
        ctx.emit = progress.emit
        try:
            undone = engine.rollback(ctx, on_phase=progress.on_phase)
        finally:
            ctx.close()
        typer.echo(f"rolled back: {', '.join(undone) or 'nothing to undo'}")
