"""verify's "no row is missing" check: against which counts (nixmig.phases.verify.baseline).

The rows are counted beside the backup's pg_dump (preflight reads the catalog only), so the
baseline is the backup's counts; a journal an older nixmig wrote has them in preflight's
data; with neither the row says it did not compare, and never passes a comparison it did not
make.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nixmig.journal import Journal, Step
from nixmig.phases.verify import baseline, tables_row


def _ctx(tmp_path: Path, **data: dict[str, Any]) -> Any:
    j = Journal(tmp_path / "j.json", "m", "h")
    for phase, d in data.items():
        j.steps[phase] = Step(phase, "done", 0.0, 1.0, d)
    return SimpleNamespace(journal=j)


def test_the_backup_counts_are_the_baseline(tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        preflight={"table_count": 2, "db_bytes": 1},
        backup={"path": "x", "tables": {"public.a": 10, "public.b": 5}},
    )
    assert baseline(ctx) == ({"public.a": 10, "public.b": 5}, "at the backup")
    row, after = tables_row(ctx, {"public.a": 12, "public.b": 5})
    assert row == {"check": "2 tables, 15 rows at the backup, now 17", "ok": True, "detail": ""}
    assert after == {"public.a": 12, "public.b": 5}


def test_a_table_with_fewer_rows_or_gone_fails_naming_it(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, backup={"tables": {"public.a": 10, "public.b": 5, "public.c": 1}})
    row, _ = tables_row(ctx, {"public.a": 9, "public.c": 1})
    assert row["ok"] is False
    assert row["detail"] == "public.a (9 < 10), public.b (gone < 5)"


def test_an_older_journal_compares_with_preflight(tmp_path: Path) -> None:
    """An apply begun by a nixmig that counted in preflight and resumed by this one."""
    ctx = _ctx(tmp_path, preflight={"tables": {"public.a": 3}, "db_bytes": 1}, backup={"path": "x"})
    row, _ = tables_row(ctx, {"public.a": 2})
    assert row["check"] == "1 tables, 3 rows at preflight, now 2" and row["ok"] is False


def test_without_counts_it_says_it_did_not_compare(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, preflight={"table_count": 1, "db_bytes": 1}, backup={"path": "x"})
    assert baseline(ctx) is None
    row, _ = tables_row(ctx, {"public.a": 2})
    assert row["check"] == "1 tables, 2 rows now"
    assert row["detail"] == "no count before the switch in the journal: not compared"
