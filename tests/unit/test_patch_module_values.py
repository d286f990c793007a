"""NixOS modules held as values (nixsrc/model.py Embedded): an element of a nixosSystem modules list,
flake-parts' flake.modules.nixos.NAME / a flake's nixosModules.NAME, a registry's *.nixos.NAME. Each is
patched as the same module in a file of its own would be; the fixtures module-value-* carry the golden
diffs, these check the rules around them (issue 12)."""

from __future__ import annotations

import shutil

import pytest

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc import validate
from nixmig.nixsrc.model import model
from nixmig.nixsrc.scan import Kind, scan_source

SPEC = pt.Spec(secret="notes-db-password", role="notes", container="notes-db")

CONTAINERS = """
            virtualisation.oci-containers.containers.notes-db = {
              image = "postgres:16";
              environment.POSTGRES_USER = "notes";
              environment.POSTGRES_PASSWORD = "notes-pw-91";
            };"""
APP = """
            virtualisation.oci-containers.containers.notes = {
              image = "ghcr.io/example/notes:1";
              environment.DATABASE_URL = "postgres://notes:notes-pw-91@notes-db/notes";
            };"""


def _flake(first: str, second: str) -> bytes:
    return f"""{{
  outputs = {{ self, nixpkgs }}: {{
    nixosConfigurations.a = nixpkgs.lib.nixosSystem {{
      modules = [ ./hosts/a.nix {first} ];
    }};
    nixosConfigurations.b = nixpkgs.lib.nixosSystem {{
      modules = [ ./hosts/b.nix {second} ];
    }};
  }};
}}
""".encode()


def _parses(results: dict[str, bytes]) -> None:
    if shutil.which("nix-instantiate"):
        validate.check_all(results, use_nix=True)


def test_options_of_a_nixos_module_are_no_module_values() -> None:
    """documentation.nixos.* and a declarative container's config are options of the host's module:
    the file stays the module (its root is the file's), nothing is re-rooted."""
    src = b"""{ config, pkgs, ... }:
{
  documentation.nixos.options = { warningsAreErrors = false; };
  containers.wiki.config = { config, pkgs, ... }: { services.postgresql.enable = true; };
}
"""
    fm = model("host.nix", src)
    assert fm.modules == []
    assert any(b.path == ("containers", "wiki", "config", "services", "postgresql", "enable") for b in fm.binds)


def test_only_the_module_value_holding_the_edits_gets_formals_and_age_secrets() -> None:
    """Two hosts' inline modules in one flake.nix: the one holding the password gets config (its bare
    attrset becomes a parenthesized function: a lambda in a list must be), and age.secrets; the other
    is untouched."""
    other = '{ networking.hostName = "a"; }'
    src = {"flake.nix": _flake(other, "{" + CONTAINERS + "\n          }")}
    plan = pt.plan(src, SPEC)
    assert plan.manual == ()
    after = plan.results(src)["flake.nix"].decode()
    assert other in after  # the first module: bytes unchanged
    b = after.index("nixosConfigurations.b")
    assert after.index("({ config, ... }: {", b) > b
    assert after.index("age.secrets.notes-db-password", b) > after.index("POSTGRES_PASSWORD_FILE", b)
    assert "}) ];" in after[b:]
    _parses(plan.results(src))
    again = {**src, **plan.results(src)}
    assert pt.plan(again, SPEC).edits == ()


