"""`nixmig apply --restore-test` on a local target: a real PostgreSQL cluster (native
runtime, local transport), the scratch database on the same cluster, a writer
inserting all along, and SIGKILLs in the middle of the restore."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nixmig import config, engine
from nixmig.db import ops
from nixmig.db.writer import Writer
from nixmig.demo import SECRET, Target
from nixmig.phases.backup import Backup, BackupError, restore_test
from nixmig.phases.base import Context
from nixmig.secrets.age import load_identities
from tests.integration.test_migrate_local import journal, nixmig, role_matches, target

__all__ = ["target"]  # the fixture, shared with test_migrate_local

NEW_PASSWORD = "n3w/pa+ss=w@rd:%?-long-enough"
SCRATCH_PREFIX = "nixmig_restore_test_"


def sql(t: Target, query: str) -> str:
    ctx = engine.make_context(config.load(t.repo / "nixmig.toml"), SECRET)
    try:
        return ops.psql(ctx.t, ctx.runtime, query)
    finally:
        ctx.close()


def scratch_dbs(t: Target) -> list[str]:
    out = sql(t, f"SELECT datname FROM pg_database WHERE datname LIKE '{SCRATCH_PREFIX}%' ORDER BY 1;")
    return out.split()


def idle_in_transaction(t: Target) -> int:
    """Sessions idle inside a transaction: an exported snapshot left open would be one."""
    return int(sql(t, "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%';"))


def counts(t: Target) -> dict[str, int]:
    ctx = engine.make_context(config.load(t.repo / "nixmig.toml"), SECRET)
    try:
        return ops.snapshot(ctx.t, ctx.runtime)
    finally:
        ctx.close()


def steps(t: Target) -> dict[str, dict[str, object]]:
    return {s["phase"]: s for s in journal(t)["steps"]}  # type: ignore[attr-defined]


def quiet_context(t: Target) -> Context:
    """The run's context with the operator's identity (backups are test-read), printing nothing."""
    return engine.make_context(
        config.load(t.repo / "nixmig.toml"), SECRET, identities=load_identities([t.admin_key]), emit=lambda _m: None
    )


def writer_for(t: Target) -> Writer:
    return Writer(url_source=t.app_url, generation=lambda: t.env_file.exists() and t.env_file.stat().st_mtime)


def test_apply_with_restore_test_while_the_app_writes(target: Target) -> None:
    plan = nixmig(target, "plan", "--restore-test")
    assert plan.returncode == 0, plan.stderr
    assert "pg_export_snapshot()" in plan.stdout and "scratch database nixmig_restore_test_" in plan.stdout

    writer = writer_for(target)
    writer.start()
    try:
        before = counts(target)
        run = nixmig(target, "apply", "--yes", "--restore-test", "-i", str(target.admin_key))
    finally:
        writer.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "restore test in scratch database nixmig_restore_test_twenty_db_password_" in run.stdout
    assert "every table's row count and content equal the dump's snapshot" in run.stdout
    assert role_matches(target, NEW_PASSWORD)

    data = steps(target)
    restored = data["backup"]["data"]["restore_test"]["tables"]  # type: ignore[index]
    final = counts(target)
    assert set(restored) == set(before) == set(final)
    for table in ("public.company", "public.person", "public.workspace"):  # nobody writes these
        assert restored[table] == before[table] == final[table]
    # the app kept writing: the dump's snapshot sits between the start and the end
    assert before["public.app_writes"] <= restored["public.app_writes"] <= final["public.app_writes"]
    assert final["public.app_writes"] > before["public.app_writes"]
    # verify's baseline is the dump's own snapshot: the counts the restore matched
    assert data["backup"]["data"]["tables"] == restored  # type: ignore[index]
    assert f"{len(restored)} tables, {sum(restored.values())} rows at the backup, now " in run.stdout
    for table, n in restored.items():
        assert f"  {table}" in run.stdout and str(n) in run.stdout  # the short table
    assert scratch_dbs(target) == []  # dropped
    assert idle_in_transaction(target) == 0  # the snapshot's session ended


def _ghost(t: Target) -> None:
    """A table that pg_dump leaves out without a word: it belongs to an extension (here
    plpgsql), so pg_dump expects CREATE EXTENSION to recreate it, and it is not dumped."""
    sql(
        t,
        "CREATE TABLE public.ghost (id int PRIMARY KEY, note text);\n"
        "INSERT INTO public.ghost SELECT g, 'not in any dump' FROM generate_series(1, 3) g;\n"
        "ALTER EXTENSION plpgsql ADD TABLE public.ghost;\n",
    )


def test_restore_test_fails_on_a_table_the_backup_lost(target: Target) -> None:
    _ghost(target)
    r = nixmig(target, "apply", "--yes", "--restore-test", "-i", str(target.admin_key))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stdout + r.stderr, r.stderr
    assert "restore test: table public.ghost (3 rows in the dump's snapshot) is missing from the restore" in lines[0]
    assert "nothing on the target was changed" in lines[0]
    state = steps(target)
    assert state["backup"]["state"] == "failed" and "public.ghost" in str(state["backup"]["error"])
    assert "stage" not in state and "rotate" not in state
    assert role_matches(target, "postgres")  # stopped before anything changed
    assert scratch_dbs(target) == []  # dropped on failure too
    # the same backup without the restore test goes through: the restore test is what saw it
    r = nixmig(target, "apply", "--yes", "-i", str(target.admin_key))
    assert r.returncode == 0, r.stdout + r.stderr
    # asking for it afterwards does not pretend: that backup is done and was not restore-tested
    r = nixmig(target, "apply", "--yes", "--restore-test", "-i", str(target.admin_key))
    assert r.returncode == 0 and "not restored again" in r.stdout, r.stdout + r.stderr


def test_tampered_counts_and_a_truncated_backup_are_caught(target: Target) -> None:
    ctx = quiet_context(target)
    try:
        data = Backup().do(ctx)  # no writer: the live counts are the dump's
        path = Path(data["path"])
        live = ops.content(ctx.t, ctx.runtime)
        stamp = path.name.removeprefix(f"{SECRET}-").removesuffix(".dump.age")
        assert restore_test(ctx, path, live, stamp)["tables"] == {k: v.rows for k, v in live.items()}

        n = live["public.person"].rows
        tampered = {**live, "public.person": ops.TableContent(n + 1, live["public.person"].checksum)}
        with pytest.raises(BackupError) as bad:
            restore_test(ctx, path, tampered, stamp)
        assert f"table public.person has {n} rows in the restore, {n + 1} in the dump's snapshot" in bad.value.line()
        assert scratch_dbs(target) == []

        # the same rows, one value changed since the dump: the counts agree, the content does not
        sql(target, "UPDATE person SET name = name || '.' WHERE id = (SELECT min(id) FROM person);\n")
        changed = ops.content(ctx.t, ctx.runtime)
        assert changed["public.person"].rows == n and changed["public.person"] != live["public.person"]
        with pytest.raises(BackupError) as differs:
            restore_test(ctx, path, changed, stamp)
        assert f"table public.person has the dump's {n} rows, but their content differs" in differs.value.line()
        assert scratch_dbs(target) == []

        # a backup cut short (re-encrypted, so decryption succeeds): pg_restore stops on it
        plain = subprocess.run(
            ["age", "-d", "-i", str(target.admin_key), str(path)], capture_output=True, check=True
        ).stdout
        short = path.with_name(f"{SECRET}-20990101T000000Z.dump.age")
        admin_pub = target.admin_key.with_suffix(".pub").read_text().split()
        subprocess.run(
            ["age", "-r", " ".join(admin_pub[:2]), "-o", str(short)],
            input=plain[: len(plain) * 2 // 3],
            check=True,
        )
        with pytest.raises(BackupError) as cut:
            restore_test(ctx, short, live, "20990101T000000Z")
        assert "restore test: pg_restore into scratch database nixmig_restore_test_" in cut.value.line()
        assert scratch_dbs(target) == []
    finally:
        ctx.close()


def test_a_test_read_cut_by_the_transport_is_not_called_a_rejected_backup(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A docker exec stream reset mid-read (seen in CI) failed the backup phase as "pg_restore
    --list rejects the backup" although pg_restore never judged the backup: said as what it was,
    and how to go on. pg_restore's own verdict keeps its wording."""
    ctx = quiet_context(target)
    try:
        cut = "cat > /dev/null; echo 'error: read unix @->/run/docker.sock: read: connection reset by peer' >&2; exit 1"
        monkeypatch.setattr(type(ctx.runtime), "pg_restore_list", lambda _self: ["sh", "-c", cut])
        with pytest.raises(BackupError) as transport:
            Backup().do(ctx)
        line = transport.value.line()
        assert "the backup's test-read did not finish (pg_restore --list never judged it)" in line
        assert "connection reset by peer" in line and "run `nixmig apply` again" in line
        assert "rejects" not in line

        # the real pg_restore, fed a stream it cannot read, keeps the old wording
        garbage = "cat > /dev/null; printf garbage | pg_restore --list"
        monkeypatch.setattr(type(ctx.runtime), "pg_restore_list", lambda _self: ["sh", "-c", garbage])
        with pytest.raises(BackupError) as judged:
            Backup().do(ctx)
        assert "pg_restore --list rejects the backup: pg_restore: error:" in judged.value.line()
    finally:
        ctx.close()


