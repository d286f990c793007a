"""patch's refusals and notes that realcfg25's by-eye review found misleading (stop 29).

- 01: a module's own option with no file variant (mattermost's ``localDatabasePassword``) got the generic
  env-file recipe, a line ``localDatabasePassword=...`` no program reads: following it would have left the
  database where it was. A ``services.X`` option that is no environment variable gets no recipe.
- 05: a role's SCRAM verifier (a hash, set by postStart) was "no hardcoded password ... check the
  migration's keys"; a verifier in an initialScript was even moved as the password. Now a hash is never
  taken for a password, and the refusal says what was found (fixture native-poststart-scram-verifier).
- 10: "passwordFile is already set; left as it is" was said of the option the plan had just pointed at
  the secret.
"""

from __future__ import annotations

from pathlib import Path

from nixmig import config
from nixmig.nixsrc import patch as pt
from tests.helpers import FIXTURES

TOML = (FIXTURES / "shapes" / "native-writetext-passwordfile" / "nixmig.toml").read_text()
SECRETS = (FIXTURES / "shapes" / "native-writetext-passwordfile" / "secrets" / "secrets.nix").read_text()


def _plan(tmp_path: Path, module: str, toml: str = TOML, migration: str = "sso-db-password") -> pt.Plan:
    (tmp_path / "hosts/box").mkdir(parents=True)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/secrets.nix").write_text(SECRETS)
    (tmp_path / "hosts/box/app.nix").write_text(module)
    (tmp_path / "nixmig.toml").write_text(toml)
    cfg = config.load(tmp_path / "nixmig.toml")
    return pt.plan(pt.read_sources(tmp_path), pt.spec_for(cfg, migration))


def test_a_module_option_that_is_no_environment_variable_gets_no_env_file_recipe(tmp_path: Path) -> None:
    module = '{ ... }: { services.chatapp = { enable = true; localDatabasePassword = "sso-pw-9001"; }; }\n'
    plan = _plan(tmp_path, module)
    item = next(m for m in plan.manual if "localDatabasePassword" in m.what)
    assert "printf" not in item.snippet and "EnvironmentFile" not in item.snippet, item.snippet
    assert "config.age.secrets.sso-db-password.path" in item.snippet


def test_an_environment_variable_of_a_module_keeps_its_recipe(tmp_path: Path) -> None:
    module = '{ ... }: { services.chatapp = { enable = true; environment.DB_PASSWORD = "sso-pw-9001"; }; }\n'
    plan = _plan(tmp_path, module)
    item = next(m for m in plan.manual if "DB_PASSWORD" in m.what)
    assert "DB_PASSWORD" in item.snippet


def test_the_option_just_pointed_at_the_secret_is_not_said_to_be_set_already(tmp_path: Path) -> None:
    toml = TOML.replace('secret = "sso-db-password"', 'secret = "sso-db-password"\nstrategy = "move"')
    module = (  # the service's module is the repo's own: it declares passwordFile (realcfg25/10's booklore)
        "{ lib, pkgs, ... }: {\n"
        "  options.services.booklore.database.passwordFile = lib.mkOption { type = lib.types.path; };\n"
        '  config.services.booklore.database.passwordFile = pkgs.writeText "pw" "sso-pw-9001";\n'
        "}\n"
    )
    plan = _plan(tmp_path, module, toml)
    assert plan.edits and not plan.manual, [m.what for m in plan.manual]
    assert not any("already set" in n for n in plan.notes), plan.notes


def test_a_container_host_with_no_key_for_agenix_is_noted() -> None:
    """realcfg25/09: a `boot.isContainer` machine has no sshd host key unless something gives it one."""
    from nixmig.cli.patch import keyless_container

    host = b"{ ... }: { boot.isContainer = true; services.postgresql.enable = true; }\n"
    assert keyless_container({"flake.nix": host}) == "flake.nix"
    assert keyless_container({"flake.nix": host, "ssh.nix": b"{ services.openssh.enable = true; }"}) is None
    assert keyless_container({"flake.nix": host, "age.nix": b'{ age.identityPaths = [ "/k" ]; }'}) is None
    assert keyless_container({"host.nix": b"{ boot.isContainer = false; }"}) is None
