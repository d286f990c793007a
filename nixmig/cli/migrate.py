"""`nixmig plan | apply | status | rollback`: the migration engine from the command line.

Three ways to run them:
- one host (the default): the service's host, over SSH (or local transport);
- several hosts: `--hosts a,b,web-*` or `--all`, in parallel (`--parallel N`), one
  journal per host, a summary of done / failed / untouched hosts (nixmig.fleet);
- on the host itself: `--on-host`, from its activation (nixmig.onhost).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer

from nixmig.cli.common import JsonOption, print_json

ConfigOpt = typer.Option(
    None,
    "-c",
    "--config",
    help="Path to nixmig.toml (default: ./nixmig.toml; with --on-host /etc/nixmig/nixmig.toml when it exists).",
    show_default=False,
)
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
OnHostOpt = typer.Option(
    False,
    "--on-host",
    help="Run on the target itself (a NixOS unit, deploy-rs activate.custom): local transport, no deploy "
    "(the activation is the deploy), state in --state-dir; implies --yes. Exits at once when done.",
)
HostOpt = typer.Option(
    None, "--host", help="With --on-host: which host this is (default: $NIXMIG_HOST, the only host, the hostname)."
)
StateDirOpt = typer.Option(
    None,
    "--state-dir",
    help="With --on-host: journal and backups (default: $NIXMIG_STATE_DIR, else /var/lib/nixmig).",
    show_default=False,
)
HostsOpt = typer.Option(
    None, "--hosts", help="Several hosts: comma-separated names or glob patterns among the migration's hosts."
)
AllOpt = typer.Option(False, "--all", help="Every host of the migration.")
AcceptTargetOpt = typer.Option(
    False,
    "--accept-target",
    help="The database the config reaches now is the one of the journal's run although its identity "
    "changed (moved, restored; the SSH host key, the cluster's system_identifier or the container differs): "
    "record it and carry on. Without it apply and rollback refuse, before doing anything.",
)
ParallelOpt = typer.Option(4, "--parallel", min=1, help="With --hosts/--all: how many hosts work at once.")


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


def _load(config: Path | None, on_host: bool) -> Any:
    from nixmig import config as cfgmod

    if on_host:
        from nixmig import onhost

        return cfgmod.load(onhost.config_path(config))
    return cfgmod.load(config if config is not None else Path(cfgmod.DEFAULT_CONFIG))


def _with_inventory(cfg: Any, name: str) -> Any:
    """The config with the deploy tool's nodes, when the migration's hosts need them."""
    from nixmig import inventory

    if inventory.needed(cfg, cfg.migrations[name].service):
        return inventory.resolve(cfg)
    return cfg


class _Target:
    """What the command runs on: one host (ctx), on-host (ctx), or several (hosts)."""

    def __init__(
        self,
        config: Path | None,
        migration: str | None,
        identity: list[Path] | None,
        *,
        on_host: bool = False,
        host: str | None = None,
        state_dir: Path | None = None,
        hosts: str | None = None,
        all_hosts: bool = False,
        quiet: bool = False,
    ) -> None:
        from nixmig import engine, fleet
        from nixmig.errors import UsageError
        from nixmig.secrets.age import load_identities

        if on_host and (hosts or all_hosts):
            raise UsageError("--on-host runs on one host, this one", hint="drop --hosts/--all (or --on-host)")
        if (host or state_dir) and not on_host:
            raise UsageError("--host and --state-dir go with --on-host", hint="several hosts: --hosts a,b or --all")
        self.on_host = on_host
        self.cfg = _load(None if config is None else config, on_host)
        self.name = engine.pick_migration(self.cfg, migration)
        self.identities = load_identities(identity or [])
        self.quiet = quiet
        self.accept_target = False  # --accept-target (apply, rollback)
        self.state_dir: Path | None = None
        self.hosts: list[str] = []
        self.ctx: Any = None
        if on_host:
            from nixmig import onhost

            self.state_dir = onhost.state_dir(state_dir)
            host_name = onhost.this_host(self.cfg, self.name, host)
            self.ctx = self.context(host_name)
            self.ctx.extra["fast_index"] = (self.cfg.path, migration, host)  # the options as given
        elif hosts or all_hosts:
            self.cfg = _with_inventory(self.cfg, self.name)
            self.hosts = fleet.select(self.cfg, self.name, hosts, all_hosts)
        else:
            self.cfg = _with_inventory(self.cfg, self.name)
            self.ctx = self.context(None)

    def context(self, host: str | None, emit: Any = None) -> Any:
        from nixmig import engine

        ctx = engine.make_context(
            self.cfg,
            self.name,
            host=host,
            on_host=self.on_host,
            state_dir=self.state_dir,
            identities=self.identities,
            emit=emit or ((lambda _m: None) if self.quiet else (lambda m: typer.echo(f"    {m}"))),
        )
        ctx.extra["accept_target"] = self.accept_target
        return ctx

    @property
    def several(self) -> bool:
        return self.ctx is None


def _confirm(yes: bool, on_host: bool, question: str, flag_hint: str) -> None:
    from nixmig.errors import UsageError

    if yes or on_host:
        return
    if not sys.stdin.isatty():
        raise UsageError("not a terminal and no --yes", hint=flag_hint)
    typer.confirm(question, abort=True)


def _plan_rows(steps: list[Any]) -> list[dict[str, Any]]:
    return [
        {"phase": s.phase, "state": s.state, "actions": [{"kind": a.kind, "text": a.text} for a in s.actions]}
        for s in steps
    ]


def _print_plan(ctx: Any, steps: list[Any]) -> None:
    where = f"{ctx.host_name} (on-host)" if ctx.on_host else ctx.host_name
    if ctx.migration.strategy == "move":
        what = f"secret {ctx.migration.secret}, strategy move (the value stays, no database is changed)"
    else:
        what = f"{ctx.service.role}@{ctx.runtime.describe()}"
    typer.echo(f"migration {ctx.name}: {what} on {where}")
    for i, s in enumerate(steps, 1):
        typer.echo(f"{i}. {s.phase} [{s.state}] — {s.title}")
        for a in s.actions:
            typer.echo(f"     {a.kind:6} {a.text}")


def _status_rows(ctx: Any) -> list[dict[str, Any]]:
    from nixmig import engine

    rows = []
    for p in engine.phases_for(ctx.migration.strategy, ctx.migration):
        step = ctx.journal.steps.get(p.name)
        rows.append(
            {
                "phase": p.name,
                "state": step.state if step else "pending",
                "seconds": round(step.seconds, 2) if step and step.seconds is not None else None,
                "error": step.error if step else None,
            }
        )
    return rows


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        config: Path | None = ConfigOpt,
        migration: str | None = MigrationOpt,
        restore_test: bool = RestoreTestOpt,
        json_out: bool = JsonOption,
        hosts: str | None = HostsOpt,
        all_hosts: bool = AllOpt,
        on_host: bool = OnHostOpt,
        host: str | None = HostOpt,
        state_dir: Path | None = StateDirOpt,
    ) -> None:
        """Print what `apply` would do: every phase, its commands and SQL (secrets masked)."""
        from nixmig import engine

        target = _Target(
            config,
            migration,
            None,
            on_host=on_host,
            host=host,
            state_dir=state_dir,
            hosts=hosts,
            all_hosts=all_hosts,
            quiet=True,
        )
        ctxs = [target.context(h) for h in target.hosts] if target.several else [target.ctx]
        plans = []
        for ctx in ctxs:
            ctx.restore_test = restore_test
            if on_host:
                _on_host_migration(ctx, quiet=True)
            plans.append((ctx, engine.plan(ctx)))
        if json_out:
            if target.several:
                print_json({ctx.host_name: _plan_rows(steps) for ctx, steps in plans})
            else:
                print_json(_plan_rows(plans[0][1]))
            return
        for i, (ctx, steps) in enumerate(plans):
            if i:
                typer.echo("")
            _print_plan(ctx, steps)

    @app.command("apply")
    def apply_cmd(
        config: Path | None = ConfigOpt,
        migration: str | None = MigrationOpt,
        identity: list[Path] | None = IdentityOpt,
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (deploy-rs, CI)."),
        restore_test: bool = RestoreTestOpt,
        hosts: str | None = HostsOpt,
        all_hosts: bool = AllOpt,
        parallel: int = ParallelOpt,
        on_host: bool = OnHostOpt,
        host: str | None = HostOpt,
        state_dir: Path | None = StateDirOpt,
        json_out: bool = JsonOption,
        accept_target: bool = AcceptTargetOpt,
    ) -> None:
        """Run the migration; resumes at the first unfinished phase after a crash.

        With --hosts/--all: on each host in parallel; a failed host does not stop the others,
        and `apply` again retries only the hosts not done. With --on-host: on this machine,
        from its activation; exits 0 at once when the journal says done."""
        from nixmig import engine

        target = _Target(
            config,
            migration,
            identity,
            on_host=on_host,
            host=host,
            state_dir=state_dir,
            hosts=hosts,
            all_hosts=all_hosts,
        )
        target.accept_target = accept_target
        if target.several:
            _apply_fleet(target, yes=yes, restore_test=restore_test, parallel=parallel, json_out=json_out)
            return
        ctx = target.ctx
        ctx.extra["accept_target"] = accept_target
        ctx.restore_test = restore_test
        if restore_test and ctx.journal.state("backup") == "done" and "restore_test" not in ctx.journal.data("backup"):
            typer.echo("note: the backup was taken by an earlier run without --restore-test; it is not restored again")
        _confirm(
            yes, on_host, f"apply migration {ctx.name} on {ctx.host_name}?", "pass --yes to apply non-interactively"
        )
        progress = _Progress(len(engine.phases_for(ctx.migration.strategy, ctx.migration)))
        ctx.emit = progress.emit
        start = time.monotonic()
        try:
            if on_host:
                _apply_on_host(ctx, progress)
            else:
                engine.apply(ctx, on_phase=progress.on_phase)
        finally:
            ctx.close()
        typer.echo(f"migration {ctx.name} on {ctx.host_name}: done in {time.monotonic() - start:.1f}s")

    @app.command("status")
    def status_cmd(
        config: Path | None = ConfigOpt,
        migration: str | None = MigrationOpt,
        json_out: bool = JsonOption,
        hosts: str | None = HostsOpt,
        all_hosts: bool = AllOpt,
        on_host: bool = OnHostOpt,
        host: str | None = HostOpt,
        state_dir: Path | None = StateDirOpt,
    ) -> None:
        """Show each phase's state and timing from the journal (no connection)."""
        target = _Target(
            config,
            migration,
            None,
            on_host=on_host,
            host=host,
            state_dir=state_dir,
            hosts=hosts,
            all_hosts=all_hosts,
            quiet=True,
        )
        if target.several:
            _status_fleet(target, json_out)
            return
        ctx = target.ctx
        rows = _status_rows(ctx)
        if json_out:
            print_json(
                {
                    "migration": ctx.name,
                    "host": ctx.host_name,
                    "rolled_back": ctx.journal.rolled_back,
                    "completed": ctx.journal.completed,
                    "journal": str(ctx.journal.path),
                    "phases": rows,
                }
            )
            return
        typer.echo(f"migration {ctx.name} on {ctx.host_name}{' (rolled back)' if ctx.journal.rolled_back else ''}")
        for r in rows:
            secs = f"{r['seconds']:.1f}s" if r["seconds"] is not None else ""
            typer.echo(f"  {r['phase']:10} {r['state']:8} {secs:>8}  {r['error'] or ''}")

    @app.command("rollback")
    def rollback_cmd(
        config: Path | None = ConfigOpt,
        migration: str | None = MigrationOpt,
        identity: list[Path] | None = IdentityOpt,
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
        hosts: str | None = HostsOpt,
        all_hosts: bool = AllOpt,
        parallel: int = ParallelOpt,
        on_host: bool = OnHostOpt,
        host: str | None = HostOpt,
        state_dir: Path | None = StateDirOpt,
        json_out: bool = JsonOption,
        force: bool = typer.Option(
            False,
            "--force",
            help="strategy rebuild, after the switch to a newer major version: go back to the old volume "
            "although the writes made since the switch cannot be copied back into it (they stay on the "
            "new volume only). Without it such a rollback is refused. Also: the Nix files nixmig "
            "patched are restored even where they were edited since (the edited versions are kept).",
        ),
        accept_target: bool = AcceptTargetOpt,
    ) -> None:
        """Undo the completed phases in reverse: old password restored, previous config deployed.

        Strategy rebuild: writes made after the switch are copied back into the old volume first.
        On-host the configuration is left as it is: activate the previous generation after it."""
        from nixmig import engine

        target = _Target(
            config,
            migration,
            identity,
            on_host=on_host,
            host=host,
            state_dir=state_dir,
            hosts=hosts,
            all_hosts=all_hosts,
        )
        target.accept_target = accept_target
        if target.several:
            _rollback_fleet(target, yes=yes, parallel=parallel, json_out=json_out, force=force)
            return
        ctx = target.ctx
        ctx.extra["accept_target"] = accept_target
        ctx.extra["force"] = force
        _confirm(
            yes,
            False,  # rollback asks even on-host: nothing runs it unattended
            f"roll back migration {ctx.name} on {ctx.host_name}?",
            "pass --yes to roll back non-interactively",
        )
        progress = _Progress(len(engine.phases_for(ctx.migration.strategy, ctx.migration)))
        ctx.emit = progress.emit
        try:
            undone = engine.rollback(ctx, on_phase=progress.on_phase)
        finally:
            ctx.close()
        typer.echo(f"rolled back: {', '.join(undone) or 'nothing to undo'}")


