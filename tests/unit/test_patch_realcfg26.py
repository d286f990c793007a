"""patch on the shapes of stop 30's blind sets (realcfg26, 27, 28): a value equal to the password under an
identifier's name (mautrix's ``appservice.id = "telegram"``) is no copy of it; mautrix-telegram's and
env-substituted settings; a plain file's string read inside SQL or a URL; the units ordered after a unit whose
psql sets the password; a password read from a repository file; trust-only pg_hba; an /etc file two options
read (28/02, patched wrong before) and another service's /etc file under a move (28/06, patched wrong before);
and the messages by-eye reading found misleading."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nixmig import config
from nixmig.nixsrc import patch as pt
from tests.helpers import FIXTURES

pytestmark = pytest.mark.unit

SHAPES = FIXTURES / "shapes"


def _plan(tmp_path: Path, case: str, edit: list[tuple[str, str, str]], secret: str) -> pt.Plan:
    root = tmp_path / "repo"
    shutil.copytree(SHAPES / case, root)
    for rel, old, new in edit:
        f = root / rel
        text = f.read_text()
        assert old in text, (rel, old)
        f.write_text(text.replace(old, new))
    cfg = config.load(root / "nixmig.toml")
    return pt.plan(pt.read_sources(root), pt.spec_for(cfg, secret))


BRIDGE = "hosts/box/bridge.nix"


def test_an_identifier_equal_to_the_password_is_no_copy_of_it(tmp_path: Path) -> None:
    case = "native-mautrix-telegram-settings-database-url"
    edit = [(BRIDGE, "Tg-bridge-pw-4", "telegram")]  # both places: the password is the word the id holds
    plan = _plan(tmp_path, case, edit, "mautrix-telegram-db-password")
    assert not plan.manual, [m.what for m in plan.manual]
    assert plan.edits
    (note,) = [n for n in plan.notes if "appservice.id" in n]
    assert note.startswith(f"{BRIDGE}:20: ") and "an identifier, no credential: left as it is" in note


@pytest.mark.parametrize("attr", ["token", "secret_key"])
def test_a_credential_name_equal_to_the_password_still_is(tmp_path: Path, attr: str) -> None:
    case = "native-mautrix-telegram-settings-database-url"
    edit = [(BRIDGE, 'id = "telegram";', f'{attr} = "Tg-bridge-pw-4";')]
    plan = _plan(tmp_path, case, edit, "mautrix-telegram-db-password")
    assert any(m.line == 20 for m in plan.manual), [(m.line, m.what) for m in plan.manual]


def test_the_url_goes_into_the_variable_the_bridge_reads(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "native-mautrix-telegram-settings-database-url", [], "mautrix-telegram-db-password")
    added = b"".join(e.replacement for e in plan.edits)
    assert b"MAUTRIX_TELEGRAM_APPSERVICE_DATABASE postgresql://mautrix-telegram:" in added
    assert b"systemd.services.mautrix-telegram.serviceConfig" in added


def test_a_setting_name_that_makes_no_variable_is_not_moved(tmp_path: Path) -> None:
    # a key with a dash is no environment variable name: the bridge could not read it from one
    case = "native-mautrix-telegram-settings-database-url"
    edit = [(BRIDGE, "appservice = {", '"app-service" = {')]
    plan = _plan(tmp_path, case, edit, "mautrix-telegram-db-password")
    assert plan.manual and not any(b"MAUTRIX_TELEGRAM_" in e.replacement for e in plan.edits)


def test_units_ordered_after_the_sql_unit_are_ordered_after_the_password_oneshot(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "native-unit-sql-app-ordered-after", [], "ledger-db-password")
    unit = next(e.replacement for e in plan.edits if b"nixmig-ledger-db-password-password = {" in e.replacement)
    assert b'before = [ "ledger.service" "ledger-report.service" ];' in unit


def test_no_unit_ordered_after_the_sql_unit_no_before(tmp_path: Path) -> None:
    ledger = "hosts/box/ledger.nix"
    app = (ledger, '"ledger-db-init.service" ];\n    requires = [ "ledger-db-init.service" ];', "];")
    report = (ledger, '  systemd.services.ledger-report.wants = [ "ledger-db-init.service" ];\n', "")
    plan = _plan(tmp_path, "native-unit-sql-app-ordered-after", [app], "ledger-db-password")
    unit = next(e.replacement for e in plan.edits if b"nixmig-ledger-db-password-password = {" in e.replacement)
    assert b'before = [ "ledger-report.service" ];' in unit
    plan = _plan(tmp_path / "2", "native-unit-sql-app-ordered-after", [app, report], "ledger-db-password")
    unit = next(e.replacement for e in plan.edits if b"nixmig-ledger-db-password-password = {" in e.replacement)
    assert b"before =" not in unit


TOML = """[operator]
recipients = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIWGQejmv1vqcqb2xrIuLEd6YFeWLHzeobl7s3js0eT3"]

