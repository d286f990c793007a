"""Does `nixmig patch` stay honest on rewrites of the configurations it patches?

The real corpora run dry (stop 25: one usable file per 60-150 look-ups), and a held-out set will
judge patch on shapes nobody here has seen. Most of what people publish is a known shape written a
little differently: the password hoisted into a `let`, wrapped in `lib.mkForce`, the module's body
under `lib.mkIf`/`lib.mkMerge`, a comment beside it, the value kept in a second file (each
seen in the real corpora; a one-line `''...''` value is not, and is not tried). This bench
takes each case of the given corpora, rewrites the file holding its password with each mutator
(an equivalent Nix program: the same options get the same values; a mutant that does not parse
with `nix-instantiate --parse` is dropped), and judges the mutant the way bench/patch_coverage.py
judges a case: patched / refused / wrong (success claimed with a literal left, an output that does
not parse or evaluate, a second run that changes something, a traceback).

A refusal of a mutant of a patched case is not a fault by itself (a shape nixmig does not edit),
but it is printed beside its case so a reader can tell a missing shape from a wrong reason.

    .venv/bin/python bench/patch_mutants.py --corpus DIR [--corpus DIR ...] [--mutator NAME ...] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import patch_coverage
from patch_coverage import case_dirs, nixmig_command, run_case

from nixmig.nixsrc.parse import parse

if TYPE_CHECKING:
    from tree_sitter import Node

STRINGS = ("string_expression", "indented_string_expression")


@dataclass
class Target:
    """The string that holds a case's password, in the file that holds it."""

    file: Path
    source: bytes
    node: Node


def _smallest_string(root: Node, offset: int) -> Node | None:
    node = root.descendant_for_byte_range(offset, offset + 1)
    while node is not None and node.type not in STRINGS:
        node = node.parent
    return node


def find_target(tree: Path, literals: Sequence[str]) -> Target | None:
    """The string node whose text holds the first literal (its last character: a literal spanning two
    strings, `"name" "value"`, ends in the value's)."""
    for f in sorted(tree.rglob("*.nix")):
        src = f.read_bytes()
        for lit in literals:
            at = src.find(lit.encode())
            if at < 0:
                continue
            end = at + len(lit.encode()) - 1
            if lit.endswith(('"', "''")) and end > at:
                end -= 1 if lit.endswith('"') else 2
            node = _smallest_string(parse(src).root_node, end)
            if node is not None:
                return Target(f, src, node)
    return None


def _top(root: Node) -> Node:
    return next(c for c in root.named_children if c.type != "comment")


def _body(root: Node) -> Node:
    """The module's value: the top function's body (through curried functions), else the file's expression."""
    expr = _top(root)
    while expr.type == "function_expression":
        body = expr.child_by_field_name("body")
        if body is None:
            break
        expr = body
    return expr


def _formals(root: Node) -> set[str]:
    expr = _top(root)
    names: set[str] = set()
    while expr.type == "function_expression":
        formals = expr.child_by_field_name("formals")
        if formals is not None:
            for f in formals.named_children:
                if f.type == "formal" and f.child_by_field_name("name") is not None:
                    names.add(f.child_by_field_name("name").text.decode())  # type: ignore[union-attr]
        body = expr.child_by_field_name("body")
        if body is None:
            break
        expr = body
    return names


def _splice(src: bytes, edits: Sequence[tuple[int, int, bytes]]) -> bytes:
    out = src
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    return out


def _self_contained(t: Target) -> bool:
    """A string that can move to the file's top: no interpolation (it could name a local)."""
    return b"${" not in t.node.text.replace(b"''${", b"")  # type: ignore[union-attr]


def _let_name(t: Target) -> str:
    """A name a user would give the hoisted string: its binding's attribute in camelCase (`POSTGRES_PASSWORD`
    -> `postgresPassword`, `initialScript` for a writeText argument under it), unused in the file."""
    node: Node | None = t.node
    while node is not None and node.type != "binding":
        node = node.parent
    attrpath = node.child_by_field_name("attrpath") if node is not None else None
    last = attrpath.named_children[-1].text.decode().strip('"') if attrpath is not None else "value"  # type: ignore[union-attr]
    parts = [w for w in re.split(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])", last) if w] or ["value"]
    name = parts[0].lower() + "".join(w[:1].upper() + w[1:].lower() for w in parts[1:])
    if not re.match(r"[A-Za-z_]", name):
        name = "v" + name
    while re.search(rb"(?<![\w'-])" + re.escape(name.encode()) + rb"(?![\w'-])", t.source):
        name += "Value"
    return name


def _binding_value(t: Target) -> bool:
    p = t.node.parent
    return p is not None and p.type == "binding" and p.child_by_field_name("expression") == t.node


def _in_let(t: Target) -> bool:
    bset = t.node.parent.parent if t.node.parent is not None else None
    return bset is not None and bset.parent is not None and bset.parent.type == "let_expression"


def _line_start(src: bytes, at: int) -> int:
    return src.rfind(b"\n", 0, at) + 1


