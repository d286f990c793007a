"""Rendering a run: a rich progress bar per table, a statistics table, or JSON.

Only primary keys, column names and counts are shown, never a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nixmig.reencrypt.core import Options, TableStats
from nixmig.reencrypt.modes import Mode

BACKUP_REMINDER = (
    "Before --apply: back up the database (pg_dump, encrypted to the operator) and both keys. "
    "Keep the old key for as long as you keep any backup taken before this run, "
    "and at least {days} days after it, so that old backups stay readable and the run can be undone."
)


def reminder(days: int) -> str:
    return BACKUP_REMINDER.format(days=days)


class RichProgress:
    """One progress bar per table on stderr (nothing when disabled or not a terminal)."""

    def __init__(self, *, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled or not console.is_terminal,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, table: str, total: int, done: int) -> None:
        self._tasks[table] = self._progress.add_task(table, total=max(total, done), completed=done)

    def advance(self, table: str, rows: int) -> None:
        self._progress.advance(self._tasks[table], rows)

    def finish(self, table: str) -> None:
        task = self._tasks[table]
        self._progress.update(task, total=self._progress.tasks[task].completed)


_COLUMNS = (
    ("scanned", "scanned"),
    ("migrated", "migrated"),
    ("already_new", "already new"),
    ("plaintext", "plaintext"),
    ("old_scheme", "old scheme"),
    ("hmac_failed", "HMAC failed"),
    ("decrypt_failed", "decrypt failed"),
)


def as_json(stats: Sequence[TableStats], opts: Options) -> dict[str, Any]:
    return {
        "mode": opts.mode.value,
        "dry_run": not opts.writes,
        "ok": not any(s.failed(opts) for s in stats),
        "tables": [
            {
                "table": s.table,
                **s.counts.as_dict(),
                "rows_per_s": round(s.rows_per_s, 1),
                "seconds": round(s.seconds, 3),
                "resumed": s.resumed,
                "failures": [{"pk": f.pk, "column": f.column, "kind": f.kind, "reason": f.reason} for f in s.failures],
            }
            for s in stats
        ],
    }


def render(stats: Sequence[TableStats], opts: Options) -> None:
    """The statistics table and the failure list, on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    verb = "dry run (nothing written)" if not opts.writes and opts.mode is not Mode.VERIFY else None
    title = f"nixmig reencrypt --mode {opts.mode.value}" + (f": {verb}" if verb else "")
    table = Table(title=title)
    table.add_column("table")
    for _, label in _COLUMNS:
        table.add_column("would migrate" if label == "migrated" and verb else label, justify="right")
    table.add_column("rows/s", justify="right")
    total = {k: 0 for k, _ in _COLUMNS}
    for s in stats:
        d = s.counts.as_dict()
        for k, _ in _COLUMNS:
            total[k] += d[k]
        name = s.table + (" (resumed)" if s.resumed else "")
        table.add_row(name, *(str(d[k]) for k, _ in _COLUMNS), f"{s.rows_per_s:,.0f}")
    if len(stats) > 1:
        table.add_row("total", *(str(total[k]) for k, _ in _COLUMNS), "", style="bold")
    console.print(table)
    for line in summary_lines(stats, opts):
        console.print(line, markup=False, highlight=False)


def summary_lines(stats: Sequence[TableStats], opts: Options) -> list[str]:
    """The failures by primary key, and what to do about them."""
    lines: list[str] = []
    for s in stats:
        for f in s.failures:
            lines.append(f"  {s.table}.{f.column} primary key {f.pk}: {f.reason}")
        listed = len(s.failures)
        if listed and s.failed(opts) > listed:
            lines.append(f"  {s.table}: ... and {s.failed(opts) - listed} more")
    hmac = sum(s.counts.hmac_failed for s in stats)
    dec = sum(s.counts.decrypt_failed for s in stats)
    if hmac:
        lines.append(f"HMAC verification failed: check the HMAC secret ({hmac} value(s); those rows were not written)")
    if dec:
        lines.append(
            f"{dec} value(s) did not decrypt: check --old-key / --old-key-version; those rows were not written"
        )
    if opts.mode is Mode.VERIFY:
        left = sum(s.counts.plaintext + s.counts.old_scheme for s in stats)
        if left:
            lines.append(f"{left} value(s) are not in the new scheme yet: run reencrypt --apply")
    conflicts = sum(s.counts.conflicts for s in stats)
    if conflicts:
        lines.append(f"{conflicts} row(s) changed during the run were read again and redone")
    return lines
