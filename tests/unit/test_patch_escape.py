"""Nix string escaping and shell quoting, checked against nix-instantiate --eval and bash."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest

from nixmig.nixsrc.patch import nix_path
from nixmig.nixsrc.quote import Antiquote, nix_attr, nix_attrpath, nix_indented, nix_string, shell_quote, store_name

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed")

NASTY = [
    "",
    "plain",
    'say "hi"',
    "back\\slash\\",
    "${x}",
    "$${x}",
    "\\${x}",
    "$",
    "$$",
    "a$",
    "'",
    "''",
    "'''",
    "''''",
    "'${x}",
    "''${x}",
    "'''${x}",
    "''\\n",
    "x'",
    "x''",
    "a'b''c'''d",
    "line1\nline2\n",
    "tab\there",
    "cr\rhere",
    "\n",
    "\n\n",
    "trailing space \n  indented\n",
    "é ü 中文 🙂",
    "/ + = @ : % ? # & ; | < > ( ) [ ] { } ` ~ !",
    "'$'{",
    "}${",
]


def _eval(expr: str) -> object:
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-"],
        input=expr.encode(),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def _random_strings(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    alphabet = ["'", "''", "$", "{", "}", "${", "\\", '"', "a", " ", "\n", "\t", "x"]
    return ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12))) for _ in range(n)]


@needs_nix
def test_nix_string_round_trips() -> None:
    values = NASTY + _random_strings(300, 1)
    expr = "[\n" + "\n".join(nix_string(v) for v in values) + "\n]"
    assert _eval(expr) == values


def _indented_value(v: str) -> str:
    """What the indented string of ``v`` should evaluate to: ``v`` with a first line that Nix keeps."""
    return "x" + v


@needs_nix
def test_nix_indented_round_trips() -> None:
    # A leading "x" on the first line keeps Nix from stripping an indentation common to the text itself.
    values = [_indented_value(v) for v in NASTY + _random_strings(300, 2)]
    values = [v for v in values if "\r" not in v]  # Nix turns \r\n into \n in indented strings
    expr = "[\n" + "\n".join(nix_indented([v], indent="    ") for v in values) + "\n]"
    assert _eval(expr) == values


@needs_nix
def test_nix_indented_splices_antiquotes_verbatim() -> None:
    rnd = random.Random(3)
    cases = []
    for left in NASTY + _random_strings(100, 4):
        right = rnd.choice(NASTY)
        if "\r" in left + right:
            continue
        cases.append(("x" + left, right))
    expr = (
        'let v = "<V>"; in [\n'
        + "\n".join(nix_indented([left, Antiquote("v"), right]) for left, right in cases)
        + "\n]"
    )
    assert _eval(expr) == [left + "<V>" + right for left, right in cases]


@needs_nix
def test_indented_string_inside_an_interpolation_inside_a_string() -> None:
    # The shape of the generated ExecStartPre: "${f "name" ''...''}" in a list.
    script = "set -e\necho '${HOME}' \"$x\" ''\n  indented\n"
    expr = 'let f = n: t: t; in [ "${f "n" ' + nix_indented([script], "      ") + '}" ]'
    assert _eval(expr) == [script]


@needs_nix
def test_attr_names_and_paths() -> None:
    names = ["plain", "with-dash", "under_score", "x'", "1digit", "has.dot", "has space", "if", "or", "${x}", ""]
    expr = "{ " + " ".join(f"{nix_attr(n)} = {nix_string(n)};" for n in names) + " }"
    assert _eval(expr) == {n: n for n in names}
    assert nix_attrpath(["age", "secrets", "twenty-db-password"]) == "age.secrets.twenty-db-password"
    assert nix_attrpath(["systemd", "services", '"${config.x}-db"']) == 'systemd.services."${config.x}-db"'
    assert _eval("{ " + nix_attrpath(["a", "b.c", "in"]) + " = 1; }") == {"a": {"b.c": {"in": 1}}}


@needs_nix
def test_nix_path_literals(tmp_path: object) -> None:
    assert nix_path("../../../secrets/x.age") == "../../../secrets/x.age"
    assert nix_path("secrets/x.age") == "./secrets/x.age"
    odd = nix_path("../sec rets/x'y.age")
    assert odd.startswith("(./. + ")
    assert _eval(f"builtins.baseNameOf (toString {odd})") == "x'y.age"


def test_store_names_are_valid() -> None:
    assert store_name("twenty-twenty-db-password-env") == "twenty-twenty-db-password-env"
    assert store_name(".hidden name/with:colons") == "hidden-name-with-colons"
    assert store_name("") == "nixmig"


@pytest.mark.parametrize("value", [*NASTY, "-n", "-e", "*", "~", "$(id)", "`id`", "a\x01b"])
def test_shell_quote_is_one_word_with_the_exact_value(value: str) -> None:
    out = subprocess.run(
        ["bash", "-c", f"printf '%s' {shell_quote(value)}"], capture_output=True, check=True
    ).stdout.decode()
    assert out == value
    count = subprocess.run(
        ["bash", "-c", f"set -- {shell_quote(value)}; printf '%s' $#"], capture_output=True, check=True
    ).stdout.decode()
    assert count == "1"