[hosts.box]
address = "box.example.org"
age_recipient = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG8IX+GbwvuhhTIXuwLJpZ4x7RNzQwb4yKIOiP1pQGSi"

[services.db]
host = "box"
runtime = "{runtime}"
{container}database = "{db}"
role = "{role}"

[migrations.m]
service = "db"
secret = "{secret}"
strategy = "{strategy}"
"""


def _repo(tmp_path: Path, files: dict[str, str], **toml: str) -> pt.Plan:
    root = tmp_path / "repo"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    args = {"runtime": "native", "container": "", "strategy": "rotate", **toml}
    (root / "nixmig.toml").write_text(TOML.format(**args))
    cfg = config.load(root / "nixmig.toml")
    return pt.plan(pt.read_sources(root), pt.spec_for(cfg, "m"))


def test_a_mysql_option_with_no_file_variant_is_said_so_not_use_move(tmp_path: Path) -> None:
    src = """{ ... }:
{
  services.mysql = {
    enable = true;
    replication.role = "master";
    replication.masterUser = "app";
    replication.masterPassword = "Repl-pw-81";
  };
}
"""
    plan = _repo(tmp_path, {"hosts/box/mysql.nix": src}, db="app", role="app", secret="app-db", strategy="move")
    (item,) = [m for m in plan.manual if m.line == 7]
    assert "no file variant" in item.what and 'strategy = "move"' not in item.what


def test_another_password_inside_a_longer_text_is_said_by_hand(tmp_path: Path) -> None:
    src = """{ pkgs, ... }:
{
  services.mongodb = {
    enable = true;
    enableAuth = true;
    initialRootPassword = "Root-pw-71";
    initialScript = pkgs.writeText "init.js" ''
      db.createUser({user:"app",pwd:"App-pw-72",roles:[]});
    '';
  };
}
"""
    plan = _repo(tmp_path, {"hosts/box/mongo.nix": src}, db="admin", role="root", secret="root-pw", strategy="move")
    (note,) = [n for n in plan.notes if "initialScript holds another" in n]
    assert "nixmig has no edit for it: take it out of the Nix store by hand" in note
    assert "a migration of its own" not in note


def test_clients_elsewhere_note_is_not_silenced_by_a_file_name(tmp_path: Path) -> None:
    src = """{ pkgs, ... }:
{
  services.postgresql.enable = true;
  services.postgresql.initialScript = pkgs.writeText "synapse-init.sql" ''
    CREATE ROLE "matrix-synapse" WITH LOGIN PASSWORD 'synapse';
  '';
}
"""
    plan = _repo(tmp_path, {"hosts/box/pg.nix": src}, db="matrix-synapse", role="matrix-synapse", secret="s")
    assert any(n.startswith("no other place in the repository") for n in plan.notes), plan.notes
    # a real holder (an app's URL) still silences it
    app = src.replace("}\n", '  services.x.url = "postgres://matrix-synapse:synapse@localhost/x";\n}\n')
    plan = _repo(tmp_path / "2", {"hosts/box/pg.nix": app}, db="matrix-synapse", role="matrix-synapse", secret="s")
    assert not any(n.startswith("no other place in the repository") for n in plan.notes)


def test_a_password_read_from_a_plain_file_is_named(tmp_path: Path) -> None:
    src = """{ lib, ... }:
let
  pw = lib.strings.fileContents ./pw.key;
