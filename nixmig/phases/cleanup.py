"""cleanup: backups past the retention period go; the newest backup always stays.

Only this migration's files, by the exact name the backup phase gives them
(nixmig.backupname: ``db-*`` would also take migration ``db-password``'s). A
``.partial`` of this migration is removed only while this run holds the locks every
run of this migration takes (engine.locked: apply already holds them, and they are
re-entrant); then no other run of it can be writing one, it is a killed run's. When
another run holds them, the partials stay. Another migration's ``.partial`` may be its
run's backup being written right now: never touched here (gc removes it once it is
stale and that migration's lock is free).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nixmig import backupname
from nixmig.db import scratch
from nixmig.phases.base import Action, Context


def own_files(backups_dir: Path, migration: str) -> list[tuple[Path, backupname.BackupName]]:
    """This migration's backups and partial files in ``backups_dir``, by exact name."""
    if not backups_dir.is_dir():
        return []
    out = []
    for f in sorted(backups_dir.iterdir()):
        name = backupname.parse(f.name)
        if name is not None and name.migration == migration and f.is_file():
            out.append((f, name))
    return out


class Cleanup:
    name = "cleanup"
    title = "cleanup"
    keeps_target = True  # no container re-created, no cluster moved: engine._observe skipped

    def describe(self, ctx: Context) -> list[Action]:
        return [
            Action("run", f"remove restore-test scratch targets of {ctx.name} that a killed run left behind"),
            Action("local", f"remove backups of {ctx.name} older than {ctx.migration.retention_days} days"),
            Action("local", f"remove half-written backups of {ctx.name} (.partial) a killed run left behind"),
        ]

    def check(self, ctx: Context) -> bool:
        return False

    def do(self, ctx: Context) -> dict[str, Any]:
        scratches = scratch.remove_leftovers(ctx.t, ctx.runtime, ctx.name)
        for name in scratches:
            ctx.emit(f"removed {name} (restore test of a killed run)")
        keep = ctx.journal.data("backup").get("path")
        cutoff = time.time() - ctx.migration.retention_days * 86400
        removed: list[str] = []
        kept = 0
        for f, parsed in own_files(ctx.backups_dir, ctx.name):
            if parsed.partial:
                continue
            if str(f) != keep and f.stat().st_mtime < cutoff:
                f.unlink()
                removed.append(f.name)
            else:
                kept += 1
        partials = _remove_partials(ctx)
        ctx.emit(f"{len(removed)} old backups removed, {kept} kept for {ctx.migration.retention_days} days")
        return {"removed": removed, "partial_removed": partials, "scratch_removed": scratches}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        return None


def _remove_partials(ctx: Context) -> list[str]:
    """This migration's ``.partial`` files, removed under the locks of its runs (see the module doc)."""
    from nixmig import engine  # engine imports the phases
    from nixmig.lock import LockedError

    if not any(parsed.partial for _, parsed in own_files(ctx.backups_dir, ctx.name)):
        return []
    removed: list[str] = []
    try:
        with engine.locked(ctx):
            for f, parsed in own_files(ctx.backups_dir, ctx.name):
                if parsed.partial:
                    f.unlink(missing_ok=True)
                    removed.append(f.name)
                    ctx.emit(f"removed {f.name} (half-written by a killed run)")
    except LockedError as exc:
        ctx.emit(f"half-written backups of {ctx.name} kept: {exc.what}")
    return removed
