"""Database operations over a Transport: snapshots, role verifiers, password checks."""

from __future__ import annotations

from dataclasses import dataclass

from nixmig.db import scram, sql
from nixmig.db.runtime import Runtime
from nixmig.errors import NixmigError
from nixmig.remote.base import CommandFailed, Transport
from nixmig.sensitive import Secret

SNAPSHOT_SQL = r"""
SELECT format('SELECT %L, count(*) FROM %I.%I', n.nspname || '.' || c.relname, n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 1 \gexec
"""


class DatabaseError(NixmigError):
    """A SQL step failed."""


def psql(t: Transport, rt: Runtime, script: str, *, database: str | None = None) -> str:
    try:
        return t.run(rt.psql(database), stdin=script.encode()).stdout.decode()
    except CommandFailed as exc:
        raise DatabaseError(f"psql failed: {exc.result.tail()}", where=f"{t.name}: {rt.describe()}") from None


def snapshot(t: Transport, rt: Runtime) -> dict[str, int]:
    """Exact row counts of every user table."""
    out = psql(t, rt, SNAPSHOT_SQL)
    counts: dict[str, int] = {}
    for line in out.splitlines():
        if "\t" in line:
            name, n = line.rsplit("\t", 1)
            counts[name] = int(n)
    return counts


@dataclass(frozen=True)
class RoleState:
    exists: bool
    verifier: Secret | None  # the stored SCRAM/md5 verifier: secret-grade, never logged


def role_state(t: Transport, rt: Runtime, role: str) -> RoleState:
    query = "SELECT coalesce(rolpassword, '') FROM pg_authid WHERE rolname = " + sql.literal(role) + ";"  # noqa: S608 - literal() quotes it
    out = psql(t, rt, query)
    lines = out.splitlines()
    if not lines:
        return RoleState(False, None)
    return RoleState(True, Secret(lines[0]) if lines[0] else None)


def set_password(t: Transport, rt: Runtime, role: str, password: Secret) -> None:
    """ALTER ROLE with a SCRAM verifier computed here: the clear password never leaves nixmig."""
    set_verifier(t, rt, role, Secret(scram.verifier(password)))


def set_verifier(t: Transport, rt: Runtime, role: str, verifier: Secret) -> None:
    # SQL on stdin only; the statement holds a verifier, not the password.
    stmt = f"ALTER ROLE {sql.ident(role)} PASSWORD {sql.literal(verifier.reveal_str())};"
    psql(t, rt, "SET log_statement = 'none';\n" + stmt)


def password_matches(verifier: Secret, password: Secret) -> bool:
    """Does a stored SCRAM-SHA-256 verifier belong to this password? (No network needed.)"""
    text = verifier.reveal_str()
    if not text.startswith("SCRAM-SHA-256$"):
        return False
    head, keys = text.split("$", 2)[1:]
    iterations, salt_b64 = head.split(":")
    import base64

    again = scram.verifier(password, salt=base64.b64decode(salt_b64), iterations=int(iterations))
    return again.split("$", 2)[2] == keys