in
{
  virtualisation.oci-containers.containers.app_db = {
    image = "postgres:16";
    environment.POSTGRES_USER = "app";
    environment.POSTGRES_PASSWORD = pw;
  };
}
"""
    files = {"hosts/box/app.nix": src, "hosts/box/pw.key": "Key-pw-9\n"}
    db = 'container = "app_db"\n'
    plan = _repo(tmp_path, files, runtime="docker", container=db, db="app", role="app", secret="s")
    (item,) = plan.manual
    assert (item.file, item.line) == ("hosts/box/app.nix", 9)
    assert "reads the password from hosts/box/pw.key, a plain file of the repository" in item.what
    assert "write the literal here instead of the read" in item.what


def test_a_password_read_from_a_plain_file_by_a_module_nixmig_cannot_read_is_named(tmp_path: Path) -> None:
    # realcfg26/10: a wrapper module (no container nixmig sees): the read is said where it is bound
    src = """{ ... }@args:
let
  password = args.lib.strings.fileContents ./password.key;
  value.containers.atuin_db.environment.POSTGRES_PASSWORD = password;
in
args.lib.myWrapper value
"""
    files = {"hosts/box/app.nix": src, "hosts/box/password.key": "Key-pw-9\n"}
    plan = _repo(tmp_path, files, runtime="docker", container='container = "atuin_db"\n', db="a", role="a", secret="s")
    (item,) = plan.manual
    assert (item.file, item.line) == ("hosts/box/app.nix", 3)
    assert "password reads it from hosts/box/password.key, a plain file of the repository" in item.what


TRUST_PG = """{ pkgs, lib, ... }:
{
  services.postgresql = {
    enable = true;
    authentication = AUTH;
    initialScript = pkgs.writeText "init" ''
      ALTER USER postgres WITH PASSWORD 'Pg-trust-pw-3';
    '';
  };
}
"""


@pytest.mark.parametrize(
    ("auth", "trusted"),
    [
        ("lib.mkOverride 10 ''\n      local all all trust\n      host all all localhost trust\n    ''", True),
        ('lib.mkForce "local all all peer\\nhost all all 127.0.0.1/32 trust\\n"', True),
        # nixpkgs' own md5/scram lines stay beside a plain definition
        ("''\n      local all all trust\n    ''", False),
        ("lib.mkForce ''\n      local all all trust\n      host all all 10.0.0.0/8 scram-sha-256\n    ''", False),
        ("lib.mkOverride 100 ''\n      local all all trust\n    ''", False),
    ],
)
def test_trust_only_authentication_says_no_client_is_refused(tmp_path: Path, auth: str, trusted: bool) -> None:
    plan = _repo(
        tmp_path, {"hosts/box/pg.nix": TRUST_PG.replace("AUTH", auth)}, db="postgres", role="postgres", secret="s"
    )
    said = [n for n in plan.notes if "no client is asked for role postgres's password" in n]
    elsewhere = [n for n in plan.notes if n.startswith("no other place in the repository")]
    assert (bool(said), bool(elsewhere)) == (trusted, not trusted), plan.notes


def test_another_service_s_password_beside_is_no_candidate_line(tmp_path: Path) -> None:
    """realcfg27/05: grafana's adminPassword beside a collector's influxdb password (move), both by hand: no
    recipe naming the migration's secret for grafana's, and `secret new --from` names the collector's line
    (telegraf itself is patched now: shapes/env_subst.py)."""
    from nixmig.cli.patch import _kept_line

    src = """{ ... }:
{
  services.collector.settings.outputs.influxdb = {
    username = "collector";
    password = "Tg-influx-pw-1";
  };
  services.grafana.security.adminPassword = "1234";
}
"""
    plan = _repo(
        tmp_path, {"hosts/box/m.nix": src}, db="metrics", role="collector", secret="influxdb-collector-password",
        strategy="move",
    )  # fmt: skip
    grafana = next(m for m in plan.manual if "adminPassword" in m.what)
    assert "influxdb-collector-password" not in grafana.snippet
    assert _kept_line(plan)[0] is None  # two candidates, neither names a database
    assert _kept_line(plan, ["collector", "influxdb-collector-password"])[0] == "hosts/box/m.nix:5"


def test_a_custom_option_a_module_copies_into_a_container_is_named(tmp_path: Path) -> None:
    """realcfg27/03: selfhosted.postgres.environment, copied whole into oci-containers by the repo's module."""
    module = """{ config, lib, ... }:
let
  cfg = config.selfhosted.postgres;
in
{
  options.selfhosted.postgres.environment = lib.mkOption { type = lib.types.attrsOf lib.types.str; };
  config.virtualisation.oci-containers.containers.postgres = {
    image = "postgres:16";
    environment = cfg.environment;
  };
}
"""
    host = """{ ... }:
{
  imports = [ ../../modules/postgres.nix ];
  selfhosted.postgres.environment = {
    POSTGRES_PASSWORD = "Self-pw-77";
  };
}
"""
    files = {"modules/postgres.nix": module, "hosts/box/default.nix": host}
    plan = _repo(tmp_path, files, db="postgres", role="postgres", secret="s")
    (item,) = [m for m in plan.manual if m.file == "hosts/box/default.nix"]
    assert "modules/postgres.nix:9 copies whole into virtualisation.oci-containers.containers.postgres.environment" in (
        item.what
    )


