"""Reading Nix for `nixmig patch`: one parsed file with its bindings, attrsets and string
literals indexed by attribute path (:class:`FileModel`, built by :func:`model`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nixmig.errors import NixSyntaxError
from nixmig.nixsrc.parse import parse_checked, text

if TYPE_CHECKING:
    from tree_sitter import Node

NixPath = tuple[str, ...]
_WRAPPERS = frozenset(
    {"mkIf", "mkDefault", "mkForce", "mkOverride", "mkBefore", "mkAfter", "mkOrder", "mkOptionDefault"}
)


def _key(node: Node) -> tuple[int, int, str]:
    return (node.start_byte, node.end_byte, node.type)


def decode_string(node: Node) -> str | None:
    """The value of a double-quoted string literal; None if it interpolates anything."""
    if node.type != "string_expression":
        return None
    out: list[str] = []
    for c in node.named_children:
        if c.type == "interpolation":
            return None
        if c.type == "string_fragment":
            out.append(text(c))
        elif c.type == "escape_sequence":
            ch = text(c)[1:]
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(ch, ch))
        elif c.type == "dollar_escape":
            continue  # `\$`: the `$` follows as a fragment
    return "".join(out)


def _attr_name(attr: Node) -> str:
    if attr.type == "string_expression":
        value = decode_string(attr)
        return value if value is not None else text(attr)
    return text(attr)


def attr_names(attrpath: Node) -> NixPath:
    return tuple(_attr_name(a) for a in attrpath.named_children)


def _apply_parts(node: Node) -> tuple[str, list[Node]]:
    """(function name without `lib.`/`builtins.`, arguments in order) of a curried application."""
    args: list[Node] = []
    cur: Node | None = node
    while cur is not None and cur.type == "apply_expression":
        arg = cur.child_by_field_name("argument")
        if arg is not None:
            args.append(arg)
        cur = cur.child_by_field_name("function")
    args.reverse()
    name = ""
    if cur is not None:
        if cur.type == "variable_expression":
            name = text(cur)
        elif cur.type == "select_expression":
            ap = cur.child_by_field_name("attrpath")
            name = attr_names(ap)[-1] if ap is not None else ""
    return name, args


def top_expression(root: Node) -> Node | None:
    """The file's expression, after any comments before it (a comment is a named node too)."""
    return next((c for c in root.named_children if c.type != "comment"), None)


def unparen(node: Node) -> Node:
    while node.type == "parenthesized_expression" and node.named_children:
        node = node.named_children[0]
    return node


def bindings(attrset: Node) -> list[Node]:
    return [
        b
        for bset in attrset.named_children
        if bset.type == "binding_set"
        for b in bset.named_children
        if b.type in ("binding", "inherit", "inherit_from")
    ]


@dataclass(eq=False)
class Bind:
    """``attrpath = expression;`` with the full attribute path from the file's root."""

    path: NixPath
    node: Node
    value: Node
    owner: Node  # the attrset holding the binding
    exact: bool  # the path is an option path (not inside a let, a function argument ...)


@dataclass(eq=False)
class AttrSet:
    path: NixPath
    node: Node
    exact: bool


@dataclass(eq=False)
class Lit:
    """A string literal and the attribute path it is bound at (inside lists too)."""

    path: NixPath
    node: Node
    exact: bool
    bind: Bind | None  # the binding whose value is this string, if it is a direct value


@dataclass(eq=False)
class FileModel:
    name: str
    source: bytes
    root: Node
    binds: list[Bind] = field(default_factory=list)
    attrsets: list[AttrSet] = field(default_factory=list)
    lits: list[Lit] = field(default_factory=list)
    paths: list[tuple[NixPath, Node]] = field(default_factory=list)
    options: list[tuple[NixPath, Node]] = field(default_factory=list)  # declared with mkOption
    roots: list[Node] = field(default_factory=list)  # attrsets at the config root (path ())

    def line_col(self, byte: int) -> tuple[int, int]:
        line = self.source.count(b"\n", 0, byte) + 1
        col = byte - (self.source.rfind(b"\n", 0, byte) + 1) + 1
        return line, col

    def where(self, node: Node | int) -> str:
        byte = node if isinstance(node, int) else node.start_byte
        line, col = self.line_col(byte)
        return f"{self.name}:{line}:{col}"

    def text(self, node: Node) -> str:
        return self.source[node.start_byte : node.end_byte].decode("utf-8")

    def root_of(self, node: Node) -> tuple[Node, Node] | None:
        """(config-root attrset, its binding that contains ``node``)."""
        roots = {_key(r) for r in self.roots}
        child = node
        cur = node.parent
        while cur is not None:
            if cur.type in ("attrset_expression", "rec_attrset_expression") and _key(cur) in roots:
                b = child
                while b.parent is not None and b.type not in ("binding", "inherit", "inherit_from"):
                    b = b.parent
                return cur, b if b.type == "binding" else child
            if cur.type in ("binding", "inherit", "inherit_from"):
                child = cur
            cur = cur.parent
        return None

    def module_function(self) -> Node | None:
        """The function that is the NixOS module: the file's top function or, for a curried module
        (``inputs: { config, ... }: { ... }``), the innermost function it returns (through let-in)."""
        fn = top_expression(self.root)
        if fn is None or fn.type != "function_expression":
            return None
        while True:
            body = fn.child_by_field_name("body")
            b = unparen(body) if body is not None else None
            while b is not None and b.type == "let_expression":
                inner = b.child_by_field_name("body")
                b = unparen(inner) if inner is not None else None
            if b is None or b.type != "function_expression":
                return fn
            fn = b

    def function_formals(self) -> Node | None:
        fn = self.module_function()
        return fn.child_by_field_name("formals") if fn is not None else None

    def bare_attrset(self) -> Node | None:
        """The top attrset of a module that is no function (``{ services.x = ...; }``)."""
        top = top_expression(self.root)
        return top if top is not None and top.type in ("attrset_expression", "rec_attrset_expression") else None


