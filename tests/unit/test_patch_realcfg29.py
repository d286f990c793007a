"""patch on the shapes of stop 31's blind set (realcfg29): a module option whose unit also reads the URL from
a variable that wins (atuin, lldap, lemmy: the fixtures *-env-override), another stack's database in the same
file (the fixture oci-three-stacks-one-file-other-databases-left), and two messages by-eye reading found
misleading: a dashboard widget's password equal to the database's, and a URL left by hand offered a bare
VAR=password line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_patch_realcfg26 import _repo

pytestmark = pytest.mark.unit

WIDGET = """{ config, ... }:
{
  virtualisation.oci-containers.containers.feeds-db = {
    image = "postgres:16";
    environment = { POSTGRES_USER = "feeds"; POSTGRES_PASSWORD = "Feeds-pw-3"; };
  };
  services.homepage-dashboard.services = [
    { Feeds = { widget = { type = "miniflux"; url = "http://feeds"; password = "Feeds-pw-3"; }; }; }
  ];
}
"""


def test_a_dashboard_widget_holding_the_database_value_is_another_credential(tmp_path: Path) -> None:
    files = {"hosts/box/feeds.nix": WIDGET}
    plan = _repo(tmp_path, files, runtime="docker", container='container = "feeds-db"\n', db="feeds", role="feeds",
                 secret="feeds-db-password")  # fmt: skip
    (item,) = [m for m in plan.manual if m.line == 8]
    assert "another credential with the database's value" in item.what
    assert item.snippet == ""  # no env file recipe for a variable no program reads


URL = """{ config, pkgs, dbPort, ... }:
{
  systemd.services.feeds.environment.DATABASE_URL =
    "postgres://feeds:Feeds-pw-3@localhost:${toString dbPort}/feeds";
  systemd.services.feeds.serviceConfig.ExecStart = "${pkgs.miniflux}/bin/miniflux";
}
"""


def test_a_url_left_by_hand_is_offered_no_bare_password_line(tmp_path: Path) -> None:
    plan = _repo(tmp_path, {"hosts/box/feeds.nix": URL}, db="feeds", role="feeds", secret="feeds-db-password")
    (item,) = [m for m in plan.manual if m.line == 4]
    assert "did not match to role" in item.what
    assert "printf" not in item.snippet and "DATABASE_URL=" not in item.snippet


def test_a_url_whose_port_reads_config_is_patched_with_the_interpolation_kept(tmp_path: Path) -> None:
    """realcfg29/02: the port is `${toString config.services.postgresql.port}`; the renderer's script holds it."""
    src = URL.replace(", dbPort", "").replace("toString dbPort", "toString config.services.postgresql.port")
    plan = _repo(tmp_path, {"hosts/box/feeds.nix": src}, db="feeds", role="feeds", secret="feeds-db-password")
    assert not plan.manual, [m.what for m in plan.manual]
    script = "".join(e.replacement.decode() for e in plan.edits)
    assert "'@localhost:${toString config.services.postgresql.port}/feeds'" in script
    assert "%%nixmig" not in script and "Feeds-pw-3" not in script


OPTION_DEFAULT = """{ config, lib, ... }:
let
  cfg = config.lab.metrics;
in
{
  options.lab.metrics.password = lib.mkOption {
    type = lib.types.str;
    default = "Metrics-pw-9";
  };
  config.systemd.services.metrics.script = ''
    exec metrics --password-from-env
  '';
  config.systemd.services.metrics.environment.TOKEN_HINT = cfg.password;
}
"""


def test_an_option_default_is_said_as_such_with_no_unit_recipe(tmp_path: Path) -> None:
    """realcfg30/01, 04, 08: the password as a custom option's default, read as cfg.X: the item says so, and no
    env file line `default=...` for a unit named UNIT is offered."""
    plan = _repo(tmp_path, {"modules/metrics.nix": OPTION_DEFAULT}, db="metrics", role="metrics",
                 secret="metrics-db-password", strategy="move")  # fmt: skip
    (item,) = [m for m in plan.manual if m.line == 8]
    assert "the default of the module's own option lab.metrics.password" in item.what
    assert item.snippet == ""


PGWEB = """{ config, pkgs, ... }:
{
  virtualisation.oci-containers.containers.feeds-db = {
    image = "postgres:16";
    environment = { POSTGRES_USER = "feeds"; POSTGRES_PASSWORD = "Feeds-pw-3"; };
  };
  systemd.services.pgweb.serviceConfig.ExecStart = "${pkgs.pgweb}/bin/pgweb";
  systemd.services.pgweb.environment = {
    PGWEB_AUTH_USER = "feeds";
    PGWEB_AUTH_PASS = "Feeds-pw-3";
  };
}
"""


def test_a_web_uis_login_holding_the_database_value_is_another_credential(tmp_path: Path) -> None:
    """realcfg30/06: pgweb's HTTP login (PGWEB_AUTH_PASS, beside PGWEB_AUTH_USER = the role) held the database's
    value; the plan would have rendered it from the database's secret (a rotation would change the UI login)."""
    plan = _repo(tmp_path, {"hosts/box/feeds.nix": PGWEB}, runtime="docker", container='container = "feeds-db"\n',
                 db="feeds", role="feeds", secret="feeds-db-password")  # fmt: skip
    (item,) = [m for m in plan.manual if m.line == 10]
    assert "another credential with the database's value" in item.what
    assert not any(b"PGWEB_AUTH_PASS" in e.replacement for e in plan.edits)


def test_couchdbs_admin_password_is_told_its_modules_own_way(tmp_path: Path) -> None:
    """realcfg26/04, 30/10: services.couchdb.adminPass has no file variant; nixpkgs' module documents
    extraConfigFiles as the way to keep the admin's password out of the store: the item names it."""
    src = '{ ... }:\n{\n  services.couchdb = {\n    enable = true;\n    adminPass = "Couch-pw-5";\n  };\n}\n'
    plan = _repo(tmp_path, {"hosts/box/couch.nix": src}, db="admin", role="admin", secret="couchdb-admin-password",
                 strategy="move")  # fmt: skip
    (item,) = [m for m in plan.manual if m.line == 5]
    assert "services.couchdb.extraConfigFiles" in item.what and "[admins]" in item.what
