"""The rebuild strategy's exact comparison on a real PostgreSQL: a database and its
pg_dump | pg_restore copy have the same fingerprint (whatever the rows' physical order),
and every kind of difference a bad copy or a late writer leaves is found."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import psycopg  # noqa: TID251  (test harness, not product code)
import pytest

from nixmig.config import Service
from nixmig.db import fingerprint as fp
from nixmig.db.runtime import NativeRuntime
from nixmig.remote.local import LocalTransport
from tests.harness.postgres import PgServer, fresh_database, pg_bindir

SEED = """
CREATE TABLE with_pk (id serial PRIMARY KEY, name text, doc json, blob bytea, at timestamptz);
INSERT INTO with_pk (name, doc, blob, at)
  SELECT CASE WHEN g % 7 = 0 THEN NULL ELSE E'name\\t' || g || E'\\nline' END,
         json_build_object('g', g, 'list', json_build_array(g, g * 2)),
         decode(md5(g::text), 'hex'), '2026-01-01'::timestamptz + g * interval '1 minute'
  FROM generate_series(1, 3000) g;
CREATE TABLE no_pk (a int, b text);
INSERT INTO no_pk SELECT g % 10, 'dup' FROM generate_series(1, 500) g;  -- duplicates, no key
CREATE TABLE parted (id int, k int) PARTITION BY RANGE (k);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (50);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (50) TO (100);
INSERT INTO parted SELECT g, g % 100 FROM generate_series(1, 1000) g;
CREATE UNLOGGED TABLE scratch (x int);
INSERT INTO scratch VALUES (1), (2);
CREATE SEQUENCE unused_seq;
CREATE VIEW v AS SELECT count(*) AS n FROM with_pk;
CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql AS 'SELECT x + 1';
SELECT lo_from_bytea(0, 'large object');
"""


@pytest.fixture
def pair(pg: PgServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[PgServer, PgServer, NativeRuntime]]:
    """Database A seeded, database B restored from pg_dump -Fc of A (through a pipe)."""
    monkeypatch.setenv("PGPASSWORD", pg.password)  # psql over the socket: scram in this cluster
    with fresh_database(pg) as a, fresh_database(pg) as b:
        with psycopg.connect(a.dsn, autocommit=True) as conn:
            conn.execute(SEED)
        bindir = pg_bindir()
        conn_args = ["-h", pg.socket_dir, "-p", str(pg.port), "-U", pg.user]
        dump = subprocess.Popen(
            [str(bindir / "pg_dump"), "-Fc", *conn_args, "-d", a.dbname], stdout=subprocess.PIPE, env=os.environ
        )
        subprocess.run(
            [str(bindir / "pg_restore"), "--exit-on-error", *conn_args, "-d", b.dbname],
            stdin=dump.stdout,
            check=True,
            capture_output=True,
        )
        assert dump.wait() == 0
        svc = Service(host="h", runtime="native", port=pg.port, socket_dir=pg.socket_dir, admin_role=pg.user)
        svc = replace(svc, os_user="postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres"))
        yield a, b, NativeRuntime(svc)


def take(rt: NativeRuntime, db: str) -> dict[str, str]:
    """One database's items, keyed without its name (so two databases compare)."""
    got = fp.take(LocalTransport(), rt, [db])
    return {k.split("/", 1)[1]: v for k, v in got.items.items() if k.startswith(f"{db}/")}