def let_hoist(t: Target) -> dict[Path, bytes] | None:
    """`x = "pw";` -> `let mutantPassword = "pw"; in { ... x = mutantPassword; }` at the module's top."""
    if not _self_contained(t):
        return None
    body = _body(_root(t.node))
    name = _let_name(t).encode()
    text = t.node.text
    return {
        t.file: _splice(
            t.source,
            [
                (t.node.start_byte, t.node.end_byte, name),
                (body.start_byte, body.start_byte, b"let " + name + b" = " + text + b"; in "),  # type: ignore[operator]
            ],
        )
    }


def _root(node: Node) -> Node:
    while node.parent is not None:
        node = node.parent
    return node


def _with_lib(root: Node) -> list[tuple[int, int, bytes]] | None:
    """The edit that makes the module take ``lib`` ([] when it does), or None (no formals to add it to)."""
    if "lib" in _formals(root):
        return []
    expr = _top(root)
    formals = expr.child_by_field_name("formals") if expr.type == "function_expression" else None
    if formals is None or formals.child_count < 2:
        return None
    at = formals.children[0].end_byte  # after the `{`
    return [(at, at, b" lib," if formals.named_child_count else b" lib ")]


def _wrap_value(fn: str) -> Callable[[Target], dict[Path, bytes] | None]:
    def mutate(t: Target) -> dict[Path, bytes] | None:
        lib = _with_lib(_root(t.node))
        if not _binding_value(t) or lib is None or _in_let(t):
            return None  # (a let's value is no option definition: no priority to give it)
        return {t.file: _splice(t.source, [*lib, (t.node.start_byte, t.node.start_byte, f"lib.{fn} ".encode())])}

    mutate.__doc__ = f'`x = "pw";` -> `x = lib.{fn} "pw";` (lib added to the module\'s formals when missing)'
    return mutate


def _wrap_body(pre: str, post: str, *, need_lib: bool = True) -> Callable[[Target], dict[Path, bytes] | None]:
    def mutate(t: Target) -> dict[Path, bytes] | None:
        root = _root(t.node)
        body = _body(root)
        lib = _with_lib(root) if need_lib else []
        if body.type != "attrset_expression" or lib is None:
            return None
        keys = {
            b.child_by_field_name("attrpath").named_children[0].text  # type: ignore[union-attr]
            for bs in body.named_children
            if bs.type == "binding_set"
            for b in bs.named_children
            if b.type == "binding"
        }
        if keys & {b"imports", b"options", b"config", b"disabledModules", b"meta", b"_file", b"key"}:
            return None  # a full-form module, or imports: mkIf/mkMerge may only wrap config
        edits = [*lib, (body.start_byte, body.start_byte, pre.encode()), (body.end_byte, body.end_byte, post.encode())]
        return {t.file: _splice(t.source, edits)}

    mutate.__doc__ = f"the module's body B -> `{pre}B{post}` (a shorthand module with formals, no imports)"
    return mutate


def full_form(t: Target) -> dict[Path, bytes] | None:
    """A shorthand module's body B -> `{ config = B; }` (the full form a module with options uses)."""
    return _wrap_body("{ config = ", "; }", need_lib=False)(t)


def trailing_comment(t: Target) -> dict[Path, bytes] | None:
    """`x = "pw";` -> `x = "pw"; # TODO: agenix` (a comment after the binding, on its line)."""
    if not _binding_value(t):
        return None
    end = t.node.parent.end_byte  # type: ignore[union-attr]
    return {t.file: _splice(t.source, [(end, end, b" # TODO: move to agenix")])}


def lead_comment(t: Target) -> dict[Path, bytes] | None:
    """A comment line above the binding that holds the password, at its indentation."""
    if not _binding_value(t):
        return None
    start = t.node.parent.start_byte  # type: ignore[union-attr]
    line = _line_start(t.source, start)
    indent = t.source[line:start]
    if indent.strip():
        return None
    return {t.file: _splice(t.source, [(line, line, indent + b"# FIXME: plain-text password, rotate me\n")])}


def import_file(t: Target) -> dict[Path, bytes] | None:
    """The string moves to `./plain-secrets.nix` under the name a user would give it (`{ postgresPassword =
    "pw"; }`), read with `(import ./plain-secrets.nix).postgresPassword`."""
    if not _self_contained(t):
        return None
    other = t.file.parent / "plain-secrets.nix"
    if other.exists():
        return None
    name = _let_name(t).encode()
    return {
        t.file: _splice(t.source, [(t.node.start_byte, t.node.end_byte, b"(import ./plain-secrets.nix)." + name)]),
        other: b"{\n  " + name + b" = " + t.node.text + b";\n}\n",  # type: ignore[operator]
    }


def dotted_nest(t: Target) -> dict[Path, bytes] | None:
    """`a.b.c = "pw";` -> `a.b = { c = "pw"; };` (the last step of the path as a nested attrset)."""
    if not _binding_value(t):
        return None
    binding = t.node.parent
    attrpath = binding.child_by_field_name("attrpath")  # type: ignore[union-attr]
    attrs = attrpath.named_children  # type: ignore[union-attr]
    if len(attrs) < 2:
        return None
    head = t.source[attrpath.start_byte : attrs[-2].end_byte]  # type: ignore[union-attr]
    last = attrs[-1].text
    new = head + b" = { " + last + b" = " + t.node.text + b"; };"  # type: ignore[operator]
    return {t.file: _splice(t.source, [(binding.start_byte, binding.end_byte, new)])}  # type: ignore[union-attr]


