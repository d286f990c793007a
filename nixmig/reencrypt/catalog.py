"""Checking a spec against the database's catalog, before anything runs: each table
becomes a :class:`~nixmig.reencrypt.core.TablePlan` (what to read, how to write it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nixmig.reencrypt.core import TablePlan
from nixmig.reencrypt.errors import SpecError
from nixmig.reencrypt.spec import Spec, TableSpec

if TYPE_CHECKING:
    import psycopg

TEXT_TYPES = ("text", "character varying")
HMAC_TYPES = ("text", "character varying", "bytea")


def inspect(conn: psycopg.Connection[Any], spec: Spec) -> list[TablePlan]:
    """Check every table of the spec against the catalog; fail before anything runs."""
    from psycopg import sql

    def fetch(schema: str, table: str) -> Catalog:
        query = sql.SQL(CATALOG_SQL).format(schema=sql.Literal(schema), table=sql.Literal(table))
        row = conn.execute(query).fetchone()
        assert row is not None
        return Catalog.from_json(row[0])

    try:
        return inspect_with(spec, fetch)
    finally:
        conn.rollback()


def inspect_with(spec: Spec, fetch: Callable[[str, str], Catalog]) -> list[TablePlan]:
    """:func:`inspect` with the catalog read by ``fetch(schema, table)`` (psycopg, or psql on the target)."""
    plans = []
    problems: list[SpecError] = []
    for t in spec.tables:
        try:
            plans.append(plan_table(spec.schema, t, fetch(spec.schema, t.name)))
        except SpecError as exc:
            problems.append(exc)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise SpecError(first.what + more, where=first.where, hint=first.hint)
    return plans


# One row, one JSON value: what inspect needs to know about a table. {schema} and {table} are
# SQL literals (psycopg's sql.Literal, or nixmig.db.sql.literal for psql).
CATALOG_SQL = """\
WITH t AS (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = {schema} AND c.relname = {table} AND c.relkind IN ('r', 'p'))
SELECT json_build_object(
  'exists', EXISTS (SELECT 1 FROM t),
  'tables', (SELECT coalesce(json_agg(x.relname ORDER BY x.relname), '[]') FROM
             (SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = {schema} AND c.relkind IN ('r', 'p') ORDER BY 1 LIMIT 20) x),
  'types', (SELECT coalesce(json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod),
                                                      format_type(a.atttypid, NULL)) ORDER BY a.attnum), '[]')
            FROM pg_attribute a
            WHERE a.attrelid = (SELECT oid FROM t) AND a.attnum > 0 AND NOT a.attisdropped),
  'pk', (SELECT coalesce(json_agg(a.attname ORDER BY array_position(i.indkey, a.attnum)), '[]')
         FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = (SELECT oid FROM t) AND i.indisprimary))"""


@dataclass(frozen=True)
class Catalog:
    """What the catalog says about one table."""

    exists: bool
    tables: tuple[str, ...]  # the schema's tables (the first 20), for the hint when it does not exist
    types: dict[str, tuple[str, str]]  # column -> (type with modifiers, type without)
    pk: tuple[str, ...]  # primary key columns, in key order

    @classmethod
    def from_json(cls, data: Any) -> Catalog:
        if isinstance(data, str):
            data = json.loads(data)
        return cls(
            bool(data["exists"]),
            tuple(str(x) for x in data["tables"]),
            {str(n): (str(full), str(base)) for n, full, base in data["types"]},
            tuple(str(x) for x in data["pk"]),
        )


def plan_table(schema: str, t: TableSpec, cat: Catalog) -> TablePlan:
    """A table of the spec checked against its catalog entry (pure)."""
    where = f"{schema}.{t.name}"
    if not cat.exists:
        raise SpecError(
            f"table {t.name!r} does not exist in schema {schema!r}",
            where=where,
            hint="fix the spec or --tables; tables there: " + (", ".join(cat.tables) or "(none)"),
        )
    types, pk_cols = cat.types, list(cat.pk)
    if t.primary_key is not None:
        if t.primary_key not in types:
            raise SpecError(f"primary_key column {t.primary_key!r} does not exist in {t.name}", where=where)
        pk = t.primary_key
    elif not pk_cols:
        raise SpecError(
            f"table {t.name!r} has no primary key",
            where=where,
            hint="batches page on the primary key: add one, or set primary_key in the spec to a unique non-null column",
        )
    elif len(pk_cols) > 1:
        raise SpecError(
            f"table {t.name!r} has a composite primary key ({', '.join(pk_cols)})",
            where=where,
            hint="set primary_key in the spec to a unique non-null column",
        )
    else:
        pk = pk_cols[0]

    def check(col: str, allowed: tuple[str, ...], what: str) -> str:
        if col not in types:
            raise SpecError(
                f"column {t.name}.{col} does not exist",
                where=where,
                hint=f"columns of {t.name}: {', '.join(types)}",
            )
        full, base = types[col]
        if base not in allowed:
            raise SpecError(
                f"column {t.name}.{col} is {full}, not {what}",
                where=where,
                hint=f"ALTER TABLE {t.name} ALTER COLUMN {col} TYPE text"
                if allowed == TEXT_TYPES
                else "a blind index is hex text or bytea",
            )
        return base  # arrays are cast to the type without its modifier: a varchar(n) cast truncates

    col_types = tuple(check(c.name, TEXT_TYPES, "text or varchar") for c in t.columns)
    hmac_cols: list[str] = []
    hmac_of: list[int | None] = []
    for c in t.columns:
        if c.hmac is None:
            hmac_of.append(None)
            continue
        if c.hmac not in hmac_cols:
            hmac_cols.append(c.hmac)
        hmac_of.append(hmac_cols.index(c.hmac))
    hmac_types = tuple(check(h, HMAC_TYPES, "text or bytea") for h in hmac_cols)
    for c in t.columns:
        if c.name == pk or c.name in hmac_cols:
            raise SpecError(f"column {t.name}.{c.name} is a key or blind index", where=where)
    return TablePlan(
        t,
        schema,
        pk,
        types[pk][1],
        tuple(c.name for c in t.columns),
        col_types,
        tuple(hmac_cols),
        hmac_types,
        tuple(hmac_of),
    )
