"""The integration tier's PostgreSQL cluster is real, isolated per test and locked."""

from __future__ import annotations

import psycopg  # noqa: TID251
import pytest

from tests.harness.postgres import PgServer, fresh_database

pytestmark = pytest.mark.integration


def test_cluster_answers_over_tcp_with_scram(pg: PgServer) -> None:
    assert pg.host == "127.0.0.1"
    with psycopg.connect(pg.dsn) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) // 10000 == 15
        row = conn.execute(
            "SELECT ssl IS NOT NULL, inet_server_addr()::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row is not None and row[1].startswith("127.0.0.1")
        hba = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE error IS NULL").fetchall()
        assert {r[0] for r in hba} == {"scram-sha-256"}
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = current_user").fetchone()
        assert stored is not None and stored[0].startswith("SCRAM-SHA-256$")
        fsync = conn.execute("SHOW fsync").fetchone()
        assert fsync == ("off",)


def test_wrong_password_is_refused(pg: PgServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=pg.host, port=pg.port, user=pg.user, password=pg.password + "x",
            dbname="postgres", connect_timeout=10,
        )  # fmt: skip


def test_unix_socket_also_needs_the_password(pg: PgServer) -> None:
    with psycopg.connect(
        host=pg.socket_dir, port=pg.port, user=pg.user, password=pg.password, dbname="postgres"
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=pg.socket_dir, port=pg.port, user=pg.user, password="wrong", dbname="postgres")


def test_pg_db_is_a_fresh_database(pg_db: PgServer) -> None:
    assert pg_db.dbname != "postgres"
    assert f"dbname={pg_db.dbname}" in pg_db.dsn
    with psycopg.connect(pg_db.dsn) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        assert name == (pg_db.dbname,)
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")


def test_fresh_database_is_dropped_on_exit(pg: PgServer) -> None:
    with fresh_database(pg) as db, psycopg.connect(db.dsn) as conn:
        conn.execute("CREATE TABLE t (id int)")
        # a session still open at teardown must not block the drop
        lingering = psycopg.connect(db.dsn)
    try:
        with psycopg.connect(pg.dsn) as conn:
            rows = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db.dbname,)).fetchall()
        assert rows == []
    finally:
        lingering.close()