MUTATORS: dict[str, Callable[[Target], dict[Path, bytes] | None]] = {
    "let-hoist": let_hoist,
    "mk-force": _wrap_value("mkForce"),
    "mk-default": _wrap_value("mkDefault"),
    "mk-if-body": _wrap_body("lib.mkIf true (", ")"),
    "mk-merge-body": _wrap_body("lib.mkMerge [ (", ") ]"),
    "full-form": full_form,
    "trailing-comment": trailing_comment,
    "lead-comment": lead_comment,
    "import-file": import_file,
    "dotted-nest": dotted_nest,
}


def parses(path: Path) -> bool:
    r = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, check=False)
    return r.returncode == 0


@dataclass
class Mutant:
    case: str
    mutator: str
    outcome: str  # patched | refused | wrong | invalid | n/a
    reason: str
    file: str = ""


def make_mutant(case_dir: Path, mutator: str, out: Path) -> tuple[Path | None, str]:
    """A copy of the case under ``out`` with the mutator applied, or None and why not."""
    meta = json.loads((case_dir / "case.json").read_text())
    literals = [str(x) for x in meta.get("literals", [])]
    if not literals:
        return None, "no literal"
    dest = out / f"{case_dir.name}~{mutator}"
    shutil.copytree(case_dir, dest, symlinks=True)
    target = find_target(dest, literals)
    if target is None:
        shutil.rmtree(dest)
        return None, "the literal is in no .nix string"
    files = MUTATORS[mutator](target)
    if files is None:
        shutil.rmtree(dest)
        return None, "not applicable"
    for f, data in files.items():
        f.write_bytes(data)
    for f in files:
        if not parses(f):
            shutil.rmtree(dest)
            return None, f"the mutant of {f.relative_to(dest)} does not parse"
    text = b"".join(p.read_bytes() for p in dest.rglob("*.nix"))
    if not any(lit.encode() in text for lit in literals):
        shutil.rmtree(dest)
        return None, "the mutant changed the literal's text"
    return dest, str(target.file.relative_to(dest))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--corpus", action="append", type=Path, required=True, help="a directory of cases (repeatable)")
    ap.add_argument("--mutator", action="append", choices=sorted(MUTATORS), help="run only these (repeatable)")
    ap.add_argument("--only", action="append", help="a case name to run (repeatable)")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="bench/patch_coverage.py --json output: mutate only the cases it found patched, and show each "
        "mutant's outcome beside its case's",
    )
    ap.add_argument(
        "--src", type=Path, help="a directory holding the nixmig package to test (default: the installed one)"
    )
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument("--keep", type=Path, help="write the mutants (case repos) here and keep them")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = ap.parse_args(argv)
    mutators = args.mutator or list(MUTATORS)
    if args.src is not None:
        patch_coverage.SRC = args.src.resolve()
    cases = case_dirs(args.corpus, set(args.only) if args.only else None, set())
    was: dict[str, str] = {}
    if args.baseline is not None:
        was = {c["case"]: c["outcome"] for c in json.loads(args.baseline.read_text())["cases"]}
        cases = [c for c in cases if was.get(c.name) == "patched"]
    cli = nixmig_command()
    results: list[Mutant] = []
    with tempfile.TemporaryDirectory(prefix="patch-mutants-") as tmp:
        src_dir, work = args.keep or Path(tmp) / "mutants", Path(tmp) / "work"
        src_dir.mkdir(parents=True, exist_ok=args.keep is not None)
        work.mkdir()
        todo: list[tuple[Path, str, Path, str]] = []
        for case in cases:
            for m in mutators:
                mutant, why = make_mutant(case, m, src_dir)
                if mutant is None:
                    results.append(Mutant(case.name, m, "n/a", why))
                else:
                    todo.append((case, m, mutant, why))

        def one(item: tuple[Path, str, Path, str]) -> Mutant:
            case, m, mutant, why = item
            r = run_case(cli, mutant, work)
            if not args.json:
                print(f"{r.outcome:8} {m:16} {case.name[:60]}: {r.reason[:200]}", flush=True)
            return Mutant(case.name, m, r.outcome, r.reason, why)

        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results.extend(pool.map(one, todo))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
        return 1 if any(r.outcome == "wrong" for r in results) else 0
    print()
    print(f"{'mutator':16} {'mutants':>7} {'patched':>7} {'refused':>7} {'wrong':>5} {'n/a':>5}")
    for m in mutators:
        rs = [r for r in results if r.mutator == m]
        n = {o: sum(r.outcome == o for r in rs) for o in ("patched", "refused", "wrong", "n/a")}
        print(f"{m:16} {len(rs) - n['n/a']:7} {n['patched']:7} {n['refused']:7} {n['wrong']:5} {n['n/a']:5}")
    return 1 if any(r.outcome == "wrong" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
