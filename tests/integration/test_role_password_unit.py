"""The oneshot patch writes for a password in services.postgresql.initialScript, run against a real server.

patch removes ``PASSWORD '...'`` from the SQL and adds a unit whose script sets the role's
password from the agenix file (a systemd credential). Here: the patched SQL still runs, the
script (as written into the Nix file, the package path pointed at this machine's psql) sets
the password, it is in no argv, and a server logging every statement has no trace of it.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg  # noqa: TID251  (test, not product code)
import pytest

from nixmig.nixsrc import patch as pt
from tests.harness.postgres import PgServer, conninfo, pg_bindir

MODULE = """{ pkgs, ... }:
{
  services.postgresql.enable = true;
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE ROLE "matrix-synapse" WITH LOGIN ENCRYPTED PASSWORD 'old-synapse-pw';
    ALTER USER "matrix-synapse" WITH PASSWORD 'old-synapse-pw';
    CREATE ROLE other LOGIN PASSWORD 'not-ours';
  '';
}
"""


PORT_IN_NIX = "${toString (config.services.postgresql.settings.port or config.services.postgresql.port or 5432)}"


def _sql_and_script(role: str, port: int) -> tuple[str, str]:
    """The patched SQL, and the unit's script as Nix would write it for a server on ``port``."""
    spec = pt.Spec(secret="synapse-db", role=role)
    src = {"db.nix": MODULE.replace("matrix-synapse", role).encode()}
    plan = pt.plan(src, spec)
    out = plan.results(src)["db.nix"].decode()
    sql = re.search(r"writeText \"init.sql\" ''\n(.*?)  '';", out, re.S)
    script = re.search(r"    script = ''\n(.*?)    '';", out, re.S)
    assert sql is not None and script is not None, out
    assert "old-synapse-pw" not in out
    body = "\n".join(line.removeprefix("      ") for line in script.group(1).splitlines())
    assert PORT_IN_NIX in body  # the server's port names its socket: a server off 5432 is found (realcfg6 07)
    body = body.replace(PORT_IN_NIX, str(port))
    return sql.group(1), body.replace("${config.services.postgresql.package}/bin/psql", str(pg_bindir() / "psql"))


@pytest.fixture
def logged(pg: PgServer) -> Iterator[PgServer]:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        conn.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
        conn.execute("ALTER SYSTEM SET log_min_messages = 'info'")
        conn.execute("SELECT pg_reload_conf()")
    yield pg
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM RESET ALL")
        conn.execute("SELECT pg_reload_conf()")


def test_the_patched_sql_runs_and_the_unit_sets_the_password(logged: PgServer, tmp_path: Path) -> None:
    pg = logged
    role = f"matrix-synapse-{secrets.token_hex(3)}"
    sql, script = _sql_and_script(role, pg.port)
    assert f'CREATE ROLE "{role}" WITH LOGIN;' in sql
    assert "ALTER USER" not in sql  # it set only the password: the statement goes whole (the unit sets it)
    assert "PASSWORD 'not-ours'" in sql  # another role's clause is left (the verdict lists it)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        for stmt in (s.strip() for s in sql.split(";")):
            if stmt and "other" not in stmt:
                conn.execute(stmt)  # the SQL left after the edit is valid
    new = secrets.token_urlsafe(18)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "synapse-db").write_text(new + "\n")  # agenix files may end with a newline: psql strips one
    env = {
        **os.environ,
        "CREDENTIALS_DIRECTORY": str(creds),
        "PGHOST": pg.host,  # no PGPORT: the script's own -p must reach the server (not on 5432)
        "PGUSER": pg.user,
        "PGPASSWORD": pg.password,
    }
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    with psycopg.connect(conninfo(host=pg.host, port=pg.port, user=role, password=new, dbname="postgres")) as c:
        assert c.execute("SELECT current_user").fetchone() == (role,)
    log = (Path(pg.socket_dir).parent / "server.log").read_text(errors="replace")
    assert f'CREATE ROLE "{role}" WITH LOGIN' in log  # the server logged every statement
    assert new not in log and "old-synapse-pw" not in log
    assert new not in " ".join(proc.args)


def test_a_companion_role_s_unit_sets_its_kept_value_and_skips_a_missing_role(pg: PgServer, tmp_path: Path) -> None:
    """Another role's PASSWORD in the same script moved as a companion (also "role:NAME", stop 22): its own
    oneshot sets that role's password from its own secret (value kept); a role that does not exist (its
    ALTER failed in the original script too) is said and skipped, not a failed unit at every boot."""
    suffix = secrets.token_hex(3)
    role, other = f"synapse_{suffix}", f"reports_{suffix}"
    spec = pt.Spec(secret="synapse-db", role=role, also=((f"role:{other}", "reports-db"),))
    src = {"db.nix": MODULE.replace("matrix-synapse", role).replace("other", other).encode()}
    out = pt.plan(src, spec).results(src)["db.nix"].decode()
    assert "not-ours" not in out and f"CREATE ROLE {other} LOGIN;" in out
    scripts = re.findall(r"    script = ''\n(.*?)    '';", out, re.S)
    (body,) = [s for s in scripts if "reports-db" in s]
    body = "\n".join(line.removeprefix("      ") for line in body.splitlines()).replace(PORT_IN_NIX, str(pg.port))
    body = body.replace("${config.services.postgresql.package}/bin/psql", str(pg_bindir() / "psql"))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "reports-db").write_text("not-ours")  # the kept value
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds), "PGHOST": pg.host, "PGUSER": pg.user}
    env["PGPASSWORD"] = pg.password
    run = ["bash", "-euo", "pipefail", "-c", body]
    missing = subprocess.run(run, env=env, capture_output=True, check=False)
    assert missing.returncode == 0, missing.stderr.decode()
    assert f"role {other} does not exist" in (missing.stdout + missing.stderr).decode()
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {other} LOGIN")
    try:
        made = subprocess.run(run, env=env, capture_output=True, check=False)
        assert made.returncode == 0, made.stderr.decode()
        dsn = conninfo(host=pg.host, port=pg.port, user=other, password="not-ours", dbname="postgres")
        with psycopg.connect(dsn) as c:
            assert c.execute("SELECT current_user").fetchone() == (other,)
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {other}")
