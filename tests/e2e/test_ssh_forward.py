"""SshTransport.forward on a real sshd to the throwaway PostgreSQL cluster: a Unix socket in a
fresh 0700 directory of the operator's, no TCP port opened on this machine, queries pass
through it (several connections at once, as reencrypt opens), and nothing is left after."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import psycopg  # noqa: TID251  (test harness, not product code)

from nixmig.db.connect import try_login
from nixmig.remote.ssh import SshTransport
from nixmig.sensitive import Secret
from tests.e2e.test_transport_ssh import host_for
from tests.harness.postgres import PgServer
from tests.harness.sshd import SshServer

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