# --- on-host ---------------------------------------------------------------------


def _on_host_migration(ctx: Any, *, quiet: bool = False) -> None:
    """Health checks are left out on-host: the app unit starts after nixmig's."""
    import dataclasses

    if ctx.migration.health_checks:
        if not quiet:
            ctx.emit(
                f"{len(ctx.migration.health_checks)} health check(s) not run on-host: the app starts after "
                "this unit; check them after the activation"
            )
        ctx.migration = dataclasses.replace(ctx.migration, health_checks=())


def _apply_on_host(ctx: Any, progress: _Progress) -> None:
    """The slow path of `apply --on-host` (the fast one is nixmig.onhost.fast_path); the
    journal read, archived and written under the run's locks (engine.locked)."""
    from nixmig import engine, onhost

    onhost.ensure_state_dir(ctx.state_dir)
    with engine.locked(ctx):
        _apply_on_host_locked(ctx, progress)


def _apply_on_host_locked(ctx: Any, progress: _Progress) -> None:
    from nixmig import engine, onhost
    from nixmig.errors import NixmigError
    from nixmig.journal import Journal

    secret = onhost.secret_file(ctx.cfg, ctx.host_name, ctx.name)
    if ctx.journal.completed is not None and not ctx.journal.rolled_back:
        if not secret.is_file():
            raise NixmigError(
                f"{secret} is missing in this activation",
                where=ctx.host_name,
                hint="check that the configuration has age.secrets." + ctx.migration.secret + " (journalctl -u agenix)",
            )
        if onhost.up_to_date(ctx.journal, secret):
            _remember(ctx, secret)
            ctx.emit("done before, nothing to do")
            return
        when = time.ctime(ctx.journal.completed)
        moved = onhost.archive(ctx.journal)
        ctx.emit(f"the secret differs from the one applied on {when}: a new run (previous journal: {moved})")
        ctx.journal = Journal.open(ctx.state_dir / "journal", ctx.host_name, ctx.name)
    _on_host_migration(ctx)
    engine.apply(ctx, on_phase=progress.on_phase)
    ctx.journal.meta["secret"] = onhost.secret_tag(ctx.t.get(str(secret)))
    ctx.journal.save()
    _remember(ctx, secret)