def model(name: str, source: bytes) -> FileModel:
    """Parse one file (NixSyntaxError with file:line:col) and index its bindings and literals."""
    try:
        source.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = source.count(b"\n", 0, exc.start) + 1
        col = exc.start - source.rfind(b"\n", 0, exc.start)
        raise NixSyntaxError("not valid UTF-8", where=f"{name}:{line}:{col}", hint="Nix files are UTF-8") from None
    tree = parse_checked(source, name)
    fm = FileModel(name, source, tree.root_node)
    top = top_expression(tree.root_node)
    if top is not None:
        _walk_top(fm, top)
    return fm


def _walk_top(fm: FileModel, node: Node) -> None:
    node = unparen(node)
    while node.type in ("function_expression", "let_expression", "with_expression"):
        if node.type == "let_expression":
            _walk_let(fm, node)
        body = node.child_by_field_name("body")
        if body is None:
            return
        node = unparen(body)
    if node.type not in ("attrset_expression", "rec_attrset_expression"):
        _walk(fm, node, (), True)
        return
    full_form = False
    for b in bindings(node):
        ap = b.child_by_field_name("attrpath") if b.type == "binding" else None
        if ap is not None and attr_names(ap)[:1] in (("options",), ("config",)):
            full_form = True
    if not full_form:
        _walk(fm, node, (), True)
        return
    # { options = ...; config = ...; imports = ...; }: option paths are those under `config`
    fm.attrsets.append(AttrSet(("<module>",), node, False))
    for b in bindings(node):
        if b.type != "binding":
            continue
        ap, ex = b.child_by_field_name("attrpath"), b.child_by_field_name("expression")
        if ap is None or ex is None:
            continue
        names = attr_names(ap)
        if names[0] == "config":
            path = names[1:]
            fm.binds.append(Bind(path, b, ex, node, bool(path)))
            _walk(fm, ex, path, True)
        else:
            fm.binds.append(Bind(("<module>", *names), b, ex, node, False))
            _walk(fm, ex, names, names[0] == "options")


def _walk_let(fm: FileModel, node: Node) -> None:
    for bset in (c for c in node.named_children if c.type == "binding_set"):
        for b in bset.named_children:
            if b.type == "binding":
                ap, ex = b.child_by_field_name("attrpath"), b.child_by_field_name("expression")
                if ap is not None and ex is not None:
                    _walk(fm, ex, ("<let>", *attr_names(ap)), False)


def _string(fm: FileModel, node: Node, path: NixPath, exact: bool, bind: Bind | None) -> None:
    fm.lits.append(Lit(path, node, exact, bind))
    for c in node.named_children:
        if c.type == "interpolation":
            for e in c.named_children:
                _walk(fm, e, path, False)


def _walk(fm: FileModel, node: Node, path: NixPath, exact: bool) -> None:
    t = node.type
    if t in ("attrset_expression", "rec_attrset_expression"):
        fm.attrsets.append(AttrSet(path, node, exact))
        if exact and path == ():
            fm.roots.append(node)
        for b in bindings(node):
            if b.type != "binding":
                continue
            ap, ex = b.child_by_field_name("attrpath"), b.child_by_field_name("expression")
            if ap is None or ex is None:
                continue
            sub = path + attr_names(ap)
            bind = Bind(sub, b, ex, node, exact)
            fm.binds.append(bind)
            if ex.type == "string_expression":
                _string(fm, ex, sub, exact, bind)
            else:
                _walk(fm, ex, sub, exact)
    elif t == "let_expression":
        _walk_let(fm, node)
        body = node.child_by_field_name("body")
        if body is not None:
            _walk(fm, body, path, exact)
    elif t == "function_expression":
        body = node.child_by_field_name("body")
        if body is not None:
            _walk(fm, body, path, exact)
    elif t == "with_expression":
        body = node.child_by_field_name("body")
        for c in node.named_children:
            _walk(fm, c, path, exact and c == body)
    elif t == "parenthesized_expression":
        for c in node.named_children:
            _walk(fm, c, path, exact)
    elif t == "apply_expression":
        name, args = _apply_parts(node)
        if name in _WRAPPERS and args:
            for a in args[:-1]:
                _walk(fm, a, path, False)
            _walk(fm, args[-1], path, exact)
        elif name == "mkMerge" and args:
            _walk(fm, args[-1], path, exact)
        else:
            if name == "mkOption" and path[:1] == ("options",):
                fm.options.append((path[1:], node))
            fn: Node | None = node
            while fn is not None and fn.type == "apply_expression":
                fn = fn.child_by_field_name("function")
            if fn is not None and fn.type not in ("variable_expression", "select_expression"):
                _walk(fm, fn, path, False)  # `(x: ...) arg`: the function's body may hold literals too
            for a in args:
                _walk(fm, a, path, False)
    elif t == "list_expression":
        for c in node.named_children:
            _walk(fm, c, path, exact)
    elif t == "string_expression":
        _string(fm, node, path, exact, None)
    elif t == "path_expression":
        fm.paths.append((path, node))
    elif t in ("binary_expression", "if_expression"):
        cond = node.child_by_field_name("condition")
        for c in node.named_children:
            _walk(fm, c, path, exact and c != cond)
    else:
        for c in node.named_children:
            _walk(fm, c, path, False)
