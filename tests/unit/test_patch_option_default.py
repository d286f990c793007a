"""patch on a password kept as the default of a module's own option (realcfg30/01, 04, 08): each read of the
option is edited as the literal would be, and the default goes only when nothing else may read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixmig.nixsrc.model import model
from nixmig.nixsrc.option_default import declared_defaults, default_reads, unrecognised_reads
from tests.unit.test_patch_realcfg26 import _plan

pytestmark = pytest.mark.unit

CASE = "native-option-default-read-by-sql-and-app"
WIKI = "hosts/box/wiki.nix"
HOST = "hosts/box/default.nix"
SECRET = "wiki-db-password"


def test_the_fixture_is_patched_and_the_default_goes(tmp_path: Path) -> None:
    plan = _plan(tmp_path, CASE, [], SECRET)
    assert not plan.manual, [m.what for m in plan.manual]
    assert any("removes the default of option homelab.wiki.dbPassword" in e.explanation for e in plan.edits)


def test_an_option_the_host_sets_is_not_followed(tmp_path: Path) -> None:
    """The host's value wins over the default: the default is no password of the running service."""
    edit = [(HOST, "homelab.wiki.enable = true;", 'homelab.wiki.enable = true;\n  homelab.wiki.dbPassword = "x";')]
    plan = _plan(tmp_path, CASE, edit, SECRET)
    assert not any("removes the default" in e.explanation for e in plan.edits)
    assert any(m.file == WIKI and m.line == 14 for m in plan.manual), [(m.file, m.line) for m in plan.manual]


def test_a_mkforce_set_counts_as_set() -> None:
    src = b"""{ config, lib, ... }: {
  options.a.pw = lib.mkOption { type = lib.types.str; default = "d-pw-1"; };
  config.a.pw = lib.mkForce "other";
  config.b = config.a.pw;
}"""
    assert declared_defaults({"m.nix": model("m.nix", src)}) == {}


def test_reads_through_config_and_a_let_alias_but_not_with_or() -> None:
    src = b"""{ config, lib, ... }:
let
  cfg = config.a.b;
  other = config.a;
in {
  options.a.b.pw = lib.mkOption { type = lib.types.str; default = "d-pw-2"; };
  config.x = cfg.pw;
  config.y = config.a.b.pw;
  config.z = other.b.pw;
  config.w = cfg.pw or "fallback";
}"""
    fm = model("m.nix", src)
    reads = default_reads({"m.nix": fm})
    assert sorted(fm.line_col(start)[0] for _, start in reads) == [7, 8, 9]
    assert {d.value for d in reads.values()} == {"d-pw-2"}


def test_an_option_declared_twice_is_not_followed() -> None:
    one = b"""{ lib, ... }: { options.a.pw = lib.mkOption { default = "d-pw-3"; }; }"""
    two = b"""{ lib, ... }: { options.a.pw = lib.mkOption { default = "d-pw-4"; }; }"""
    assert declared_defaults({"one.nix": model("one.nix", one), "two.nix": model("two.nix", two)}) == {}


def test_what_may_read_it_otherwise_is_listed() -> None:
    src = b"""{ config, lib, ... }:
let cfg = config.a; in {
  options.a.pw = lib.mkOption { default = "d-pw-5"; };
  config.u = with cfg; pw;
  config.v = { inherit (cfg) pw; };
  config.t = (f cfg).pw;
  config.s = cfg.pw;
}"""
    fm = model("m.nix", src)
    assert unrecognised_reads({"m.nix": fm}, ("a", "pw")) == ["m.nix:4:24", "m.nix:5:16", "m.nix:6:14"]


def test_an_option_a_host_may_set_through_an_expression_or_inherit_is_not_followed() -> None:
    decl = b"""{ config, lib, ... }: {
  options.a.b.pw = lib.mkOption { type = lib.types.str; default = "d-pw-6"; };
  config.x = config.a.b.pw;
}"""
    whole = b"""{ ... }: let common = { pw = "other"; }; in { a.b = common; }"""
    inherited = b"""{ ... }: let pw = "other"; in { a.b = { inherit pw; }; }"""
    for host in (whole, inherited):
        models = {"m.nix": model("m.nix", decl), "host.nix": model("host.nix", host)}
        assert declared_defaults(models) == {}, host
    assert ("a", "b", "pw") in declared_defaults({"m.nix": model("m.nix", decl)})
