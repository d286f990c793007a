"""nixsrc/indented.py against the real evaluator: every indented string here, hand-written and random,
decodes to exactly what nix-instantiate --eval makes of it."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest

from nixmig.nixsrc.indented import decode_indented, decode_indented_text
from nixmig.nixsrc.parse import descendants, parse_checked

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed")

HAND = [
    "''\n      ADMIN_USERNAME=admin\n      ADMIN_PASSWORD=Pw-7781\n    ''",
    "''\n                             ADMIN_USERNAME=miniflux\n                             ADMIN_PASSWORD=x\n"
    "                           ''",
    "''ADMIN_USERNAME=a\nADMIN_PASSWORD=b''",
    "''  \n  a\n    b\n  ''",
    "''\n\ta\n\tb\n''",
    "''\n  a '''quoted''' ''$HOME ''${x} $$ $${y} ''\\n''\\t''\\r''\\x ''\\ \n  ''",
    "''\n  $\n  '\n  a'b $b\n''",
    "''\n    first\n  second\n      third\n''",
    "''\n  ''\\n  x\n  ''",
    "''\n\n\n  a\n\n  b\n\n''",
    "''   ''",
    "''''",
    "''\n''",
    "''a\n  b''",
    "''\n  ''$x\n   y\n  ''",
    "''\n  trailing   \n  ''",
    "''\n  \"dq\" \\ back\\slash\n''",
]

_PIECES = [" ", " ", " ", "  ", "\n", "\n", "a", "b", "=", "\t", "$", "{", "}", "\\", '"', "x'y", "'''", "''$", "''${",
           "''\\n", "''\\t", "''\\ ", "''\\'", "''\\q", "$$", "$'", "# c", "é"]  # fmt: skip


def _random_bodies(n: int) -> list[str]:
    rnd = random.Random(12)
    out: list[str] = []
    while len(out) < n:
        body = "".join(rnd.choice(_PIECES) for _ in range(rnd.randint(0, 30)))
        written = f"''{body}''"
        if body.endswith(("'", "$")) or decode_indented_text(written) is None:
            continue  # an interpolation, or a quote the closing '' would swallow
        out.append(written)
    return out


def _nix_values(strings: list[str]) -> list[str]:
    expr = "[\n" + "\n".join(f"({s})" for s in strings) + "\n]"
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-"], input=expr.encode(), capture_output=True
    )
    assert proc.returncode == 0, proc.stderr.decode()
    values: list[str] = json.loads(proc.stdout)
    return values


@needs_nix
def test_every_indented_string_decodes_as_nix_evaluates_it() -> None:
    strings = HAND + _random_bodies(400)
    want = _nix_values(strings)
    got = [decode_indented_text(s) for s in strings]
    wrong = [(s, g, w) for s, g, w in zip(strings, got, want, strict=True) if g != w]
    assert not wrong, wrong[:5]


def test_an_interpolation_has_no_value() -> None:
    assert decode_indented_text("''\n  a ${b} c\n''") is None
    tree = parse_checked(b"{ x = ''\n  pw=${p}\n''; y = ''\n  pw=q\n''; }", "t.nix")
    nodes = sorted(
        (n for n in descendants(tree.root_node) if n.type == "indented_string_expression"), key=lambda n: n.start_byte
    )
    assert [decode_indented(n) for n in nodes] == [None, "pw=q\n"]
