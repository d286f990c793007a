"""No SCRAM verifier and no password reaches a server that logs every statement.

A production server often runs with ``log_min_duration_statement = 0`` (every statement
with its duration), sometimes ``log_statement = 'all'``, and pg_stat_statements keeps the
text of utility statements. The local tier's strategies (rotate, dual-role) run apply and
rollback against such a cluster; afterwards neither the server log nor pg_stat_statements
holds a verifier or the password, old or new. The probe statements prove that the cluster
does log and track what nixmig's own sessions do not hide.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg  # noqa: TID251  (test, not product code)
import pytest

from nixmig import config, engine
from nixmig.db import ops, scram
from nixmig.db import rebuild as rb
from nixmig.demo import SECRET, Target
from nixmig.sensitive import Secret
from tests.integration.test_dual_role_local import NEW_PASSWORD as DUAL_PASSWORD
from tests.integration.test_dual_role_local import Dual, dual
from tests.integration.test_dual_role_local import nixmig as nixmig_dual
from tests.integration.test_migrate_local import nixmig as nixmig_rotate
from tests.integration.test_migrate_local import target

__all__ = ["dual", "target"]  # fixtures used here

ROTATE_PASSWORD = "n3w/pa+ss=w@rd:%?-long-enough"  # what test_migrate_local's target stores
LOUD = """
log_statement = 'all'
log_min_duration_statement = 0
log_min_error_statement = info
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
pg_stat_statements.track_utility = on
"""
PROBE = "SELECT 'probe-' || 'SCRAM-SHA-256$visible'"


def _as_owner(t: Target, argv: list[str]) -> list[str]:
    return ["runuser", "-u", t.os_user, "--", *argv] if os.geteuid() == 0 else argv


def log_path(t: Target) -> Path:
    return t.pg_data.parent / "log"


def make_loud(t: Target) -> None:
    """Log and track every statement (a restart loads pg_stat_statements); check it does."""
    with (t.pg_data / "postgresql.conf").open("a") as conf:
        conf.write(LOUD)
    pg_ctl = [str(t.bindir / "pg_ctl"), "-D", str(t.pg_data), "-l", str(log_path(t)), "-w", "-t", "60", "restart"]
    subprocess.run(_as_owner(t, pg_ctl), check=True, capture_output=True)
    with psycopg.connect(host=str(t.socket_dir), port=t.port, user="postgres", dbname="postgres") as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("ALTER ROLE postgres NOLOGIN")  # a utility statement pg_stat_statements must show
        conn.execute("ALTER ROLE postgres LOGIN")
        conn.execute(PROBE)
    assert "probe-' || 'SCRAM-SHA-256$visible" in log_path(t).read_text()


def tracked(t: Target) -> str:
    with psycopg.connect(host=str(t.socket_dir), port=t.port, user="postgres", dbname="postgres") as conn:
        rows = conn.execute("SELECT query FROM pg_stat_statements").fetchall()
    return "\n".join(str(r[0]) for r in rows)


def assert_nothing_secret(t: Target, *passwords: str) -> None:
    log = log_path(t).read_text()
    stats = tracked(t)
    assert "ALTER ROLE postgres NOLOGIN" in stats  # utility statements are tracked here
    for where, text in (("server log", log), ("pg_stat_statements", stats)):
        found = text.replace("SCRAM-SHA-256$visible", "")
        assert "SCRAM-SHA-256$" not in found, f"a verifier in the {where}"
        assert "PASSWORD 'md5" not in found, f"an md5 verifier in the {where}"
        for pw in passwords:
            assert pw not in found, f"a password in the {where}"


def test_rotate_apply_and_rollback_leave_no_verifier_in_the_log(target: Target) -> None:
    make_loud(target)
    run = nixmig_rotate(target, "apply", "--yes", "-i", str(target.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    back = nixmig_rotate(target, "rollback", "--yes", "-i", str(target.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert "ALTER ROLE" not in back.stderr
    assert_nothing_secret(target, ROTATE_PASSWORD)


def test_dual_role_apply_and_rollback_leave_no_verifier_in_the_log(dual: Dual) -> None:
    make_loud(dual.t)
    run = nixmig_dual(dual, "apply", "--yes", "-i", str(dual.t.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    back = nixmig_dual(dual, "rollback", "--yes", "-i", str(dual.t.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert_nothing_secret(dual.t, DUAL_PASSWORD)


def test_a_failing_statement_and_the_role_copy_pipe_log_no_verifier(target: Target) -> None:
    """The statement that fails (log_min_error_statement) and rebuild's role copy (pg_dumpall
    --roles-only piped into psql, which runs on past "already exists" errors)."""
    make_loud(target)
    ctx = engine.make_context(config.load(target.repo / "nixmig.toml"), SECRET)
    with pytest.raises(ops.DatabaseError, match="does not exist"):
        ops.set_verifier(ctx.t, ctx.runtime, "no_such_role", Secret(scram.verifier(Secret("pw-of-a-missing-role"))))
    with psycopg.connect(host=str(target.socket_dir), port=target.port, user="postgres", dbname="postgres") as conn:
        conn.execute(ops.hush_sql(local=False))  # the test's own CREATE ROLE
        conn.execute(f"CREATE ROLE copied LOGIN PASSWORD '{scram.verifier(Secret('pw-of-a-copied-role'))}'")
    conn_args = ["-h", str(target.socket_dir), "-p", str(target.port), "-U", "postgres"]
    dump = _as_owner(target, [str(target.bindir / "pg_dumpall"), "--roles-only", *conn_args])
    load = _as_owner(target, [str(target.bindir / "psql"), "-X", "-q", *conn_args, "-d", "postgres", "-f", "-"])
    r = subprocess.run(rb.pipeline(dump, load, prefix=rb.HUSH_SESSION), capture_output=True, check=False)
    assert r.returncode == 0, r.stderr
    assert b'role "copied" already exists' in r.stderr  # it ran past the error, as in copy_roles
    assert "PASSWORD 'SCRAM-SHA-256$" in subprocess.run(dump, capture_output=True, text=True, check=True).stdout
    assert_nothing_secret(target, "pw-of-a-missing-role", "pw-of-a-copied-role")
