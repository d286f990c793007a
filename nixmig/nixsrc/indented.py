"""The value of a Nix indented string (``'' ... ''``) with no interpolation, as Nix computes it.

Ported from Nix's lexer (the IND_STRING rules of lexer.l) and parser (``stripIndentation``): the
opener eats spaces and a newline right after ``''``; ``'''`` is ``''``, ``''$`` is ``$``, ``''\\X``
unescapes X (n, r, t; any other character stands for itself); a lone ``$`` or ``'`` is a token of its
own. The minimal indentation counts spaces (not tabs) at the start of lines that hold something
other than spaces, where an escape or a lone ``$``/``'`` ends the start of a line; that many spaces
are dropped from each line (escapes take part in the dropping, as in Nix); a last line of spaces
only goes. tests/unit/test_indented.py compares this with nix-instantiate --eval on many strings.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tree_sitter import Node

_PLAIN = re.compile(r"(?:[^$']|\$[^{']|'[^'$])+", re.S)
_OPENER = re.compile(r" *\n")
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t"}


def _tokens(body: str) -> list[tuple[str, bool]] | None:
    """(text, counts as indentation) per token, as Nix's lexer cuts ``body``; None at an interpolation."""
    out: list[tuple[str, bool]] = []
    i = 0
    while i < len(body):
        m = _PLAIN.match(body, i)
        plain = m.end() - i if m else 0
        special: tuple[int, str] | None = None  # (length, value), flex's longest match among the escapes
        if body.startswith("'''", i):
            special = (3, "''")
        elif body.startswith("''$", i):
            special = (3, "$")
        elif body.startswith("''\\", i) and i + 3 < len(body):
            special = (4, _UNESCAPE.get(body[i + 3], body[i + 3]))
        elif body.startswith("${", i):
            return None
        elif body[i] in "$'":
            special = (1, body[i])
        if plain and (special is None or plain >= special[0]):
            out.append((body[i : i + plain], True))
            i += plain
        elif special is not None:
            out.append((special[1], False))
            i += special[0]
        else:  # "''" inside the body: tree-sitter's string and Nix's lexer disagree; trust neither
            return None
    return out


def _strip(tokens: list[tuple[str, bool]]) -> str:
    """Nix's stripIndentation over string tokens only."""
    if not tokens:
        return ""
    at_start, min_indent, cur = True, 1_000_000, 0
    for s, indentable in tokens:
        if not indentable:
            if at_start:
                at_start = False
                min_indent = min(min_indent, cur)
            continue
        for ch in s:
            if at_start:
                if ch == " ":
                    cur += 1
                elif ch == "\n":
                    cur = 0
                else:
                    at_start = False
                    min_indent = min(min_indent, cur)
            elif ch == "\n":
                at_start, cur = True, 0
    out: list[str] = []
    at_start, dropped = True, 0
    for n, (s, _) in enumerate(tokens):
        s2: list[str] = []
        for ch in s:
            if at_start:
                if ch == " ":
                    if dropped >= min_indent:
                        s2.append(ch)
                    dropped += 1
                elif ch == "\n":
                    dropped = 0
                    s2.append(ch)
                else:
                    at_start, dropped = False, 0
                    s2.append(ch)
            else:
                s2.append(ch)
                if ch == "\n":
                    at_start = True
        text = "".join(s2)
        if n == len(tokens) - 1:  # the last line, if it is spaces only, goes
            p = text.rfind("\n")
            if p != -1 and text[p + 1 :].strip(" ") == "":
                text = text[: p + 1]
        out.append(text)
    return "".join(out)


def decode_indented_text(written: str) -> str | None:
    """The value of the indented string written as ``written`` (with its ``''`` delimiters), or None
    when it interpolates."""
    if not (written.startswith("''") and written.endswith("''")) or len(written) < 4:
        return None
    body = written[2:-2]
    m = _OPENER.match(body)
    if m:
        body = body[m.end() :]
    tokens = _tokens(body)
    return None if tokens is None else _strip(tokens)


def decode_indented(node: Node) -> str | None:
    """The value of an ``indented_string_expression`` node with no interpolation, else None."""
    if node.type != "indented_string_expression" or any(c.type == "interpolation" for c in node.named_children):
        return None
    raw = node.text
    return decode_indented_text(raw.decode("utf-8", "replace")) if raw is not None else None


def decode_any(node: Node) -> str | None:
    """The value of a double-quoted or an indented string literal, None if it interpolates."""
    from nixmig.nixsrc.model import decode_string

    return decode_string(node) if node.type == "string_expression" else decode_indented(node)
