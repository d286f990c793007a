"""secrets.nix: evaluation (nix and built-in agree) and byte-exact edits."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from nixmig.errors import NixEvalError, NixSyntaxError
from nixmig.secrets import rules as rl
from nixmig.secrets import store
from nixmig.sensitive import Secret
from tests.helpers import ADMIN_PUB, EXAMPLE, NEWTON_PUB, copy_example

K1 = NEWTON_PUB
K2 = ADMIN_PUB
K3 = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"

# Shapes seen in real agenix repos: let-bound keys, lists of lists, attrValues,
# nested attrsets, inherit, `//`, comments everywhere, odd formatting.
VARIANTS = {
    "example": (EXAMPLE / "secrets/secrets.nix").read_text(),
    "flat": f'{{\n  "a.age".publicKeys = [ "{K1}" "{K2}" ];\n}}\n',
    "users_systems": f"""let
  user1 = "{K2}";
  users = [ user1 ];

  system1 = "{K1}";
  systems = [ system1 ];
in
{{
  "secret1.age".publicKeys = [ user1 system1 ];
  "secret2.age".publicKeys = users ++ systems;
  "armored-secret.age" = {{
    publicKeys = [ user1 ];
    armor = true;
  }};
}}
""",
    "attrvalues": f"""let
  hosts = {{ newton = "{K1}"; zeta = "{K3}"; }};
  admins = {{ inherit (keys) alice; }};
  keys = {{ alice = "{K2}"; }};
  all = builtins.attrValues hosts ++ builtins.attrValues admins;
in {{
  # comment
  "x/y.age".publicKeys = all; "z.age".publicKeys = [ hosts.newton ];
}} // {{ "w.age".publicKeys = builtins.concatLists [ [ keys.alice ] ]; }}
""",
    "interp": f"""let k = "{K1}"; t = "ssh-ed25519"; in {{ "i.age".publicKeys = [ "${{k}}" ]; }}""",
    "empty": "{ }\n",
    "comments_only": "{\n  # nothing yet\n}\n",
    "leading_comment": f'# agenix rules: agenix -e NAME.age\n/* keys */\n{{\n  "a.age".publicKeys = [ "{K1}" ];\n}}\n',
}

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed")


@needs_nix
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_builtin_evaluator_agrees_with_nix(tmp_path: Path, name: str) -> None:
    f = tmp_path / "secrets.nix"
    f.write_text(VARIANTS[name])
    assert rl.evaluate(f, use_nix=False) == rl.evaluate(f, use_nix=True)


def nix_eval(path: Path) -> object:
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(path)],
        check=True,
        capture_output=True,
    )
    return json.loads(out.stdout)


@needs_nix
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_new_entry_evaluates_and_keeps_every_other_byte(tmp_path: Path, name: str) -> None:
    d = tmp_path / "secrets"
    d.mkdir()
    f = d / "secrets.nix"
    f.write_text(VARIANTS[name])
    before = nix_eval(f)
    assert isinstance(before, dict)
    original = f.read_bytes()
    store.new_secret(f, "db-password", Secret("pw"), recipients=[K1, K2])
    after = nix_eval(f)
    assert after == {**before, "db-password.age": {"publicKeys": [K1, K2]}}
    edited = f.read_bytes()
    # Only one contiguous insertion: prefix and suffix of the original are untouched.
    prefix = 0
    while prefix < len(original) and original[prefix] == edited[prefix]:
        prefix += 1
    suffix = 0
    while suffix < len(original) - prefix and original[-1 - suffix] == edited[-1 - suffix]:
        suffix += 1
    assert prefix + suffix == len(original)
    inserted = edited[prefix : len(edited) - suffix].decode()
    assert "db-password.age" in inserted
    assert inserted.count("\n") <= 3


def test_example_edit_is_one_line_using_let_names(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    f = repo / "secrets/secrets.nix"
    original = f.read_text().splitlines(keepends=True)
    store.new_secret(f, "twenty-db-password", Secret("pw"), recipients=[K1, K2])
    lines = f.read_text().splitlines(keepends=True)
    assert lines == [
        *original[:-1],
        '  "twenty-db-password.age".publicKeys = [ newton admin ];\n',
        original[-1],
    ]


def test_like_copies_the_expression_as_written(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    f = repo / "secrets/secrets.nix"
    store.new_secret(f, "twenty-db-password", Secret("pw"), like="twenty-app-secret")
    assert '  "twenty-db-password.age".publicKeys = servers ++ [ admin ];\n' in f.read_text()


def test_like_plus_recipient_parenthesises(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    f = repo / "secrets/secrets.nix"
    store.new_secret(f, "x", Secret("pw"), like="twenty-app-secret", recipients=[K3])
    assert f'"x.age".publicKeys = (servers ++ [ admin ]) ++ [ "{K3}" ];' in f.read_text()
    assert rl.load(f).entries["x.age"].public_keys == (K1, K2, K3)


def test_builtin_evaluator_reports_unsupported_with_position(tmp_path: Path) -> None:
    f = tmp_path / "secrets.nix"
    f.write_text('let f = x: x; in {\n  "a.age".publicKeys = f [ ];\n}\n')
    with pytest.raises(NixEvalError) as exc:
        rl.evaluate(f, use_nix=False)
    assert f"{f}:1:9" in str(exc.value)


def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "secrets.nix"
    f.write_text('{\n  "a.age".publicKeys = [ "x" \n}\n')
    for use_nix in (False, True) if shutil.which("nix-instantiate") else (False,):
        with pytest.raises(NixSyntaxError) as exc:
            rl.evaluate(f, use_nix=use_nix)
        assert str(exc.value).startswith(f"{f}:3:1: ")
