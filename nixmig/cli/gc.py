"""`nixmig gc`: list what is past retention; remove it with --yes (see nixmig.gc)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from nixmig.cli.common import JsonOption, print_json
from nixmig.cli.migrate import ConfigOpt, HostOpt, OnHostOpt, StateDirOpt


def _sides(cfg: Any, migrations: list[str], on_host: bool, only: str | None) -> Any:
    """host -> how gc reaches it: the hosts in journals, and those of the migrations' services."""
    from nixmig import engine, gc
    from nixmig.db.runtime import DockerRuntime, runtime_for

    def sides(journal_hosts: set[str]) -> dict[str, gc.HostSide]:
        runtimes: dict[str, list[tuple[str, Any]]] = {}
        for m in migrations:
            if cfg.migrations[m].strategy == "move":
                continue  # no database: no database lock, no scratch target (its lock is in `locks`)
            svc_name = cfg.migrations[m].service
            for h in cfg.targets(svc_name):
                if h in cfg.hosts:
                    runtimes.setdefault(h, []).append((m, runtime_for(cfg.service_for(svc_name, h))))
        hosts = (journal_hosts | set(runtimes)) & set(cfg.hosts)
        if only is not None:
            hosts &= {only}
        out = {}
        for h in sorted(hosts):
            rts = runtimes.get(h, [])
            docker = next((rt._docker() for _, rt in rts if isinstance(rt, DockerRuntime)), ["docker"])
            locks = [f"{h}-{m}" for m in cfg.migrations if h in cfg.targets(cfg.migrations[m].service)]
            out[h] = gc.HostSide(
                h, engine.connector(cfg, h, on_host=on_host), docker, cfg.hosts[h].lock_dir, locks, rts
            )
        return out

    return sides


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return ""


def register(app: typer.Typer) -> None:
    @app.command("gc")
    def gc_cmd(
        config: Path | None = ConfigOpt,
        migration: str | None = typer.Option(None, "--migration", "-m", help="Only this migration (default: all)."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Remove what is listed for removal."),
        on_host: bool = OnHostOpt,
        host: str | None = HostOpt,
        state_dir: Path | None = StateDirOpt,
        json_out: bool = JsonOption,
    ) -> None:
        """List what is past retention: encrypted backups here, old volumes and containers that
        journals retain, scratch containers and databases a killed run left on the hosts.
        With --yes, remove them. Never removes what a migration that is not finished needs for a
        rollback, nor anything on a host where a nixmig run holds the lock."""
        from nixmig import gc, inventory, onhost
        from nixmig.cli.migrate import _load
        from nixmig.errors import UsageError

        if (host or state_dir) and not on_host:
            raise UsageError("--host and --state-dir go with --on-host")
        cfg = _load(config, on_host)
        if migration is not None and migration not in cfg.migrations:
            raise UsageError(
                f"no migration {migration!r}", where=cfg.path, hint="defined: " + ", ".join(cfg.migrations)
            )
        names = [migration] if migration else list(cfg.migrations)
        only: str | None = None
        if on_host:
            root = onhost.state_dir(state_dir)
            only = onhost.this_host(cfg, names[0], host) if names else host
        else:
            root = cfg.repo / ".nixmig"
            if any(inventory.needed(cfg, cfg.migrations[m].service) for m in names):
                cfg = inventory.resolve(cfg)
        report = gc.collect(
            cfg,
            root,
            sides=_sides(cfg, names, on_host, only),
            remove=yes,
            migrations=[migration] if migration else None,
            hosts=[only] if only else None,
        )
        if json_out:
            print_json(report.as_json())
        else:
            for i in report.items:
                verb = "removed" if i.removed else ("remove" if i.action == "remove" else "keep")
                if i.error:
                    verb = "FAILED"
                name = i.name
                if i.kind in ("backup", "partial"):
                    with contextlib.suppress(ValueError):
                        name = str(Path(i.name).relative_to(Path.cwd()))
                size = f" ({_size(i.bytes)})" if i.bytes is not None else ""
                typer.echo(f"{verb:8} {i.kind:17} {i.host:12} {name}{size} — {i.error or i.reason}")
            for e in report.errors:
                typer.echo(f"error: {e}", err=True)
            n = len(report.to_remove)
            removed = sum(i.removed for i in report.items)
            if yes:
                typer.echo(f"{removed} removed, {len(report.kept)} kept")
            elif n:
                typer.echo(f"{n} to remove, {len(report.kept)} kept: run again with --yes to remove them")
            else:
                typer.echo(f"nothing past retention ({len(report.kept)} kept)")
        if report.errors:
            raise typer.Exit(1)
