"""Reading Nix for `nixmig patch`: one parsed file with its bindings, attrsets and string
literals indexed by attribute path (:class:`FileModel`, built by :func:`model`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nixmig.errors import NixSyntaxError
from nixmig.nixsrc.parse import descendants, parse_checked, text

if TYPE_CHECKING:
    from tree_sitter import Node

NixPath = tuple[str, ...]


def path_matches(pattern: NixPath, path: NixPath) -> bool:
    """``path`` is ``pattern`` where a ``"*"`` segment stands for any one name (``servers.*.requirePass``)."""
    return len(pattern) == len(path) and all(p in ("*", q) for p, q in zip(pattern, path, strict=True))


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


# lib's wrappers of one definition's value, by arity: ``x = lib.mkForce "v";`` defines x as "v" (a
# priority, an order or a condition around it); an edit of the value goes inside, keeping the wrapper
_VALUE_WRAPPERS = {"mkForce": 1, "mkDefault": 1, "mkOptionDefault": 1, "mkBefore": 1, "mkAfter": 1}
_VALUE_WRAPPERS |= {"mkOverride": 2, "mkOrder": 2, "mkIf": 2}


def unwrap(node: Node) -> Node:
    """A definition's value past parentheses and lib's wrappers (``lib.mkForce "v"`` -> ``"v"``)."""
    wrappers = _wrappers(node)
    return unparen(_apply_parts(wrappers[-1])[1][-1]) if wrappers else unparen(node)


def _wrappers(node: Node) -> list[Node]:
    """The wrapper applications :func:`unwrap` goes through, outermost first."""
    out: list[Node] = []
    node = unparen(node)
    while node.type == "apply_expression":
        name, args = _apply_parts(node)
        if _VALUE_WRAPPERS.get(name) != len(args):
            break
        out.append(node)
        node = unparen(args[-1])
    return out


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
    # written before a new binding's path: ("config",) for a full-form module's own attrset when its
    # config is set as `config.services.x = ...;` (no `config = { ... }` block to add bindings to)
    write_prefix: NixPath = ()


@dataclass(eq=False)
class Lit:
    """A string literal and the attribute path it is bound at (inside lists too)."""

    path: NixPath
    node: Node
    exact: bool
    bind: Bind | None  # the binding whose value is this string, if it is a direct value


@dataclass(eq=False)
class Embedded:
    """A NixOS module held as a value inside a file that is no NixOS module itself: an element of a
    ``nixosSystem { modules = [ ... ]; }`` list (``where`` "list"), the value of flake-parts'
    ``flake.modules.nixos.NAME`` or a flake's ``nixosModules.NAME`` ("deferred": a deferredModule, a
    function or an attrset), of a node of a colmena hive (``meta.nixpkgs`` beside it: "deferred"), or of
    another registry's ``*.nixos.NAME`` ("registry": its type unknown)."""

    node: Node  # the value as written (maybe parenthesized)
    where: str
    label: str  # its attribute path, or ``NAME.modules[i]``, for messages
    path: NixPath = ()  # where it sits in the file (the attribute path of the binding it is the value of)

    def function(self) -> Node | None:
        """The function that is the module (the innermost of a curried one, through let-in), if any."""
        return innermost_function(unparen(self.node))

    def attrset(self) -> Node | None:
        """The module's attrset when it is no function (``{ services.x = ...; }``)."""
        v = unparen(self.node)
        return v if v.type in ("attrset_expression", "rec_attrset_expression") else None


