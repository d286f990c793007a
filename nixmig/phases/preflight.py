"""preflight: everything that must hold before anything changes."""

from __future__ import annotations

import shutil
from typing import Any

from nixmig import target
from nixmig.db import ops, shells
from nixmig.db.runtime import DockerRuntime
from nixmig.errors import NixmigError
from nixmig.phases.base import Action, Context
from nixmig.secrets import rules as rl
from nixmig.secrets import store


class PreflightError(NixmigError):
    """A precondition does not hold; nothing was changed."""


def also_actions(ctx: Context) -> list[Action]:
    """The companion credentials (nixmig.toml's also): their secrets checked, and the note that their
    values (kept, not rotated) have been public in the repository's history."""
    also = ctx.migration.also
    if not also:
        return []
    acts = (
        []
        if ctx.on_host
        else [
            Action("check", f"secrets.nix lists {name}.age for this host's key (also: {var})")
            for var, name in also.items()
        ]
    )
    names = ", ".join(f"{var} ({name})" for var, name in also.items())
    acts.append(
        Action(
            "note",
            f"also moves {names} with their values kept: those values have been public in the repository's "
            "history (hardcoded in a Nix file): rotate each where it is checked (the database's ALTER USER, the "
            "app's admin settings, the token's issuer), then `nixmig secret new NAME --force --stdin` and deploy",
        )
    )
    return acts


class Preflight:
    name = "preflight"
    title = "preflight checks"
    keeps_target = True  # no container re-created, no cluster moved: engine._observe skipped

    def describe(self, ctx: Context) -> list[Action]:
        h = ctx.host
        local = h.transport == "local" or ctx.on_host
        via = "this machine" if local else f"ssh {h.user}@{h.address}:{h.port} (known_hosts verified)"
        return [
            Action("check", f"reach {ctx.host_name} via {via}"),
            Action("check", f"{ctx.runtime.describe()} answers; role {ctx.service.role!r} exists"),
            Action("sql", "the database's size and its number of tables (the catalog: no row read)"),
            *(
                []
                if ctx.on_host  # the repo is not on the host; agenix's file is checked by stage
                else [Action("check", f"secrets.nix lists {ctx.migration.secret}.age for this host's key")]
            ),
            *also_actions(ctx),
            Action("check", "free disk on this machine covers the backup"),
        ]

    def prepare(self, ctx: Context) -> None:
        """engine._prepare, before the locks: the database container's shell opened ahead, for
        the psql below (nixmig.db.shells.open_early; used once do's docker inspect names it)."""
        shells.open_early(ctx.t, ctx.runtime)

    def check(self, ctx: Context) -> bool:
        return False  # facts are re-read on every run

    def do(self, ctx: Context) -> dict[str, Any]:
        t = ctx.t
        container_id = ctx.runtime.check(t)
        if container_id is not None:
            shells.seen(t, ctx.runtime, container_id)  # the container of that name, under the locks
        facts = ops.facts(t, ctx.runtime, ctx.service.role)  # one psql: role, size, cluster, tables
        if not facts.role_exists:
            raise PreflightError(
                f"role {ctx.service.role!r} does not exist in {ctx.runtime.describe()}",
                where=t.name,
                hint="check services.<name>.role",
            )
        if not ctx.on_host:
            self._secret_listed(ctx)
        size = facts.db_bytes
        ctx.backups_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        free = shutil.disk_usage(ctx.backups_dir).free
        if free < size:  # a custom-format dump is smaller than the database: this is a safe bound
            raise PreflightError(
                f"{free // 2**20} MiB free for backups, the database is {size // 2**20} MiB",
                where=ctx.backups_dir,
                hint="free some space or move the repo's .nixmig/backups to a larger disk",
            )
        # the target's identity, from what was just read (engine._record keeps it in the journal)
        container = ctx.runtime.container if isinstance(ctx.runtime, DockerRuntime) else None
        seen = target.Identity(target.host_identity(t), facts.cluster, container, container_id)
        ctx.extra[target.SEEN] = seen
        ctx.emit(f"{facts.table_count} tables, {size // 2**20} MiB")
        return {"table_count": facts.table_count, "db_bytes": size}

    def _secret_listed(self, ctx: Context) -> None:
        """The migration's secret, and each companion's (also), listed and encrypted to the host's key."""
        rules = rl.load(store.find_rules(ctx.cfg.repo, ctx.cfg.secrets_dir))
        entry = rules.entries.get(f"{ctx.migration.secret}.age")
        if entry is None or not rules.file_for(entry).is_file():
            raise PreflightError(
                f"secret {ctx.migration.secret}.age is not in secrets.nix or its file is missing",
                where=rules.path,
                hint=f"create it: nixmig secret new {ctx.migration.secret}",
            )
        self._for_host(ctx, rules, entry)
        for var, name in ctx.migration.also.items():  # their values are kept: made from the Nix file first
            entry = rules.entries.get(f"{name}.age")
            if entry is None or not rules.file_for(entry).is_file():
                raise PreflightError(
                    f"secret {name}.age (also: {var}) is not in secrets.nix or its file is missing",
                    where=rules.path,
                    hint=f"create it with its current value: nixmig secret new {name} --from FILE:LINE "
                    f"(where {var} is hardcoded; `nixmig patch` names it)",
                )
            self._for_host(ctx, rules, entry)

    def _for_host(self, ctx: Context, rules: rl.Rules, entry: rl.Entry) -> None:
        if ctx.host.age_recipient:
            keys = {" ".join(k.split()[:2]) for k in entry.public_keys}
            if " ".join(ctx.host.age_recipient.split()[:2]) not in keys:
                raise PreflightError(
                    f"{entry.name} is not encrypted to {ctx.host_name}'s key, agenix there could not decrypt it",
                    where=rules.path,
                    hint="add the host key to its publicKeys, then: nixmig secret rekey",
                )

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        return None
