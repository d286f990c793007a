"""scan reads files that use Nix's pipe operators (|> and <|), which the grammar predates (issue 12)."""

from __future__ import annotations

from nixmig.nixsrc.parse import parse
from nixmig.nixsrc.scan import scan_source

PIPES = b"""{ lib, ... }:
{
  # a comment with |> in it
  environment.systemPackages = [ ] |> lib.unique;
  x = lib.id <| "a |> b";
  services.db.settings = { password = "hun|>ter22"; } |> lib.id;
}
"""


def test_a_file_with_pipe_operators_is_scanned() -> None:
    result = scan_source(PIPES, "pipes.nix")
    assert result.problem is None
    assert [(f.attr_path, f.value.reveal(), f.line) for f in result.findings] == [
        ("services.db.settings.password", b"hun|>ter22", 6)
    ]


def test_strings_and_comments_keep_their_bytes() -> None:
    tree = parse(PIPES)
    assert not tree.root_node.has_error
    assert b'"a |> b"' in (tree.root_node.text or b"") and b"# a comment with |> in it" in (tree.root_node.text or b"")


def test_a_real_syntax_error_is_still_one() -> None:
    result = scan_source(b"{ x = [ 1 ] |> ; }\n", "bad.nix")
    assert result.problem is not None and result.problem.line == 1
