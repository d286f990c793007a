"""secrets.nix: read it (as agenix does) and add entries without disturbing it.

Reading evaluates the file with `nix-instantiate --eval --strict --json` when
nix is on PATH, else with nixmig's small evaluator; both give the same
``{"NAME.age": {"publicKeys": [...]}}``. Editing is byte-exact: a new binding is
inserted after the last one of the top-level attrset, with its indentation,
and nothing else in the file changes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixmig.errors import NixEvalError, SecretsError
from nixmig.nixsrc import evaluate as mini
from nixmig.nixsrc.parse import parse_checked, text

if TYPE_CHECKING:
    from tree_sitter import Node

RULES_FILE = "secrets.nix"


@dataclass(frozen=True)
class Entry:
    name: str  # "twenty-db-password.age"
    public_keys: tuple[str, ...]
    armor: bool = False

    @property
    def secret_name(self) -> str:
        return self.name.removesuffix(".age")


@dataclass(frozen=True)
class Rules:
    path: Path
    source: bytes
    entries: dict[str, Entry]

    @property
    def dir(self) -> Path:
        return self.path.parent

    def file_for(self, entry: Entry) -> Path:
        return self.dir / entry.name


def nix_available() -> bool:
    return shutil.which("nix-instantiate") is not None


def evaluate(path: Path, source: bytes | None = None, *, use_nix: bool | None = None) -> Any:
    """Evaluate a secrets.nix to plain data; parse errors name line:col."""
    if source is None:
        source = path.read_bytes()
    parse_checked(source, path)  # uniform line:col syntax errors, both paths
    if use_nix is None:
        use_nix = nix_available()
    if not use_nix:
        return mini.evaluate(source, str(path))
    # Evaluate the given bytes (which may be an edit not yet on disk) from stdin,
    # with the file's directory as base so relative paths resolve as agenix sees them.
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-"],
        input=source,
        capture_output=True,
        cwd=path.parent,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        msg = _nix_error(proc.stderr.decode("utf-8", "replace"))
        raise NixEvalError(f"nix-instantiate cannot evaluate it: {msg}", where=path)
    return json.loads(proc.stdout)


def _nix_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("error:"):
            return ln.removeprefix("error:").strip()
    return lines[0] if lines else "unknown error"


def load(path: Path, *, use_nix: bool | None = None) -> Rules:
    try:
        source = path.read_bytes()
    except FileNotFoundError:
        raise SecretsError(
            f"no {RULES_FILE} here",
            where=path,
            hint="pass --repo with the repository that holds secrets/secrets.nix",
        ) from None
    data = evaluate(path, source, use_nix=use_nix)
    return Rules(path, source, entries_from(data, path))


def entries_from(data: Any, path: Path) -> dict[str, Entry]:
    if not isinstance(data, dict):
        raise NixEvalError("does not evaluate to an attrset", where=path)
    out: dict[str, Entry] = {}
    for name, value in data.items():
        if not isinstance(value, dict) or not isinstance(value.get("publicKeys"), list):
            raise NixEvalError(f"{name!r} has no publicKeys list", where=path)
        keys = value["publicKeys"]
        if not all(isinstance(k, str) for k in keys):
            raise NixEvalError(f"{name!r}.publicKeys holds something other than strings", where=path)
        out[name] = Entry(name, tuple(keys), bool(value.get("armor", False)))
    return out


# ---------------------------------------------------------------- locating nodes


def _top_attrset(root: Node, path: Path) -> tuple[Node, dict[str, Node]]:
    """The attrset that secrets.nix evaluates to (under any let), and its let-bindings."""
    node = next(c for c in root.named_children if c.type != "comment")
    lets: dict[str, Node] = {}
    while node.type in ("let_expression", "parenthesized_expression", "binary_expression"):
        if node.type == "binary_expression":
            op = node.child_by_field_name("operator")
            right = node.child_by_field_name("right")
            if op is None or text(op) != "//" or right is None:
                break
            node = right  # the right side of `//` wins: add entries there
        elif node.type == "let_expression":
            for bset in (c for c in node.named_children if c.type == "binding_set"):
                for b in bset.named_children:
                    if b.type == "binding":
                        ap = b.child_by_field_name("attrpath")
                        ex = b.child_by_field_name("expression")
                        if ap is not None and ex is not None and ap.named_child_count == 1:
                            lets[text(ap)] = ex
            body = node.child_by_field_name("body")
            assert body is not None
            node = body
        else:
            node = node.named_children[0]
    if node.type not in ("attrset_expression", "rec_attrset_expression"):
        raise SecretsError(
            f"the top-level expression is a {node.type.replace('_', ' ')}, not an attrset",
            where=path,
            hint="nixmig edits secrets.nix files shaped like agenix's README",
        )
    return node, lets


def _attr_names(path_node: Node) -> list[str]:
    out = []
    for a in path_node.named_children:
        if a.type == "string_expression":
            out.append("".join(text(c) for c in a.named_children))
        else:
            out.append(text(a))
    return out


def entry_expression(rules: Rules, name: str) -> str:
    """The publicKeys expression of entry ``name`` exactly as written (for --like)."""
    root = parse_checked(rules.source, rules.path).root_node
    top, _ = _top_attrset(root, rules.path)
    for b in _bindings(top):
        ap = b.child_by_field_name("attrpath")
        ex = b.child_by_field_name("expression")
        assert ap is not None and ex is not None
        names = _attr_names(ap)
        if names == [name, "publicKeys"]:
            return text(ex)
        if names == [name] and ex.type == "attrset_expression":
            for inner in _bindings(ex):
                iap = inner.child_by_field_name("attrpath")
                iex = inner.child_by_field_name("expression")
                if iap is not None and iex is not None and _attr_names(iap) == ["publicKeys"]:
                    return text(iex)
    raise SecretsError(
        f"no entry {name!r} written as a literal binding",
        where=rules.path,
        hint='--like needs an entry such as "NAME.age".publicKeys = ...;',
    )


def _bindings(attrset: Node) -> list[Node]:
    return [
        b
        for bset in attrset.named_children
        if bset.type == "binding_set"
        for b in bset.named_children
        if b.type in ("binding", "inherit", "inherit_from")
    ]


def let_names_for(rules: Rules) -> dict[str, str]:
    """Map each let-bound single key string to its variable name (``newton``)."""
    root = parse_checked(rules.source, rules.path).root_node
    _, lets = _top_attrset(root, rules.path)
    out: dict[str, str] = {}
    for var, expr in lets.items():
        if expr.type == "string_expression" and all(c.type == "string_fragment" for c in expr.named_children):
            out.setdefault(" ".join(text(expr).strip('"').split()[:2]), var)
    return out


def with_entry(rules: Rules, name: str, expression: str) -> bytes:
    """The source with ``"NAME".publicKeys = EXPRESSION;`` added (or its expression replaced).

    Only the inserted or replaced bytes differ from the original.
    """
    src = rules.source
    root = parse_checked(src, rules.path).root_node
    top, _ = _top_attrset(root, rules.path)
    binding = f'"{name}".publicKeys = {expression};'
    bindings = _bindings(top)
    for b in bindings:
        ap = b.child_by_field_name("attrpath")
        ex = b.child_by_field_name("expression")
        if ap is not None and ex is not None and _attr_names(ap) == [name, "publicKeys"]:
            return src[: ex.start_byte] + expression.encode() + src[ex.end_byte :]
    if bindings:
        last = bindings[-1]
        line_end = src.find(b"\n", last.end_byte)
        line_end = len(src) if line_end == -1 else line_end
        rest = src[last.end_byte : line_end].strip()
        if rest and not rest.startswith(b"#"):  # e.g. `{ "a.age".publicKeys = x; }` on one line
            return src[: last.end_byte] + b" " + binding.encode() + src[last.end_byte :]
        line_start = src.rfind(b"\n", 0, last.start_byte) + 1
        indent = src[line_start : last.start_byte]
        if indent.strip():  # the last binding shares its line with an earlier one
            indent = indent[: len(indent) - len(indent.lstrip())]
        # insert after the last binding's line (and its trailing comment)
        return src[:line_end] + b"\n" + indent + binding.encode() + src[line_end:]
    # no binding yet: its own line before the closing brace, keeping every byte
    close = top.end_byte - 1
    open_line_start = src.rfind(b"\n", 0, top.start_byte) + 1
    base = src[open_line_start : top.start_byte]
    base = base[: len(base) - len(base.lstrip())]
    head = src[:close]
    if not head.endswith(b"\n"):
        head += b"\n"
    return head + base + b"  " + binding.encode() + b"\n" + base + src[close:]
