"""patch on the shapes of stop 33's blind sets (realcfg34, 35): a let attrset's fields read as whole values
(34/04), a let named ``meta`` (not a package's documentation), a password read from a plain file beside a
token (35/02, in test_patch_realcfg26)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.scan import scan_source

pytestmark = pytest.mark.unit

INVIDIOUS = """{ config, lib, ... }:
{
  config =
    let
      meta = {
        username = "kemal";
        password = "kemal";
        database = "invidious";
      };
    in
    {
      virtualisation.oci-containers.containers.invidious = {
        image = "quay.io/invidious/invidious:latest";
        environment.INVIDIOUS_CONFIG = ''
          db:
            user: ${meta.username}
            password: ${meta.password}
        '';
      };
      virtualisation.oci-containers.containers.invidious-db = {
        image = "postgres:14";
        environment = {
          POSTGRES_USER = meta.username;
          POSTGRES_PASSWORD = meta.password;
        };
      };
    };
}
"""


def test_a_let_attrset_field_read_by_the_database_and_a_text_is_said_with_its_other_reader() -> None:
    """realcfg34/04: the database's POSTGRES_PASSWORD = meta.password was "computed, not a literal", and
    nothing named the literal or the YAML text reading it. Now the database's edit is planned, and the
    field is said at its line with the read nixmig has no edit for; nothing is claimed done."""
    src = {"m.nix": INVIDIOUS.encode()}
    plan = pt.plan(src, pt.Spec(secret="invidious-db-password", role="kemal", db_service="invidious-db"))
    assert not any("computed, not a literal" in m.what for m in plan.manual), [m.what for m in plan.manual]
    (field,) = [m for m in plan.manual if m.line == 7]
    assert "meta.password (a field of a let attrset) holds this migration's password" in field.what
    assert "still read at m.nix:17:" in field.what
    # the app's own route (iv-org/invidious config.cr: INVIDIOUS_DATABASE_URL overrides db.*)
    assert "Invidious reads INVIDIOUS_DATABASE_URL" in field.what and "remove the db: block" in field.what
    assert any("POSTGRES_PASSWORD_FILE" in e.replacement.decode() for e in plan.edits)


@pytest.mark.parametrize(
    ("where", "found"),
    [
        ('let meta = { password = "kemal-77"; }; in { x = meta.password; }', True),
        ('let meta.password = "kemal-77"; in { x = meta.password; }', True),
        ('{ meta = { description = "x"; password = "kemal-77"; }; }', False),
        ('{ pkg = mkDerivation { meta.password = "kemal-77"; }; }', False),
    ],
)
def test_a_let_named_meta_is_scanned_a_package_s_meta_is_not(where: str, found: bool) -> None:
    """A package's ``meta`` is documentation; a let named meta is the author's attrset (realcfg34/04)."""
    assert bool(scan_source(f"{{ ... }}: {where}".encode(), "m.nix").findings) is found


SONAR = """{ config, ... }:
{
  virtualisation.oci-containers.containers.sonarqube = {
    image = "sonarqube:community";
    extraOptions = [ "--network=host" ];
    environment = {
      SONAR_JDBC_URL = "jdbc:postgresql://localhost:5432/sonarqube";
      SONAR_JDBC_USERNAME = "sonarqube";
      SONAR_JDBC_PASSWORD = "Sq-9-pw";
    };
  };
}
"""


def test_a_jdbc_password_beside_its_user_naming_the_role_is_this_migration_s() -> None:
    """realcfg34/01: SONAR_JDBC_PASSWORD beside SONAR_JDBC_USERNAME = the role (its database elsewhere, its
    SQL in a wrapper option) was "a password that is not this migration's": JDBC is a database's word."""
    src = {"m.nix": SONAR.encode()}
    plan = pt.plan(src, pt.Spec(secret="sonarqube-db-password", role="sonarqube"))
    assert plan.manual == (), [m.what for m in plan.manual]
    out = {**src, **plan.results(src)}["m.nix"].decode()
    assert "Sq-9-pw" not in out and "/run/sonarqube/sonarqube-db-password.env" in out