def _remember(ctx: Any, secret: Path) -> None:
    from nixmig import onhost

    config, migration, host = ctx.extra["fast_index"]
    onhost.remember(ctx.state_dir, config, migration, host, ctx.journal, secret)


# --- several hosts -----------------------------------------------------------------


def _apply_fleet(target: _Target, *, yes: bool, restore_test: bool, parallel: int, json_out: bool) -> None:
    from nixmig import engine, fleet
    from nixmig.cli.fleetview import FleetView

    cfg, name = target.cfg, target.name
    mig = cfg.migrations[name]
    phase_names = [p.name for p in engine.phases_for(mig.strategy, mig)]
    done_before = [h for h in target.hosts if fleet.is_done(fleet.journal_for(cfg, name, h), phase_names)]
    todo = [h for h in target.hosts if h not in done_before]
    if todo:
        _confirm(
            yes,
            False,
            f"apply migration {name} on {len(todo)} host(s): {', '.join(todo[:8])}{' …' if len(todo) > 8 else ''}?",
            "pass --yes to apply non-interactively",
        )
    view = FleetView(todo, len(phase_names), quiet=json_out)

    def work(host: str, gate: fleet.Gate | None) -> list[str]:
        ctx = target.context(host, emit=view.emitter(host))
        ctx.restore_test = restore_test
        ran: list[str] = []

        def on_phase(phase: str, state: str, secs: float | None) -> None:
            if state == "done" and secs is not None:
                ran.append(phase)
            view.on_phase(host, phase, state, secs)

        try:
            engine.apply(ctx, on_phase=on_phase, gate=gate)
        finally:
            ctx.close()
        return ran

    start = time.monotonic()
    with view:
        results = fleet.run(
            todo,
            work,
            parallel=parallel,
            barrier=mig.patch_repo,
            on_result=view.on_result,
            journal=lambda h: fleet.journal_for(cfg, name, h),
        )
    results += [fleet.HostResult(h, "skipped") for h in done_before]
    results.sort(key=lambda r: target.hosts.index(r.host))
    _fleet_summary(name, results, json_out, time.monotonic() - start, verb="done")


