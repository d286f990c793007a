"""Database operations over a Transport: snapshots, role verifiers, password checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from nixmig.db import scram, shells, sql
from nixmig.db.runtime import Runtime
from nixmig.errors import NixmigError
from nixmig.remote.base import CommandFailed, Transport
from nixmig.sensitive import Secret

USER_SCHEMAS = """n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"""
# one statement per user table (plain and partitioned), run by psql's \gexec
_EACH_TABLE = rf"""
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {USER_SCHEMAS}
ORDER BY 1 \gexec
"""

# (S608: constants of this module, no input in them)
SNAPSHOT_SQL = (
    "\nSELECT format('SELECT %L, count(*) FROM %I.%I', n.nspname || '.' || c.relname, n.nspname, c.relname)"  # noqa: S608
    + _EACH_TABLE
)


# The session settings under which a row's text is the same on any server of one major
# version (the live one and a scratch one may differ in these in postgresql.conf).
CONTENT_SETTINGS = """SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';
SET extra_float_digits = 1;
SET bytea_output = 'hex';
SET lc_monetary = 'C';
"""
# Per user table: its row count and a checksum of its content: each row's text hashed
# (hashtextextended, 64 bits) and the hashes summed exactly (sum(bigint) is numeric), so the
# order of the rows does not matter. A changed, missing or extra row goes unseen with a chance
# of about 2^-64: this finds a restore that differs, not an adversary (age's AEAD and the
# journal's sha256 guard the file). One hash costs half of two (bench/restore_check.py).
CONTENT_SQL = (
    "\nSELECT format($q$SELECT %L, count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM %I.%I AS t$q$,"  # noqa: S608
    "\n  n.nspname || '.' || c.relname, n.nspname, c.relname)" + _EACH_TABLE
)


@dataclass(frozen=True)
class TableContent:
    """A table's row count and content checksum (kept in memory: a checksum of a small table
    is a weak hash of its values, so it is never logged or journaled)."""

    rows: int
    checksum: str = field(repr=False)


def parse_content_line(line: str) -> tuple[str, TableContent] | None:
    """``schema.table<TAB>rows<TAB>checksum`` as CONTENT_SQL prints it, else None."""
    parts = line.rsplit("\t", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], TableContent(int(parts[1]), parts[2])


def content(t: Transport, rt: Runtime) -> dict[str, TableContent]:
    """Row count and content checksum of every user table (reads every row once)."""
    out = psql(t, rt, CONTENT_SETTINGS + CONTENT_SQL)
    tables: dict[str, TableContent] = {}
    for line in out.splitlines():
        parsed = parse_content_line(line)
        if parsed is not None:
            tables[parsed[0]] = parsed[1]
    return tables


# What a session sets before a statement that carries a role's verifier, so that no log, no
# statistics view and no activity view keeps its text (a verifier lets anyone who reads it
# impersonate the role to a server: SCRAM's StoredKey and ServerKey): every way PostgreSQL
# logs a statement (all of them, by duration, sampled, on error, parse-tree dumps), the
# query text in pg_stat_activity, and pg_stat_statements' utility tracking. A name the
# server does not have (an older major, pg_stat_statements not loaded) is skipped. Each
# needs superuser (or GRANT SET ON PARAMETER), which the admin role has.
HUSH: Final = (
    ("log_statement", "none"),
    ("log_min_duration_statement", "-1"),
    ("log_min_error_statement", "panic"),
    ("log_min_duration_sample", "-1"),
    ("log_transaction_sample_rate", "0"),
    ("debug_print_parse", "off"),
    ("debug_print_rewritten", "off"),
    ("debug_print_plan", "off"),
    ("track_activities", "off"),
    ("pg_stat_statements.track_utility", "off"),
)


def hush_sql(*, local: bool) -> str:
    """One SQL statement applying HUSH: ``local``, until the end of the transaction it runs in
    (inside BEGIN … COMMIT), else for the rest of the session. Plain SQL: psql or psycopg."""
    values = ", ".join(f"({sql.literal(k)}, {sql.literal(v)})" for k, v in HUSH)
    return (
        "DO $hush$ BEGIN PERFORM set_config(s.name, v.value, "
        + ("true" if local else "false")
        + f") FROM (VALUES {values}) AS v(name, value) JOIN pg_settings s ON s.name = v.name; END $hush$;\n"
    )


def hushed(script: str) -> str:
    """``script`` (statements that may carry a verifier) in one transaction under HUSH."""
    return "BEGIN;\n" + hush_sql(local=True) + script + "COMMIT;\n"


class DatabaseError(NixmigError):
    """A SQL step failed."""


def psql(t: Transport, rt: Runtime, script: str, *, database: str | None = None) -> str:
    """psql with ``script`` on stdin; its output. Through the container's shell while the
    engine allows it (nixmig.db.shells), else ``docker exec … psql`` (or native psql)."""
    try:
        r = shells.psql(t, rt, database=database, stdin=script.encode())
        if r is None:
            return t.run(rt.psql(database), stdin=script.encode()).stdout.decode()
        if not r.ok:
            raise CommandFailed(r, t.name)
        return r.stdout.decode()
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
class Facts:
    """What preflight reads, in one psql: whether the role exists (from pg_roles: no
    verifier is read), the database's size, the cluster's system_identifier, and how many
    user tables there are (from the catalog: no row is read; the backup phase counts the
    rows, beside pg_dump)."""

    role_exists: bool
    db_bytes: int
    cluster: str
    table_count: int


_FACT = "nixmig-"  # a marker: table names are "schema.table", a marker has no dot
_TABLE_COUNT_SQL = (
    f"SELECT '{_FACT}tables', count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"  # noqa: S608
    f" WHERE c.relkind IN ('r', 'p') AND {USER_SCHEMAS};\n"
)


def facts(t: Transport, rt: Runtime, role: str) -> Facts:
    """Facts in one round trip (preflight's: each psql is a command on the target). Reads the
    catalog only: its time does not grow with the data."""
    out = psql(
        t,
        rt,
        f"SELECT '{_FACT}role', count(*) FROM pg_roles WHERE rolname = {sql.literal(role)};\n"  # noqa: S608 - literal() quotes it
        f"SELECT '{_FACT}size', pg_database_size(current_database());\n"
        f"SELECT '{_FACT}cluster', system_identifier FROM pg_control_system();\n" + _TABLE_COUNT_SQL,
    )
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, tab, value = line.partition("\t")
        if tab and name.startswith(_FACT):
            found[name.removeprefix(_FACT)] = value
    if set(found) != {"role", "size", "cluster", "tables"} or not found["cluster"].isdigit():
        raise DatabaseError(f"unexpected output of psql: {out[:80]!r}", where=f"{t.name}: {rt.describe()}")
    return Facts(found["role"] != "0", int(found["size"] or 0), found["cluster"], int(found["tables"]))


@dataclass(frozen=True)
class RoleState:
    exists: bool
    verifier: Secret | None  # the stored SCRAM/md5 verifier: secret-grade, never logged


def _verifier_sql(role: str, marker: str = "") -> str:
    head = f"SELECT {sql.literal(marker)}, " if marker else "SELECT "
    return head + "coalesce(rolpassword, '') FROM pg_authid WHERE rolname = " + sql.literal(role) + ";\n"


def role_state(t: Transport, rt: Runtime, role: str) -> RoleState:
    out = psql(t, rt, _verifier_sql(role))
    lines = out.splitlines()
    if not lines:
        return RoleState(False, None)
    return RoleState(True, Secret(lines[0]) if lines[0] else None)


def role_state_and_snapshot(t: Transport, rt: Runtime, role: str) -> tuple[RoleState, dict[str, int]]:
    """role_state and snapshot in one psql (verify's: one round trip, not two)."""
    marker = _FACT + "verifier"
    out = psql(t, rt, _verifier_sql(role, marker) + SNAPSHOT_SQL)
    state = RoleState(False, None)
    counts: dict[str, int] = {}
    for line in out.splitlines():
        if line.startswith(marker + "\t"):
            value = line.split("\t", 1)[1]
            state = RoleState(True, Secret(value) if value else None)
        elif "\t" in line:
            name, n = line.rsplit("\t", 1)
            counts[name] = int(n)
    return state, counts


def set_password(t: Transport, rt: Runtime, role: str, password: Secret) -> None:
    """ALTER ROLE with a SCRAM verifier computed here: the clear password never leaves nixmig."""
    set_verifier(t, rt, role, Secret(scram.verifier(password)))


def set_verifier(t: Transport, rt: Runtime, role: str, verifier: Secret) -> None:
    # SQL on stdin only; the statement holds a verifier, not the password, and runs hushed.
    stmt = f"ALTER ROLE {sql.ident(role)} PASSWORD {sql.literal(verifier.reveal_str())};\n"
    psql(t, rt, hushed(stmt))


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