def test_a_password_inside_a_serialised_container_variable_is_said_as_that() -> None:
    """realcfg34/05: INVIDIOUS_CONFIG = builtins.toJSON { db.password = "..."; } was "an attribute nixmig does
    not see read by a service it can edit"; it is a container's variable nixmig sees, serialised."""
    from nixmig.nixsrc.leftover import unknown_shape

    path = ("virtualisation", "oci-containers", "containers", "inv", "environment", "INV_CONFIG", "db", "password")
    why = unknown_shape(path)
    assert "INV_CONFIG of the inv container is a serialised value" in why and "at db.password" in why
    assert "serialised" not in unknown_shape(path[:6])


ZABBIX = """{ ... }:
{
  services.zabbixServer = {
    enable = true;
    database.host = "localhost";
    dbPassword = import ./zabbix-password.nix;
  };
}
"""


def test_a_password_in_a_nix_file_that_is_one_string_imported_whole_is_found_and_said(tmp_path: Path) -> None:
    """realcfg35/07: `dbPassword = import ./zabbix-password.nix;`, that file being one string. scan found nothing
    and patch blamed nixmig.toml's keys; now scan lists the string, patch says it there with the import, and
    `secret new --from` gets the column it needs (scan of that file alone sees no secret)."""
    from nixmig.cli.patch import _kept_line
    from nixmig.nixsrc.walk import scan_paths

    host = tmp_path / "hosts" / "box"
    host.mkdir(parents=True)
    (host / "wendy.nix").write_text(ZABBIX)
    (host / "zabbix-password.nix").write_text('"zbx-Wendy-9"\n')
    (host / "other.nix").write_text("{ x = import ./wendy.nix; }\n")  # an attrset file imported whole: not one string
    run = scan_paths([str(tmp_path)])
    (f,) = run.findings
    assert (f.file.endswith("hosts/box/zabbix-password.nix"), f.line, f.col) == (True, 1, 2)
    assert f.attr_path == "dbPassword" and f.end_col == 13  # the 11 bytes of zbx-Wendy-9
    sources = pt.read_sources(tmp_path)
    plan = pt.plan(sources, pt.Spec(secret="zabbix-db-password", role="zabbix", strategy="move"))
    (item,) = plan.manual
    assert (item.file, item.line, item.col) == ("hosts/box/zabbix-password.nix", 1, 2)
    assert "imported whole as dbPassword at hosts/box/wendy.nix:6" in item.what
    assert _kept_line(plan)[0] == "hosts/box/zabbix-password.nix:1:2"


def test_a_key_of_a_plain_data_file_is_said_as_that_not_as_an_option() -> None:
    """realcfg35/08: a key of a plain file imported as a value, read through more lets than nixmig follows, was
    "an option of services.nextcloud with no file variant": no such option exists."""
    crypt = b'{ services.nextcloud.postgres.pass = "Nc-crypt-8"; }\n'
    host = b"""{ config, ... }:
let
  setup = (import ../crypt.nix).services.nextcloud;
  db.pass = setup.postgres.pass;
in
{
  services.nextcloud.config.dbpass = db.pass;
}
"""
    src = {"crypt.nix": crypt, "hosts/cloud.nix": host}
    plan = pt.plan(src, pt.Spec(secret="nextcloud-db-password", role="nextcloud"))
    (item,) = [m for m in plan.manual if m.file == "crypt.nix"]
    assert "is a key of crypt.nix, a plain .nix file that hosts/cloud.nix:3 imports as a value" in item.what
    assert "an option of services.nextcloud" not in item.what