def innermost_function(fn: Node) -> Node | None:
    if fn.type != "function_expression":
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
    embedded: set[tuple[int, int, str]] = field(default_factory=set)  # ``modules``' nodes not walked yet (model)
    modules: list[Embedded] = field(default_factory=list)  # NixOS modules held as values (see Embedded)
    # a full-form module (a top-level `config`/`options`) that also sets options outside them (`services`):
    # NixOS rejects it ("unsupported attribute"), those keys
    stray_keys: list[str] = field(default_factory=list)

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

    def module_at(self, byte: int) -> Embedded | None:
        """The module held as a value that contains ``byte`` (None: none, or the file is the module)."""
        return next((m for m in self.modules if m.node.start_byte <= byte < m.node.end_byte), None)

    def path_in_module_value(self, start: int, end: int) -> NixPath | None:
        """The attribute path, from its module's root, of the innermost string or binding holding bytes
        [start, end) inside a NixOS module held as a value (see Embedded); None outside one."""
        if self.module_at(start) is None:
            return None
        lits = [x for x in self.lits if x.node.start_byte <= start and end <= x.node.end_byte]
        if lits:
            return min(lits, key=lambda x: x.node.end_byte - x.node.start_byte).path
        binds = [b for b in self.binds if b.value.start_byte <= start and end <= b.value.end_byte]
        return min(binds, key=lambda b: b.value.end_byte - b.value.start_byte).path if binds else None

    def module_function(self) -> Node | None:
        """The function that is the NixOS module: the file's top function or, for a curried module
        (``inputs: { config, ... }: { ... }``), the innermost function it returns (through let-in).
        In a file holding modules as values: that of its one module (None when it holds several)."""
        if self.modules:
            return self.modules[0].function() if len(self.modules) == 1 else None
        fn = top_expression(self.root)
        while fn is not None and fn.type == "let_expression":  # `let dbpass = "..."; in { pkgs, ... }: { ... }`
            body = fn.child_by_field_name("body")
            fn = unparen(body) if body is not None else None
        return innermost_function(fn) if fn is not None else None

    def function_formals(self) -> Node | None:
        fn = self.module_function()
        return fn.child_by_field_name("formals") if fn is not None else None

    def bare_attrset(self) -> Node | None:
        """The top attrset of a module that is no function (``{ services.x = ...; }``)."""
        if self.modules:
            return self.modules[0].attrset() if len(self.modules) == 1 else None
        top = top_expression(self.root)
        return top if top is not None and top.type in ("attrset_expression", "rec_attrset_expression") else None

    def bare_module_head(self) -> Node | None:
        """Where a bare module starts: its top attrset, or the ``let ... in`` / ``with lib;`` around it
        (``let pw = "..."; in { ... }``, no function either): a module's formals go before it."""
        if self.modules:
            return self.bare_attrset()
        top = top_expression(self.root)
        node = unparen(top) if top is not None else None
        while node is not None and node.type in ("let_expression", "with_expression"):
            body = node.child_by_field_name("body")
            node = unparen(body) if body is not None else None
        if node is None or node.type not in ("attrset_expression", "rec_attrset_expression"):
            return None
        return top


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
        fm.modules = embedded_modules(top)
        fm.embedded = {_key(m.node) for m in fm.modules}  # re-rooted where _walk meets them
        _walk_top(fm, top)
        _alias_let_containers(fm)
        if fm.modules:  # the file around them is no NixOS module: no config root of its own
            fm.roots = [r for r in fm.roots if fm.module_at(r.start_byte) is not None]
    return fm


# options whose whole value may be a let-bound attrset of containers (`virtualisation.oci-containers = {
# inherit containers; };`, `virtualisation.oci-containers.containers = containers;`)
_CONTAINER_SETS: frozenset[NixPath] = frozenset(
    {
        ("virtualisation", "oci-containers", "containers"),
        ("docker-containers",),
        ("virtualisation", "quadlet", "containers"),
    }
)


def _alias_let_containers(fm: FileModel) -> None:
    """A let attrset of containers given whole to a containers option (``inherit containers;`` inside
    ``virtualisation.oci-containers``, or ``...containers = containers;``): its bindings are that option's,
    walked again at its path (exact), and no longer as the let's (realcfg36/01). Only a let name bound
    once in the file, to an attrset, given to one option."""
    targets: dict[str, list[NixPath]] = {}
    for b in fm.binds:
        v = unparen(b.value)
        if b.exact and b.path in _CONTAINER_SETS and v.type == "variable_expression":
            targets.setdefault(v.text.decode() if v.text else "", []).append(b.path)
    for a in fm.attrsets:
        if not a.exact:
            continue
        for inh in bindings(a.node):
            if inh.type != "inherit":
                continue
            for attrs in (c for c in inh.named_children if c.type == "inherited_attrs"):
                for ident in attrs.named_children:
                    name = ident.text.decode() if ident.text else ""
                    if (*a.path, name) in _CONTAINER_SETS:
                        targets.setdefault(name, []).append((*a.path, name))
    if not targets:
        return
    lets: dict[str, list[Node]] = {}
    for n in descendants(fm.root):
        if n.type != "let_expression":
            continue
        for bset in (c for c in n.named_children if c.type == "binding_set"):
            for lb in (x for x in bset.named_children if x.type == "binding"):
                ap, ex = lb.child_by_field_name("attrpath"), lb.child_by_field_name("expression")
                if ap is not None and ex is not None and ap.named_child_count == 1:
                    lets.setdefault(attr_names(ap)[0], []).append(unparen(ex))
    for name, paths in targets.items():
        values = lets.get(name, [])
        if (
            len(paths) != 1
            or len(values) != 1
            or values[0].type not in ("attrset_expression", "rec_attrset_expression")
        ):
            continue
        value = values[0]

        def inside(node: Node, value: Node = value) -> bool:
            return value.start_byte <= node.start_byte and node.end_byte <= value.end_byte

        fm.binds = [b for b in fm.binds if not (b.path[:1] == ("<let>",) and inside(b.node))]
        fm.lits = [x for x in fm.lits if not (x.path[:1] == ("<let>",) and inside(x.node))]
        fm.attrsets = [x for x in fm.attrsets if not (x.path[:1] == ("<let>",) and inside(x.node))]
        fm.paths = [x for x in fm.paths if not (x[0][:1] == ("<let>",) and inside(x[1]))]
        _walk(fm, value, paths[0], True)


