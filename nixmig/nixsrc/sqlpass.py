"""Role passwords in SQL text: ``CREATE ROLE x WITH LOGIN PASSWORD '...'``, ``ALTER USER x PASSWORD '...'``.

Pure: bytes of a Nix string's source in, the password clauses out. patch removes the clause
(`` PASSWORD '...'`` with an ``ENCRYPTED`` before it), which leaves valid SQL (``CREATE ROLE x
WITH LOGIN;`` is a valid statement: the option lists may be empty; an ``ALTER USER x WITH PASSWORD '...';``
that sets nothing else goes whole),
and sets the password from the agenix file in a oneshot instead (templates/role-password.nix.j2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T", str, bytes)

_HEAD = re.compile(rb'(?i)\b(?:CREATE|ALTER)\s+(?:ROLE|USER)\s+("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)')
# the same in a shell command's double quotes (``psql -c "CREATE ROLE \\"x-y\\" ..."``): quotes escaped
_HEAD_SHELL = re.compile(
    rb'(?i)\b(?:CREATE|ALTER)\s+(?:ROLE|USER)\s+(\\"(?:[^"\\]|"")+\\"|"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
)
_EMPTY = re.compile(rb"(?i)\s*(?:WITH)?\s*")  # what an ALTER that set only the password has left
_WITH = re.compile(rb"(?i)\bWITH\b")
_LEADING_WITH = re.compile(rb"(?i)\s*WITH\b")
# a hole's value nixmig writes into no SQL, it only reads it: a name or a password SQL would hold as it is
# between quotes (no quote, backslash or line break: what the server then got is that value)
SAFE_HOLE = re.compile(r"[^'\\\n\r\x00\"]+")
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


def fill_holes(text: _T, holes: Mapping[tuple[int, int], str]) -> _T:
    """``text`` (SQL, bytes or str) with each interpolation of ``holes`` (its offsets) replaced by an identifier
    of the same length (``Q0___``): the statement's offsets stay those of ``text``, and no ``${`` is left there."""
    out = text
    for i, (start, end) in enumerate(sorted(holes)):
        tag = f"Q{i}"
        if end - start < len(tag):
            continue  # cannot happen: ``${x}`` is 4 bytes at least, and there are not 100 holes in a statement
        pad = tag + "_" * (end - start - len(tag))
        out = out[:start] + (pad.encode() if isinstance(out, bytes) else pad) + out[end:]
    return out


def _touches(holes: Mapping[tuple[int, int], str], start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in holes)


def clauses(
    text: bytes, *, in_shell: bool = False, holes: Mapping[tuple[int, int], str] | None = None
) -> list[PasswordClause]:
    """Every ``PASSWORD '...'`` of a CREATE/ALTER ROLE/USER statement in ``text``; ``in_shell``: the
    SQL is inside a shell command's double quotes, where a quoted identifier is ``\\"x\\"``.

    A clause whose statement interpolates anything (``${``) or whose value is not a plain
    literal is left out: it is not a password nixmig can move. ``holes``: the interpolations whose value
    nixmig knows (a let string, a let attrset's field: ``'${dbPassword}'``), by their offsets in ``text``;
    one that is a whole role name or a whole password counts as that value (any other use of one: left out)."""
    from nixmig.nixsrc.scan import looks_like_crypt_hash  # (scan imports this module)

    holes = {k: v for k, v in (holes or {}).items() if SAFE_HOLE.fullmatch(v)}
    filled = fill_holes(text, holes) if holes else text
    out: list[PasswordClause] = []
    for head in (_HEAD_SHELL if in_shell else _HEAD).finditer(filled):
        stmt_end = filled.find(b";", head.end())
        stmt_end = len(filled) if stmt_end == -1 else stmt_end
        stmt = filled[head.end() : stmt_end]
        if b"${" in filled[head.start() : stmt_end]:
            continue
        m = _CLAUSE.search(stmt)
        if m is None:
            continue
        base = head.end()
        value = m.group(1).decode("utf-8", "replace").replace("''", "'")
        if looks_like_crypt_hash(value):
            continue  # a SCRAM/md5 verifier: not the password (nobody logs in with it); nothing to move or rotate
        role = _role(head.group(1))
        if holes:
            r_start, r_end = head.span(1)
            quoted = head.group(1)[:1] == b'"'
            named = holes.get((r_start + quoted, r_end - quoted))
            v_start, v_end = base + m.start(1), base + m.end(1)
            given = holes.get((v_start, v_end))
            partial = (named is None and _touches(holes, r_start, r_end)) or (
                given is None and _touches(holes, v_start, v_end)
            )
            if partial:
                continue  # a hole inside a name or a value (``'${prefix}-pw'``): not a value nixmig knows whole
            if named is not None:
                role = named if quoted else named.lower()  # as the server folds an unquoted name
            if given is not None:
                value = given
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
                role,
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