def _grow(t: Target) -> None:
    """~60 MB more, so the dump and the restore take long enough to be killed in."""
    sql(
        t,
        "CREATE TABLE bulk (id bigserial PRIMARY KEY, body text);\n"
        "INSERT INTO bulk (body) SELECT md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) "
        "FROM generate_series(1, 500000) g;\n",
    )


def _apply_killed_in_restore(t: Target) -> str:
    """Start apply --restore-test, SIGKILL it once the scratch database exists; its name."""
    config_file = str(t.repo / "nixmig.toml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nixmig", "apply", "--yes", "--restore-test", "-i", str(t.admin_key), "-c", config_file],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while not (found := scratch_dbs(t)):
            if proc.poll() is not None:
                assert proc.stderr is not None
                raise AssertionError(f"apply ended before its restore test: {proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, "no scratch database within 120s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return found[0]


def test_killed_during_the_restore_test_leaves_nothing_behind(target: Target) -> None:
    _grow(target)
    # killed: the scratch database stays; the next apply without --restore-test ends
    # with the cleanup phase removing it
    left = _apply_killed_in_restore(target)
    assert scratch_dbs(target) == [left] and steps(target)["backup"]["state"] == "running"
    r = nixmig(target, "apply", "--yes", "-i", str(target.admin_key))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"removed {left} (restore test of a killed run)" in r.stdout
    assert scratch_dbs(target) == []
    assert nixmig(target, "rollback", "--yes", "-i", str(target.admin_key)).returncode == 0

    # killed again: rollback removes it
    left = _apply_killed_in_restore(target)
    r = nixmig(target, "rollback", "--yes", "-i", str(target.admin_key))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"removed {left}" in r.stdout and scratch_dbs(target) == []

    # killed once more: the next apply --restore-test removes it before its own
    left = _apply_killed_in_restore(target)
    r = nixmig(target, "apply", "--yes", "--restore-test", "-i", str(target.admin_key))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"removed {left}, left by an earlier run that was killed during its restore test" in r.stdout
    assert scratch_dbs(target) == [] and idle_in_transaction(target) == 0
    assert [p["state"] for p in json.loads(nixmig(target, "status", "--json").stdout)["phases"]] == ["done"] * 7
    assert role_matches(target, NEW_PASSWORD)


def test_content_checksums_do_not_depend_on_the_server_settings(target: Target) -> None:
    """A scratch server may be configured otherwise than the live one (time zone, date
    style, bytea output...): the checksum reads rows under fixed session settings."""
    ctx = engine.make_context(config.load(target.repo / "nixmig.toml"), SECRET)
    settings = {
        "TimeZone": "Asia/Tokyo",
        "DateStyle": "SQL, DMY",
        "IntervalStyle": "sql_standard",
        "extra_float_digits": "0",
        "bytea_output": "escape",
    }
    alter = "".join(
        f"SELECT format('ALTER DATABASE %I SET {k} = %L', current_database(), '{v}') \\gexec\n"
        for k, v in settings.items()
    )
    reset = "SELECT format('ALTER DATABASE %I RESET ALL', current_database()) \\gexec\n"
    try:
        sql(
            target,
            "CREATE TABLE shapes (id int PRIMARY KEY, at timestamptz, d date, f float8, b bytea, i interval);\n"
            "INSERT INTO shapes VALUES (1, '2026-11-23 10:00:00+00', '2026-01-02', 0.1 + 0.2, '\\xdeadbeef', "
            "'1 day 02:03:04');\n",
        )
        before = ops.content(ctx.t, ctx.runtime)["public.shapes"]
        sql(target, alter)
        shown = sql(target, "SELECT current_setting('TimeZone') || ' ' || current_setting('bytea_output');")
        assert shown.strip() == "Asia/Tokyo escape"  # the new settings are in force for new sessions
        assert ops.content(ctx.t, ctx.runtime)["public.shapes"] == before
    finally:
        sql(target, reset + "DROP TABLE IF EXISTS shapes;\n")
        ctx.close()