def _walk_top(fm: FileModel, node: Node) -> None:
    """Index a module: its option paths from the config root (path ()), exact."""
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
    dotted = [b for b in bindings(node) if b.type == "binding" and _names(b)[:1] == ("config",)]
    if dotted and all(len(_names(b)) > 1 for b in dotted):  # only `config.x.y = ...;`: the module's own
        fm.attrsets.append(AttrSet((), node, True, ("config",)))  # attrset is where `config.z` goes
        fm.roots.append(node)
    for b in bindings(node):
        if b.type != "binding":
            continue
        ap, ex = b.child_by_field_name("attrpath"), b.child_by_field_name("expression")
        if ap is None or ex is None:
            continue
        names = attr_names(ap)
        if names[0] == "config":
            path = names[1:]
            fm.binds.append(Bind(path, b, unwrap(ex), node, bool(path)))
            _walk(fm, ex, path, True)
        else:
            fm.binds.append(Bind(("<module>", *names), b, unwrap(ex), node, False))
            _walk(fm, ex, names, names[0] == "options")
            if names[0] not in _FULL_FORM_KEYS and names[0] not in fm.stray_keys:
                fm.stray_keys.append(names[0])


# what a module with a top-level `config` or `options` may hold beside them (lib/modules.nix)
_FULL_FORM_KEYS = frozenset(
    {"options", "config", "imports", "meta", "_file", "key", "disabledModules", "freeformType", "_class"}
)


def _names(b: Node) -> NixPath:
    ap = b.child_by_field_name("attrpath")
    return attr_names(ap) if ap is not None else ()


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
    if fm.embedded and _key(node) in fm.embedded:
        fm.embedded.discard(_key(node))  # walked once, as a module of its own
        _walk_top(fm, node)
        return
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
            bind = Bind(sub, b, unwrap(ex), node, exact)
            fm.binds.append(bind)
            if bind.value.type == "string_expression":
                _string(fm, bind.value, sub, exact, bind)
                for wrapper in _wrappers(ex):  # `mkIf cond "v"`, `mkOverride 10 "v"`: the other arguments
                    for a in _apply_parts(wrapper)[1][:-1]:
                        _walk(fm, a, sub, False)
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
            # (an mkOption inside another's type, `types.submodule { options.passwordFile = mkOption ...; }`,
            # is an option of each attribute of that one, not one at this path: 18G/03)
            inside = any(o.start_byte <= node.start_byte and node.end_byte <= o.end_byte for _, o in fm.options)
            if name == "mkOption" and path[:1] == ("options",) and not inside:
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


# the first attribute of a NixOS module's own bindings (what makes an attrset look like one)
_MODULE_KEYS = frozenset(
    {
        "age",
        "boot",
        "config",
        "containers",
        "documentation",
        "environment",
        "fileSystems",
        "hardware",
        "i18n",
        "imports",
        "networking",
        "nix",
        "nixpkgs",
        "options",
        "programs",
        "security",
        "services",
        "sops",
        "system",
        "systemd",
        "time",
        "users",
        "virtualisation",
    }
)
_MODULE_FORMALS = frozenset({"config", "lib", "pkgs", "modulesPath", "options"})


def _looks_like_module(value: Node) -> bool:
    """A function of a module's arguments, or an attrset (maybe a function's body) of NixOS options."""
    v = unparen(value)
    fn = innermost_function(v)
    if fn is not None:
        formals = fn.child_by_field_name("formals")
        names = {
            text(n)
            for f in (formals.named_children if formals else [])
            if f.type == "formal"
            for n in f.named_children[:1]
        }
        if names & _MODULE_FORMALS:
            return True
        body = fn.child_by_field_name("body")
        v = unparen(body) if body is not None else v
        while v.type in ("let_expression", "with_expression"):
            inner = v.child_by_field_name("body")
            if inner is None:
                return False
            v = unparen(inner)
    if v.type not in ("attrset_expression", "rec_attrset_expression"):
        return False
    firsts = set()
    for b in bindings(v):
        ap = b.child_by_field_name("attrpath") if b.type == "binding" else None
        if ap is not None:
            firsts.add(attr_names(ap)[0])
    return bool(firsts & _MODULE_KEYS)