def test_an_expression_over_an_imported_string_is_not_that_string(tmp_path: Path) -> None:
    """${private.pw + "x"} starts where the select does: it is no read of the password as it is."""
    case = "oci-url-interpolates-imported-password"
    feeds = "hosts/box/feeds.nix"
    read = "${private.feeds.dbPassword}@feeds-db:5432/feeds?sslmode=disable"
    plan = _plan(
        tmp_path, case, [(feeds, read, '${private.feeds.dbPassword + "x"}@feeds-db:5432/feeds')], "feeds-db-password"
    )
    said = [m.what for m in plan.manual if m.file == "lib/private.nix"]
    assert said and "still read at hosts/box/feeds.nix:19:" in said[0], [m.what for m in plan.manual]


def test_an_initial_script_given_as_a_string_is_said_not_to_evaluate(tmp_path: Path) -> None:
    src = """{ pkgs, ... }:
{
  services.postgresql.enable = true;
  services.postgresql.initialScript = ''
    CREATE USER hydra WITH PASSWORD 'Hydra-pw-12';
  '';
}
"""
    plan = _repo(tmp_path, {"hosts/box/pg.nix": src}, db="hydra", role="hydra", secret="s")
    assert plan.edits and not plan.manual
    assert any("is a string of SQL, not a file" in n for n in plan.notes)
    written = src.replace("initialScript = ''", "initialScript = pkgs.writeText \"i.sql\" ''")
    plan = _repo(tmp_path / "2", {"hosts/box/pg.nix": written}, db="hydra", role="hydra", secret="s")
    assert not any("is a string of SQL, not a file" in n for n in plan.notes)


def test_another_roles_url_in_env_substituted_settings_is_said_so(tmp_path: Path) -> None:
    case = "native-dendrite-let-url-envsubst"
    other = '"postgres://sync:Dendr1te-pw-44@localhost/sync"'
    edit = [
        (
            "hosts/box/matrix.nix",
            "sync_api.database.connection_string = db;",
            f"sync_api.database.connection_string = {other};",
        )
    ]
    plan = _plan(tmp_path, case, edit, "dendrite-db-password")
    said = [m.what for m in plan.manual if "substitutes environment variables" in m.what]
    assert said and said[0].startswith("services.dendrite.settings.sync_api.database.connection_string"), [
        m.what for m in plan.manual
    ]


NEXTCLOUD_ETC = """{ pkgs, ... }:
{
  environment.etc."nextcloud-password".text = "Nc-etc-pw-81";
  environment.etc."nextcloud-password".mode = "0600";
  services.nextcloud = {
    enable = true;
    hostName = "cloud.example.org";
    config.dbpassFile = "/etc/nextcloud-password";
    config.adminpassFile = ADMIN;
  };
}
"""


def test_an_etc_file_the_admin_password_reads_too_moves_it_as_a_companion(tmp_path: Path) -> None:
    """realcfg28/02: dbpassFile and adminpassFile read one /etc file: the edit of one left the other naming a
    removed file (and the entry a mode with no text), claimed patched; then refused. Now adminpassFile is a
    companion: named by a by-hand item (`nixmig patch` adds it to also), then moved onto its own secret."""
    src = NEXTCLOUD_ETC.replace("ADMIN", '"/etc/nextcloud-password"')
    plan = _repo(tmp_path, {"hosts/box/nc.nix": src}, db="nextcloud", role="nextcloud", secret="s")
    (item,) = plan.manual
    assert item.companion == "services.nextcloud.config.adminpassFile" and item.line == 3
    assert "read by services.nextcloud.config.dbpassFile and by services.nextcloud.config.adminpassFile" in item.what
    root = tmp_path / "repo"
    sources = pt.read_sources(root)
    spec = pt.spec_for(config.load(root / "nixmig.toml"), "m")
    found = pt.plan(sources, spec, find_companions=True)
    assert found.manual == () and found.auto_also == (
        ("services.nextcloud.config.adminpassFile", "nextcloud-adminpass"),
    )
    after = found.results(sources)["hosts/box/nc.nix"].decode()
    assert "environment.etc" not in after  # the entry whole: its text and its mode
    assert "dbpassFile = config.age.secrets.s.path;" in after
    assert "adminpassFile = config.age.secrets.nextcloud-adminpass.path;" in after


