"""SshTransport.forward on a real sshd to the throwaway PostgreSQL cluster: a Unix socket in a
fresh 0700 directory of the operator's, no TCP port opened on this machine, queries pass
through it (several connections at once, as reencrypt opens), and nothing is left after."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg  # noqa: TID251  (test harness, not product code)

from nixmig.db.connect import try_login
from nixmig.remote.base import ConnectionLost
from nixmig.remote.ssh import SshTransport
from nixmig.sensitive import Secret
from tests.e2e import ssh_cut
from tests.e2e.test_ssh_connection_lost import client_port
from tests.e2e.test_transport_ssh import host_for
from tests.harness.postgres import PgServer
from tests.harness.sshd import SshServer, known_hosts_line

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp*


def my_tcp_listeners() -> set[str]:
    """(table:local address) of every listening TCP socket this process holds."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                mine.add(link[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == LISTEN and f[9] in mine:
                found.add(f"{table}:{f[1]}")
    return found


def test_forward_is_a_private_unix_socket(sshd: SshServer, pg: PgServer) -> None:
    t = SshTransport.connect(host_for(sshd))
    try:
        before = my_tcp_listeners()
        with t.forward(pg.host, pg.port) as (host, port):
            assert my_tcp_listeners() == before, "the forward opened a TCP listener"
            folder = Path(host)
            info = folder.stat()
            assert folder.is_absolute() and stat.S_ISDIR(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
            assert port == pg.port
            assert [p.name for p in folder.iterdir()] == [f".s.PGSQL.{pg.port}"]
            assert stat.S_ISSOCK((folder / f".s.PGSQL.{pg.port}").stat().st_mode)
            # libpq reaches the server through it: host=<dir> port=<port>
            args = {"host": host, "port": port, "user": pg.user, "password": pg.password, "dbname": pg.dbname}
            with psycopg.connect(**args) as a, psycopg.connect(**args) as b:  # type: ignore[arg-type]
                ra = a.execute("SELECT inet_server_port(), current_user").fetchone()
                rb = b.execute("SELECT 41 + 1").fetchone()
            assert ra == (pg.port, pg.user) and rb == (42,)  # the server saw TCP from sshd, to its port
            assert try_login(host, port, pg.user, Secret(pg.password), pg.dbname) is None
            refused = try_login(host, port, pg.user, Secret("not the password"), pg.dbname)
            assert refused is not None and "password authentication failed" in refused
        assert not folder.exists()
        assert my_tcp_listeners() == before
    finally:
        t.close()


def _query_then(t: SshTransport, pg: PgServer, lose: Any, *, handled: bool) -> tuple[BaseException | None, float]:
    """Through the forward, a 60 s query (a reencrypt batch's stand-in) during which ``lose()``
    drops the connection: (what the forward's block raised, seconds from the loss to it).
    ``handled``: the block catches psycopg's error, else it leaves the block (as reencrypt's does)."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            with t.forward(pg.host, pg.port) as (host, port):
                args = {"host": host, "port": port, "user": pg.user, "password": pg.password, "dbname": pg.dbname}
                with contextlib.closing(psycopg.connect(**args)) as conn:  # type: ignore[arg-type]
                    conn.execute("SELECT 1")
                    outcome["ready"] = time.monotonic()
                    with contextlib.suppress(*([psycopg.OperationalError] if handled else [])):
                        conn.execute("SELECT pg_sleep(60)")  # the server is gone for it
        except BaseException as exc:
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    deadline = time.monotonic() + 10
    while "ready" not in outcome:
        assert time.monotonic() < deadline and worker.is_alive(), outcome
        time.sleep(0.05)
    time.sleep(0.5)  # pg_sleep is running
    lost_at = time.monotonic()
    lose()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the query still waits on a dead connection"
    return outcome.get("error"), outcome["ended"] - lost_at


def test_a_cut_during_a_query_through_the_forward_ends_it(sshd: SshServer, pg: PgServer) -> None:
    t = SshTransport.connect(host_for(sshd), label="newton")
    try:
        error, secs = _query_then(t, pg, lambda: ssh_cut.cut(sshd.port, client_port(t)), handled=False)
        assert secs < 5, secs
        assert isinstance(error, ConnectionLost), error
        assert "the connection to newton was lost" in error.line() and "the forward to " in error.line()
        assert isinstance(error.__cause__, psycopg.OperationalError)  # what failed in the block: the cause
    finally:
        t.close()


def test_a_silent_link_during_a_query_through_the_forward_ends_it(
    sshd: SshServer, pg: PgServer, tmp_path: Path
) -> None:
    link = ssh_cut.Partition((sshd.host, sshd.port))
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(sshd.host, link.port, sshd.host_public_key) + "\n")
    host = replace(host_for(sshd), port=link.port, known_hosts=str(known))
    t = SshTransport.connect(host, label="newton", keepalive=1.0, keepalive_count=3)
    try:
        error, secs = _query_then(t, pg, link.freeze, handled=True)
        assert secs < 8, secs
        assert isinstance(error, ConnectionLost), error
        assert "no answer from it for" in error.line()
    finally:
        t.close()
        link.close()