def _rollback_fleet(target: _Target, *, yes: bool, parallel: int, json_out: bool, force: bool = False) -> None:
    from nixmig import engine, fleet
    from nixmig.cli.fleetview import FleetView

    cfg, name = target.cfg, target.name
    nothing = [h for h in target.hosts if not fleet.journal_for(cfg, name, h).started]
    todo = [h for h in target.hosts if h not in nothing]
    if todo:
        _confirm(
            yes,
            False,
            f"roll back migration {name} on {len(todo)} host(s): {', '.join(todo[:8])}?",
            "pass --yes to roll back non-interactively",
        )
    view = FleetView(todo, len(engine.phases_for(cfg.migrations[name].strategy, cfg.migrations[name])), quiet=json_out)

    def work(host: str, gate: fleet.Gate | None) -> list[str]:
        ctx = target.context(host, emit=view.emitter(host))
        ctx.extra["rollback_hosts"] = tuple(target.hosts)
        ctx.extra["force"] = force
        try:
            return engine.rollback(ctx, on_phase=lambda p, s, secs: view.on_phase(host, p, s, secs))
        finally:
            ctx.close()

    start = time.monotonic()
    with view:
        results = fleet.run(todo, work, parallel=parallel, barrier=False, on_result=view.on_result)
    results += [fleet.HostResult(h, "skipped") for h in nothing]
    results.sort(key=lambda r: target.hosts.index(r.host))
    _fleet_summary(
        name, results, json_out, time.monotonic() - start, verb="rolled back", skipped="nothing to undo, not contacted"
    )


