"""A second login role for the dual-role strategy: create it, look at it, drop it.

The new role logs in with its own password and acts as the old one:

- ``GRANT old TO new`` (membership, INHERIT) gives it every privilege of the old role;
- ``ALTER ROLE new SET role = 'old'`` makes each of its sessions start as
  ``SET ROLE old``: ``current_user`` is the old role, so the objects the services
  create keep the old role as their owner (``session_user`` stays the new one,
  and ``RESET ROLE`` goes back to the old role, the session default);
- the old role's attributes (SUPERUSER, CREATEDB, CREATEROLE, REPLICATION,
  BYPASSRLS, CONNECTION LIMIT) are copied, and so are its per-role settings
  (``ALTER ROLE old [IN DATABASE d] SET x = y``): PostgreSQL applies a role's
  settings for the role that logged in, not for the one it SETs ROLE to.

Every statement reaches psql on stdin; the password is never in it, only the
SCRAM verifier computed here (as for the rotate strategy), with statement logging off.
The role carries a comment naming the migration, so nixmig drops only a role it made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from nixmig.db import scram, sql
from nixmig.db.ops import DatabaseError, hush_sql, psql
from nixmig.db.runtime import Runtime
from nixmig.remote.base import Transport
from nixmig.sensitive import Secret

ATTRIBUTES = ("SUPERUSER", "CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS")
MASKED_VERIFIER = "SCRAM-SHA-256$4096:********"


def mark(old: str, migration: str) -> str:
    """The comment nixmig puts on a role it creates (how it knows the role is its own)."""
    return f"nixmig dual-role: logs in for {old} (migration {migration})"


@dataclass(frozen=True)
class RoleInfo:
    name: str
    exists: bool
    attributes: tuple[str, ...] = ()  # those of ATTRIBUTES it has
    connection_limit: int = -1
    comment: str = ""
    member_of: tuple[str, ...] = ()
    session_role: str | None = None  # its `SET role` default, in every database
    verifier: Secret | None = None


def info(t: Transport, rt: Runtime, name: str) -> RoleInfo:
    lit = sql.literal(name)
    query = f"""
SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolconnlimit,
       coalesce(shobj_description(oid, 'pg_authid'), ''),
       coalesce((SELECT string_agg(m.rolname, ',' ORDER BY m.rolname) FROM pg_auth_members am
                 JOIN pg_roles m ON m.oid = am.roleid WHERE am.member = a.oid), ''),
       coalesce((SELECT substr(c, 6) FROM pg_db_role_setting s, unnest(s.setconfig) c
                 WHERE s.setrole = a.oid AND s.setdatabase = 0 AND c LIKE 'role=%'), ''),
       coalesce(rolpassword, '')
FROM pg_authid a WHERE rolname = {lit};
"""  # noqa: S608 - literal() quotes the name
    out = psql(t, rt, query)
    line = out.rstrip("\n")
    if not line:
        return RoleInfo(name, False)
    f = line.split("\t")
    flags = tuple(a for a, v in zip(ATTRIBUTES, f[:5], strict=True) if v == "t")
    return RoleInfo(
        name=name,
        exists=True,
        attributes=flags,
        connection_limit=int(f[5]),
        comment=f[6],
        member_of=tuple(x for x in f[7].split(",") if x),
        session_role=f[8] or None,
        verifier=Secret(f[9]) if f[9] else None,
    )


def create_sql(old: RoleInfo, new: str, verifier: str, comment: str, *, exists: bool) -> str:
    """The script that makes ``new`` a login role acting as ``old`` (one transaction).

    Pure: ``plan`` shows it with a masked verifier. Running it again converges
    (the role is altered, the grant and settings repeated).
    """
    n, o = sql.ident(new), sql.ident(old.name)
    attrs = " ".join(a if a in old.attributes else f"NO{a}" for a in ATTRIBUTES)
    lines = [
        "BEGIN;",
        hush_sql(local=True).rstrip("\n"),  # no log, no statistics keep the verifier
        *([] if exists else [f"CREATE ROLE {n} LOGIN;"]),
        f"ALTER ROLE {n} WITH LOGIN INHERIT {attrs} CONNECTION LIMIT {old.connection_limit}"
        f" PASSWORD {sql.literal(verifier)};",
        f"GRANT {o} TO {n};",
        f"COMMENT ON ROLE {n} IS {sql.literal(comment)};",
        f"ALTER ROLE {n} SET role = {sql.literal(old.name)};",
        _copy_settings(old.name, new),
        "COMMIT;",
    ]
    return "\n".join(lines) + "\n"


def _copy_settings(old: str, new: str) -> str:
    """A DO block copying old's per-role settings to new (last in the transaction).

    A value is copied as PostgreSQL stored it: set locally with set_config (which parses
    it as postgresql.conf would, lists such as search_path included), then
    ``ALTER ROLE new SET x FROM CURRENT``; a setting that cannot change inside a session
    (log_connections ...) is copied as a quoted literal. Each local change is undone.
    """
    tag = "$nixmig$"
    while tag in old or tag in new:
        tag = tag[:-1] + "_$"
    return f"""DO {tag}