def same(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return fp.compare(
        fp.Fingerprint({f"d/{k}": v for k, v in a.items()}), fp.Fingerprint({f"d/{k}": v for k, v in b.items()})
    )


def run(server: PgServer, statement: str) -> None:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(statement)


def test_a_restored_copy_is_equal_whatever_the_physical_order(pair: tuple[PgServer, PgServer, NativeRuntime]) -> None:
    a, b, rt = pair
    # move rows around in the copy without changing them: updates write new tuple versions
    run(b, "UPDATE with_pk SET name = name WHERE id % 3 = 0; UPDATE no_pk SET a = a WHERE a < 5")
    fa, fb = take(rt, a.dbname), take(rt, b.dbname)
    assert same(fa, fb) == []
    assert fa["table/public.with_pk"].startswith("3000 ")
    assert fa["table/public.no_pk"].startswith("500 ")
    assert fa["table/public.parted_1"].startswith("500 ") and "table/public.parted" not in fa  # leaves only
    assert fa["sequence/public.unused_seq"] == "-" and fa["sequence/public.with_pk_id_seq"] == "3000"
    assert fa["largeobjects/count"] == "1"
    assert {"relation/public.v", "function/f(integer)", "constraint/public.with_pk_pkey on with_pk"} <= set(fa)


def test_the_copy_is_equal_under_other_server_settings(pair: tuple[PgServer, PgServer, NativeRuntime]) -> None:
    """The new server may default to another time zone, DateStyle, bytea output or (across
    major versions) extra_float_digits: row texts are read under fixed session settings."""
    a, b, rt = pair
    for setting, value in (
        ("TimeZone", "Asia/Tokyo"),
        ("DateStyle", "SQL, DMY"),
        ("bytea_output", "escape"),
        ("extra_float_digits", "0"),
    ):
        run(b, f"ALTER DATABASE {b.dbname} SET {setting} = '{value}'")
    with psycopg.connect(b.dsn) as conn:  # a new session has them
        assert conn.execute("SELECT current_setting('TimeZone')").fetchone() == ("Asia/Tokyo",)
    assert same(take(rt, a.dbname), take(rt, b.dbname)) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("UPDATE with_pk SET name = 'x' WHERE id = 42", "table d: public.with_pk: same 3000 rows, different content"),
        (
            "UPDATE with_pk SET blob = '\\x00' WHERE id = 7",
            "table d: public.with_pk: same 3000 rows, different content",
        ),
        ("DELETE FROM no_pk WHERE ctid = (SELECT min(ctid) FROM no_pk)", "table d: public.no_pk: 500 rows in the old"),
        ("INSERT INTO no_pk VALUES (1, 'dup')", "table d: public.no_pk: 500 rows in the old database, 501 in the copy"),
        ("UPDATE parted SET k = 60 WHERE id = 1", "table d: public.parted_1: 500 rows in the old database, 499"),
        ("SELECT setval('with_pk_id_seq', 3001)", "sequence d: public.with_pk_id_seq: '3000' in the old database"),
        ("DROP VIEW v", "relation d: public.v is missing from the copy"),
        ("CREATE INDEX extra ON no_pk (a)", "relation d: public.extra is in the copy only"),
        ("SELECT lo_unlink((SELECT min(oid) FROM pg_largeobject_metadata))", "largeobjects d: count: '1' in the old"),
    ],
)
def test_every_difference_is_found(pair: tuple[PgServer, PgServer, NativeRuntime], change: str, expected: str) -> None:
    a, b, rt = pair
    run(b, change)
    fa, fb = take(rt, a.dbname), take(rt, b.dbname)
    diffs = same(fa, fb)
    moved = "parted" in change  # a row moves to the other partition: both leaves differ
    assert len(diffs) == 1 + moved and diffs[0].startswith(expected), diffs
    data_change = not change.startswith(("DROP VIEW", "CREATE INDEX"))
    da = fp.Fingerprint({f"d/{k}": v for k, v in fa.items()}).digest()
    db = fp.Fingerprint({f"d/{k}": v for k, v in fb.items()}).digest()
    assert (da != db) == data_change


def test_cluster_items_roles_and_passwords(pg: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", pg.password)
    svc = Service(host="h", runtime="native", port=pg.port, socket_dir=pg.socket_dir, admin_role=pg.user)
    rt = NativeRuntime(replace(svc, os_user="postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")))
    role = f"r_{secrets.token_hex(4)}"
    run(pg, f"CREATE ROLE {role} LOGIN PASSWORD 'one'")
    try:
        before = fp.take(LocalTransport(), rt, [])
        assert before.items[f"*/role/{role}"].startswith("f t f f t f f -1")
        assert "*/file/pg_hba.conf" in before.items and f"*/role/{role}" in before.items
        assert "one" not in repr(before) and before.passwords[role].reveal_str() != "one"  # an md5 of the verifier
        run(pg, f"ALTER ROLE {role} PASSWORD 'two' CONNECTION LIMIT 3")
        run(pg, f"GRANT pg_read_all_data TO {role}")
        after = fp.take(LocalTransport(), rt, [])
        diffs = fp.compare(before, after)
        assert f"role {role}: the stored password differs" in diffs
        assert any(d.startswith(f"role {role}: ") and "' in the old database" in d for d in diffs)
        assert f"member pg_read_all_data to {role} is in the copy only" in diffs
        assert fp.compare(before, after, skip_password=role) == [d for d in diffs if "stored password" not in d]
    finally:
        run(pg, f"DROP ROLE {role}")
