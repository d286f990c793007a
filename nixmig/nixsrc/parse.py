"""tree-sitter-nix, loaded once, with syntax errors reported as line:col."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nixmig.errors import NixSyntaxError

if TYPE_CHECKING:
    from tree_sitter import Language, Node, Parser, Tree


@functools.cache
def _language() -> Language:
    import tree_sitter_nix
    from tree_sitter import Language

    return Language(tree_sitter_nix.language())


_LOCAL = threading.local()


def _parser() -> Parser:
    """One parser per thread: py-tree-sitter releases the GIL while it parses, and a Parser is not safe
    to share (a fleet's hosts run their phases in threads, each parsing secrets.nix and the tree)."""
    parser: Parser | None = getattr(_LOCAL, "parser", None)
    if parser is None:
        from tree_sitter import Parser

        parser = _LOCAL.parser = Parser(_language())
    return parser


_PIPE = re.compile(rb"\|>|<\|")
_IN_TEXT = frozenset({"string_fragment", "comment", "string_expression", "indented_string_expression"})


def parse(source: bytes) -> Tree:
    """Parse Nix source. The tree may contain ERROR / MISSING nodes; see :func:`first_error`.

    The grammar predates Nix's pipe operators (``xs |> map f``, ``f <| x``): a file that only
    parses with them is parsed with each operator read as ``++`` (same length, so every offset
    and every string stays as written; an operator inside a string or comment is left alone).
    It also refuses a comma after the last formal (``{ a, b, }:``), which Nix takes: read as a space."""
    tree = _parser().parse(source)
    if not tree.root_node.has_error:
        return tree
    if _TRAILING_COMMA.search(source) is not None:
        fixed = _parse_replacing(source, [(m.start(), b" ") for m in _TRAILING_COMMA.finditer(source)])
        if fixed is not None:
            return fixed
    if _PIPE.search(source) is None:
        return tree
    return _parse_replacing(source, [(m.start(), b"++") for m in _PIPE.finditer(source)]) or tree


# a comma after the last formal (`{ system, version, }:`): Nix takes it, the grammar does not; read as a space
_TRAILING_COMMA = re.compile(rb",(?=(?:\s|#[^\n]*\n|/\*(?:[^*]|\*(?!/))*\*/)*\}\s*(?::|@))")


def _parse_replacing(source: bytes, swaps: list[tuple[int, bytes]]) -> Tree | None:
    """Parse with the bytes at each spot swapped for others of the same length; a spot that turns out
    to be inside a string or a comment gets its bytes back. None when it still does not parse."""
    spots = [i for i, _ in swaps]
    width = {i: len(w) for i, w in swaps}
    buf = bytearray(source)
    for i, w in swaps:
        buf[i : i + len(w)] = w
    tree = _parser().parse(bytes(buf))
    if tree.root_node.has_error:
        return None
    restored = False
    for i in spots:
        n = width[i]
        node: Node | None = tree.root_node.descendant_for_byte_range(i, i + n)
        while node is not None and node.type != "interpolation" and node.type not in _IN_TEXT:
            node = node.parent
        if node is not None and node.type in _IN_TEXT:
            buf[i : i + n] = source[i : i + n]
            restored = True
    if restored:
        tree = _parser().parse(bytes(buf))
        if tree.root_node.has_error:
            return None
    return tree


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"


def position(node: Node) -> Position:
    row, col = node.start_point
    return Position(row + 1, col + 1)


def first_error(tree: Tree) -> Node | None:
    """The first ERROR or MISSING node in document order, if any."""
    if not tree.root_node.has_error:
        return None
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            return node
        stack.extend(c for c in reversed(node.children) if c.has_error or c.is_missing)
    return tree.root_node


def parse_checked(source: bytes, where: str | Path) -> Tree:
    """Parse, raising :class:`NixSyntaxError` with ``file:line:col`` on the first error.

    tree-sitter finds the error; when nix is installed, its parser names the
    position and the reason (it is the one that matters at deploy time).
    """
    tree = parse(source)
    err = first_error(tree)
    if err is not None:
        from_nix = nix_parse_error(source)
        if from_nix is not None:
            line, col, message = from_nix
            raise NixSyntaxError(message, where=f"{where}:{line}:{col}", hint="fix the Nix syntax and run again")
        pos = position(err)
        what = f"missing {err.type!r}" if err.is_missing else "syntax error"
        snippet = _line(source, err.start_point[0]).strip()
        if shutil.which("nix-instantiate") is not None:  # nix parsed it: the grammar nixmig reads with lacks it
            raise NixSyntaxError(
                f"nixmig's Nix parser (tree-sitter-nix) cannot read this valid Nix near {snippet[:60]!r}",
                where=f"{where}:{pos}",
                hint="rewrite that construct plainly for nixmig, or edit this file by hand; please report it",
            )
        raise NixSyntaxError(
            f"{what} near {snippet[:60]!r}",
            where=f"{where}:{pos}",
            hint="fix the Nix syntax (nix-instantiate --parse FILE shows where)",
        )
    return tree


_NIX_POS = re.compile(r"at «stdin»:(\d+):(\d+)")


def nix_parse_error(source: bytes) -> tuple[int, int, str] | None:
    """(line, col, message) from `nix-instantiate --parse`, or None if nix is absent or happy."""
    if shutil.which("nix-instantiate") is None:
        return None
    proc = subprocess.run(
        ["nix-instantiate", "--parse", "-"], input=source, capture_output=True, timeout=60, check=False
    )
    if proc.returncode == 0:
        return None
    err = proc.stderr.decode("utf-8", "replace")
    m = _NIX_POS.search(err)
    first = next((ln.strip() for ln in err.splitlines() if ln.strip().startswith("error:")), "")
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), first.removeprefix("error:").strip() or "syntax error"


def _line(source: bytes, row: int) -> str:
    lines = source.split(b"\n")
    return lines[row].decode("utf-8", "replace") if row < len(lines) else ""


def text(node: Node) -> str:
    raw = node.text
    return raw.decode("utf-8") if raw is not None else ""


def descendants(root: Node) -> list[Node]:
    """``root`` and every named node under it (depth first, no order promised)."""
    out, stack = [], [root]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.named_children)
    return out