def test_age_secrets_goes_into_the_module_value_not_an_unrelated_mkif_of_it() -> None:
    """Placement inside a module value follows the module file's rule: the block that holds the service,
    never a conditional block of something else (issue 12 part 2.7)."""
    src = {
        "modules/notes.nix": b"""{ inputs, ... }:
{
  flake.modules.nixos.notes = { config, lib, ... }: lib.mkMerge [
    (lib.mkIf config.services.nginx.enable { services.nginx.virtualHosts.notes.root = "/srv"; })
    {"""
        + CONTAINERS.encode()
        + b"""
    }
  ];
}
"""
    }
    plan = pt.plan(src, SPEC)
    assert plan.manual == ()
    after = plan.results(src)["modules/notes.nix"].decode()
    assert after.index("age.secrets.notes-db-password") > after.index("notes-db = {")
    assert "{ config, lib, ... }:" in after  # had them: no formal added
    _parses(plan.results(src))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("{" + CONTAINERS + APP + "\n  }", "in a registry nixmig does not know"),
        ("args: {" + CONTAINERS + APP + "\n  }", "a function of one name"),
        ("{ lib, ... }: { imports = [ config.registry.base ];" + CONTAINERS + APP + "\n  }", "reads config from the"),
    ],
)
def test_a_module_value_nixmig_cannot_give_config_is_refused_at_its_line(value: str, why: str) -> None:
    """A bare attrset in a registry of unknown type (a function may not stand there), a function of one
    name, a module that reads the outer config: the app's env file renderer needs config, lib and pkgs,
    so nothing is written, one line at the module's line. (The database alone needs none of them: its
    bind mount then names /run/agenix/NAME, as in any module nixmig cannot give config.)"""
    src = {"modules/notes.nix": f"{{ config, ... }}:\n{{\n  registry.nixos.notes = {value};\n}}\n".encode()}
    plan = pt.plan(src, SPEC)
    assert plan.edits == ()
    (m,) = [m for m in plan.manual if m.line == 3]
    assert why in m.what and m.what.startswith("registry.nixos.notes: a NixOS module held as a value")


def test_postgresql_verifiers_are_hashes_not_passwords() -> None:
    """ensureClauses.password takes a SCRAM-SHA-256 (or md5) verifier: a hash (low), not a clear password
    patch must move; a password that only starts like one stays a password."""
    scram = (
        "SCRAM-SHA-256$4096:c2FsdA==$"
        + "U3RvcmVkS2V5U3RvcmVkS2V5U3RvcmVkS2V5QUE=:U2VydmVyS2V5U2VydmVyS2V5U2VydmVyS2V5QUE="
    )
    src = f"""{{
  services.postgresql.ensureUsers = [
    {{ name = "a"; ensureClauses.password = "{scram}"; }}
    {{ name = "b"; ensureClauses.password = "md5{"0a1b2c3d" * 4}"; }}
    {{ name = "c"; ensureClauses.password = "md5-is-not-a-hash-4821"; }}
  ];
}}
"""
    kinds = [f.kind for f in scan_source(src.encode(), "db.nix").findings]
    assert kinds == [Kind.HASH, Kind.HASH, Kind.PASSWORD]


def test_a_full_form_module_with_dotted_config_gets_config_dotted_bindings() -> None:
    """{ options = ...; config.services.postgresql = ...; } (no `config = { ... }` block): the oneshot and
    age.secrets are added as config.systemd... / config.age... beside it, never as a top-level systemd
    (which the module system rejects next to config). Before: 'cannot find the module's config'."""
    src = {
        "db.nix": b"""{ config, lib, pkgs, ... }:
{
  options.ledger.enable = lib.mkEnableOption "ledger";
  config.services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE ROLE ledger LOGIN PASSWORD 'ledger-pw-78';
  '';
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="ledger-db-password", role="ledger"))
    assert plan.manual == ()
    after = plan.results(src)["db.nix"].decode()
    assert "\n  config.systemd.services.nixmig-ledger-db-password-password = {" in after
    assert "\n  config.age.secrets.ledger-db-password = {" in after
    _parses(plan.results(src))


def test_a_value_under_the_author_s_condition_is_said_as_such() -> None:
    """`environment = { ... } // lib.optionalAttrs (!hasEnvFile) { MYSQL_PASSWORD = "..."; }` (a fallback
    beside an env file the author reads when it exists): nothing edits inside the condition, and the line
    says why, not 'a strategy move moves one such value' to a migration that is one (realcfg6 05)."""
    src = {
        "modules/db.nix": b"""{ inputs, ... }:
{
  flake.modules.nixos.wikidb = { config, lib, ... }: {
    virtualisation.oci-containers.containers.wikidb = {
      image = "lscr.io/linuxserver/mariadb";
      environment = { MYSQL_USER = "wiki"; } // lib.optionalAttrs (!inputs.self ? envFile) {
        MYSQL_PASSWORD = "Wiki-db-7782";
      };
    };
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="wiki-db", role="wiki", container="wikidb", strategy="move"))
    assert plan.edits == ()
    (m,) = [m for m in plan.manual if m.line == 7]
    assert "set inside lib.optionalAttrs (merged in only when the author's condition holds)" in m.what


