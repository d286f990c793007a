"""Database names that libpq's ``-d`` would read as a connection string.

psql, pg_dump and pg_restore take a ``-d`` value containing ``=`` or starting with
``postgresql://`` as a conninfo: ``dbname=default`` silently reaches the database
``default``, ``port=1 dbname=x`` another port, ``postgresql://nope`` another host. A
database may be named so by anyone who can create one, and nixmig passes names read
from the server (fingerprint, rebuild's copy) and from nixmig.toml (backup, restore
test). On the local target (real cluster, native runtime, local transport) each such
database is fingerprinted, backed up and restore-tested as itself.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg  # noqa: TID251  (test, not product code)
from psycopg import sql as pgsql  # noqa: TID251

from nixmig import config, engine
from nixmig.db import fingerprint as fp
from nixmig.db import ops
from nixmig.demo import SECRET, Target
from nixmig.phases.backup import Backup
from nixmig.phases.base import Context
from nixmig.secrets.age import load_identities
from tests.integration.test_migrate_local import target

__all__ = ["target"]  # the fixture, shared with test_migrate_local

# name -> rows of its one table; "default" (the seeded database) has other tables entirely
ODD = {
    "dbname=default": 3,  # without quoting: the database "default", silently
    "port=1 dbname=x": 5,  # another port
    "postgresql://nope": 7,  # another host; and a "/" in the name (fingerprint keys)
    "it's a \\ name": 11,  # libpq's quoting of ' and \
}


def create_odd_databases(t: Target) -> None:
    with psycopg.connect(host=str(t.socket_dir), port=t.port, user="postgres", dbname="postgres") as conn:
        conn.autocommit = True
        for name in ODD:
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    for name, rows in ODD.items():
        with psycopg.connect(host=str(t.socket_dir), port=t.port, user="postgres", dbname=name) as conn:
            conn.execute("CREATE TABLE marker (n int, db text)")
            conn.execute("INSERT INTO marker SELECT g, current_database() FROM generate_series(1, %s) g", (rows,))


def context(t: Target) -> Context:
    return engine.make_context(
        config.load(t.repo / "nixmig.toml"), SECRET, identities=load_identities([t.admin_key]), emit=lambda _m: None
    )


def test_fingerprint_reads_each_odd_database_itself(target: Target) -> None:
    create_odd_databases(target)
    ctx = context(target)
    try:
        dbs = fp.databases(ctx.t, ctx.runtime)
        assert set(ODD) <= set(dbs)
        for name in ODD:
            assert ops.psql(ctx.t, ctx.runtime, "SELECT current_database();", database=name).strip() == name
        before = fp.take(ctx.t, ctx.runtime, dbs)
        tables = before.tables()
        for name, rows in ODD.items():
            assert tables[f"{name}/public.marker"] == rows
            assert f"{name}/public.person" not in tables  # not the seeded database's tables
        # a write into any of them changes the digest (what rebuild's rollback goes by)
        for name in ODD:
            with psycopg.connect(host=str(target.socket_dir), port=target.port, user="postgres", dbname=name) as c:
                c.execute("INSERT INTO marker VALUES (0, 'late')")
            after = fp.take(ctx.t, ctx.runtime, dbs)
            assert after.digest() != before.digest(), name
            rows = ODD[name]
            assert fp.compare(before, after) == [
                f"table {name}: public.marker: {rows} rows in the old database, {rows + 1} in the copy"
            ]
            before = after
    finally:
        ctx.close()


def test_backup_and_restore_test_of_an_odd_database(target: Target) -> None:
    create_odd_databases(target)
    cfg = target.repo / "nixmig.toml"
    text = cfg.read_text()
    for name, rows in ODD.items():
        cfg.write_text(text.replace('database = "default"', f"database = {json.dumps(name)}"))
        ctx = context(target)
        ctx.restore_test = True
        try:
            data = Backup().do(ctx)
        finally:
            ctx.close()
        assert data["restore_test"]["tables"] == {"public.marker": rows}, name
        plain = subprocess.run(
            ["age", "-d", "-i", str(target.admin_key), data["path"]], capture_output=True, check=True
        ).stdout
        listing = subprocess.run(
            [str(target.bindir / "pg_restore"), "--list"], input=plain, capture_output=True, check=True
        ).stdout.decode()
        assert "TABLE public marker" in listing and "TABLE public person" not in listing, name
        Path(data["path"]).unlink()