def test_a_list_of_sops_secret_names_is_no_token() -> None:
    """realcfg35/04: `paperlessSecrets = [ "paperless/admin_pass" ... ]`, fed to lib.genAttrs and read as
    config.sops.placeholder."paperless/admin_pass": names of secrets, five false tokens before. A slashed
    string no attribute name repeats is still a finding."""
    src = b"""{ config, lib, ... }:
let
  paperlessSecrets = [ "paperless/admin_pass" "paperless/secret_key" ];
  otherSecrets = [ "not/a-name-9Zq" ];
in
{
  sops.secrets = lib.genAttrs paperlessSecrets (_: { });
  sops.templates."p.env".content = ''
    A=${config.sops.placeholder."paperless/admin_pass"}
    B=${config.sops.placeholder."paperless/secret_key"}
  '';
}
"""
    found = scan_source(src, "m.nix").findings
    assert [f.line for f in found] == [4], [(f.line, f.attr_path) for f in found]


def test_a_mysql_accounts_sql_in_a_unit_script_under_move_gets_a_route_not_use_move() -> None:
    """realcfg37/01: `IDENTIFIED BY` of the migration's own account in mysql's postStart, the migration already
    strategy move: the item said "a migration with strategy = move moves one such value"."""
    src = b"""{ config, lib, pkgs, ... }:
{
  services.mysql = { enable = true; package = pkgs.mariadb; ensureDatabases = [ "wordpress" ]; };
  systemd.services.mysql.postStart = lib.mkAfter ''
    ${config.services.mysql.package}/bin/mysql -e "
      CREATE USER IF NOT EXISTS 'wordpress'@'localhost' IDENTIFIED BY 'Wp-pw-37';
    "
  '';
}
"""
    plan = pt.plan({"m.nix": src}, pt.Spec(secret="wordpress-db-password", role="wordpress", strategy="move"))
    (item,) = plan.manual
    assert 'a migration with strategy = "move" moves one' not in item.what
    assert "nixmig has no edit for this statement" in item.what and "IDENTIFIED BY" in item.what


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ('POSTGRES_HOST_AUTH_METHOD = "trust";', "sets POSTGRES_HOST_AUTH_METHOD = trust"),
        ('POSTGRES_HOST_AUTH_METHOD = "scram-sha-256";', None),
    ],
)
def test_a_trusting_database_container_is_noted(extra: str, said: str | None) -> None:
    """realcfg36/03: the pgvector container trusts every client: the rotated secret is never checked."""
    src = f"""{{ config, ... }}:
{{
  virtualisation.oci-containers.containers.vec-db = {{
    image = "pgvector/pgvector:pg16";
    environment = {{ POSTGRES_USER = "vec"; POSTGRES_PASSWORD = "Vec-pw-36"; {extra} }};
  }};
}}
""".encode()
    plan = pt.plan({"m.nix": src}, pt.Spec(secret="vec-db-password", role="vec"))
    notes = [n for n in plan.notes if "trust" in n]
    assert bool(notes) is (said is not None) and (said is None or said in notes[0]), plan.notes


def test_a_pg_hba_line_trusting_the_role_is_noted() -> None:
    """realcfg36/06: `local glitchtip all trust` before nixpkgs' lines: the socket client is never asked."""
    src = b"""{ config, ... }:
{
  services.postgresql = {
    enable = true;
    authentication = "local errors all trust";
  };
  virtualisation.oci-containers.containers.errors = {
    image = "example/errors:4";
    environment.DATABASE_URL = "postgres://errors:Err-pw-36@localhost/errors";
  };
}
"""
    plan = pt.plan({"m.nix": src}, pt.Spec(secret="errors-db-password", role="errors"))
    assert any("trusts role errors (`local errors all trust`)" in n for n in plan.notes), plan.notes


