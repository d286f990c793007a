"""tree-sitter-nix, loaded once, with syntax errors reported as line:col."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nixmig.errors import NixSyntaxError

if TYPE_CHECKING:
    from tree_sitter import Node, Parser, Tree


@functools.cache
def _parser() -> Parser:
    import tree_sitter_nix
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_nix.language()))


def parse(source: bytes) -> Tree:
    """Parse Nix source. The tree may contain ERROR / MISSING nodes; see :func:`first_error`."""
    return _parser().parse(source)


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
    """Parse, raising :class:`NixSyntaxError` with ``file:line:col`` on the first error."""
    tree = parse(source)
    err = first_error(tree)
    if err is not None:
        pos = position(err)
        what = f"missing {err.type!r}" if err.is_missing else "syntax error"
        snippet = _line(source, err.start_point[0]).strip()
        raise NixSyntaxError(
            f"{what} near {snippet[:60]!r}",
            where=f"{where}:{pos}",
            hint="fix the Nix syntax (nix-instantiate --parse FILE shows it too)",
        )
    return tree


def _line(source: bytes, row: int) -> str:
    lines = source.split(b"\n")
    return lines[row].decode("utf-8", "replace") if row < len(lines) else ""


def text(node: Node) -> str:
    raw = node.text
    return raw.decode("utf-8") if raw is not None else ""
