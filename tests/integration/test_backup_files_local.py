"""Backup files on a real local target (demo cluster, local transport, native runtime):
cleanup touches only its own migration's files, by exact name (two migrations ``db`` and
``db-password`` whose backups share one folder), and a backup's rename from ``.partial``
is followed by an fsync of the folder.

A real power-loss test is not possible here (no VM whose power can be cut): the fsync
test records the calls the backup makes, in order, on the real file system."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nixmig import config, engine
from nixmig.demo import Target
from nixmig.phases.backup import Backup
from nixmig.phases.cleanup import Cleanup
from tests.integration.test_migrate_local import target  # noqa: F401  (the fixture)

PHASES_BEFORE_CLEANUP = ["preflight", "backup", "stage", "rotate", "switch", "verify"]
OLD = time.time() - 30 * 86400


def _two_migrations(t: Target) -> config.Config:
    path = t.repo / "nixmig.toml"
    text = path.read_text()
    deploy = next(line for line in text.splitlines() if line.startswith("deploy = "))
    for name in ("db", "db-password"):
        text += f'\n[migrations.{name}]\nservice = "twenty-db"\nsecret = "twenty-db-password"\n{deploy}\n'
    path.write_text(text)
    return config.load(path)


def _touch(path: Path, mtime: float) -> Path:
    path.write_bytes(b"age-encryption.org/v1\n")
    os.utime(path, (mtime, mtime))
    return path


def test_cleanup_leaves_another_migrations_backups_and_partials(target: Target) -> None:  # noqa: F811
    cfg = _two_migrations(target)
    lines: list[str] = []
    ctx = engine.make_context(cfg, "db", emit=lines.append)
    d = ctx.backups_dir
    d.mkdir(parents=True, mode=0o700)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    db_old = _touch(d / "db-20200101T000000Z.dump.age", OLD)
    db_current = _touch(d / f"db-{stamp}.dump.age", OLD)  # the journal's: kept whatever its age
    db_recent = _touch(d / "db-20991231T000000Z.dump.age", now)
    db_partial = _touch(d / "db-20200102T000000Z.dump.partial", now)  # a killed db run's
    other_old = _touch(d / "db-password-20200101T000000Z.dump.age", OLD)
    other_partial = _touch(d / f"db-password-{stamp}.dump.partial", now)  # db-password's run, writing
    other_killed = _touch(d / "db-password-20200102T000000Z.dump.partial", OLD)
    not_ours = _touch(d / "notes.partial", OLD)

    for phase in PHASES_BEFORE_CLEANUP:  # a run of db that got as far as cleanup
        ctx.journal.begin(phase)
        ctx.journal.finish(phase, {"path": str(db_current)} if phase == "backup" else {})
    engine.apply(ctx)  # runs cleanup alone, under the engine's lock

    left = {p.name for p in d.iterdir()}
    assert db_old.name not in left and db_partial.name not in left
    assert {db_current.name, db_recent.name} <= left
    # migration db-password's files: not db's, whatever their age or state (its own cleanup or gc decides)
    assert {other_old.name, other_partial.name, other_killed.name, not_ours.name} <= left
    data = ctx.journal.data("cleanup")
    assert data["removed"] == [db_old.name]
    assert data["partial_removed"] == [db_partial.name]
    assert "1 old backups removed, 2 kept for 7 days" in lines


def test_backup_fsyncs_its_folder_after_the_rename(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    cfg = _two_migrations(target)
    ctx = engine.make_context(cfg, "db", emit=lambda _m: None)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    def rename(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    data = Backup().do(ctx)
    monkeypatch.undo()

    final = Path(data["path"])
    assert final.parent == ctx.backups_dir and final.is_file()
    renamed = events.index(("rename", str(final)))
    # the file's data before the rename, the folder's entry after it
    assert ("fsync", str(final.with_suffix(".partial"))) in events[:renamed]
    assert ("fsync", str(ctx.backups_dir)) in events[renamed + 1 :]
    # the folders the backup created (STATE/backups/HOST) are durable too: their parents were fsynced
    assert ("fsync", str(ctx.backups_dir.parent)) in events[:renamed]


def test_cleanup_keeps_its_partials_while_another_run_holds_the_lock(target: Target) -> None:  # noqa: F811
    cfg = _two_migrations(target)
    lines: list[str] = []
    ctx = engine.make_context(cfg, "db", emit=lines.append)
    ctx.backups_dir.mkdir(parents=True, mode=0o700)
    partial = _touch(ctx.backups_dir / "db-20200102T000000Z.dump.partial", time.time())
    other_run = engine.make_context(cfg, "db", emit=lambda _m: None)  # another run of db, writing it
    with engine.locked(other_run):
        data = Cleanup().do(ctx)
    assert partial.exists() and data["partial_removed"] == []
    assert any(ln.startswith("half-written backups of db kept: ") for ln in lines), lines
    data = Cleanup().do(ctx)  # that run is gone (killed): its partial goes
    assert not partial.exists() and data["partial_removed"] == [partial.name]