def _slot(path: NixPath) -> str:
    """What holds a module value at ``path`` (see Embedded.where), "" for no such place."""
    segs = [s for s in path if not s.startswith("<")]
    segs = segs[1:] if segs[:1] == ["config"] else segs  # a full-form flake-parts module's config.flake...
    if len(segs) < 2 or segs[0] in _MODULE_KEYS:
        return ""  # an option of a NixOS module (documentation.nixos.*, system.nixos.*), not a registry
    if segs[-2] == "nixosModules" or segs[-3:-1] == ["modules", "nixos"]:
        return "deferred"
    return "registry" if segs[-2] == "nixos" and len(segs) >= 3 else ""


def _label(path: NixPath) -> str:
    return ".".join(
        s if s.replace("-", "").replace("_", "").isalnum() else f'"{s}"' for s in path if not s.startswith("<")
    )


def _is_hive(attrset: Node) -> bool:
    """A colmena hive: ``meta.nixpkgs`` beside the nodes (``meta = { nixpkgs = ...; }``, or dotted)."""
    for b in bindings(attrset):
        names = _names(b) if b.type == "binding" else ()
        if names[:2] == ("meta", "nixpkgs"):
            return True
        ex = b.child_by_field_name("expression") if names == ("meta",) else None
        meta = unparen(ex) if ex is not None else None
        if (
            meta is not None
            and meta.type in ("attrset_expression", "rec_attrset_expression")
            and any(_names(x)[:1] == ("nixpkgs",) for x in bindings(meta) if x.type == "binding")
        ):
            return True
    return False


def _is_nixops_network(attrset: Node) -> bool:
    """A NixOps network: ``network.*`` beside the machines, or a machine's module that sets
    ``deployment.*`` (targetEnv, targetHost: NixOps' per-machine options)."""
    for b in bindings(attrset):
        names = _names(b) if b.type == "binding" else ()
        if names[:1] == ("network",):
            return True
        ex = b.child_by_field_name("expression") if names else None
        body = unparen(ex) if ex is not None else None
        while body is not None and body.type == "function_expression":
            inner = body.child_by_field_name("body")
            body = unparen(inner) if inner is not None else None
        if (
            body is not None
            and body.type in ("attrset_expression", "rec_attrset_expression")
            and any(_names(x)[:1] == ("deployment",) for x in bindings(body) if x.type == "binding")
        ):
            return True
    return False


def embedded_modules(top: Node) -> list[Embedded]:
    """The NixOS modules held as values in a file (see Embedded); [] for a file that is a module."""
    out: list[Embedded] = []

    def visit(node: Node, path: NixPath) -> None:
        t = node.type
        if t in ("attrset_expression", "rec_attrset_expression"):
            hive = _is_hive(node) or _is_nixops_network(node)
            for b in bindings(node):
                ap = b.child_by_field_name("attrpath") if b.type == "binding" else None
                ex = b.child_by_field_name("expression") if ap is not None else None
                if ap is None or ex is None:
                    continue
                sub = path + attr_names(ap)
                node_name = len(sub) == len(path) + 1 and sub[-1] not in ("meta", "network")
                where = _slot(sub) or ("deferred" if hive and node_name else "")
                if where and _looks_like_module(ex):
                    out.append(Embedded(ex, where, _label(sub), sub))
                else:
                    visit(ex, sub)
            return
        if t == "apply_expression":
            name, args = _apply_parts(node)
            if (
                name == "nixosSystem"
                and args
                and unparen(args[-1]).type in ("attrset_expression", "rec_attrset_expression")
            ):
                for b in bindings(unparen(args[-1])):
                    ap = b.child_by_field_name("attrpath") if b.type == "binding" else None
                    ex = b.child_by_field_name("expression") if ap is not None else None
                    if (
                        ap is None
                        or ex is None
                        or attr_names(ap) != ("modules",)
                        or unparen(ex).type != "list_expression"
                    ):
                        continue
                    for i, e in enumerate(c for c in unparen(ex).named_children if c.type != "comment"):
                        if unparen(e).type in (
                            "function_expression",
                            "attrset_expression",
                            "rec_attrset_expression",
                        ) and _looks_like_module(e):
                            out.append(
                                Embedded(e, "list", f"{_label(path) or 'nixosSystem'}.modules[{i}]", (*path, "modules"))
                            )
                return
        for c in node.named_children:
            visit(c, path)

    visit(top, ())
    return out
