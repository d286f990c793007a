"""Backup file names (nixmig.backupname), shared by the backup phase, cleanup and gc, and
the durable rename/mkdir helpers (nixmig.fsutil) the backup uses."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nixmig import backupname, fsutil, gc


@pytest.mark.parametrize(
    ("filename", "migration", "partial"),
    [
        ("db-20260101T000000Z.dump.age", "db", False),
        ("db-password-20260101T000000Z.dump.age", "db-password", False),
        ("db-password-20260101T000000Z.dump.partial", "db-password", True),
        ("db-20260101T000000Z.dump.partial", "db", True),
        ("db-2026-20260101T000000Z.dump.age", "db-2026", False),
    ],
)
def test_parse_names_the_exact_migration(filename: str, migration: str, partial: bool) -> None:
    parsed = backupname.parse(filename)
    assert parsed is not None
    assert (parsed.migration, parsed.stamp, parsed.partial) == (migration, "20260101T000000Z", partial)


@pytest.mark.parametrize("filename", ["notes.partial", "db.dump.age", "db-20260101.dump.age", "db-x.age", ".partial"])
def test_parse_refuses_what_is_not_a_backup(filename: str) -> None:
    assert backupname.parse(filename) is None


def test_names_round_trip_and_gc_uses_the_same_pattern() -> None:
    assert backupname.parse(backupname.final("db", "20260101T000000Z")) == backupname.BackupName(
        "db", "20260101T000000Z", False
    )
    assert backupname.parse(backupname.partial("db", "20260101T000000Z")) == backupname.BackupName(
        "db", "20260101T000000Z", True
    )
    assert gc._BACKUP_NAME is backupname.NAME  # type: ignore[attr-defined]


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_rename_durable_fsyncs_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "x.partial"
    src.write_bytes(b"data")
    synced = _record_fsyncs(monkeypatch)
    fsutil.rename_durable(src, tmp_path / "x.age")
    assert (tmp_path / "x.age").read_bytes() == b"data" and not src.exists()
    assert synced == [str(tmp_path)]


def test_mkdir_durable_fsyncs_each_new_directorys_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = _record_fsyncs(monkeypatch)
    leaf = tmp_path / "a" / "b" / "c"
    fsutil.mkdir_durable(leaf, 0o700)
    assert synced == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    assert leaf.stat().st_mode & 0o777 == 0o700
    synced.clear()
    fsutil.mkdir_durable(leaf, 0o700)  # there already: nothing to do
    assert synced == []


def test_a_second_backup_in_the_same_second_waits_for_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stamp has whole seconds: a fast second apply must not write over the first one's backup
    (seen in CI once apply got faster: one file left of two)."""
    clock = [1_796_000_000.25]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    fake = SimpleNamespace(
        time=lambda: clock[0], gmtime=lambda: time.gmtime(clock[0]), sleep=sleep, strftime=time.strftime
    )
    monkeypatch.setattr("nixmig.backupname.time", fake)
    first = backupname.free_stamp(tmp_path, "db")
    (tmp_path / backupname.final("db", first)).write_bytes(b"first")
    second = backupname.free_stamp(tmp_path, "db")
    assert second != first and len(slept) == 1 and slept[0] < 1
    (tmp_path / backupname.partial("db", second)).write_bytes(b"being written")
    assert backupname.free_stamp(tmp_path, "db") not in (first, second)  # a partial's name is taken too


def test_a_journal_archived_in_the_same_second_keeps_the_earlier_one(tmp_path: Path) -> None:
    """on-host: a completed journal moves aside as MIGRATION@STAMP.json; a second one completed in the same
    second gets its own name (it used to replace the first record)."""
    from nixmig import onhost

    names = []
    for n in range(2):
        path = tmp_path / "db.json"
        path.write_text("{}")
        journal = SimpleNamespace(path=path, migration="db", completed=1_796_000_000.0 + n / 10)
        names.append(onhost.archive(journal).name)  # type: ignore[arg-type]
    assert names == ["db@20261130T005320Z.json", "db@20261130T005320Z-2.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
