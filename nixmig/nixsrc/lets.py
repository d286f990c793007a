"""A password bound once in a ``let`` and used many times (``let pw = "..."; in { ... = pw; }``).

Pure: a parsed file in, its let-bound string literals and their uses out, and the value of an
expression that only a let literal makes a string (``pw``, ``"postgres://u:${pw}@db/x"``).
patch replaces each use it has an edit for, and removes the binding only when no use is left;
a use it cannot replace is said, with its line (the literal stays, and so does the refusal).
A name bound in two lets of one file, or shadowed by a function argument, is not resolved.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixmig.nixsrc.model import attr_names, decode_string, unparen
from nixmig.nixsrc.parse import text

if TYPE_CHECKING:
    from tree_sitter import Node


@dataclass(frozen=True)
class LetLiteral:
    name: str
    binding: Node  # `name = "value";`
    literal: Node  # the string
    value: str
    uses: tuple[Node, ...]  # every `name` the file reads (variable_expression nodes)


def _walk(node: Node) -> Iterator[Node]:
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.named_children))


def _formal_names(root: Node) -> set[str]:
    out: set[str] = set()
    for n in _walk(root):
        if n.type == "formal":
            name = n.child_by_field_name("name")
            if name is not None:
                out.add(text(name))
        elif n.type == "function_expression":
            universal = n.child_by_field_name("universal")
            if universal is not None:
                out.add(text(universal))
    return out


def let_literals(
    root: Node, fields: Mapping[str, str] | None = None, selects: Mapping[int, str] | None = None
) -> dict[str, LetLiteral]:
    """Every ``name = "literal";`` of a let in the file, with its uses; ambiguous names left out. With
    ``fields`` (see :func:`resolve`), also a string only they, ``selects`` and such literals fill
    (``url = "postgres://u:pw@${ips.db}/x";``), as the value it evaluates to."""
    found: dict[str, list[tuple[Node, Node, str]]] = {}
    computed: list[tuple[str, Node, Node]] = []
    for n in _walk(root):
        if n.type != "let_expression":
            continue
        for bset in (c for c in n.named_children if c.type == "binding_set"):
            for b in bset.named_children:
                if b.type != "binding":
                    continue
                ap, ex = b.child_by_field_name("attrpath"), b.child_by_field_name("expression")
                if ap is None or ex is None or ap.named_child_count != 1:
                    continue
                lit = unparen(ex)
                value = decode_string(lit)
                if value is not None and value:
                    found.setdefault(attr_names(ap)[0], []).append((b, lit, value))
                elif fields is not None and lit.type == "string_expression":
                    computed.append((attr_names(ap)[0], b, lit))
                    found.setdefault(attr_names(ap)[0], [])  # counted: a name bound twice is ambiguous
    shadowed = _formal_names(root)
    variables: dict[str, list[Node]] = {}
    for n in _walk(root):
        if n.type == "variable_expression":
            variables.setdefault(text(n), []).append(n)
    out = {
        name: LetLiteral(name, b, lit, value, tuple(variables.get(name, ())))
        for name, hits in found.items()
        if len(hits) == 1 and name not in shadowed and not any(c[0] == name for c in computed)
        for b, lit, value in hits
    }
    for name, b, lit in computed:
        if found[name] or name in shadowed or sum(c[0] == name for c in computed) != 1:
            continue
        got = resolve(lit, out, fields, selects)
        if got is not None and got[0]:
            out[name] = LetLiteral(name, b, lit, got[0], tuple(variables.get(name, ())))
    return out


def let_binding_at(root: Node, byte: int) -> tuple[str, Node] | None:
    """(name, binding) of the one-name let binding whose text holds ``byte`` (``let initSql = ''...'';``)."""
    node: Node | None = root.descendant_for_byte_range(byte, byte + 1) if byte >= 0 else None
    while node is not None and not (
        node.type == "binding"
        and node.parent is not None
        and node.parent.parent is not None
        and node.parent.parent.type == "let_expression"
    ):
        node = node.parent
    ap = node.child_by_field_name("attrpath") if node is not None else None
    if node is None or ap is None or ap.named_child_count != 1:
        return None
    return text(ap), node


def binds_name(attrset: Node, name: str) -> bool:
    """The attrset (``rec { ... }``) binds ``name`` itself (``name = ...;``)."""
    return any(
        b.type == "binding" and (ap := b.child_by_field_name("attrpath")) is not None and attr_names(ap) == (name,)
        for bset in attrset.named_children
        if bset.type == "binding_set"
        for b in bset.named_children
    )


def _let_bindings(root: Node, name: str) -> tuple[list[Node], int] | None:
    """The expressions the file's lets bind ``name`` to and how often it is read (``inherit name;`` counts
    twice); None when a ``rec`` attrset binds it too (which one a use reads is not this walk's)."""
    hits: list[Node] = []
    uses = 0
    for n in _walk(root):
        if n.type == "rec_attrset_expression" and binds_name(n, name):
            return None
        if n.type == "let_expression":
            for bset in (c for c in n.named_children if c.type == "binding_set"):
                for b in bset.named_children:
                    ap, ex = b.child_by_field_name("attrpath"), b.child_by_field_name("expression")
                    if b.type == "binding" and ap is not None and ex is not None and attr_names(ap) == (name,):
                        hits.append(ex)
        elif n.type == "variable_expression" and text(n) == name:
            uses += 1
        elif n.type == "inherit" and any(text(a) == name for a in _walk(n) if a.type == "identifier"):
            uses += 2  # `inherit initSql;`: read elsewhere too
    return hits, uses


def let_binding_value(root: Node, name: str) -> Node | None:
    """The expression ``name`` is bound to in a let of the file, when the file binds it once (in lets and
    ``rec`` attrsets) and no function argument shadows it; however often it is read."""
    found = _let_bindings(root, name)
    if found is None or len(found[0]) != 1 or name in _formal_names(root):
        return None
    return found[0][0]


def let_expression(root: Node, name: str) -> Node | None:
    """The expression ``name`` is bound to in a let of the file (``let initSql = ''...''; in``), when the
    file binds it once, no function argument shadows it and the file reads it exactly once: an edit of
    that expression changes no other use."""
    found = _let_bindings(root, name)
    if found is None or len(found[0]) != 1 or found[1] != 1 or name in _formal_names(root):
        return None
    return found[0][0]


def resolve(
    node: Node,
    lets: dict[str, LetLiteral],
    fields: Mapping[str, str] | None = None,
    selects: Mapping[int, str] | None = None,
) -> tuple[str, list[Node]] | None:
    """The string ``node`` evaluates to when only let literals are interpolated, with the variable
    nodes it read; None when anything else is interpolated or it is no string. ``fields``: the string
    fields of let attrsets (``ips.db`` -> "10.0.0.3", shapes/let_script.fields), read where interpolated
    (``"postgres://u:pw@${ips.db}/x"``) but never returned as read: their bindings are no password's,
    and stay whatever the edits replace. ``selects``: the start of a select node -> the string it reads
    (a string of a plain file the file imports, patch.Imported): read where interpolated
    (``"postgres://u:${secrets.pw}@db/x"``) and returned as read, as a let variable is."""
    node = unparen(node)
    if node.type == "variable_expression":
        let = lets.get(text(node))
        return (let.value, [node]) if let is not None else None
    if node.type != "string_expression":
        return None
    out: list[str] = []
    used: list[Node] = []
    for c in node.named_children:
        if c.type == "interpolation":
            inner = [x for x in c.named_children if x.type != "comment"]
            if len(inner) == 1 and inner[0].type == "select_expression" and fields:
                key = "".join(text(inner[0]).split())
                if key in fields:
                    out.append(fields[key])
                    continue
            sel = unparen(inner[0]) if len(inner) == 1 else None
            is_select = sel is not None and sel.type == "select_expression"
            read = selects.get(sel.start_byte) if selects and sel is not None and is_select else None
            if sel is not None and read is not None:
                out.append(read)
                used.append(sel)
                continue
            if len(inner) != 1 or inner[0].type != "variable_expression" or text(inner[0]) not in lets:
                return None
            out.append(lets[text(inner[0])].value)
            used.append(inner[0])
        elif c.type == "string_fragment":
            out.append(text(c))
        elif c.type == "escape_sequence":
            ch = text(c)[1:]
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(ch, ch))
    return "".join(out), used