def test_a_move_of_the_admin_password_an_etc_file_the_database_reads_too_is_refused(tmp_path: Path) -> None:
    # the secret names the admin password, the database's option is named by its own name: two of "ours"
    src = NEXTCLOUD_ETC.replace("ADMIN", '"/etc/nextcloud-password"')
    plan = _repo(tmp_path, {"hosts/box/nc.nix": src}, db="nextcloud", role="nextcloud", secret="nextcloud-adminpass",
                 strategy="move")  # fmt: skip
    assert not plan.edits
    assert [m for m in plan.manual if "read by 2 options" in m.what]


def test_an_etc_file_an_unknown_option_reads_too_is_refused_naming_both(tmp_path: Path) -> None:
    src = NEXTCLOUD_ETC.replace("ADMIN", '"/run/keys/nc-admin"').replace(
        "  services.nextcloud = {",
        '  programs.backup.passwordFile = "/etc/nextcloud-password";\n  services.nextcloud = {',
    )
    plan = _repo(tmp_path, {"hosts/box/nc.nix": src}, db="nextcloud", role="nextcloud", secret="s")
    assert not plan.edits
    (item,) = [m for m in plan.manual if "read by 2 options" in m.what]
    assert "programs.backup.passwordFile" in item.what and "dbpassFile" in item.what


def test_a_dotted_etc_entry_goes_whole(tmp_path: Path) -> None:
    src = NEXTCLOUD_ETC.replace("ADMIN", '"/run/keys/nc-admin"')
    plan = _repo(tmp_path, {"hosts/box/nc.nix": src}, db="nextcloud", role="nextcloud", secret="s")
    assert not plan.manual, [m.what for m in plan.manual]
    removed = [e for e in plan.edits if e.replacement == b"" or not e.replacement.strip()]
    sources = pt.read_sources(tmp_path / "repo")
    gone = [sources["hosts/box/nc.nix"][e.start : e.end] for e in removed]
    assert any(b".text" in g for g in gone) and any(b".mode" in g for g in gone), gone


def test_a_move_takes_no_other_services_etc_file(tmp_path: Path) -> None:
    """realcfg28/06: a move of MinIO's root password (service key minio, role nextcloud) moved nextcloud's
    adminpassFile /etc text instead, and called the tree patched with MinIO's password left."""
    src = """{ pkgs, ... }:
let
  rootCredentialsFile = pkgs.writeText "minio-env" ''
    MINIO_ROOT_USER=nextcloud
    MINIO_ROOT_PASSWORD=Minio-pw-55
  '';
in
{
  services.minio = {
    enable = true;
    inherit rootCredentialsFile;
  };
  environment.etc."nextcloud-admin-pass".text = "Nc-admin-pw-56";
  services.nextcloud = {
    enable = true;
    hostName = "cloud.example.org";
    config.adminpassFile = "/etc/nextcloud-admin-pass";
  };
}
"""
    root = tmp_path / "repo"
    (root / "hosts/box").mkdir(parents=True)
    (root / "hosts/box/s3.nix").write_text(src)
    toml = TOML.format(
        runtime="native", container="", db="nextcloud", role="nextcloud", secret="minio-root-password", strategy="move"
    )
    (root / "nixmig.toml").write_text(toml.replace("[services.db]", "[services.minio]").replace('"db"', '"minio"'))
    cfg = config.load(root / "nixmig.toml")
    plan = pt.plan(pt.read_sources(root), pt.spec_for(cfg, "m"))
    assert not any(b"adminpassFile" in e.replacement or b"nextcloud-admin-pass" in e.replacement for e in plan.edits)
    assert plan.manual and not plan.edits  # MinIO's file, passed by inherit, is left: said, never "patched"


