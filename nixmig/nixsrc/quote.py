"""Nix string escaping and shell quoting for the snippets `nixmig patch` writes: explicit, and tested."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

_NIX_KEYWORDS = frozenset({"if", "then", "else", "let", "in", "rec", "with", "inherit", "assert", "or"})
_NIX_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")


def nix_escape(value: str) -> str:
    """The inside of a double-quoted Nix string that evaluates to ``value`` (every ``$`` escaped)."""
    out = []
    for ch in value:
        if ch in '"\\$':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(ch)
    return "".join(out)


def nix_string(value: str) -> str:
    """A double-quoted Nix string literal that evaluates to exactly ``value``."""
    return '"' + nix_escape(value) + '"'


def nix_attr(name: str) -> str:
    """``name`` as one attribute of an attrpath: bare when it is an identifier, else quoted."""
    if _NIX_IDENT.fullmatch(name) and name not in _NIX_KEYWORDS:
        return name
    return nix_string(name)


def nix_attrpath(names: Sequence[str]) -> str:
    """An attrpath from names as model.attr_names gives them (an interpolated one is kept as written)."""
    return ".".join(n if n.startswith('"') and "${" in n else nix_attr(n) for n in names)


@dataclass(frozen=True)
class Antiquote:
    """Nix code spliced unescaped into an indented string as ``${code}``."""

    code: str


def escape_indented(s: str, *, before_antiquote: bool) -> str:
    r"""Escape one literal run of an indented string (``''...''``).

    ``''`` is written ``'''`` and ``${`` as ``''${`` (a ``$`` right before an
    antiquotation too). Those escapes start with a quote, so a single ``'`` right
    before one of them, or right before the closing ``''``, is written ``''\'``.
    """
    tokens: list[str] = []
    lone: list[int] = []  # tokens that are a single quote
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "'" and s.startswith("'", i + 1):
            tokens.append("'''")
            i += 2
            continue
        if c == "'":
            lone.append(len(tokens))
            tokens.append("'")
        elif c == "$" and (s.startswith("{", i + 1) or (i + 1 == n and before_antiquote)):
            tokens.append("''$")
        else:
            tokens.append(c)
        i += 1
    for k in lone:
        nxt = tokens[k + 1] if k + 1 < len(tokens) else None
        if (nxt is not None and nxt.startswith("'")) or (nxt is None and not before_antiquote):
            tokens[k] = "''\\'"
    return "".join(tokens)


def nix_indented(parts: Sequence[str | Antiquote], indent: str = "  ") -> str:
    """A Nix indented string (``''`` ... ``''``) whose value is the concatenation of ``parts``.

    Text is escaped, :class:`Antiquote` parts are spliced in as ``${code}``. Every
    non-empty line is indented by ``indent`` and Nix strips exactly that, so the
    value is the text as given as long as one of its lines starts without a space
    (Nix would strip a common indentation of the text itself too).
    """
    pieces: list[str] = []
    for k, part in enumerate(parts):
        if isinstance(part, Antiquote):
            pieces.append("${" + part.code + "}")
        else:
            nxt = parts[k + 1] if k + 1 < len(parts) else None
            pieces.append(escape_indented(part, before_antiquote=isinstance(nxt, Antiquote)))
    body = "".join(pieces)
    lines = body.split("\n")
    ends_with_newline = lines[-1] == ""
    if ends_with_newline:
        lines.pop()
    elif lines[-1] and not lines[-1].strip(" \t"):
        # Nix drops a last line of only blanks before the closing quotes: escape one to keep them
        lines[-1] = lines[-1][:-1] + "''\\" + lines[-1][-1]
    inner = "\n".join(indent + ln if ln else ln for ln in lines)
    return "''\n" + inner + ("\n''" if ends_with_newline else "''")


# what ends a `#` comment or a line somewhere: Nix ends a comment at \n or \r, bash at \n,
# editors and Python's splitlines at \v \f \x1c-\x1e \x85 U+2028 U+2029 too
_NOT_IN_COMMENT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def comment_text(value: str) -> str:
    r"""``value`` made safe inside a one-line ``#`` comment of Nix or bash: every control
    character and line separator written as an escape (``\n``, ``\x1b``, ``\u2028``), so
    nothing after it can become code. For names from nixmig.toml or a Nix file in the
    comments the templates write (nixmig.config refuses control characters in names too)."""
    return _NOT_IN_COMMENT.sub(lambda m: _escape_char(m.group()), value)


def _escape_char(ch: str) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if ch in named:
        return named[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def nix_comment(text: str) -> str:
    """A one-line ``#`` comment (Nix or bash) saying ``text``, whatever it holds."""
    return "# " + comment_text(text)


def shell_quote(value: str) -> str:
    """One POSIX shell word that expands to exactly ``value`` (single quotes; ``'`` as ``'"'"'``)."""
    return shlex.quote(value)


def store_name(name: str) -> str:
    """A valid Nix store path name from ``name`` (for writeShellScript)."""
    clean = re.sub(r"[^A-Za-z0-9+._?=-]", "-", name).lstrip(".") or "nixmig"
    return clean[:200]
