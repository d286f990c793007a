"""A small evaluator for the subset of Nix that agenix's secrets.nix files use.

Used when `nix-instantiate` is not on PATH. Supported: let/in, (rec) attrsets
with dotted and quoted attribute paths, inherit and inherit (x), strings with
interpolation and escapes, indented strings, lists, `++`, `//`, parentheses,
attribute selection, integers, true/false/null, and `builtins.attrValues`,
`builtins.concatLists`, `builtins.map` / `map`. Anything else is reported at its
line:col, with a hint to install nix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixmig.errors import NixEvalError
from nixmig.nixsrc.parse import parse_checked, position, text

if TYPE_CHECKING:
    from tree_sitter import Node

_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r"}


class _Thunk:
    __slots__ = ("_busy", "_done", "_fn", "_value")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._done = False
        self._busy = False
        self._value: Any = None

    def force(self) -> Any:
        if not self._done:
            if self._busy:
                raise RecursionError("infinite recursion")
            self._busy = True
            self._value = self._fn()
            self._done = True
        return self._value


class _Lambda:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn


Env = dict[str, _Thunk]


def evaluate_file(path: Path) -> Any:
    source = path.read_bytes()
    return evaluate(source, str(path))


def evaluate(source: bytes, where: str) -> Any:
    """Evaluate Nix source deeply (like --eval --strict) to plain Python values."""
    tree = parse_checked(source, where)
    ev = _Evaluator(where)
    try:
        top = next(c for c in tree.root_node.named_children if c.type != "comment")
        return ev.deep(ev.eval(top, ev.builtins_env()))
    except RecursionError:
        raise NixEvalError("infinite recursion", where=where) from None


class _Evaluator:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, node: Node, what: str) -> NixEvalError:
        return NixEvalError(
            what,
            where=f"{self.where}:{position(node)}",
            hint="simplify the expression or install nix so nixmig can use nix-instantiate",
        )

    def builtins_env(self) -> Env:
        def attr_values(v: Any) -> Any:
            v = _force(v)
            return [v[k] for k in sorted(v)]

        def concat_lists(v: Any) -> Any:
            return [x for sub in _force(v) for x in _force(sub)]

        def map_(f: Any) -> Any:
            def over(xs: Any) -> list[_Thunk]:
                return [_Thunk(functools.partial(_apply, f, x)) for x in _force(xs)]

            return _Lambda(over)

        builtins = {
            "attrValues": _Lambda(attr_values),
            "concatLists": _Lambda(concat_lists),
            "map": _Lambda(map_),
        }
        env: Env = {k: _const(v) for k, v in builtins.items()}
        return {
            "builtins": _const({k: _const(v) for k, v in builtins.items()}),
            "map": env["map"],
            "true": _const(True),
            "false": _const(False),
            "null": _const(None),
        }

    def deep(self, v: Any) -> Any:
        v = _force(v)
        if isinstance(v, dict):
            return {k: self.deep(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.deep(x) for x in v]
        return v

    def eval(self, node: Node, env: Env) -> Any:
        t = node.type
        if t == "parenthesized_expression":
            return self.eval(node.named_children[0], env)
        if t == "integer_expression":
            return int(text(node))
        if t in ("string_expression", "indented_string_expression"):
            return self.string(node, env)
        if t == "list_expression":
            return [self.lazy(c, env) for c in node.named_children if c.type != "comment"]
        if t == "variable_expression":
            name = text(node)
            if name not in env:
                raise self.fail(node, f"undefined variable {name!r}")
            return env[name].force()
        if t in ("attrset_expression", "rec_attrset_expression"):
            return self.attrset(node, env, rec=t == "rec_attrset_expression")
        if t == "let_expression":
            inner = dict(env)
            bs = node.child_by_field_name("body")
            bindings = [c for c in node.named_children if c.type == "binding_set"]
            attrs: dict[str, Any] = {}
            for b in bindings:
                self.bindings(b, inner, inner, attrs)
            for k, v in attrs.items():
                inner[k] = v if isinstance(v, _Thunk) else _const(v)
            if bs is None:
                raise self.fail(node, "let without a body")
            return self.eval(bs, inner)
        if t == "binary_expression":
            op = node.child_by_field_name("operator")
            left, right = node.child_by_field_name("left"), node.child_by_field_name("right")
            assert op is not None and left is not None and right is not None
            o = text(op)
            lv, rv = _force(self.eval(left, env)), _force(self.eval(right, env))
            if o == "++":
                if not isinstance(lv, list) or not isinstance(rv, list):
                    raise self.fail(node, "`++` needs two lists")
                return lv + rv
            if o == "//":
                if not isinstance(lv, dict) or not isinstance(rv, dict):
                    raise self.fail(node, "`//` needs two attrsets")
                return {**lv, **rv}
            raise self.fail(op, f"unsupported operator {o!r}")
        if t == "select_expression":
            base = node.child_by_field_name("expression")
            path = node.child_by_field_name("attrpath")
            assert base is not None and path is not None
            v = self.eval(base, env)
            for name in self.attrpath(path, env):
                v = _force(v)
                if not isinstance(v, dict) or name not in v:
                    raise self.fail(node, f"attribute {name!r} missing")
                v = _force(v[name])
            return v
        if t == "apply_expression":
            fn = node.child_by_field_name("function")
            arg = node.child_by_field_name("argument")
            assert fn is not None and arg is not None
            f = _force(self.eval(fn, env))
            if not isinstance(f, _Lambda):
                raise self.fail(node, f"unsupported function call {text(fn)!r}")
            return f.fn(self.lazy(arg, env))
        raise self.fail(node, f"unsupported expression ({t.replace('_', ' ')})")

    def lazy(self, node: Node, env: Env) -> _Thunk:
        return _Thunk(lambda: self.eval(node, env))

    def string(self, node: Node, env: Env) -> str:
        indented = node.type == "indented_string_expression"
        out: list[str] = []
        for c in node.named_children:
            if c.type == "string_fragment":
                out.append(text(c))
            elif c.type == "escape_sequence":
                raw = text(c)
                if indented:
                    out.append({"''$": "$", "'''": "''", "''\\n": "\n", "''\\t": "\t"}.get(raw, raw[3:]))
                else:
                    out.append(_ESCAPES.get(raw, raw[1:]))
            elif c.type == "interpolation":
                v = _force(self.eval(c.named_children[0], env))
                if not isinstance(v, str):
                    raise self.fail(c, "interpolation of a non-string")
                out.append(v)
            elif c.type != "comment":
                raise self.fail(c, f"unsupported string part {c.type}")
        s = "".join(out)
        return _dedent(s) if indented else s

    def attrpath(self, path: Node, env: Env) -> list[str]:
        names = []
        for a in path.named_children:
            if a.type == "identifier":
                names.append(text(a))
            elif a.type == "string_expression":
                names.append(self.string(a, env))
            else:
                raise self.fail(a, "dynamic attribute names are not supported")
        return names

    def attrset(self, node: Node, env: Env, *, rec: bool) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        scope = dict(env) if rec else env
        for b in (c for c in node.named_children if c.type == "binding_set"):
            self.bindings(b, env if not rec else scope, scope, attrs)
        if rec:
            for k, v in attrs.items():
                scope[k] = v if isinstance(v, _Thunk) else _const(v)
        return attrs

    def bindings(self, bset: Node, env: Env, scope: Env, attrs: dict[str, Any]) -> None:
        for b in bset.named_children:
            if b.type == "binding":
                path = b.child_by_field_name("attrpath")
                expr = b.child_by_field_name("expression")
                assert path is not None and expr is not None
                names = self.attrpath(path, env)
                target = attrs
                for n in names[:-1]:
                    cur = target.get(n)
                    if cur is None:
                        cur = target[n] = {}
                    elif isinstance(cur, _Thunk):
                        raise self.fail(b, f"attribute {n!r} defined twice")
                    target = cur
                if names[-1] in target:
                    raise self.fail(b, f"attribute {'.'.join(names)!r} defined twice")
                target[names[-1]] = _Thunk(functools.partial(self.eval, expr, scope))
            elif b.type == "inherit":
                for a in self.inherited(b):
                    if a not in env:
                        raise self.fail(b, f"undefined variable {a!r}")
                    attrs[a] = env[a]
            elif b.type == "inherit_from":
                src = b.child_by_field_name("expression")
                assert src is not None
                for a in self.inherited(b):
                    attrs[a] = _Thunk(functools.partial(self._select, b, src, a, env))
            elif b.type != "comment":
                raise self.fail(b, f"unsupported binding {b.type}")

    def _select(self, node: Node, src: Node, name: str, env: Env) -> Any:
        v = _force(self.eval(src, env))
        if not isinstance(v, dict) or name not in v:
            raise self.fail(node, f"attribute {name!r} missing")
        return _force(v[name])

    def inherited(self, node: Node) -> list[str]:
        attrs = node.child_by_field_name("attrs")
        return [text(a) for a in attrs.named_children if a.type == "identifier"] if attrs else []


def _apply(f: Any, x: Any) -> Any:
    return _force(f).fn(x)


def _force(v: Any) -> Any:
    while isinstance(v, _Thunk):
        v = v.force()
    if isinstance(v, dict):
        return v
    return v


def _const(v: Any) -> _Thunk:
    t = _Thunk(lambda: v)
    return t


def _dedent(s: str) -> str:
    lines = s.split("\n")
    if lines and lines[0].strip() == "":
        lines = lines[1:]
    indents = [len(line) - len(line.lstrip(" ")) for line in lines if line.strip()]
    cut = min(indents, default=0)
    return "\n".join(line[cut:] for line in lines)
