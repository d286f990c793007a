"""Quoting for SQL text sent to psql on stdin."""

from __future__ import annotations


def ident(name: str) -> str:
    """A double-quoted SQL identifier."""
    if "\x00" in name:
        raise ValueError("NUL in identifier")
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """A standard-conforming single-quoted SQL string literal."""
    if "\x00" in value:
        raise ValueError("NUL in literal")
    return "'" + value.replace("'", "''") + "'"


def dbname(name: str) -> str:
    """``dbname=NAME``, a libpq conninfo naming one database, for ``-d`` of psql, pg_dump and
    pg_restore: they read a bare ``-d`` value that contains ``=`` or starts with
    ``postgresql://`` (a database may be named so) as a connection string, which can point
    them at another database, port or host. Quoted per libpq when it must be (empty, white
    space, a quote or a backslash): single quotes, ``\\`` and ``'`` backslash-escaped."""
    if "\x00" in name:
        raise ValueError("NUL in database name")
    if name and not any(c in name for c in " \t\n\r\f\v'\\"):
        return "dbname=" + name
    return "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
