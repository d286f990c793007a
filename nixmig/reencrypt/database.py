"""The runner's database side: connections, the SQL statements of a table (keyset
reads, the stage, the compare-and-set UPDATE), the progress table, the advisory lock,
and database errors as nixmig errors. psycopg is imported inside the functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nixmig.errors import NixmigError
from nixmig.reencrypt.core import BatchResult, TablePlan
from nixmig.reencrypt.errors import DatabaseError
from nixmig.reencrypt.modes import Mode
from nixmig.reencrypt.schemes import Keyring
from nixmig.sensitive import Secret

if TYPE_CHECKING:
    import psycopg

PROGRESS_TABLE = "nixmig_progress"


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` of a conninfo string or URL, without its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        d = conninfo_to_dict(dsn)
    except Exception:
        return "the database given by --db"
    host = str(d.get("host") or "localhost")
    if host.startswith("/"):
        host = "unix socket"
    user = f"{d['user']}@" if d.get("user") else ""
    port = f":{d['port']}" if d.get("port") else ""
    return f"{user}{host}{port}/{d.get('dbname') or ''}"


def connect(dsn: str) -> psycopg.Connection[Any]:
    import psycopg

    try:
        return psycopg.connect(dsn, application_name="nixmig-reencrypt")
    except psycopg.Error as exc:
        raise DatabaseError(
            f"cannot connect: {_first_line(str(exc))}",
            where=describe_dsn(dsn),
            hint="check --db (or DATABASE_URL) and that the server accepts this role",
        ) from None
    except Exception as exc:  # a malformed conninfo
        raise DatabaseError(
            f"cannot connect: {type(exc).__name__}",
            where="--db",
            hint="pass a libpq conninfo ('host=... dbname=...') or a postgresql:// URL",
        ) from None


def connect_to(*, host: str, port: int, user: str, dbname: str, password: Secret) -> psycopg.Connection[Any]:
    """:func:`connect` from parts (the migration engine's tunnel, logged in with the new password)."""
    from psycopg.conninfo import make_conninfo

    dsn = make_conninfo(
        host=host,
        port=port,
        user=user,
        dbname=dbname,
        password=password.reveal_str(),
        sslmode="prefer",
        connect_timeout=10,
    )
    return connect(dsn)


def passes_done(conn: psycopg.Connection[Any], plans: Sequence[TablePlan], mode: Mode, keyring: Keyring) -> bool:
    """Whether every table's checkpoint for this pass (mode, new scheme, columns) says it ran to the end."""
    from psycopg import sql

    if not plans:
        return True
    schema = plans[0].schema
    try:
        exists = conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (schema, PROGRESS_TABLE))
        row = exists.fetchone()
        if row is None or row[0] is None:
            return False
        query = sql.SQL("SELECT run_key, table_name FROM {} WHERE done").format(sql.Identifier(schema, PROGRESS_TABLE))
        done = {(str(k), str(t)) for k, t in conn.execute(query)}
    finally:
        conn.rollback()
    return all((p.run_key(mode, keyring), p.name) in done for p in plans)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines and lines[0].startswith("connection failed") else (lines or [""])[0]


@dataclass(frozen=True)
class Sql:
    first: Any
    after: Any
    by_pk: Any
    count: Any
    count_done: Any
    create_stage: Any
    copy_stage: Any
    copy_types: list[str] | None  # binary COPY with these types, or None: text COPY
    clear_stage: Any
    update: Any


