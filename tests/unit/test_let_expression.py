"""nixsrc.lets.let_expression: the let binding an edit may change in place (read once, bound once, unshadowed)."""

from __future__ import annotations

import pytest

from nixmig.nixsrc.lets import let_expression
from nixmig.nixsrc.parse import parse

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("src", "found"),
    [
        (b'let s = "x"; in { a = f s; }', True),
        (b'let s = "x"; in { a = f s; b = s; }', False),  # read twice: an edit would reach both
        (b'let s = "x"; in { inherit s; a = f s; }', False),  # inherited: read elsewhere too
        (b'let s = "x"; in let s = "y"; in { a = f s; }', False),  # bound twice
        (b'{ s, ... }: let s = "x"; in { a = f s; }', False),  # a function argument of that name
        (b'let s = "x"; in rec { s = "y"; a = f s; }', False),  # the rec attrset's s is the one read
        (b'let s = "x"; in { }', False),  # never read
    ],
)
def test_only_a_binding_read_once_and_bound_once_is_given(src: bytes, found: bool) -> None:
    got = let_expression(parse(src).root_node, "s")
    assert (got is not None) is found
    if found:
        assert got is not None and got.text == b'"x"'
