"""patch's by-hand items on the shapes of stop 32's blind set (realcfg32): a recipe renders this migration's
secret only for this migration's password, never for another account's (32/01, 32/02), and a condition
written with lib.optionalAttrs is said to be followed when written with lib.mkIf."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_patch_realcfg26 import _repo

pytestmark = pytest.mark.unit

OPTIONAL = """{ config, lib, ... }:
let
  enabled = config.lab.idp.enable;
in
{
  options.lab.idp.enable = lib.mkEnableOption "the identity provider";
  config.virtualisation.oci-containers.containers = lib.optionalAttrs enabled {
    idp = {
      image = "ghcr.io/example/idp:2";
      environment = {
        IDP_DATABASE_POSTGRES_USER_USERNAME = "idp";
        IDP_DATABASE_POSTGRES_USER_PASSWORD = "Idp-role-pw-7";
        IDP_DATABASE_POSTGRES_USER_SSL_MODE = "disable";
        IDP_DATABASE_POSTGRES_ADMIN_USERNAME = "postgres";
        IDP_DATABASE_POSTGRES_ADMIN_PASSWORD = "Pg-super-pw-8";
        IDP_FIRSTINSTANCE_ORG_HUMAN_PASSWORD = "Web-admin-pw-9";
      };
    };
  };
}
"""


def _items(tmp_path: Path) -> dict[int, tuple[str, str]]:
    plan = _repo(tmp_path, {"modules/idp.nix": OPTIONAL}, db="idp", role="idp", secret="idp-db-password")
    return {m.line: (m.what, m.snippet) for m in plan.manual if m.file == "modules/idp.nix"}


def test_only_the_migrations_own_password_gets_a_recipe(tmp_path: Path) -> None:
    items = _items(tmp_path)
    user, admin, human = items[12], items[15], items[16]
    # the role's own password: the container's recipe (its environmentFiles, its podman unit), not UNIT's
    assert "environmentFiles" in user[1] and "systemd.services.UNIT" not in user[1]
    # the superuser's (ADMIN_USERNAME names postgres) and the first web admin's: no recipe with this secret
    assert admin[1] == "" and human[1] == ""


def test_an_optional_attrs_condition_points_at_mk_if(tmp_path: Path) -> None:
    what = _items(tmp_path)[12][0]
    assert "set inside lib.optionalAttrs" in what and "lib.mkIf is followed" in what


SSL = """{ ... }:
{
  virtualisation.oci-containers.containers.idp = {
    image = "ghcr.io/example/idp:2";
    environment = {
      IDP_DATABASE_POSTGRES_USER_SSL_MODE = "disable";
      IDP_DATABASE_POSTGRES_USER_USERNAME = "idp";
      IDP_DATABASE_POSTGRES_USER_PASSWORD = "Idp-role-pw-7";
    };
  };
}
"""


def test_the_role_hint_names_the_user_variable_paired_with_the_password(tmp_path: Path) -> None:
    """The hint named USER_SSL_MODE ('disable') as the user the container logs in as (realcfg32/02)."""
    plan = _repo(tmp_path, {"modules/idp.nix": SSL}, db="idp", role="other", secret="idp-db-password")
    (item,) = [m for m in plan.manual if m.line == 8]
    assert "IDP_DATABASE_POSTGRES_USER_USERNAME = 'idp'" in item.what
    assert "SSL_MODE" not in item.what and "role is 'other', nixmig.toml's" in item.what


UNIT_DIRS = """{ pkgs, ... }:
{
  systemd.services.app = {
    environment.DATABASE_URL = "postgres://app:Rd-list-pw-2@localhost:5432/app";
    serviceConfig = {
      ExecStart = "${pkgs.hello}/bin/hello";
      RuntimeDirectory = [ "app-sock" ];
    };
  };
}
"""


def test_a_units_own_runtime_directory_list_gets_the_renderers_beside_it(tmp_path: Path) -> None:
    """A second RuntimeDirectory binding would not parse: the renderer's directory joins the unit's list."""
    plan = _repo(tmp_path, {"modules/app.nix": UNIT_DIRS}, db="app", role="app", secret="app-db-password")
    assert not plan.manual, [m.what for m in plan.manual]
    text = "".join(e.replacement.decode() for e in plan.edits)
    assert '"app" ' in text and text.count("RuntimeDirectory =") == 0
    assert 'RuntimeDirectoryMode = "0700"' in text  # the unit sets no mode: the renderer's


UNIT_CREDENTIALS = """{ pkgs, ... }:
{
  systemd.services.app = {
    environment.DATABASE_URL = "postgres://app:Rd-cred-pw-3@localhost:5432/app";
    serviceConfig = {
      ExecStart = "${pkgs.hello}/bin/hello";
      LoadCredential = [ "tls.key:/var/lib/app/tls.key" ];
    };
  };
}
"""


def test_a_units_own_load_credential_list_gets_the_renderers_beside_it(tmp_path: Path) -> None:
    """A second LoadCredential binding would not parse (patch stopped: 'the patched file would not parse')."""
    plan = _repo(tmp_path, {"modules/app.nix": UNIT_CREDENTIALS}, db="app", role="app", secret="app-db-password")
    assert not plan.manual, [m.what for m in plan.manual]
    text = "".join(e.replacement.decode() for e in plan.edits)
    assert text.count("LoadCredential =") == 0
    assert '"app-db-password:${config.age.secrets.app-db-password.path}" ' in text


ENV_FILES = """{ ... }:
let
  common = [ "/etc/app/common.env" ];
in
{
  virtualisation.oci-containers.containers.app = {
    image = "example/app:1";
    environmentFiles = common;
    environment.DATABASE_URL = "postgres://app:Ef-expr-pw-4@localhost:5432/app";
  };
}
"""


def test_environment_files_from_an_expression_get_the_env_file_after_it(tmp_path: Path) -> None:
    """`environmentFiles = common;` was 'not a list literal', by hand; the env file now goes after it."""
    plan = _repo(tmp_path, {"modules/app.nix": ENV_FILES}, db="app", role="app", secret="app-db-password")
    assert not plan.manual, [m.what for m in plan.manual]
    text = "".join(e.replacement.decode() for e in plan.edits)
    assert '(common) ++ [ "/run/app/app-db-password.env" ]' in text
