"""Which nixpkgs option takes a password from a file, and who reads that file: checked module by module
against nixpkgs (stop 21), never guessed from a name. A `password` beside no `passwordFile` (vikunja's,
hydra's: options nixpkgs does not have) was rewritten into one and called patched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.shapes.option_companion import known_reader
from tests.helpers import FIXTURES, plan_shape_case, run_cli


@pytest.mark.parametrize(
    ("path", "twin"),
    [
        ("services.gitea.database.password", "services.gitea.database.passwordFile"),
        ("services.forgejo.database.password", "services.forgejo.database.passwordFile"),
        ("services.redmine.database.password", "services.redmine.database.passwordFile"),
        ("services.redis.servers.cache.requirePass", "services.redis.servers.cache.requirePassFile"),
        ('services.redis.servers."".requirePass', 'services.redis.servers."".requirePassFile'),
        ("services.nextcloud.config.dbpass", "services.nextcloud.config.dbpassFile"),
        ("services.zabbixServer.dbPassword", "services.zabbixServer.database.passwordFile"),
    ],
)
def test_a_checked_option_has_its_twin(path: str, twin: str) -> None:
    assert pt.nixpkgs_file_sibling(tuple(path.split("."))) == tuple(twin.split("."))


@pytest.mark.parametrize(
    "path",
    [
        "services.vikunja.database.password",  # vikunja: no password option, an environmentFiles variable
        "services.hydra.database.password",  # hydra: its dbi string, no such option
        "services.zoneminder.database.password",  # a literal with no file twin
        "services.selfoss.database.password",  # renamed into freeform settings
        "services.roundcube.database.password",  # its passwordFile is a .pgpass line, not a password
        "services.icingaweb2.resources.db.password",  # a freeform ini: a passwordFile key is read by nothing
        "services.limesurvey.config.components.db.password",  # freeform config
        "services.home-assistant.config.mqtt.password",
        "services.myapp.database.password",  # a module nixmig does not know
        "services.nextcloud.service.environment.dbpass",  # an arion service's variable
    ],
)
def test_an_unchecked_option_has_none(path: str) -> None:
    assert pt.nixpkgs_file_sibling(tuple(path.split("."))) is None


def test_readers_match_any_name_where_the_key_says_so() -> None:
    assert known_reader(("services", "redis", "servers", "cache", "requirePassFile")) == (True, None)
    assert known_reader(("services", "keycloak", "database", "passwordFile")) == (True, None)
    assert known_reader(("services", "redis", "servers", "cache", "requirePass")) == (False, None)


UNKNOWN_READER = b"""{ pkgs, ... }:
{
  services.lanraragi = {
    enable = true;
    passwordFile = pkgs.writeText "lrr-admin" "Adm-pw-5521";
  };
}
"""


def test_a_store_file_of_a_service_with_an_unknown_reader_says_so(tmp_path: Path) -> None:
    """Root-only is right only if the service reads the file as root: where nixmig does not know, a note."""
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "shapes" / "native-paperless-admin-passwordfile-writetext-move", repo)
    (repo / "modules/paperless.nix").write_bytes(UNKNOWN_READER)
    toml = repo / "nixmig.toml"
    toml.write_text(
        toml.read_text()
        .replace('service = "paperless"', 'service = "lanraragi"')
        .replace("[services.paperless]", "[services.lanraragi]")
    )
    proc = run_cli("patch", "--explain", cwd=repo)
    out = (proc.stdout + proc.stderr).decode()
    assert "config.age.secrets.paperless-password.path" in out, out
    assert "nixmig does not know which user services.lanraragi reads it as" in out, out


def test_a_store_file_read_through_load_credential_needs_no_note() -> None:
    case, file = "native-paperless-admin-passwordfile-writetext-move", "modules/paperless.nix"
    plan, _ = plan_shape_case(case, file, (FIXTURES / "shapes" / case / file).read_bytes())
    assert not any("does not know which user" in n for n in plan.notes)  # type: ignore[attr-defined]


def test_a_module_that_provisions_its_database_names_the_role_to_rotate() -> None:
    """keycloak with createLocally (its default) logs in as role keycloak, whatever database.username says: a
    rotation of the role nixmig.toml names ("sso") would leave keycloak's password and its role's apart
    (a public configuration, stop 21: init drafted the role from ensureUsers). Said, nothing written; with
    createLocally = false (an external database) the configuration's role is the one."""
    case, file = "native-writetext-passwordfile", "hosts/box/sso.nix"
    original = (FIXTURES / "shapes" / case / file).read_bytes()
    local = original.replace(b"      createLocally = false;", b"      # createLocally = false;")
    plan, _ = plan_shape_case(case, file, local)
    said = [m.what for m in plan.manual]  # type: ignore[attr-defined]
    assert any("logs in as role 'keycloak'" in w and 'Set role = "keycloak"' in w for w in said), said
    plan, patched = plan_shape_case(case, file, original)
    assert plan.manual == ()  # type: ignore[attr-defined]
    assert b"config.age.secrets.sso-db-password.path" in patched


def test_init_drafts_the_role_a_provisioning_module_logs_in_as() -> None:
    from nixmig.draft import draft
    from nixmig.nixsrc.patch import read_sources

    case, file = "native-writetext-passwordfile", "hosts/box/sso.nix"
    sources = read_sources(FIXTURES / "shapes" / case)
    local = {**sources, file: sources[file].replace(b"      createLocally = false;", b"")}
    assert 'role = "keycloak"' in draft(local).toml
    assert 'role = "sso"' in draft(sources).toml  # an external database: database.username's
