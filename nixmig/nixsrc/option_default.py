"""A password held as the default of a module's own option (``dbPassword = mkOption { default = "..."; };``).

Homelab modules often declare their settings as options and keep the password as the default, read
where the module configures services: ``"${cfg.dbPassword}"`` with ``cfg = config.services.x`` a let of
the file, or ``config.services.x.dbPassword``. When nothing in the repository sets the option, every
such read is the literal, as a let-bound string's use is; patch edits each read as it would the literal
(patch.Imported, ``option=True``) and drops the default once no read is left
(:func:`unrecognised_reads` says what else may read it).

Pure: parsed files in, the reads out. An option declared twice, set anywhere (a binding of its path,
``mkDefault``/``mkForce`` included), or whose default is no plain string is not followed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixmig.nixsrc.lets import let_binding_value
from nixmig.nixsrc.model import Bind, FileModel, NixPath, _apply_parts, attr_names, decode_string, unparen
from nixmig.nixsrc.parse import text

if TYPE_CHECKING:
    from tree_sitter import Node


@dataclass(frozen=True)
class OptionDefault:
    file: str  # where the option is declared
    option: NixPath  # its path (``services.rave.outline.dbPassword``)
    bind: Bind  # ``default = "...";`` inside its mkOption
    literal: Node
    value: str


def _descendants(node: Node) -> Iterator[Node]:
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.named_children))


def _default_of(fm: FileModel, mk_option: Node) -> tuple[Bind, Node, str] | None:
    """The ``default = "literal";`` binding of an ``mkOption { ... }`` call."""
    _, args = _apply_parts(mk_option)
    attrs = unparen(args[-1]) if args else None
    if attrs is None or attrs.type != "attrset_expression":
        return None
    for b in fm.binds:
        if b.owner != attrs or b.node.parent is None or b.path[-1:] != ("default",):
            continue
        ap = b.node.child_by_field_name("attrpath")
        if ap is None or attr_names(ap) != ("default",):
            continue
        literal = unparen(b.node.child_by_field_name("expression") or b.value)
        value = decode_string(literal)
        return (b, literal, value) if value else None
    return None


def declared_defaults(models: Mapping[str, FileModel]) -> dict[NixPath, OptionDefault]:
    """Every option declared once in the repository, with a string default, that no module sets."""
    found: dict[NixPath, OptionDefault] = {}
    declarations: dict[NixPath, int] = {}
    for name, fm in models.items():
        for option, node in fm.options:
            declarations[option] = declarations.get(option, 0) + 1
            got = _default_of(fm, node)
            if got is not None and option:
                found[option] = OptionDefault(name, option, *got)
    set_somewhere = {b.path for fm in models.values() for b in fm.binds if b.exact}
    # a prefix bound to an expression (`services.x = common;`, `services.x = { inherit dbPassword; }` is an
    # attrset, but its inherit is no binding of the model) may set the option too: not followed
    opaque = {
        b.path
        for fm in models.values()
        for b in fm.binds
        if b.exact and unparen(b.value).type not in ("attrset_expression", "rec_attrset_expression")
    }
    inherits = {
        text(i)
        for fm in models.values()
        for n in _descendants(fm.root)
        if n.type in ("inherit", "inherit_from")
        for i in _descendants(n)
        if i.type == "identifier"
    }
    return {
        option: d
        for option, d in found.items()
        if declarations[option] == 1
        and option not in set_somewhere
        and not any(option[:k] in opaque for k in range(1, len(option)))
        and option[-1] not in inherits
    }


def config_path(fm: FileModel, node: Node) -> NixPath | None:
    """The option path a select reads: ``config.a.b`` -> (a, b); ``cfg.b`` with ``cfg = config.a;`` a let of
    the file bound once -> (a, b). None for anything else (a select with ``or``, another base)."""
    base, attrs = node.child_by_field_name("expression"), node.child_by_field_name("attrpath")
    if base is None or attrs is None or node.child_by_field_name("default") is not None:
        return None
    base = unparen(base)
    if base.type != "variable_expression":
        return None
    if text(base) == "config":
        return attr_names(attrs)
    bound = let_binding_value(fm.root, text(base))
    bound = unparen(bound) if bound is not None else None
    if bound is None or bound.type != "select_expression":
        return None
    inner_base, inner_attrs = bound.child_by_field_name("expression"), bound.child_by_field_name("attrpath")
    if (
        inner_base is None
        or inner_attrs is None
        or bound.child_by_field_name("default") is not None
        or unparen(inner_base).type != "variable_expression"
        or text(unparen(inner_base)) != "config"
    ):
        return None
    return attr_names(inner_attrs) + attr_names(attrs)


def default_reads(models: Mapping[str, FileModel]) -> dict[tuple[str, int], OptionDefault]:
    """(file, start of the select) -> the option default it reads, for every select of the tree."""
    declared = declared_defaults(models)
    if not declared:
        return {}
    names = {option[-1] for option in declared}
    out: dict[tuple[str, int], OptionDefault] = {}
    for name, fm in models.items():
        for n in _descendants(fm.root):
            if n.type != "select_expression":
                continue
            attrs = n.child_by_field_name("attrpath")
            if attrs is None or attr_names(attrs)[-1] not in names:
                continue
            path = config_path(fm, n)
            if path is not None and path in declared:
                out[(name, n.start_byte)] = declared[path]
    return out


def unrecognised_reads(models: Mapping[str, FileModel], option: NixPath) -> list[str]:
    """``FILE:LINE`` of what may read ``option`` beside the selects :func:`default_reads` found: a
    select ending in its name (and the tail of its path) whose base is no config path this module can
    tell (a function's argument, ``with``), ``inherit (x) name;``, a bare variable of that name not bound in
    its file (``with cfg; dbPassword``). An edit that drops the default leaves none of these reading it."""
    last = option[-1]
    out: list[str] = []
    for fm in models.values():
        if last.encode() not in fm.source:
            continue
        for n in _descendants(fm.root):
            if n.type == "select_expression":
                attrs = n.child_by_field_name("attrpath")
                chain = attr_names(attrs) if attrs is not None else ()
                if not chain or chain[-1] != last or option[-len(chain) :] != chain:
                    continue
                if config_path(fm, n) is None:
                    out.append(fm.where(n))
                continue
            inherited = n.type == "inherit_from" and any(
                c.type == "identifier" and text(c) == last for c in _descendants(n)
            )
            bare = n.type == "variable_expression" and text(n) == last and let_binding_value(fm.root, last) is None
            if inherited or bare:
                out.append(fm.where(n))
    return out
