"""Role passwords in SQL text: ``CREATE ROLE x WITH LOGIN PASSWORD '...'``, ``ALTER USER x PASSWORD '...'``.

Pure: bytes of a Nix string's source in, the password clauses out. patch removes the clause
(`` PASSWORD '...'`` with an ``ENCRYPTED`` before it), which leaves valid SQL (``CREATE ROLE x
WITH LOGIN;`` is a valid statement: the option lists may be empty; an ``ALTER USER x WITH PASSWORD '...';``
that sets nothing else goes whole),
and sets the password from the agenix file in a oneshot instead (templates/role-password.nix.j2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEAD = re.compile(rb'(?i)\b(?:CREATE|ALTER)\s+(?:ROLE|USER)\s+("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)')
# the same in a shell command's double quotes (``psql -c "CREATE ROLE \\"x-y\\" ..."``): quotes escaped
_HEAD_SHELL = re.compile(
    rb'(?i)\b(?:CREATE|ALTER)\s+(?:ROLE|USER)\s+(\\"(?:[^"\\]|"")+\\"|"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
)
_EMPTY = re.compile(rb"(?i)\s*(?:WITH)?\s*")  # what an ALTER that set only the password has left
_WITH = re.compile(rb"(?i)\bWITH\b")
_LEADING_WITH = re.compile(rb"(?i)\s*WITH\b")
_CLAUSE = re.compile(rb"(?i)\s+(?:ENCRYPTED\s+)?PASSWORD\s+'((?:[^'\\\n]|'')*)'")


@dataclass(frozen=True)
class PasswordClause:
    role: str  # as the server names it (unquoted: lower-cased)
    start: int  # the clause, from the whitespace before it (offsets into the text given)
    end: int
    value_start: int  # the password between the quotes
    value_end: int
    password: str
    # an ALTER ROLE/USER that sets nothing but the password: the whole statement (its line, when it is
    # alone on it), which removing the clause would leave as ``ALTER USER x WITH;`` (valid, a no-op)
    whole: tuple[int, int] | None = None
    # WITH after an option (``CREATE USER x SUPERUSER WITH LOGIN``): PostgreSQL takes WITH only right after
    # the role's name, so the statement is a syntax error, and never created or changed the role
    invalid: bool = False


def _role(ident: bytes) -> str:
    text = ident.decode("utf-8", "replace")
    if text.startswith('\\"'):
        text = text[1:-2] + '"'
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text.lower()


def clauses(text: bytes, *, in_shell: bool = False) -> list[PasswordClause]:
    """Every ``PASSWORD '...'`` of a CREATE/ALTER ROLE/USER statement in ``text``; ``in_shell``: the
    SQL is inside a shell command's double quotes, where a quoted identifier is ``\\"x\\"``.

    A clause whose statement interpolates anything (``${``) or whose value is not a plain
    literal is left out: it is not a password nixmig can move."""
    out: list[PasswordClause] = []
    for head in (_HEAD_SHELL if in_shell else _HEAD).finditer(text):
        stmt_end = text.find(b";", head.end())
        stmt_end = len(text) if stmt_end == -1 else stmt_end
        stmt = text[head.end() : stmt_end]
        if b"${" in text[head.start() : stmt_end]:
            continue
        m = _CLAUSE.search(stmt)
        if m is None:
            continue
        base = head.end()
        value = m.group(1).decode("utf-8", "replace").replace("''", "'")
        rest = stmt[: m.start()] + stmt[m.end() :]
        whole = None
        if not in_shell and stmt_end < len(text) and head.group(0)[:5].upper() == b"ALTER" and _EMPTY.fullmatch(rest):
            start, end = head.start(), stmt_end + 1
            line_start = text.rfind(b"\n", 0, start) + 1
            line_end = text.find(b"\n", end)
            if not text[line_start:start].strip() and line_end != -1 and not text[end:line_end].strip():
                start, end = line_start, line_end + 1
            whole = (start, end)
        unquoted = re.sub(rb"'(?:[^']|'')*'", b"''", rest)
        invalid = bool(_WITH.search(unquoted)) and not _LEADING_WITH.match(unquoted)
        out.append(
            PasswordClause(
                _role(head.group(1)),
                base + m.start(),
                base + m.end(),
                base + m.start(1),
                base + m.end(1),
                value,
                whole,
                invalid,
            )
        )
    return out


def role_identifier(role: str) -> str:
    """``role`` as an SQL identifier, always double-quoted (so the name is taken as written)."""
    return '"' + role.replace('"', '""') + '"'