def test_a_by_hand_recipe_for_a_unit_script_renders_a_variable_the_script_can_read() -> None:
    """realcfg34/06: the recipe for a password inside a unit's script rendered an env variable named `script`."""
    from nixmig.nixsrc.model import model

    src = b'{ ... }: { systemd.services.app-config.script = "true"; }'
    builder = pt.Builder({"m.nix": model("m.nix", src)}, pt.Spec(secret="app-db-password", role="app"))
    snippet = builder.generic_snippet(("systemd", "services", "app-config", "script"))
    assert "' script " not in snippet and "DB_PASSWORD" in snippet, snippet
    assert 'reads "$DB_PASSWORD"' in snippet


def test_a_compose_file_written_as_text_gets_compose_s_own_route() -> None:
    """realcfg36/02: a compose YAML in a let-bound pkgs.writeText, run by a unit: "no edit" and no route."""
    src = b"""{ pkgs, ... }:
let
  composeFile = pkgs.writeText "docker-compose.yml" ''
    services:
      db:
        image: postgres:16
        environment:
          POSTGRES_PASSWORD: Cmp-pw-36
      web:
        image: example/ci:7
        environment:
          CI_POSTGRES_PASSWORD: Cmp-pw-36
  '';
in
{
  systemd.services.ci = {
    script = "docker compose -f ${composeFile} up";
  };
}
"""
    plan = pt.plan({"m.nix": src}, pt.Spec(secret="ci-db-password", role="postgres", strategy="move"))
    assert plan.manual and all("compose substitutes ${VAR} from its environment" in m.what for m in plan.manual), [
        m.what for m in plan.manual
    ]


WATERWHEEL = b"""{ config, pkgs, ... }:
{
  age.secrets.waterwheel.file = ../secrets/waterwheel.age;
  services.waterwheel = {
    enable = true;
    database.passwordFile = config.age.secrets.waterwheel.path;
  };
  services.postgresql = {
    enable = true;
    initialScript = pkgs.writeText "init.sql" ''
      CREATE ROLE waterwheel LOGIN PASSWORD 'Ww-pw-39';
    '';
  };
}
"""


@pytest.mark.parametrize(("secret", "held"), [("waterwheel-db-password", True), ("waterwheel", False)])
def test_a_service_reading_another_agenix_secret_for_the_role_holds_the_plan(secret: str, held: bool) -> None:
    """realcfg39/04, patched wrong before: the app reads agenix secret `waterwheel`, the plan set the role's
    password from `waterwheel-db-password`, so a rotation split them. Taking the app's secret is right."""
    plan = pt.plan({"hosts/box/ww.nix": WATERWHEEL}, pt.Spec(secret=secret, role="waterwheel"))
    items = [m for m in plan.manual if "reads the agenix secret waterwheel already" in m.what]
    assert bool(items) is held, [m.what for m in plan.manual]
    assert plan.edits  # the initialScript's clause and the oneshot are planned either way
    if held:
        assert 'Set secret = "waterwheel"' in items[0].what


OLD_HOST = b"""{ config, ... }:
{
  services.roundcube = {
    enable = true;
    database = { host = "localhost"; password = "Rc-other-38"; };
  };
  services.nextcloud = {
    enable = true;
    config.dbpass = "Nc-db-38";
  };
}
"""


def test_another_services_different_password_is_a_note_not_a_to_do() -> None:
    """realcfg38/04: roundcube's own password (another service, another value) held nextcloud's write back."""
    plan = pt.plan({"hosts/box/h.nix": OLD_HOST}, pt.Spec(secret="nextcloud-db-password", role="nextcloud"))
    assert plan.manual == (), [m.what for m in plan.manual]
    assert any("services.roundcube.database.password holds another hardcoded password" in n for n in plan.notes)
    assert any("dbpassFile" in e.replacement.decode() for e in plan.edits)


def test_roundcube_s_password_says_its_module_reads_none_on_localhost() -> None:
    """realcfg38/06: "no passwordFile" was false (it takes a .pgpass line), and on localhost none is read."""
    plan = pt.plan({"hosts/box/h.nix": OLD_HOST}, pt.Spec(secret="roundcube-db-password", role="roundcube"))
    (item,) = [m for m in plan.manual if m.line == 5]
    assert "reads no password at all: then delete the line" in item.what and ".pgpass line" in item.what