def statements(plan: TablePlan) -> Sql:
    from psycopg import sql

    tbl = sql.Identifier(plan.schema, plan.name)
    pk = sql.Identifier(plan.pk)
    pk_type = sql.SQL(plan.pk_type)
    # A temporary table per target table: each batch is COPYed into it and applied with one
    # UPDATE ... FROM. It lives in the session, and is emptied at every commit.
    stage = sql.Identifier("nixmig_stage_" + hashlib.sha256(f"{plan.schema}.{plan.name}".encode()).hexdigest()[:12])
    sel = sql.SQL(", ").join(
        [pk, *(sql.Identifier(c) for c in plan.columns), *(sql.Identifier(h) for h in plan.hmac_columns)]
    )
    base = sql.SQL("SELECT {sel} FROM {tbl}").format(sel=sel, tbl=tbl)
    defs = [sql.SQL("k {}").format(pk_type)]
    sets, cas = [], []
    for i, (col, typ) in enumerate(zip(plan.columns, plan.column_types, strict=True)):
        o, n = sql.Identifier(f"o{i}"), sql.Identifier(f"n{i}")
        defs += [sql.SQL("{} {}").format(o, sql.SQL(typ)), sql.SQL("{} {}").format(n, sql.SQL(typ))]
        sets.append(sql.SQL("{} = u.{}").format(sql.Identifier(col), n))
        cas.append(sql.SQL("t.{} IS NOT DISTINCT FROM u.{}").format(sql.Identifier(col), o))
    for i, (col, typ) in enumerate(zip(plan.hmac_columns, plan.hmac_types, strict=True)):
        h = sql.Identifier(f"h{i}")
        defs.append(sql.SQL("{} {}").format(h, sql.SQL(typ)))
        cas.append(sql.SQL("t.{} IS NOT DISTINCT FROM u.{}").format(sql.Identifier(col), h))
    update = sql.SQL(
        "UPDATE {tbl} AS t SET {sets} FROM {stage} AS u "
        "WHERE t.{pk} = u.k AND t.{pk} >= %s AND t.{pk} <= %s AND {cas} RETURNING t.{pk}"
    ).format(tbl=tbl, sets=sql.SQL(", ").join(sets), stage=stage, pk=pk, cas=sql.SQL(" AND ").join(cas))
    # Binary COPY (less work on both sides) when every staged type has a binary dumper for the
    # Python values psycopg reads for it; text COPY otherwise.
    staged = [plan.pk_type]
    for typ in plan.column_types:
        staged += [typ, typ]
    staged += list(plan.hmac_types)
    binary = all(t in _BINARY_COPY_TYPES for t in staged)
    # The bounds are the batch's first and last keys: without them the planner may merge-join
    # from the start of the primary key index at every batch, which grows with the table.
    return Sql(
        first=sql.SQL("{} ORDER BY {} LIMIT %s").format(base, pk),
        after=sql.SQL("{} WHERE {} > %s ORDER BY {} LIMIT %s").format(base, pk, pk),
        by_pk=sql.SQL("{} WHERE {} = ANY(%s::{}[]) ORDER BY {} FOR UPDATE").format(base, pk, pk_type, pk),
        count=sql.SQL("SELECT count(*) FROM {}").format(tbl),
        count_done=sql.SQL("SELECT count(*) FROM {} WHERE {} <= %s").format(tbl, pk),
        create_stage=sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            stage, sql.SQL(", ").join(defs)
        ),
        copy_stage=sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)" if binary else "COPY {} FROM STDIN").format(stage),
        copy_types=staged if binary else None,
        clear_stage=sql.SQL("DELETE FROM {}").format(stage),
        update=update,
    )


_BINARY_COPY_TYPES = frozenset({"smallint", "integer", "bigint", "text", "character varying", "bytea", "uuid"})


def ensure_progress_table(conn: psycopg.Connection[Any], schema: str) -> None:
    from psycopg import sql

    with conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " run_key text NOT NULL,"
                " table_name text NOT NULL,"
                " last_pk text,"
                " done boolean NOT NULL DEFAULT false,"
                " counters jsonb NOT NULL DEFAULT '{{}}',"
                " updated_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (run_key, table_name))"
            ).format(sql.Identifier(schema, PROGRESS_TABLE))
        )


def db_error(exc: BaseException, plan: TablePlan) -> NixmigError:
    from psycopg import errors

    if isinstance(exc, NixmigError):
        return exc
    if isinstance(exc, errors.StringDataRightTruncation):
        return DatabaseError(
            "a new ciphertext does not fit in its column",
            where=plan.name,
            hint="ciphertexts are longer than plaintexts: ALTER the column TYPE text",
        )
    if isinstance(exc, errors.Error):
        return DatabaseError(
            f"batch failed ({exc.sqlstate or 'no sqlstate'}): {_first_line(str(exc))}",
            where=plan.name,
            hint="nothing of this batch was written; run again to resume",
        )
    return DatabaseError(f"batch failed: {type(exc).__name__}", where=plan.name)


def write(
    conn: psycopg.Connection[Any],
    q: Sql,
    plan: TablePlan,
    batch: BatchResult,
    todo: Sequence[int],
    batch_bounds: tuple[Any, Any],
) -> set[Any]:
    """COPY the rows to write into the stage, then one compare-and-set UPDATE; the keys written."""
    ncol = len(plan.columns)
    rows, values = batch.rows, batch.values
    # Column by column: (pk, old0, new0, old1, new1, ..., hmac columns) as the stage has them.
    staged: list[list[Any]] = [[rows[i][0] for i in todo]]
    for ci in range(ncol):
        new = values[ci]
        staged.append([rows[i][1 + ci] for i in todo])
        staged.append([new[i] for i in todo])
    for hi in range(1 + ncol, len(rows[0]) if rows else 0):
        staged.append([rows[i][hi] for i in todo])
    with conn.cursor() as cur:
        with cur.copy(q.copy_stage) as cp:
            if q.copy_types is not None:
                cp.set_types(q.copy_types)
            for rec in zip(*staged, strict=True):
                cp.write_row(rec)
        bounds = (batch_bounds[0], batch_bounds[1])
        return {r[0] for r in cur.execute(q.update, bounds).fetchall()}


def lock(conn: psycopg.Connection[Any], key: str, plan: TablePlan) -> None:
    got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"{key}|{plan.name}",)).fetchone()
    conn.commit()
    if not got or not got[0]:
        raise DatabaseError(
            "another nixmig reencrypt is running on this table",
            where=plan.name,
            hint="wait for it to finish, or stop it; a new run resumes from its checkpoint",
        )


def unlock(conn: psycopg.Connection[Any], key: str, plan: TablePlan) -> None:
    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"{key}|{plan.name}",))
    conn.commit()