def _fleet_summary(
    name: str, results: list[Any], json_out: bool, seconds: float, *, verb: str, skipped: str | None = None
) -> None:
    from nixmig import fleet

    ok = all(r.outcome in ("done", "skipped") for r in results)
    if json_out:
        print_json({"migration": name, "ok": ok, "seconds": round(seconds, 2), "hosts": [r.as_json() for r in results]})
    else:
        typer.echo(f"migration {name}: {len(results)} host(s) in {seconds:.1f}s")
        for line in fleet.summary_lines(results, verb=verb, skipped=skipped):
            typer.echo(line)
        if not ok:
            typer.echo(f"run the same command again to retry the hosts not {verb}; `nixmig status --all` shows each")
    if not ok:
        raise typer.Exit(1)


def _status_fleet(target: _Target, json_out: bool) -> None:
    from nixmig import engine, fleet

    cfg, name = target.cfg, target.name
    phase_names = [p.name for p in engine.phases_for(cfg.migrations[name].strategy, cfg.migrations[name])]
    rows: list[dict[str, Any]] = []
    for h in target.hosts:
        j = fleet.journal_for(cfg, name, h)
        phase, error = fleet.stopped_at(j)
        if j.rolled_back:
            state = "rolled back"
        elif fleet.is_done(j, phase_names):
            state = "done"
        elif phase is not None:
            state = f"stopped at {phase}"
        elif j.started:
            state = "in progress"
        else:
            state = "not started"
        done = sum(j.state(p) == "done" for p in phase_names)
        rows.append(
            {"host": h, "state": state, "done": done, "phases": len(phase_names), "phase": phase, "error": error}
        )
    if json_out:
        print_json({"migration": name, "hosts": rows})
        return
    typer.echo(f"migration {name} on {len(rows)} host(s)")
    width = max(len(r["host"]) for r in rows)
    for r in rows:
        typer.echo(f"  {r['host']:{width}}  {r['done']}/{r['phases']}  {r['state']:16} {r['error'] or ''}".rstrip())
