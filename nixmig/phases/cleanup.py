"""cleanup: backups past the retention period go; the newest backup always stays."""

from __future__ import annotations

import time
from typing import Any

from nixmig.db import scratch
from nixmig.phases.base import Action, Context


class Cleanup:
    name = "cleanup"
    title = "cleanup"

    def describe(self, ctx: Context) -> list[Action]:
        return [
            Action("run", f"remove restore-test scratch targets of {ctx.name} that a killed run left behind"),
            Action("local", f"remove backups of {ctx.name} older than {ctx.migration.retention_days} days"),
        ]

    def check(self, ctx: Context) -> bool:
        return False

    def do(self, ctx: Context) -> dict[str, Any]:
        scratches = scratch.remove_leftovers(ctx.t, ctx.runtime, ctx.name)
        for name in scratches:
            ctx.emit(f"removed {name} (restore test of a killed run)")
        keep = ctx.journal.data("backup").get("path")
        cutoff = time.time() - ctx.migration.retention_days * 86400
        removed = []
        for f in sorted(ctx.backups_dir.glob(f"{ctx.name}-*.dump.age")):
            if str(f) != keep and f.stat().st_mtime < cutoff:
                f.unlink()
                removed.append(f.name)
        for f in ctx.backups_dir.glob("*.partial"):
            f.unlink()
        kept = len(list(ctx.backups_dir.glob(f"{ctx.name}-*.dump.age")))
        ctx.emit(f"{len(removed)} old backups removed, {kept} kept for {ctx.migration.retention_days} days")
        return {"removed": removed, "scratch_removed": scratches}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        return None
