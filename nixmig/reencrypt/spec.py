"""Which tables and columns to re-encrypt: the shipped example, a TOML spec, or flags.

A spec is TOML: a file of its own, the ``[reencrypt]`` table of nixmig.toml, or the
``tables`` of a migration's reencrypt phase (:func:`for_migration`)::

    [reencrypt]
    schema = "public"                      # optional

    [reencrypt.tables.users]
    columns = ["email", "first_name", "last_name"]
    hmac = { email = "email_hmac" }        # blind index: HMAC-SHA256(secret, plaintext), hex or bytea
    # primary_key = "id"                   # optional: default is the table's primary key

The database side (does the table exist, its primary key, the column types) is
checked by :func:`nixmig.reencrypt.catalog.inspect` before anything runs.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nixmig.reencrypt.errors import SpecError


@dataclass(frozen=True)
class Column:
    name: str
    hmac: str | None = None  # the blind-index column of this column, if any


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    primary_key: str | None = None  # None: the table's own primary key

    def context(self, column: str) -> str:
        """The key-derivation context of a column: ``table.column``."""
        return f"{self.name}.{column}"


@dataclass(frozen=True)
class Spec:
    tables: tuple[TableSpec, ...]
    schema: str = "public"

    def names(self) -> list[str]:
        return [t.name for t in self.tables]

    def select(self, tables: str | None) -> Spec:
        """The spec restricted to ``--tables a,b`` (``all`` or None: every table, spec order)."""
        if tables is None or tables.strip() == "all":
            return self
        wanted = [t.strip() for t in tables.split(",") if t.strip()]
        if not wanted:
            raise SpecError("--tables is empty", hint="pass --tables users,invitations or all")
        by_name = {t.name: t for t in self.tables}
        unknown = [t for t in wanted if t not in by_name]
        if unknown:
            raise SpecError(
                f"table {unknown[0]!r} is not in the spec",
                where="--tables",
                hint=f"use 'all' or some of: {', '.join(self.names())}",
            )
        return Spec(tuple(by_name[t] for t in dict.fromkeys(wanted)), self.schema)


# The shipped example: the point-of-sale application this phase was written for.
EXAMPLE_SPEC = Spec(
    (
        TableSpec(
            "users",
            (Column("email", "email_hmac"), Column("first_name"), Column("last_name")),
        ),
        TableSpec("invitations", (Column("email", "email_hmac"), Column("token", "token_hmac"))),
        TableSpec(
            "guest_orders",
            (
                Column("customer_name"),
                Column("customer_phone"),
                Column("customer_email", "customer_email_hmac"),
                Column("ip_address"),
                Column("user_agent"),
            ),
        ),
        TableSpec("delivery_addresses", (Column("full_address"), Column("geocoding_result"))),
        TableSpec("notifications", (Column("recipient"), Column("body"))),
        TableSpec("sessions", (Column("session_id", "session_id_hmac"), Column("ip_address"))),
        TableSpec("consent_records", (Column("ip_address"),)),
    )
)


# ---- TOML ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _TomlTable:
    columns: tuple[str, ...]
    hmac: dict[str, str] = field(default_factory=dict)
    primary_key: str | None = None


@dataclass(frozen=True)
class _TomlSpec:
    tables: dict[str, _TomlTable]
    schema: str = "public"


def to_toml(spec: Spec, *, section: str = "reencrypt") -> str:
    """The spec as TOML (``--show-spec``), ready to paste into nixmig.toml."""
    out = [f"[{section}]", f"schema = {_q(spec.schema)}", ""]
    for t in spec.tables:
        out.append(f"[{section}.tables.{_key(t.name)}]")
        out.append("columns = [" + ", ".join(_q(c.name) for c in t.columns) + "]")
        hm = [(c.name, c.hmac) for c in t.columns if c.hmac]
        if hm:
            out.append("hmac = { " + ", ".join(f"{_key(c)} = {_q(h)}" for c, h in hm) + " }")
        if t.primary_key:
            out.append(f"primary_key = {_q(t.primary_key)}")
        out.append("")
    return "\n".join(out)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(text: str) -> str:
    bare = text.replace("_", "").replace("-", "").isalnum() and text.isascii()
    return text if bare else _q(text)


def load(path: Path, *, required: bool = True) -> Spec | None:
    """A spec from a TOML file: its ``[reencrypt]`` table if it has one, else the whole file.

    With ``required=False`` (nixmig.toml read for other reasons) a file without a
    ``[reencrypt]`` table gives None.
    """
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError("no such file", where=where, hint="pass --spec with a TOML spec") from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", where=where) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"not valid TOML: {exc}", where=where) from None
    prefix: tuple[str, ...] = ()
    if "reencrypt" in data:
        data, prefix = data["reencrypt"], ("reencrypt",)
        if not isinstance(data, dict):
            raise SpecError("reencrypt: expected a table", where=where)
    elif not required:
        return None
    return from_mapping(data, path=prefix, where=where)


def from_mapping(data: dict[str, Any], *, path: tuple[str, ...], where: str) -> Spec:
    """A spec from parsed TOML in the ``[reencrypt]`` shape found at ``path`` of file ``where``."""
    from nixmig import config
    from nixmig.errors import ConfigError

    try:
        raw = config._build(_TomlSpec, {k.replace("-", "_"): v for k, v in data.items()}, path, where)
    except ConfigError as exc:
        raise SpecError(exc.what, where=exc.where, hint=exc.hint) from None
    return _from_toml(raw, ".".join(path), where)


def for_migration(tables: Any, schema: str | None, top: dict[str, Any] | None, *, migration: str, where: str) -> Spec:
    """The spec of the reencrypt phase of a migration (``migrations.MIGRATION.reencrypt``).

    ``tables`` is ``"all"`` or a list of table names of the top-level ``[reencrypt]`` spec
    (``top``), or tables written in its shape (``tables.users = { columns = [...] }``).
    """
    key = f"migrations.{migration}.reencrypt"
    if isinstance(tables, dict):
        data: dict[str, Any] = {"tables": tables}
        if schema:
            data["schema"] = schema
        return from_mapping(data, path=("migrations", migration, "reencrypt"), where=where)
    names: str | None
    if tables == "all":
        names = None
    elif isinstance(tables, list) and tables and all(isinstance(t, str) for t in tables):
        names = ",".join(tables)
    else:
        raise SpecError(
            f'{key}.tables: expected "all", a list of table names, or tables like [reencrypt.tables.NAME]',
            where=where,
            hint=f'e.g. tables = ["users", "invitations"], or [{key}.tables.users] with columns = [...]',
        )
    if not top:
        raise SpecError(
            f"{key}.tables: names tables of [reencrypt], but nixmig.toml has no [reencrypt] table",
            where=where,
            hint=f"add [reencrypt.tables.NAME] with columns = [...], or write them here: [{key}.tables.NAME]",
        )
    base = from_mapping(top, path=("reencrypt",), where=where)
    try:
        spec = base.select(names)
    except SpecError as exc:
        raise SpecError(f"{key}.tables: {exc.what}", where=where, hint=exc.hint) from None
    return replace(spec, schema=schema) if schema else spec


def _from_toml(raw: _TomlSpec, prefix: str, where: str) -> Spec:
    dot = f"{prefix}." if prefix else ""
    if not raw.tables:
        raise SpecError(f"{dot}tables: no table to migrate", where=where, hint="add [tables.NAME]")
    tables = []
    for name, t in raw.tables.items():
        key = f"{dot}tables.{name}"
        if not t.columns:
            raise SpecError(f"{key}.columns: empty", where=where, hint="list the encrypted columns")
        dup = sorted({c for c in t.columns if t.columns.count(c) > 1})
        if dup:
            raise SpecError(f"{key}.columns: {dup[0]!r} is listed twice", where=where)
        for col in t.hmac:
            if col not in t.columns:
                raise SpecError(
                    f"{key}.hmac.{col}: {col!r} is not one of the columns",
                    where=where,
                    hint=f"columns: {', '.join(t.columns)}",
                )
        tables.append(TableSpec(name, tuple(Column(c, t.hmac.get(c)) for c in t.columns), t.primary_key))
    return Spec(tuple(tables), raw.schema)


def from_flags(columns: list[str], schema: str = "public") -> Spec:
    """A spec from ``--column TABLE.COLUMN[=HMAC_COLUMN]`` flags, in the order given."""
    tables: dict[str, list[Column]] = {}
    for item in columns:
        target, _, hmac_col = item.partition("=")
        table, dot, column = target.strip().partition(".")
        if not dot or not table or not column or (_ and not hmac_col.strip()):
            raise SpecError(f"{item!r} is not TABLE.COLUMN or TABLE.COLUMN=HMAC_COLUMN", where="--column")
        cols = tables.setdefault(table, [])
        if any(c.name == column for c in cols):
            raise SpecError(f"{table}.{column} is given twice", where="--column")
        cols.append(Column(column, hmac_col.strip() or None))
    if not tables:
        raise SpecError("no column given", where="--column")
    return Spec(tuple(TableSpec(t, tuple(cs)) for t, cs in tables.items()), schema)
