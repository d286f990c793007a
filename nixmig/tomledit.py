"""Byte-exact edits of nixmig.toml: the ``also`` entries `nixmig patch --write` adds to a migration.

Pure: text in, text out. Only the lines an edit adds or the one inline table it extends change
(comments, order and layout are the user's). Each result is parsed again with tomllib and must
read as the migration's ``also`` with the new entries and nothing else changed; when the layout
is one this module cannot extend (a dotted key, an inline table over several lines), it raises
ConfigError with the line to add by hand, and the caller writes nothing.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nixmig.errors import ConfigError

# a table header, or an array-of-tables one ([[migrations.m.health_checks]]: it ends the table above too)
_HEADER = re.compile(r"^[ \t]*\[\[?[ \t]*(?P<key>[^\[\]\n]+?)[ \t]*\]\]?[ \t]*(#[^\n]*)?$", re.MULTILINE)
_INLINE_ALSO = re.compile(r"^(?P<head>[ \t]*also[ \t]*=[ \t]*\{)(?P<body>[^\n{}]*)(?P<tail>\}[ \t]*(#[^\n]*)?)$")


def _key_parts(key: str) -> list[str]:
    """``migrations."x-y"`` -> ["migrations", "x-y"] (bare or quoted parts; None when not that simple)."""
    parts = []
    for raw in re.findall(r'"[^"\\]*"|\'[^\']*\'|[A-Za-z0-9_-]+|\.|[ \t]+|.', key):
        if raw.strip() in ("", "."):
            continue
        if raw[0] in "\"'":
            parts.append(raw[1:-1])
        elif re.fullmatch(r"[A-Za-z0-9_-]+", raw):
            parts.append(raw)
        else:
            return []
    return parts


def _key(var: str) -> str:
    """``var`` as a TOML key: bare when it can be, else quoted (an option path: its dots are part of it)."""
    return var if re.fullmatch(r"[A-Za-z0-9_-]+", var) else json.dumps(var)


def also_line(entries: Sequence[tuple[str, str]]) -> str:
    return "also = { " + ", ".join(f'{_key(var)} = "{secret}"' for var, secret in entries) + " }"


def add_also(text: str, migration: str, entries: Sequence[tuple[str, str]], where: str | Path | None = None) -> str:
    """``text`` with ``entries`` (VAR, secret) added to ``[migrations.MIGRATION]``'s also."""
    if not entries:
        return text
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"nixmig.toml does not parse: {e}", where=where) from None
    mig = before.get("migrations", {}).get(migration)
    if not isinstance(mig, dict):
        raise ConfigError(f"no [migrations.{migration}] table", where=where)
    old = mig.get("also", {})
    new = _edit(text, migration, entries, has_also="also" in mig)
    if new is None:
        raise ConfigError(
            f"cannot add the companion credentials to [migrations.{migration}] of nixmig.toml by itself "
            "(its also is written in a layout nixmig does not edit); nothing written",
            where=where,
            hint=f"add {', '.join(f'{_key(v)} = {s!r}' for v, s in entries)} to its also by hand, then patch "
            "--write again",
        )
    expected: dict[str, Any] = {**before}
    expected["migrations"] = {**before["migrations"], migration: {**mig, "also": {**old, **dict(entries)}}}
    if tomllib.loads(new) != expected:  # a layout _edit misread
        raise ConfigError(
            f"adding also to [migrations.{migration}] would change more than it: nothing written",
            where=where,
            hint=f"add {also_line(entries)} to [migrations.{migration}] by hand, then patch --write again",
        )
    return new


def _edit(text: str, migration: str, entries: Sequence[tuple[str, str]], *, has_also: bool) -> str | None:
    headers = list(_HEADER.finditer(text))
    table = next((h for h in headers if _key_parts(h.group("key")) == ["migrations", migration]), None)
    if table is None:
        return None  # an inline or dotted-key migration table
    end = next((h.start() for h in headers if h.start() > table.end()), len(text))
    line_end = text.find("\n", table.end())
    after_header = len(text) if line_end < 0 else line_end + 1
    if not has_also:
        insert = also_line(entries) + "\n"
        prefix = "" if line_end >= 0 else "\n"
        return text[:after_header] + prefix + insert + text[after_header:]
    sub = next((h for h in headers if _key_parts(h.group("key")) == ["migrations", migration, "also"]), None)
    if sub is not None:
        sub_end = text.find("\n", sub.end())
        at = len(text) if sub_end < 0 else sub_end + 1
        lines = "".join(f'{_key(var)} = "{secret}"\n' for var, secret in entries)
        return text[:at] + ("" if sub_end >= 0 else "\n") + lines + text[at:]
    section = text[after_header:end]
    found = [m for m in (_INLINE_ALSO.match(ln) for ln in section.split("\n")) if m]
    if len(found) != 1:
        return None
    m = found[0]
    body = m.group("body").rstrip()
    added = ", ".join(f'{_key(var)} = "{secret}"' for var, secret in entries)
    new_line = m.group("head") + (f"{body}, {added} " if body.strip() else f" {added} ") + m.group("tail")
    start = after_header + section.index(m.group(0))
    return text[:start] + new_line + text[start + len(m.group(0)) :]
