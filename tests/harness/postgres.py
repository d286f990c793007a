"""A throwaway PostgreSQL cluster from the host's Debian binaries.

``pg`` (session) runs initdb in a temp dir as an unprivileged user (initdb
refuses root; as root we use the Debian ``postgres`` user via runuser), with
scram-sha-256 everywhere, a random superuser password, a free port on
127.0.0.1, a unix socket in the temp dir and fsync off. ``pg_db`` (function)
gives each test its own fresh database and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg  # noqa: TID251  (test harness, not product code)
import pytest
from psycopg import sql  # noqa: TID251

from . import HarnessError, free_port, require_binary, tail

PG_APT_PACKAGE = "postgresql-15"
RUN_AS = "postgres"  # Debian's postgres system user, used when we are root


def conninfo(**params: str | int) -> str:
    """A libpq conninfo string, values quoted per libpq rules."""
    parts = []
    for key, value in params.items():
        text = str(value)
        if not text or any(c in text for c in " '\\\t\n"):
            text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{key}={text}")
    return " ".join(parts)


@dataclass(frozen=True)
class PgServer:
    """How to reach a running PostgreSQL server. ``password`` is the superuser's."""

    host: str
    port: int
    user: str
    password: str
    dsn: str
    dbname: str = "postgres"
    socket_dir: str = ""

    def with_db(self, dbname: str) -> PgServer:
        """The same server, with ``dsn``/``dbname`` pointing at another database."""
        dsn = conninfo(host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname)
        return replace(self, dsn=dsn, dbname=dbname)


def pg_bindir() -> Path:
    """Directory of the PostgreSQL server binaries (Debian layout, newest major first)."""
    env = os.environ.get("NIXMIG_TEST_PG_BINDIR")
    if env:
        return Path(env)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    preferred = Path("/usr/lib/postgresql/15/bin")
    if preferred in candidates:
        return preferred
    for c in candidates:
        if (c / "initdb").exists():
            return c
    pytest.fail(
        "test harness needs the PostgreSQL server binaries (initdb, pg_ctl, postgres) under "
        f"/usr/lib/postgresql/*/bin: run `apt-get install {PG_APT_PACKAGE}` (as root)",
        pytrace=False,
    )


def _as_pg_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    runuser = require_binary("runuser", "util-linux")
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        pytest.fail(
            f"running as root needs the {RUN_AS!r} system user for initdb: "
            f"run `apt-get install {PG_APT_PACKAGE}` (it creates the user)",
            pytrace=False,
        )
    return [runuser, "-u", RUN_AS, "--", *argv]


def _run(argv: list[str], *, timeout: float = 120, log: Path | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/")
    if proc.returncode != 0:
        extra = f"\n--- server log ---\n{tail(log)}" if log is not None else ""
        raise HarnessError(f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}{extra}")


@contextlib.contextmanager
def running_cluster(superuser: str = "postgres", *, durable: bool = False) -> Iterator[PgServer]:
    """Start a fresh cluster; stop it (immediate) and delete it on exit, whatever happened.

    Tests run with fsync, synchronous_commit and full_page_writes off (nothing here must
    survive a power cut); ``durable=True`` keeps PostgreSQL's defaults, as on a real host
    (what the benchmarks measure: a commit waits for its WAL to reach the disk)."""
    bindir = pg_bindir()
    initdb = require_binary(str(bindir / "initdb"), PG_APT_PACKAGE)
    pg_ctl = require_binary(str(bindir / "pg_ctl"), PG_APT_PACKAGE)
    require_binary(str(bindir / "postgres"), PG_APT_PACKAGE)

    base = Path(tempfile.mkdtemp(prefix="nixmig-pg-"))
    data, sock, log = base / "data", base / "sock", base / "server.log"
    password = secrets.token_urlsafe(24)
    try:
        sock.mkdir()
        pwfile = base / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if os.geteuid() == 0:
            ent = pwd.getpwnam(RUN_AS)
            for p in (base, sock, pwfile):
                os.chown(p, ent.pw_uid, ent.pw_gid)
        base.chmod(0o700)
        _run(
            _as_pg_user([
                initdb, "-D", str(data), "-U", superuser, f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                "-E", "UTF8", "--no-locale", "--no-sync",
            ])
        )  # fmt: skip
        pwfile.unlink()
        host = "127.0.0.1"
        for attempt in range(5):
            port = free_port(host)
            conf = data / "postgresql.auto.conf"
            settings = {
                "listen_addresses": f"'{host}'",
                "port": str(port),
                "unix_socket_directories": f"'{sock}'",
                **({} if durable else {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}),
                "password_encryption": "'scram-sha-256'",
                "max_connections": "100",
                "log_min_messages": "warning",
            }
            conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
            if os.geteuid() == 0:
                ent = pwd.getpwnam(RUN_AS)
                os.chown(conf, ent.pw_uid, ent.pw_gid)
            try:
                _run(
                    _as_pg_user([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                 "start"]),
                    log=log,
                )  # fmt: skip
                break
            except HarnessError:
                if attempt == 4 or "could not bind" not in tail(log):
                    raise
        server = PgServer(
            host=host,
            port=port,
            user=superuser,
            password=password,
            dsn="",
            socket_dir=str(sock),
        ).with_db("postgres")
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                subprocess.run(
                    _as_pg_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                    capture_output=True,
                    timeout=60,
                    check=False,
                    cwd="/",
                )
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(server: PgServer) -> Iterator[PgServer]:
    """Create a uniquely named database; drop it (forcing off sessions) afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.with_db(name)
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """A PostgreSQL 15 cluster for the whole session; dsn points at ``postgres``."""
    try:
        with running_cluster() as server:
            yield server
    except HarnessError as e:
        pytest.fail(f"could not start the test PostgreSQL cluster: {e}", pytrace=False)


@pytest.fixture
def pg_db(pg: PgServer) -> Iterator[PgServer]:
    """The session cluster with a fresh, empty database for this test only."""
    with fresh_database(pg) as server:
        yield server