DECLARE
  r record;
  kv text;
  k text;
  v text;
  was text;
  db text;
BEGIN
  FOR r IN
    SELECT d.datname, s.setconfig FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase
    WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = {sql.literal(old)})
  LOOP
    db := coalesce(' IN DATABASE ' || quote_ident(r.datname), '');
    FOREACH kv IN ARRAY r.setconfig LOOP
      k := split_part(kv, '=', 1);
      v := substr(kv, length(k) + 2);
      CONTINUE WHEN lower(k) IN ('role', 'session_authorization');
      BEGIN
        was := current_setting(k, true);
        PERFORM set_config(k, v, true);
        EXECUTE format('ALTER ROLE %I%s SET %s FROM CURRENT', {sql.literal(new)}, db, quote_ident(k));
        PERFORM set_config(k, was, true);
      EXCEPTION WHEN OTHERS THEN
        EXECUTE format('ALTER ROLE %I%s SET %s = %L', {sql.literal(new)}, db, quote_ident(k), v);
      END;
    END LOOP;
  END LOOP;
END
{tag};"""  # noqa: S608 - the names reach it through sql.literal() only


def create(t: Transport, rt: Runtime, old: RoleInfo, new: str, password: Secret, comment: str, *, exists: bool) -> None:
    psql(t, rt, create_sql(old, new, scram.verifier(password), comment, exists=exists))


def sessions(t: Transport, rt: Runtime, role: str, *, tcp_only: bool = False) -> list[str]:
    """The client sessions logged in as ``role`` (their client addresses; "local" for a socket)."""
    query = (
        "SELECT coalesce(host(client_addr), 'local') FROM pg_stat_activity WHERE usename = "  # noqa: S608
        + sql.literal(role)
        + " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        + (" AND client_addr IS NOT NULL" if tcp_only else "")
        + " ORDER BY 1;"
    )
    return psql(t, rt, query).split()


def wait_no_sessions(t: Transport, rt: Runtime, role: str, *, timeout: float, tcp_only: bool = False) -> list[str]:
    """Wait until nothing is logged in as ``role``; what is still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = sessions(t, rt, role, tcp_only=tcp_only)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def drop(t: Transport, rt: Runtime, new: str, old: str) -> list[str]:
    """Give whatever ``new`` owns to ``old``, revoke what was granted to it, drop it.

    REASSIGN OWNED / DROP OWNED act on one database at a time: they run in every
    database that holds a dependency on the role (pg_shdepend), then DROP ROLE.
    Returns those databases.
    """
    n = sql.literal(new)
    dbs_sql = (
        "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid "  # noqa: S608
        f"WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = {n})"
        " ORDER BY 1;"
    )
    databases = [d for d in psql(t, rt, dbs_sql).splitlines() if d]
    for db in dict.fromkeys([rt.service.database, *databases]):
        script = f"REASSIGN OWNED BY {sql.ident(new)} TO {sql.ident(old)};\nDROP OWNED BY {sql.ident(new)};\n"
        psql(t, rt, script, database=db)
    try:
        psql(t, rt, f"DROP ROLE IF EXISTS {sql.ident(new)};\n")
    except DatabaseError as exc:
        raise DatabaseError(
            f"cannot drop role {new!r}: {exc.what}",
            where=exc.where,
            hint=f"REASSIGN OWNED BY {new} TO {old}; DROP OWNED BY {new}; in the database named, then rollback again",
        ) from None
    return databases


def disable_password(t: Transport, rt: Runtime, role: str) -> None:
    """``ALTER ROLE … PASSWORD NULL``: password logins fail; socket trust/peer (the admin's) still work."""
    psql(t, rt, f"ALTER ROLE {sql.ident(role)} PASSWORD NULL;\n")
