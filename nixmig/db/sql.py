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