def test_a_shape_inside_a_declarative_container_says_how_the_secret_reaches_its_reader() -> None:
    """A declarative NixOS container (containers.NAME.config) is a system of its own: it is no module value
    of the host (its age.secrets would not be the host's). A literal there with no edit says the recipe:
    decrypted on the host, bind-mounted read-only, readable by the reader inside (uids shared without
    privateUsers, shifted with it)."""
    src = {
        "host.nix": b"""{ config, ... }: {
  containers.wiki = {
    config = { config, pkgs, ... }: {
      services.wikijs.settings.db.pass = "wiki-pw-55";
    };
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="wiki-db", role="wiki", strategy="move"))
    assert plan.edits == ()
    (m,) = plan.manual
    assert m.line == 4
    for part in (
        "inside the declarative NixOS container wiki",
        "declare age.secrets.NAME in the host's module",
        'containers.wiki.bindMounts."/run/agenix-host/NAME" = { hostPath = config.age.secrets.NAME.path; '
        "isReadOnly = true; }",
        "without privateUsers the container shares the host's uids",
        "with privateUsers the host's file must belong to the shifted uid",
    ):
        assert part in m.what


def test_init_still_reads_the_hosts_of_a_flake_that_holds_a_module_value() -> None:
    """The file around a module value keeps its own paths: init finds nixosConfigurations.box in a flake.nix
    whose modules list holds an inline module, and drafts its deploy with --flake (before the fix: 'nothing
    in the repo', the file's paths having been read as no option paths)."""
    from nixmig.draft import draft
    from tests.helpers import FIXTURES

    d = draft(pt.read_sources(FIXTURES / "shapes" / "module-value-flake-inline-list")).toml
    assert 'deploy = "nixos-rebuild switch --flake .#box --target-host root@box"' in d
    assert "from flake.nix:13 (nixosConfigurations.box)" in d


def test_a_full_form_flake_parts_module_holds_its_module_values_under_config() -> None:
    """`{ config, lib, ... }: { options.x = ...; config.flake.modules.nixos.db = { config, ... }: ...; }`: the
    flake-parts module is full-form, its NixOS module is still found (and its config is its own)."""
    src = b"""{ config, lib, ... }:
{
  options.flake.dbImage = lib.mkOption { default = "postgres:16"; };
  config.flake.modules.nixos.db = { config, ... }: { services.postgresql.enable = true; };
}
"""
    fm = model("modules/db.nix", src)
    assert [m.label for m in fm.modules] == ["config.flake.modules.nixos.db"]
    assert any(b.exact and b.path == ("services", "postgresql", "enable") for b in fm.binds)


def test_a_module_value_reading_a_secret_another_file_declares_is_not_refused() -> None:
    """Two hosts' inline modules; the one with the containers reads config.age.secrets.X, which the
    host's own file declares already: no module value of flake.nix declares it, so nothing says the
    other host needs it (only a declaration in a sibling module value does)."""
    declared = b"""{ config, ... }:
{
  age.secrets.notes-db-password = { file = ../secrets/notes-db-password.age; mode = "0400"; };
}
"""
    src = {
        "flake.nix": _flake('{ networking.hostName = "a"; }', "{" + CONTAINERS + APP + "\n          }"),
        "hosts/b.nix": declared,
    }
    plan = pt.plan(src, SPEC)
    assert plan.manual == (), [m.what for m in plan.manual]
    assert "age.secrets.notes-db-password = " not in plan.results(src)["flake.nix"].decode()
