"""Byte edits of Nix sources: :class:`Edit`, applying edits (the secret masked for a diff), and
:class:`Edits`, which collects a plan's edits (bindings inserted or removed, list elements and
function formals added) in the layout of the code around them."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixmig.nixsrc.errors import PatchError
from nixmig.nixsrc.model import Embedded, FileModel, bindings
from nixmig.nixsrc.parse import descendants, text
from nixmig.sensitive import MASK

if TYPE_CHECKING:
    from tree_sitter import Node

# the arguments the NixOS module system passes; a function taking none of them is no module
MODULE_ARGS = frozenset({"config", "lib", "pkgs", "options", "modulesPath", "utils", "specialArgs", "nixosConfig"})
MAX_LINE = 100  # a one-line list that would grow past this is rewritten one element per line


@dataclass(frozen=True)
class Edit:
    """Replace bytes [start, end) of ``file`` (original offsets) with ``replacement``."""

    file: str
    start: int
    end: int
    replacement: bytes
    explanation: str
    line: int = 0
    col: int = 0
    # part of the stage config (deploy 1): only what declares the agenix secret
    stage: bool = False

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def _sole_let_binding(binding: Node) -> tuple[Node, Node] | None:
    """(the let, its body) when ``binding`` is the only thing its ``let ... in`` binds (no comment, no other
    binding or inherit): removing it leaves ``let in``, valid but noise, so the let goes with it."""
    bset = binding.parent
    let = bset.parent if bset is not None and bset.type == "binding_set" else None
    if let is None or let.type != "let_expression" or bset is None or bset.named_child_count != 1:
        return None
    if any(c.type == "comment" for c in let.named_children):
        return None
    body = let.child_by_field_name("body")
    return (let, body) if body is not None else None


def settle(edits: Sequence[Edit], sources: Mapping[str, bytes]) -> list[Edit]:
    """An insertion that falls inside a span another edit removes (after a binding that is itself
    removed, e.g. a dotted ``environment.URL = ...;`` as the service's last binding) moves to the
    start of that span: the text it anchored on is gone, the place is the same."""
    spans = [(e.file, e.start, e.end) for e in edits if e.end > e.start]
    out: list[Edit] = []
    for e in edits:
        if e.start == e.end:
            for f, s, t in spans:
                if f == e.file and s < e.start < t:
                    text = e.replacement
                    if sources[f][s - 1 : s] == b"\n" and text.startswith(b"\n"):
                        text = text[1:] + b"\n"  # the removed lines were whole lines: so is this one
                    e = Edit(e.file, s, s, text, e.explanation, e.line, e.col, e.stage)
                    break
        out.append(e)
    return out


def masked(src: bytes, a: int, b: int, spans: Sequence[tuple[int, int]]) -> bytes:
    out = bytearray()
    pos = a
    for s, e in sorted(spans):
        s, e = max(s, a), min(e, b)
        if s >= e or s < pos:
            continue
        out += src[pos:s] + MASK.encode()
        pos = e
    out += src[pos:b]
    return bytes(out)


def apply(src: bytes, edits: Sequence[Edit], spans: Sequence[tuple[int, int]] = ()) -> bytes:
    out = bytearray()
    pos = 0
    for e in sorted(edits, key=lambda e: (e.start, e.end)):
        if e.start < pos:
            raise PatchError(f"overlapping edits at byte {e.start}", where=e.file, hint="a bug in nixmig: report it")
        out += masked(src, pos, e.start, spans) + e.replacement
        pos = e.end
    out += masked(src, pos, len(src), spans)
    return bytes(out)


def apply_edits(source: bytes, edits: Sequence[Edit]) -> bytes:
    """``source`` with ``edits`` applied (all offsets are into ``source``); other bytes are kept."""
    return apply(source, edits)


def _line_start(src: bytes, pos: int) -> int:
    return src.rfind(b"\n", 0, pos) + 1


def _line_end(src: bytes, pos: int) -> int:
    end = src.find(b"\n", pos)
    return len(src) if end == -1 else end


def _indent_of(src: bytes, node: Node) -> str:
    start = _line_start(src, node.start_byte)
    head = src[start : node.start_byte].decode("utf-8")
    return head[: len(head) - len(head.lstrip())]


def reindent(snippet: str, indent: str) -> str:
    """Prefix every non-empty line with ``indent``."""
    return "\n".join(indent + ln if ln else ln for ln in snippet.split("\n"))


def _rest_of_line_is_blank(src: bytes, pos: int) -> bool:
    rest = src[pos : _line_end(src, pos)].strip()
    return not rest or rest.startswith(b"#")


class Edits:
    """Collects edits for one plan, with original line:col for each."""

    def __init__(self, models: Mapping[str, FileModel]):
        self.models = models
        self.items: list[Edit] = []
        self.staging = False  # edits added while True belong to the stage config
        self.modules = imported_modules(models)  # files an `imports` list names and no one calls
        self.given_module_args = called_with_module_args(models)  # `import ./x.nix { inherit config lib pkgs; }`
        self.formals_refused: dict[str, tuple[int, str]] = {}  # file -> (line, why) when ensure_formals said no

    def add(self, fm: FileModel, start: int, end: int, replacement: str, why: str, at: Node | None = None) -> None:
        line, col = fm.line_col(at.start_byte if at is not None else start)
        self.items.append(Edit(fm.name, start, end, replacement.encode(), why, line, col, self.staging))

    def replace_node(self, fm: FileModel, node: Node, replacement: str, why: str) -> None:
        """Replace ``node``'s bytes; inside a span another edit already rewrites (a list written
        out one element per line keeps its elements' bytes), the change goes into that edit."""
        old = fm.source[node.start_byte : node.end_byte]
        for i, e in enumerate(self.items):
            if e.file != fm.name or e.end <= node.start_byte or e.start >= node.end_byte:
                continue
            if not (e.start <= node.start_byte and node.end_byte <= e.end) or e.replacement.count(old) != 1:
                raise PatchError(f"overlapping edits at byte {node.start_byte}", where=fm.name, hint="report it")
            self.items[i] = Edit(
                e.file,
                e.start,
                e.end,
                e.replacement.replace(old, replacement.encode()),
                f"{e.explanation}; {why}",
                e.line,
                e.col,
                e.stage,
            )
            return
        self.add(fm, node.start_byte, node.end_byte, replacement, why, at=node)

    def insert_binding(self, fm: FileModel, attrset: Node, snippet: str, why: str, after: Node | None = None) -> None:
        """Add ``snippet`` (one or more bindings) to ``attrset``, after ``after`` or its last binding."""
        src = fm.source
        snippet = snippet.strip("\n")
        existing = bindings(attrset)
        if not existing:
            open_indent = _indent_of(src, attrset)
            close = attrset.end_byte - 1
            inner = open_indent + "  "
            between = src[attrset.start_byte + 1 : close]
            if b"\n" in between:  # `{\n  # comment\n}`: a line of its own before the brace
                at = _line_start(src, close)
                self.add(fm, at, at, reindent(snippet, inner) + "\n", why)
            else:
                self.add(fm, attrset.start_byte + 1, close, "\n" + reindent(snippet, inner) + "\n" + open_indent, why)
            return
        anchor = after if after is not None else existing[-1]
        close = attrset.end_byte - 1
        gap = src[anchor.end_byte : close]
        if "\n" in snippet and anchor == existing[-1] and not gap.strip() and b"\n" not in gap:
            # a one-line attrset (compose2nix: `serviceConfig = { Restart = ...; };`) given several lines:
            # they go on lines of their own, indented, and the brace closes on its own line
            open_indent = _indent_of(src, attrset)
            self.add(fm, anchor.end_byte, close, "\n" + reindent(snippet, open_indent + "  ") + "\n" + open_indent, why)
            return
        if not _rest_of_line_is_blank(src, anchor.end_byte) or ("\n" not in snippet and _same_line(src, anchor)):
            self.add(fm, anchor.end_byte, anchor.end_byte, " " + snippet, why)
            return
        at = _line_end(src, anchor.end_byte)
        self.add(fm, at, at, "\n" + reindent(snippet, _indent_of(src, anchor)), why)

    def remove_binding(self, fm: FileModel, binding: Node, why: str) -> None:
        src = fm.source
        whole = _sole_let_binding(binding)
        if whole is not None:  # `let pw = "...";\nin\n{ ... }`: the let goes with its only binding
            let, body = whole
            start = _line_start(src, let.start_byte)
            start = start if not src[start : let.start_byte].strip() else let.start_byte
            end = _line_start(src, body.start_byte)
            end = end if not src[end : body.start_byte].strip() and end > let.start_byte else body.start_byte
            self.add(fm, start, end, "", why, at=binding)
            return
        start = _line_start(src, binding.start_byte)
        alone_before = not src[start : binding.start_byte].strip()
        if alone_before and _rest_of_line_is_blank(src, binding.end_byte):
            end = _line_end(src, binding.end_byte)
            self.add(fm, start, min(end + 1, len(src)), "", why, at=binding)
            return
        end = binding.end_byte
        while end < len(src) and src[end : end + 1] in (b" ", b"\t"):
            end += 1
        self.add(fm, binding.start_byte, end, "", why)

    def append_element(self, fm: FileModel, lst: Node, element: str, why: str) -> None:
        self.append_elements(fm, lst, [element], why)

    def append_elements(self, fm: FileModel, lst: Node, elements: Sequence[str], why: str) -> None:
        """Add ``elements`` at the end of the list literal ``lst``, in its layout (one edit)."""
        src = fm.source
        elems = list(lst.named_children)
        if not elems:
            self.add(fm, lst.start_byte + 1, lst.end_byte - 1, f" {' '.join(elements)} ", why)
            return
        last = elems[-1]
        if src.count(b"\n", lst.start_byte, lst.end_byte) == 0:
            line = src[_line_start(src, lst.start_byte) : _line_end(src, lst.end_byte)]
            added = sum(len(e) + 1 for e in elements)
            if len(line) + added <= MAX_LINE or any(e.type == "comment" for e in lst.children):
                self.add(fm, last.end_byte, last.end_byte, "".join(f" {e}" for e in elements), why)
                return
            # too long for one line: one element per line (the elements' bytes are kept)
            indent = _indent_of(src, lst)
            items = [fm.text(e) for e in elems] + list(elements)
            body = "".join(f"\n{indent}  {it}" for it in items)
            self.add(fm, lst.start_byte, lst.end_byte, f"[{body}\n{indent}]", why, at=last)
        else:
            self.add(fm, last.end_byte, last.end_byte, "".join("\n" + _indent_of(src, last) + e for e in elements), why)

    def can_have_formals(self, fm: FileModel) -> bool:
        """ensure_formals would succeed: a module function (or a bare attrset module) nixmig may give
        more arguments, not a function of other arguments someone calls. In a file holding modules as
        values: each of them can have them."""
        if fm.modules:
            return all(self._value_formals(fm, m, ("config", "lib", "pkgs"), "", dry=True) for m in fm.modules)
        formals = fm.function_formals()
        if formals is None:
            return fm.bare_module_head() is not None and fm.module_function() is None
        have = {text(n) for f in formals.named_children if f.type == "formal" for n in f.named_children[:1]}
        return not have or bool(have & MODULE_ARGS) or self._module_with_ellipsis(fm, formals)

    def _module_with_ellipsis(self, fm: FileModel, formals: Node) -> bool:
        """`{ username, ... }:` taking specialArgs only: a module when an `imports` list names the file
        (and nothing calls it with arguments), so config, lib and pkgs can join its formals."""
        ellipsis = any(c.type == "ellipses" for c in formals.named_children)
        return ellipsis and (fm.name in self.modules or fm.name in self.given_module_args)

    def ensure_formals(self, fm: FileModel, names: Sequence[str], why: str) -> bool:
        """Add missing names to the module's `{ ... }:` formals (the inner function of a curried module);
        a bare attrset module becomes a function of them. False when the file is neither.

        In a file holding NixOS modules as values (model.Embedded), the modules given them are those
        holding an edit that uses one of ``names``; False when such an edit is in none of them."""
        if fm.modules:
            users: list[Embedded] = []
            for e in self.items:
                if e.file != fm.name or not any(re.search(rb"\b%s\b" % n.encode(), e.replacement) for n in names):
                    continue
                m = fm.module_at(e.start)
                if m is None:
                    labels = ", ".join(x.label for x in fm.modules)
                    self.formals_refused[fm.name] = (
                        e.line,
                        f"new code here needs {', '.join(names)} outside the NixOS modules this file holds as "
                        f"values ({labels}): nixmig cannot give them; by hand",
                    )
                    return False
                if m not in users:
                    users.append(m)
            return all(self._value_formals(fm, m, names, why, dry=True) for m in users) and all(
                self._value_formals(fm, m, names, why) for m in users
            )
        formals = fm.function_formals()
        if formals is None:
            fn = fm.module_function()
            ignored = fn.child_by_field_name("universal") if fn is not None else None
            if fn is not None and ignored is not None and text(ignored) == "_":
                # `_: { ... }`: a module that ignores its arguments (the module system passes an attrset
                # holding config, lib, pkgs); `_` read in its body (a name like any other) stays bound
                body = fn.child_by_field_name("body")
                reads = body is not None and any(
                    n.type == "variable_expression" and text(n) == "_" for n in descendants(body)
                )
                head = "{ " + ", ".join([*names, "..."]) + " }"
                at = (ignored.start_byte, ignored.start_byte) if reads else (ignored.start_byte, ignored.end_byte)
                self.add(fm, at[0], at[1], head + ("@" if reads else ""), why)
                return True
            bare = fm.bare_module_head()  # the attrset, or the `let ... in` around it
            if bare is None or fn is not None:
                return False
            self.add(fm, bare.start_byte, bare.start_byte, "{ " + ", ".join([*names, "..."]) + " }:\n", why)
            return True
        have = {text(n) for f in formals.named_children if f.type == "formal" for n in f.named_children[:1]}
        if have and not have & MODULE_ARGS and not self._module_with_ellipsis(fm, formals):
            return False  # `{ containerConfig, ... }:`: a function someone calls, not a NixOS module
        self._add_formals(fm, formals, [n for n in names if n not in have], why)
        return True

    def _add_formals(self, fm: FileModel, formals: Node, missing: Sequence[str], why: str) -> None:
        if not missing:
            return
        firsts = [c for c in formals.named_children if c.type in ("formal", "ellipses")]
        if not firsts:
            self.add(fm, formals.start_byte + 1, formals.end_byte - 1, " " + ", ".join(missing) + " ", why)
            return
        first = firsts[0]
        multiline = len(firsts) > 1 and fm.line_col(firsts[1].start_byte)[0] != fm.line_col(first.start_byte)[0]
        sep = ",\n" + _indent_of(fm.source, first) if multiline else ", "
        if firsts[-1].type == "ellipses":  # `{ config, pkgs, ... }` -> `{ config, pkgs, lib, ... }`
            at = firsts[-1].start_byte
            self.add(fm, at, at, sep.join(missing) + sep, why)
        else:
            at = firsts[-1].end_byte
            self.add(fm, at, at, sep + sep.join(missing), why)

    def _value_formals(self, fm: FileModel, m: Embedded, names: Sequence[str], why: str, dry: bool = False) -> bool:
        """ensure_formals for one module held as a value. Refused (False) where the module's new argument
        would hide a name its code reads from around it (flake-parts' own ``config``: a module's
        ``config`` is its own) and, for an attrset, where a function may not stand (a registry of
        unknown type: only a nixosSystem modules list and a deferredModule take a function)."""
        line = fm.line_col(m.node.start_byte)[0]

        def no(reason: str) -> bool:
            self.formals_refused[fm.name] = (line, f"{m.label}: a NixOS module held as a value {reason}")
            return False

        fn = m.function()
        if fn is not None:
            formals = fn.child_by_field_name("formals")
            if formals is None:
                return no("that is a function of one name (args: ...): nixmig adds arguments to a { ... }: head only")
            have = {text(n) for f in formals.named_children if f.type == "formal" for n in f.named_children[:1]}
            if have and not have & MODULE_ARGS and not any(c.type == "ellipses" for c in formals.named_children):
                return no("whose arguments are no module's (no ...): nixmig will not add config/lib/pkgs to them")
            missing = [n for n in names if n not in have]
            outer = _reads_outer(m.node, missing)
            if outer:
                return no(_READS_OUTER.format(name=outer))
            if not dry:
                self._add_formals(fm, formals, missing, why)
            return True
        bare = m.attrset()
        if bare is None:
            return no("that nixmig cannot read as a function or an attrset")
        if m.where == "registry":
            return no(
                "and a bare attrset, in a registry nixmig does not know: a function may not stand there; write it "
                "as { config, ... }: { ... } if it may, or by hand"
            )
        outer = _reads_outer(m.node, names)
        if outer:
            return no(_READS_OUTER.format(name=outer))
        if not dry:
            head = "{ " + ", ".join([*names, "..."]) + " }:"
            if m.where == "list" and m.node.type != "parenthesized_expression":  # `[ ({ ... }: { }) ]`
                self.add(fm, bare.start_byte, bare.start_byte, "(" + head + " ", why)
                self.add(fm, bare.end_byte, bare.end_byte, ")", why)
            else:
                self.add(fm, bare.start_byte, bare.start_byte, head + " ", why)
        return True


_SHADOWING = frozenset({"config", "pkgs"})  # lib is nixpkgs' lib wherever it comes from


_READS_OUTER = (
    "that reads {name} from the code around it (a flake-parts module's own, not the NixOS one): a {name} argument "
    "would hide that one; nixmig will not; pass the outer value under another name, or by hand"
)


def _reads_outer(value: Node, names: Sequence[str]) -> str:
    """The one of ``names`` (config, pkgs) that the module value reads from around it (a new formal
    would hide it), or ""."""
    wanted = set(names) & _SHADOWING
    return next((text(n) for n in descendants(value) if n.type == "variable_expression" and text(n) in wanted), "")


def imported_modules(models: Mapping[str, FileModel]) -> set[str]:
    """The files some `imports = [ ./x.nix ... ]` names by a relative path and that no file calls
    (`import ./x.nix { ... }`, `callPackage ./x.nix`): NixOS modules, whatever their formals."""
    named: set[str] = set()
    for fm in models.values():
        for b in fm.binds:
            if b.path[-1:] != ("imports",):
                continue
            value = b.value
            while value.type == "parenthesized_expression" and value.named_children:
                value = value.named_children[0]
            if value.type != "list_expression":
                continue
            for e in value.named_children:
                while e.type == "parenthesized_expression" and e.named_children:
                    e = e.named_children[0]
                if e.type == "path_expression":
                    rel = text(e)
                    if rel.startswith("./") or rel.startswith("../"):
                        target = posixpath.normpath(posixpath.join(posixpath.dirname(fm.name), rel))
                        named.add(target if target.endswith(".nix") else posixpath.join(target, "default.nix"))
    called = set()
    for fm in models.values():
        for m in _CALLED.finditer(fm.source):
            target = posixpath.normpath(
                posixpath.join(posixpath.dirname(fm.name), m.group(1).decode("utf-8", "replace"))
            )
            called.add(target if target.endswith(".nix") else posixpath.join(target, "default.nix"))
    return named - called


_MODULE_ARGS = ("config", "lib", "pkgs")


def called_with_module_args(models: Mapping[str, FileModel]) -> set[str]:
    """The files every call of which passes config, lib and pkgs in an attrset (``import ./x.nix
    { inherit config lib pkgs; ... }``, the attrset maybe let-bound, the path maybe ``dir + "/${name}"``
    over a directory): a function of other arguments with ``...`` may take those three too.

    A file called once without them (or by a call nixmig cannot read) is not in the set."""
    good: set[str] = set()
    bad: set[str] = set()
    for fm in models.values():
        nodes = descendants(fm.root)
        lets = {  # every let binding of the file by name (no scoping: a name bound twice is not read)
            text(ap): value
            for n in nodes
            if n.type == "let_expression"
            for bset in n.named_children
            if bset.type == "binding_set"
            for b in bset.named_children
            if b.type == "binding"
            and (ap := b.child_by_field_name("attrpath")) is not None
            and (value := b.child_by_field_name("expression")) is not None
        }
        for node in nodes:
            if node.type != "apply_expression":
                continue
            fn, arg = node.child_by_field_name("function"), node.child_by_field_name("argument")
            if fn is None or arg is None or fn.type != "apply_expression":
                continue
            head, target = fn.child_by_field_name("function"), fn.child_by_field_name("argument")
            if head is None or target is None or text(head) != "import":
                continue
            files = _import_targets(fm, target, lets, models)
            if not files:
                continue
            ok = _passes_module_args(arg, lets)
            (good if ok else bad).update(files)
    return good - bad


def _unparen(node: Node) -> Node:
    while node.type == "parenthesized_expression" and node.named_children:
        node = node.named_children[0]
    return node


def _import_targets(fm: FileModel, target: Node, lets: Mapping[str, Node], models: Mapping[str, FileModel]) -> set[str]:
    """The repo files ``import TARGET`` may load: ``./x.nix``, or ``DIR + "/${name}"`` (every .nix file of
    DIR but its default.nix), DIR a path or a let-bound one."""
    target = _unparen(target)
    here = posixpath.dirname(fm.name)

    def path_of(node: Node) -> str | None:
        node = _unparen(node)
        if node.type == "variable_expression" and text(node) in lets:
            node = _unparen(lets[text(node)])
        if node.type != "path_expression" or not text(node).startswith(("./", "../")):
            return None
        return posixpath.normpath(posixpath.join(here, text(node)))

    single = path_of(target)
    if single is not None:
        name = single if single.endswith(".nix") else posixpath.join(single, "default.nix")
        return {name} if name in models else set()
    if target.type == "binary_expression":
        left = target.child_by_field_name("left")
        right = target.child_by_field_name("right")
        folder = path_of(left) if left is not None else None
        if folder is not None and right is not None and _unparen(right).type == "string_expression":
            return {
                n
                for n in models
                if posixpath.dirname(n) == folder and n.endswith(".nix") and posixpath.basename(n) != "default.nix"
            }
    return set()


def _passes_module_args(arg: Node, lets: Mapping[str, Node]) -> bool:
    """The call's argument is an attrset (or a let-bound one) that gives config, lib and pkgs by name."""
    arg = _unparen(arg)
    if arg.type == "variable_expression" and text(arg) in lets:
        arg = _unparen(lets[text(arg)])
    if arg.type not in ("attrset_expression", "rec_attrset_expression"):
        return False
    given: set[str] = set()
    for bset in (c for c in arg.named_children if c.type == "binding_set"):
        for b in bset.named_children:
            if b.type == "inherit":
                given |= {text(i) for i in descendants(b) if i.type == "identifier"}
            elif b.type == "binding":
                ap, value = b.child_by_field_name("attrpath"), b.child_by_field_name("expression")
                if ap is not None and value is not None and text(ap) == text(_unparen(value)):
                    given.add(text(ap))  # config = config;
    return all(a in given for a in _MODULE_ARGS)


# `import ./x.nix { ... }`, `import ./x.nix args`, `callPackage ./x.nix { }`: a function with its arguments
_CALLED = re.compile(rb"(?:\bimport|callPackage)\s*\(?\s*(\.{1,2}/[\w./-]+)\s*\)?\s*[{(\w]")


def _same_line(src: bytes, node: Node) -> bool:
    """The binding shares its line with something before it (a one-line attrset)."""
    return bool(src[_line_start(src, node.start_byte) : node.start_byte].strip(b" \t{"))
