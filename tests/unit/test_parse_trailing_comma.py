"""A comma after the last formal (``{ system, version, }:``) is valid Nix (nix-instantiate takes it) and
tree-sitter-nix refuses it: seen in a real host file, which patch then called a syntax error that
``nix-instantiate --parse`` would show too (it does not)."""

from __future__ import annotations

import shutil

import pytest

from nixmig.errors import NixSyntaxError
from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.parse import first_error, parse, parse_checked
from nixmig.nixsrc.scan import scan_source

CURRIED = b"""{ system
, version
,
}: { config, pkgs, ... }:
{
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE USER master WITH PASSWORD 'm4ster-pw';
  '';
}
"""


@pytest.mark.parametrize(
    "src",
    [b"{ a, b, }: a", b"{ a, b, # the last\n}@args: a", b"{ a, /* c */ b, /* d */ }: a", CURRIED],
)
def test_a_trailing_comma_in_formals_parses(src: bytes) -> None:
    assert first_error(parse(src)) is None


def test_bytes_and_strings_stay_as_written() -> None:
    src = b'{ a, }: { x = "keep, }: this"; }'
    tree = parse(src)
    assert tree.root_node.text == src.replace(b"a, }", b"a  }")  # the comma read as a space, same offsets
    assert b'"keep, }: this"' in tree.root_node.text


def test_a_file_with_it_is_scanned_and_patched() -> None:
    assert [f.attr_path for f in scan_source(CURRIED, "h.nix").findings] == ["services.postgresql.initialScript"]
    plan = pt.plan({"h.nix": CURRIED}, pt.Spec(secret="master-db", role="master"))
    assert b"m4ster-pw" not in plan.results({"h.nix": CURRIED})["h.nix"]


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_invalid_nix_is_still_named_by_nix() -> None:
    src = b"{ a = 1; }.a or { }\n{"  # invalid: nix names the error itself
    with pytest.raises(NixSyntaxError) as bad:
        parse_checked(src, "bad.nix")
    assert "nixmig's Nix parser" not in str(bad.value)