def test_a_mongo_container_is_moved_and_a_token_is_no_from_line(tmp_path: Path) -> None:
    """realcfg28/04: MONGO_INITDB_ROOT_PASSWORD was "not this migration's" (unfounded; it is moved now, see
    test_patch_mongo), and GITHUB_SECRET a candidate line for the password's value."""
    from nixmig.cli.patch import _kept_line

    src = """{ ... }:
{
  virtualisation.oci-containers.containers.notes_mongo = {
    image = "mongo:5";
    environment.MONGO_INITDB_ROOT_USERNAME = "notes";
    environment.MONGO_INITDB_ROOT_PASSWORD = "Mongo-pw-61";
  };
  virtualisation.oci-containers.containers.notes = {
    image = "example/notes";
    environment.GITHUB_SECRET = "0123456789abcdef0123456789abcdef01234567";
  };
}
"""
    db = 'container = "notes_mongo"\n'
    plan = _repo(tmp_path, {"hosts/box/n.nix": src}, runtime="docker", container=db, db="admin", role="notes",
                 secret="notes-mongo-password", strategy="move")  # fmt: skip
    assert not [m for m in plan.manual if "MONGO_INITDB_ROOT_PASSWORD" in m.what], [m.what for m in plan.manual]
    other = _repo(tmp_path / "other", {"hosts/box/n.nix": src}, runtime="docker", container=db, db="admin",
                  role="reader", secret="notes-mongo-password", strategy="move")  # fmt: skip
    mongo = next(m for m in other.manual if "MONGO_INITDB_ROOT_PASSWORD" in m.what)
    assert "mongo's root password" in mongo.what and "MONGO_INITDB_ROOT_USERNAME names" in mongo.what
    assert _kept_line(other, ["notes", "notes-mongo-password"]) == ("hosts/box/n.nix:6", ["hosts/box/n.nix:6"])


def test_a_password_read_from_a_plain_file_beside_another_token_is_the_headline(tmp_path: Path) -> None:
    """realcfg35/02: `db_password = builtins.readFile ./secrets/database-password` beside a hardcoded TURN
    secret. Only the token's item was said, and `secret new --from` named its line: following it would have
    sealed the TURN secret as the database's password. The read is said first, the token's line is no
    candidate for the value, and the command reads the file the .nix reads."""
    src = """{ config, ... }:
let
  turn_shared_secret = "gq0asuRE02-turn-secret";
  db_password = builtins.readFile ./secrets/database-password;
in
{
  services.coturn.static-auth-secret = turn_shared_secret;
  services.matrix-synapse.database_args.password = db_password;
}
"""
    files = {"hosts/box/matrix.nix": src, "hosts/box/secrets/database-password": "Db-pw-35\n"}
    plan = _repo(tmp_path, files, db="matrix-synapse", role="matrix-synapse", secret="s", strategy="move")
    first = plan.manual[0]
    assert (first.file, first.line) == ("hosts/box/matrix.nix", 4), [m.what for m in plan.manual]
    assert "reads it from hosts/box/secrets/database-password, a plain file of the repository" in first.what
    from nixmig.cli.patch import _file_read, _kept_line

    assert _file_read(plan) == "hosts/box/secrets/database-password"
    at, lines = _kept_line(plan, ["matrix-synapse", "s"])
    assert at is None and "hosts/box/matrix.nix:4" not in lines


def test_of_two_passwords_read_from_plain_files_the_database_s_is_the_headline(tmp_path: Path) -> None:
    """realcfg36/04: adminPass and dbPass both read from .key files; the item named the web admin's as the
    role's password, and its "write the literal here" would have sealed it as the database's."""
    src = """{ lib, ... }:
let
  adminPass = lib.strings.fileContents ./adminPass.key;
  secret = lib.strings.fileContents ./dbPass.key;
in
lib.myHelper {
  ADMIN_PASSWORD = adminPass;
  DATABASE_URL = "postgres://miniflux:${secret}@db/miniflux";
}
"""
    files = {"hosts/box/app.nix": src, "hosts/box/adminPass.key": "Adm-1\n", "hosts/box/dbPass.key": "Db-2\n"}
    plan = _repo(tmp_path, files, runtime="docker", container='container = "db"\n', db="m", role="miniflux", secret="s")
    first = plan.manual[0]
    assert (first.file, first.line) == ("hosts/box/app.nix", 4), [m.what for m in plan.manual]
    assert "secret reads it from hosts/box/dbPass.key" in first.what