def test_a_mysql_credential_with_no_edit_under_move_is_not_told_to_use_move() -> None:
    """realcfg38/05: the migration is move already; the item said 'a migration with strategy = move moves one'."""
    src = b"""{ ... }:
let
  mysqlUser = "grafana";
  mysqlPassword = "Gf-my-38";
in
{
  services.grafana.provision.datasources.settings.datasources = [
    { name = "MySQL"; type = "mysql"; url = "mysql://${mysqlUser}:${mysqlPassword}@db:3306/grafana"; }
  ];
}
"""
    plan = pt.plan({"m.nix": src}, pt.Spec(secret="grafana-mysql-password", role="grafana", strategy="move"))
    assert plan.manual and not any('a migration with strategy = "move" moves one' in m.what for m in plan.manual)


def test_a_database_password_read_through_a_rec_sibling_from_a_file_is_said_as_that(tmp_path: Path) -> None:
    """realcfg39/03: `POSTGRES_PASSWORD = chat.environment.SECRETS_postgres_password;` in a `rec` set whose
    `chat` reads it with lib.fileContents: "computed, not a literal" before."""
    src = b"""{ lib, ... }:
{
  virtualisation.oci-containers.containers = rec {
    chat = {
      image = "example/chat:9";
      environment.SECRETS_postgres_password = lib.fileContents ./secrets/chat-db-pass;
    };
    chat-db = {
      image = "postgres:16";
      environment.POSTGRES_PASSWORD = chat.environment.SECRETS_postgres_password;
    };
  };
}
"""
    plan = pt.plan({"hosts/box/c.nix": src}, pt.Spec(secret="chat-db-password", role="postgres", db_service="chat-db"))
    (item,) = [m for m in plan.manual if m.line == 10]
    assert "reads the password from hosts/box/secrets/chat-db-pass, a plain file of the repository" in item.what


def test_the_app_s_password_left_in_a_plain_file_s_sql_is_said() -> None:
    """A mutant of realcfg34/01 (bench/patch_mutants.py, import-file): the role's SQL moved into a plain file
    read as `(import ./plain.nix).sql`; the app's password (found beside its user) was edited and patch
    claimed done with the SQL's copy left: the value (the role's name too, so no copy of a name counts) the app
    holds is now this migration's everywhere."""
    app = b"""{ ... }:
{
  lab.postgresql.script = [ (import ./plain.nix).sql ];
  virtualisation.oci-containers.containers.sonarqube = {
    image = "sonarqube:community";
    environment = {
      SONAR_JDBC_USERNAME = "sonarqube";
      SONAR_JDBC_PASSWORD = "sonarqube";
    };
  };
}
"""
    plain = b"""{
  sql = ''
    CREATE ROLE sonarqube WITH PASSWORD 'sonarqube' LOGIN;
  '';
}
"""
    plan = pt.plan({"m.nix": app, "plain.nix": plain}, pt.Spec(secret="sonarqube-db-password", role="sonarqube"))
    assert any(m.file == "plain.nix" and m.line == 3 for m in plan.manual), [(m.file, m.line) for m in plan.manual]


def test_another_services_password_stays_a_note_once_the_tree_is_patched() -> None:
    """realcfg38/04 on the bench: --write wrote nextcloud's edit, then --check exited 1: with the migration's
    literal gone, roundcube's own password became a to-do of this migration again."""
    src = {"hosts/box/h.nix": OLD_HOST}
    spec = pt.Spec(secret="nextcloud-db-password", role="nextcloud")
    plan = pt.plan(src, spec)
    after = {**src, **plan.results(src)}
    again = pt.plan(after, spec)
    assert again.edits == () and again.manual == (), [m.what for m in again.manual]
