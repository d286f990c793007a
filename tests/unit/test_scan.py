"""nixmig.nixsrc.scan: what counts as a hardcoded secret, what does not, and where it is."""

from __future__ import annotations

import pickle
import shutil

import pytest

from nixmig.nixsrc.scan import (
    Finding,
    Kind,
    classify_name,
    disambiguate,
    file_project,
    is_placeholder,
    scan_source,
    suggest_name,
)
from nixmig.sensitive import MASK, Secret
from tests.helpers import EXAMPLE

pytestmark = pytest.mark.unit


def scan(src: str, file: str = "modules/app.nix") -> list[Finding]:
    result = scan_source(src.encode(), file)
    assert result.problem is None, result.problem
    return list(result.findings)


def one(src: str, file: str = "modules/app.nix") -> Finding:
    found = scan(src, file)
    assert len(found) == 1, [(f.attr_path, f.kind, f.rule) for f in found]
    return found[0]


# --------------------------------------------------------------------------- the worked example


def test_worked_example_reports_the_password_and_both_urls_and_nothing_else() -> None:
    found: list[Finding] = []
    for path in sorted(EXAMPLE.rglob("*.nix")):
        found.extend(scan_source(path.read_bytes(), path.relative_to(EXAMPLE).as_posix()).findings)
    compose = "modules/system/linux/twenty/arion-compose.nix"
    assert [(f.file, f.line, f.col, f.kind, f.attr_path) for f in found] == [
        (compose, 14, 50, Kind.URL_CREDENTIAL, "services.server.service.environment.PG_DATABASE_URL"),
        (compose, 29, 50, Kind.URL_CREDENTIAL, "services.worker.service.environment.PG_DATABASE_URL"),
        (compose, 44, 32, Kind.PASSWORD, "services.db.service.environment.POSTGRES_PASSWORD"),
    ]
    assert {f.secret_name for f in found} == {"twenty-db-password"}
    assert all(f.value == Secret("postgres") for f in found)
    # the reported span is exactly the password in the source
    lines = (EXAMPLE / compose).read_text().splitlines()
    for f in found:
        assert lines[f.line - 1][f.col - 1 : f.end_col - 1] == "postgres"


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("POSTGRES_PASSWORD", Kind.PASSWORD),
        ("MYSQL_ROOT_PASSWORD", Kind.PASSWORD),
        ("password", Kind.PASSWORD),
        ("initialPassword", Kind.PASSWORD),
        ("PGPASSWORD", Kind.PASSWORD),
        ("adminpass", Kind.PASSWORD),
        ("requirePass", Kind.PASSWORD),
        ("DB_PASS", Kind.PASSWORD),
        ("MYSQL_PWD", Kind.PASSWORD),
        ("passphrase", Kind.PASSWORD),
        ("psk", Kind.PASSWORD),
        ("db/password", Kind.PASSWORD),
        ("APP_SECRET", Kind.TOKEN),
        ("client_secret", Kind.TOKEN),
        ("GITHUB_TOKEN", Kind.TOKEN),
        ("credentials", Kind.TOKEN),
        ("cookie", Kind.TOKEN),
        ("SECRET_KEY", Kind.KEY),
        ("SECRET_KEY_BASE", Kind.KEY),
        ("apiKey", Kind.KEY),
        ("x-api-key", Kind.KEY),
        ("AWS_SECRET_ACCESS_KEY", Kind.KEY),
        ("privateKey", Kind.KEY),
        ("presharedKey", Kind.KEY),
        ("hashedPassword", Kind.HASH),
        ("initialHashedPassword", Kind.HASH),
        ("password_hash", Kind.HASH),
    ],
)
def test_credential_names(name: str, kind: Kind) -> None:
    cls = classify_name(name)
    assert cls is not None and cls.kind is kind


@pytest.mark.parametrize(
    "name",
    [
        "passwordFile",
        "hashedPasswordFile",
        "POSTGRES_PASSWORD_FILE",
        "tokenFile",
        "environmentFile",
        "PASSWORD_MIN_LENGTH",
        "password_encryption",
        "PasswordAuthentication",
        "passwordCommand",
        "passwordless",
        "publicKey",
        "hostKeys",
        "key",
        "keyFile",
        "sshKey",
        "AWS_ACCESS_KEY_ID",
        "SECRET_NAME",
        "token_expiry",
        "bypass",
        "proxy_pass",
        "fastcgi_pass",
        "session_cookie",
        "description",
        "DB_HOST",
    ],
)
def test_names_that_are_not_credentials(name: str) -> None:
    assert classify_name(name) is None


def test_plural_names_only_in_lists() -> None:
    assert classify_name("access-tokens") is None
    cls = classify_name("access-tokens", plural=True)
    assert cls is not None and cls.kind is Kind.TOKEN
    assert classify_name("PermitEmptyPasswords") is None


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "\x00",
        "/run/agenix/db",
        "./secret.txt",
        "$DB_PASSWORD",
        "${DB_PASSWORD}",
        "$(cat /run/agenix/x)",
        "$__file{/run/agenix/grafana}",
        "@dbpass@",
        "{{ password }}",
        "!secret mqtt_password",
        "!secret.yaml mqtt_password",
        "ENC[AES256_GCM,data:abc]",
        "ext:psk_home",
        "db-password:/run/agenix/db",
        "https://example.org/path",
        "<YOUR_PASSWORD>",
        "PASSWORD",
        "********",
        "disabled",
        "%s",  # printf "SECRET_KEY=%s\n" "$(tr -d '\n' <key)": filled at run time (realcfg25/07)
        "%s\\n",
        "%-10s",
        "%kernel.project_dir%/config/jwt/private.pem",  # a Symfony parameter leading a path (realcfg39/06)
        "%env(DB_PASS)%",
    ],
)
def test_placeholders_are_not_secrets(value: str) -> None:
    assert is_placeholder(value)


@pytest.mark.parametrize(
    "value", ["postgres", "hunter2", "changeme", "correct horse battery staple", "p@ss/w:rd", "%s3cret", "50%sale"]
)
def test_real_values_are_secrets(value: str) -> None:
    assert not is_placeholder(value)


# --------------------------------------------------------------------------- shapes


def test_nested_attrsets_give_the_path_as_written() -> None:
    f = one('{ services = { db = { service.environment = { "POSTGRES_PASSWORD" = "pw1"; }; }; }; }')
    assert f.attr_path == 'services.db.service.environment."POSTGRES_PASSWORD"'
    assert f.kind is Kind.PASSWORD and f.rule == "name" and f.value == Secret("pw1")


def test_let_bound_env_attrset() -> None:
    f = one('let env = { DB_PASSWORD = "pw2"; DB_HOST = "db"; }; in { environment = env; }')
    assert f.attr_path == "env.DB_PASSWORD"


def test_value_wrappers_and_function_arguments() -> None:
    found = scan(
        """{ pkgs, dbPassword ? "pw3", ... }: {
          a.password = lib.mkForce "pw4";
          b.password = (lib.mkOverride 50 "pw5");
          c.password = if x then "pw6" else "pw7";
          d.password = "prefix-${x}";
          e.password = "${toString 42}";
        }"""
    )
    assert [(f.attr_path, f.value) for f in found] == [
        ("dbPassword", Secret("pw3")),
        ("a.password", Secret("pw4")),
        ("b.password", Secret("pw5")),
        ("c.password", Secret("pw6")),
        ("c.password", Secret("pw7")),
    ]


def test_runtime_references_are_not_findings() -> None:
    assert not scan(
        """{ config, ... }: {
          services.x.passwordFile = config.age.secrets.db.path;
          services.x.password = config.sops.placeholder.db;
          services.x.token = builtins.readFile config.age.secrets.t.path;
          POSTGRES_PASSWORD = "${config.services.x.password}";
          POSTGRES_PASSWORD_FILE = "/run/secrets/db";
          empty.password = "";
          nothing.password = null;
          locked.hashedPassword = "!";
          # password = "hunter2";
          url = "postgres://app:${config.sops.placeholder.db}@db/app";
        }"""
    )


def test_option_documentation_is_not_a_finding_but_a_default_is() -> None:
    found = scan(
        """{ lib, ... }: {
          options.services.x = {
            enable = lib.mkEnableOption "password authentication";
            url = lib.mkOption {
              example = "postgres://user:hunter2@db/x";
              description = "Connection URL, e.g. postgres://user:password@host/db";
            };
            token = lib.mkOption { default = "tok-default"; description = "The API token."; };
            settings = lib.mkOption { example = lib.literalExpression ''{ password = "x"; }''; };
          };
        }"""
    )
    assert [(f.attr_path, f.kind) for f in found] == [("options.services.x.token.default", Kind.TOKEN)]


def test_url_credentials_anywhere() -> None:
    found = scan(
        """{
          a = "postgresql://app:pw8@localhost:5432/app";
          b = "redis://:pw9@cache:6379/0";
          c = "postgres://app@db/app";
          d = "postgresql:///app?host=/run/postgresql";
          e = "postgres://app:pw10@${host}/app";
          f = "https://example.org/?a=b@c";
          url."https://oauth2:pw11@git.example.org/".insteadOf = "https://git.example.org/";
          g = https://user:pw12@example.org/x;
        }"""
    )
    assert [(f.attr_path, f.value) for f in found] == [
        ("a", Secret("pw8")),
        ("b", Secret("pw9")),
        ("e", Secret("pw10")),
        ('url."https://oauth2:pw11@git.example.org/".insteadOf', Secret("pw11")),
        ("g", Secret("pw12")),
    ]
    assert {f.kind for f in found} == {Kind.URL_CREDENTIAL}


def test_multiline_env_yaml_toml_and_scripts() -> None:
    src = """{
  environment.etc."app.env".text = ''
    DB_HOST=db
    DB_PASSWORD=pw13
    export API_TOKEN="pw14"
    SMTP_PASSWORD_FILE=/run/agenix/smtp
    # OLD_PASSWORD=commented
  '';
  environment.etc."app.yaml".text = ''
    password: pw15
    help: "set the password: in the UI"
    api_password: !secret api
  '';
  script = ''
    export PGPASSWORD=$(cat /run/agenix/pg)
    mysql --password=pw16 -e "select 1"
    wget --password pw17 https://example.org
  '';
}"""
    found = scan(src)
    assert [(f.line, f.value, f.kind) for f in found] == [
        (4, Secret("pw13"), Kind.PASSWORD),
        (5, Secret("pw14"), Kind.TOKEN),
        (10, Secret("pw15"), Kind.PASSWORD),
        (16, Secret("pw16"), Kind.PASSWORD),
        (17, Secret("pw17"), Kind.PASSWORD),
    ]
    lines = src.splitlines()
    for f in found:
        assert lines[f.line - 1][f.col - 1 : f.end_col - 1] == f.value.reveal_str()
    assert all(f.attr_path.startswith(("environment.etc", "script")) for f in found)


def test_private_keys_and_hashes() -> None:
    found = scan(
        """{
  users.users.root.hashedPassword = "$6$salt$abcdefghijklmnop";
  environment.etc."key.pem".text = ''
    -----BEGIN OPENSSH PRIVATE KEY-----
    b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ
    -----END OPENSSH PRIVATE KEY-----
  '';
  environment.etc."cert.pem".text = ''
    -----BEGIN CERTIFICATE-----
    MIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBa
    -----END CERTIFICATE-----
  '';
  publicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIWGQejmv1vqcqb2xrIuLEd6YFeWLHzeobl7s3js0eT3";
}"""
    )
    assert [(f.kind, f.line, f.end_line) for f in found] == [(Kind.HASH, 2, 2), (Kind.PRIVATE_KEY, 4, 6)]
    assert found[0].severity == "low" and found[1].severity == "high"


def test_lists_writetext_and_name_value_pairs() -> None:
    found = scan(
        """{ pkgs, lib, ... }: {
          Environment = [ "LOG_LEVEL=info" "DB_PASS=pw18" ];
          cmd = [ "redis-server" "--requirepass" "pw19" ];
          passwordFile = pkgs.writeText "pw" "pw20";
          env = [ { name = "SESSION_SECRET"; value = "pw21"; } (lib.nameValuePair "API_KEY" "pw22") ];
          basicAuth = { alice = "pw23"; };
        }"""
    )
    assert [(f.value, f.kind) for f in found] == [
        (Secret("pw18"), Kind.PASSWORD),
        (Secret("pw19"), Kind.PASSWORD),
        (Secret("pw20"), Kind.PASSWORD),
        (Secret("pw21"), Kind.TOKEN),
        (Secret("pw22"), Kind.KEY),
        (Secret("pw23"), Kind.PASSWORD),
    ]


def test_escapes_and_columns_in_characters() -> None:
    src = '{ "ünï" = "é"; password = "a\\"b"; x = \'\'\n  PASS=\'\'${literal}\n  TOKEN=tök\n\'\'; }'
    found = scan(src)
    assert [f.value for f in found] == [Secret('a"b'), Secret("tök")]
    assert (found[0].line, found[0].col) == (1, 28)  # characters, not bytes: ü ï é are 2 bytes each
    assert (found[1].line, found[1].col) == (3, 9)


def test_value_on_the_next_line_and_deep_in_wrappers() -> None:
    found = scan(
        """{
          POSTGRES_PASSWORD =
            "pw25";
          services.x.password =
            lib.mkIf cfg.enable
              (lib.mkForce
                "pw26");
          services.x.adminpassFile = "${pkgs.writeText "adminpass" "pw27"}";
          services.y.passwordFile = (pkgs.writeText "pw" "pw28").outPath;
          services.z.passwordFile = (pkgs.writeText "pw" "pw29").name;
        }"""
    )
    assert [(f.line, f.value) for f in found] == [
        (3, Secret("pw25")),
        (7, Secret("pw26")),
        (8, Secret("pw27")),
        (9, Secret("pw28")),  # the store file's path, as toString gives it
    ]


def test_imports_lists_start_a_new_module() -> None:
    f = one('{ imports = [ { services.x.password = "pw24"; } ]; }')
    assert f.attr_path == "services.x.password"


def test_syntax_error_is_reported_not_raised() -> None:
    result = scan_source(b'{\n  a = "x";\n  b = ;\n}\n', "broken.nix")
    assert result.findings == ()
    assert result.problem is not None
    assert (result.problem.file, result.problem.line) == ("broken.nix", 3)
    assert str(result.problem).startswith("broken.nix:3:")


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="Nix's own parser names the position")
def test_an_unclosed_module_is_placed_where_nix_places_it_not_at_one_one() -> None:
    """A module missing its last brace (19C/02, as published): tree-sitter's recovery wraps the whole file in
    one error at 1:1, while patch (nix-instantiate) says the end of the file; scan says what patch says."""
    source = b'{ config, ... }:\n{\n  services.x = {\n    enable = true;\n    password = "pw-unclosed-1";\n  };\n'
    result = scan_source(source, "open.nix")
    assert result.problem is not None
    assert (result.problem.line, result.problem.col) != (1, 1)
    assert result.problem.line == 6 and "unexpected end of file" in str(result.problem)


def test_file_without_any_trigger_is_still_syntax_checked() -> None:
    assert scan_source(b"{ a = 1; }", "ok.nix").problem is None
    assert scan_source(b"{ a = 1 }", "bad.nix").problem is not None


# --------------------------------------------------------------------------- masking and names


def test_values_never_show_in_reprs_or_dicts() -> None:
    f = one('{ password = "hunter2-value"; }')
    masked = f.masked(b"k" * 32)
    for text in (repr(f), str(f), repr(masked), str(masked.to_dict())):
        assert "hunter2-value" not in text
    assert masked.to_dict()["value"] == {"masked": MASK, "length": len("hunter2-value")}
    with pytest.raises(TypeError):
        pickle.dumps(f)
    assert pickle.loads(pickle.dumps(masked)) == masked


def test_suggested_names() -> None:
    assert file_project("modules/system/linux/twenty/arion-compose.nix", b"") == "twenty"
    assert file_project("hosts/newton/default.nix", b"") == "newton"
    assert file_project("x/anything.nix", b'project.name = "immich";') == "immich"
    assert suggest_name(project="p", plain=["users", "users", "alice", "hashedPassword"], kind=Kind.HASH,
                        name_words=["hashed", "password"]) == "alice-hashed-password"  # fmt: skip
    assert suggest_name(project="p", plain=["virtualisation", "oci-containers", "containers", "paperless",
                        "environment", "PAPERLESS_SECRET_KEY"], kind=Kind.KEY,
                        name_words=["paperless", "secret", "key"]) == "paperless-secret-key"  # fmt: skip
    assert suggest_name(project="p", plain=["services", "grafana", "settings", "security", "admin_password"],
                        kind=Kind.PASSWORD, name_words=["admin", "password"]) == "grafana-admin-password"  # fmt: skip
    assert suggest_name(project="twenty", plain=["x"], kind=Kind.URL_CREDENTIAL, url_host="db",
                        url_user="app") == "twenty-db-app-password"  # fmt: skip


def test_disambiguate_one_name_per_distinct_value() -> None:
    key = b"k" * 32
    found = scan(
        '{ services.a.service.environment = { POSTGRES_PASSWORD = "same"; };'
        "  services.b.service.environment = {"
        '    DB = "postgres://postgres:same@a/x"; OTHER = "pg://postgres:diff@a/y"; }; }',
        "twenty/arion-compose.nix",
    )
    names = [f.secret_name for f in disambiguate(f.masked(key) for f in found)]
    assert names == ["twenty-a-password", "twenty-a-password", "twenty-a-password-2"]


def test_an_etc_file_named_with_the_credential_word_first_is_a_finding() -> None:
    """environment.etc."peertube/password-redis-db".text: a file named for what it holds, with the word
    first (an attribute's name must end with it: `password_db` may name a database). Both were missed
    (realcfg 36, by eye: the database's value in /etc, scan silent)."""
    src = """{ ... }: {
  environment.etc = {
    "peertube/password-posgressql-db".text = "tube-Kx81-pw";
    "peertube/password-redis-db".text = "tube-Kx81-pw";
    "peertube/db-name".text = "peertube_local";
  };
}
"""
    found = scan(src)
    assert [(f.line, f.kind) for f in found] == [(3, Kind.PASSWORD), (4, Kind.PASSWORD)]


def test_a_go_mysql_dsn_holds_a_password_and_the_images_password_flags_do_not() -> None:
    """go-sql-driver's DSN has no scheme (user:password@tcp(host)/db): the verdict missed an app's copy
    of the password in one (a sweep of real files, stop 18). MYSQL_RANDOM_ROOT_PASSWORD = "1" and
    the like are the images' flags, not passwords (init drafted them as migrations)."""
    src = b"""{
  a.environment.APP_MYSQL_URL = "app:Dsn-pw-9@tcp(db:3306)/app?parseTime=true";
  b.environment.SOCK = "app:Dsn-pw-10@unix(/run/mysqld/mysqld.sock)/app";
  c.environment = { MYSQL_RANDOM_ROOT_PASSWORD = "1"; MARIADB_ALLOW_EMPTY_ROOT_PASSWORD = "yes"; };
  d.environment.NOT_A_DSN = "user@tcp(db)";
}
"""
    found = scan_source(src, "x.nix").findings
    assert [(f.rule, f.value.reveal()) for f in found] == [("dsn", b"Dsn-pw-9"), ("dsn", b"Dsn-pw-10")]


def test_nix_s_escaped_interpolation_is_a_run_time_reference_not_a_password() -> None:
    """`"postgresql://postgres:$${DATABASE_PASSWORD}@db/x"`: $${ is Nix's escape of ${, the app fills it
    from its own secret at run time. Read as a 21-character password, patch replaced a working sops-backed
    URL with a new agenix secret (a second sweep of real files, stop 18, W8)."""
    src = b"""{
  a.environment.DATABASE_URL = "postgresql://postgres:$${DATABASE_PASSWORD}@db/app";
  b.environment.DB_PASSWORD = "$${DB_PASSWORD}";
  c.environment.DATABASE_URL = "postgresql://postgres:Real-pw-12@db/app";
}
"""
    assert [f.value.reveal() for f in scan_source(src, "x.nix").findings] == [b"Real-pw-12"]


def test_a_libpq_uri_with_its_password_in_the_query() -> None:
    """postgres:///db?host=/run/postgresql&user=app&password=PW (a public configuration, stop 21): a URL
    credential with its user, like a userinfo password (a query password beside a userinfo one stays the
    assignment it was); an empty one is none."""
    found = scan(
        """{
          a.Environment = "DATABASE_URL=postgres:///toph?host=/run/postgresql&user=toph&password=Tq-pw-9001";
          b.url = "postgresql://app:Ui-pw-77@db/x?password=Q-pw-8";
          c.url = "postgres:///x?user=a&password=";
        }"""
    )
    assert [(f.line, f.kind, f.value, f.rule) for f in found] == [
        (2, Kind.URL_CREDENTIAL, Secret("Tq-pw-9001"), "url"),
        (3, Kind.URL_CREDENTIAL, Secret("Ui-pw-77"), "url"),
        (3, Kind.PASSWORD, Secret("Q-pw-8"), "assignment"),
    ]
    assert found[0].secret_name.endswith("toph-password")


def test_a_domain_ending_in_a_credential_word_and_its_port_is_no_password() -> None:
    """nginx's `return 200 '{"m.server":"example.pw:443"}'` (a public configuration, stop 22): ``pw:443`` is
    the .pw domain's port, not a `pw` key (YAML wants `key: value`, JSON a quoted key); those still are."""
    found = scan(
        """{
          a.extraConfig = ''
            return 200 '{"m.server":"example.pw:443"}';
          '';
          b.text = "db.password: Kx-pw-44";
          c.text = ''{"password":"Jq-pw-55"}'';
        }"""
    )
    assert [(f.line, f.value) for f in found] == [(5, Secret("Kx-pw-44")), (6, Secret("Jq-pw-55"))]


def test_a_password_key_written_short_is_one() -> None:
    """`pgUser = { psswd = "..."; }` (a public configuration, stop 22): scan said "No hardcoded secrets", and
    patch "found no hardcoded password"; `psswdmd5` (a hash's name) and words merely containing it are not."""
    found = scan('{ a.psswd = "Short-xx-771"; b.pswd = "Short-xx-772"; c.psswdmd5 = "x"; d.mypsswdx = "y"; }')
    assert [(f.attr_path, f.kind) for f in found] == [("a.psswd", Kind.PASSWORD), ("b.pswd", Kind.PASSWORD)]


def test_a_pgpass_file_written_into_etc_holds_its_passwords() -> None:
    """``environment.etc."pgpass".text`` (libpq's password file, host:port:database:user:password lines) is a
    world-readable store file: each line's password is a finding; a comment line and a line with fewer than
    five fields are not; an escaped colon stays inside its field."""
    src = rb"""{
  environment.etc."pgpass".text = ''
    # host:port:database:user:password
    localhost:5432:app:app:Pgpass-pw-1
    db:*:*:report:Pg\:pass-2
    only:four:fields:here
  '';
  environment.etc."motd".text = "a:b:c:d:e";
}
"""
    found = scan_source(src, "x.nix").findings
    assert [(f.rule, f.value.reveal()) for f in found] == [("pgpass", b"Pgpass-pw-1"), ("pgpass", rb"Pg\:pass-2")]


def test_a_mysql_client_given_its_password_after_p_and_a_short_pg_password_name() -> None:
    """``mysql -uroot -pPW`` in a script is the password glued to the flag (a sweep of real shapes, stop 23;
    ``-p`` alone prompts, ``-P`` is the port, ``-p"$(cat f)"`` reads it at run time); PGPASS, sqlpw name one."""
    src = b"""{ pkgs, ... }:
{
  a.script = ''
    ${pkgs.mariadb}/bin/mysql -u root -p -e "select 1"
    mysql --socket=/run/mysqld/mysqld.sock -p"$(cat /run/pw)" db
    mysqldump -uroot -p''${PW} db > x
    mysql -h db -P 3306 -u app -papp-pw-22 app
  '';
  b.environment.PGPASS = "Pg-short-23";
  c.sqlpw = "Sql-short-24";
}
"""
    found = scan_source(src, "x.nix").findings
    assert [(f.rule, f.value.reveal()) for f in found] == [
        ("mysql-flag", b"app-pw-22"),
        ("name", b"Pg-short-23"),
        ("name", b"Sql-short-24"),
    ]


def test_store_files_under_a_secrets_attrset_are_secrets_whatever_their_names() -> None:
    """gitlab's ``secrets.{secretFile,otpFile,dbFile,jwsFile}`` as pkgs.writeText (a blind case, stop 23: scan
    and patch's notes saw the secretFile only, by its name), nested or dotted; a store file elsewhere named
    dbFile is no secret."""
    src = b"""{ pkgs, ... }:
{
  services.gitlab.secrets = {
    otpFile = pkgs.writeText "otp" "Otp-secret-value-1";
    dbFile = pkgs.writeText "db" "Db-secret-value-2";
  };
  services.gitlab.secrets.jwsFile = pkgs.writeText "jws" "Jws-secret-value-3";
  services.other.dbFile = pkgs.writeText "db" "not-a-secret-4";
}
"""
    found = scan_source(src, "x.nix").findings
    assert [f.value.reveal() for f in found] == [b"Otp-secret-value-1", b"Db-secret-value-2", b"Jws-secret-value-3"]


def test_sql_lines_under_a_password_name_are_findings_of_their_clauses() -> None:
    # `let dbPassword = ''CREATE ROLE ...''`: lines of SQL, not one password of 60 bytes; the clause's value is
    # the finding, so that patch's verdict sees the migration's password left there
    f = one(
        "let\n  dbPassword = ''\n    CREATE ROLE app LOGIN PASSWORD 'app-sql-pw';\n    CREATE DATABASE app;\n  '';\n"
        'in { services.postgresql.initialScript = builtins.toFile "i.sql" dbPassword; }\n'
    )
    assert (f.rule, f.value.reveal(), f.line) == ("sql", b"app-sql-pw", 3)


def test_a_one_line_password_under_a_password_name_is_still_the_whole_value() -> None:
    f = one("{ services.app.password = ''not-sql-but-a-pw''; }\n")
    assert (f.rule, f.value.reveal()) == ("name", b"not-sql-but-a-pw")


def test_a_sql_statement_in_a_plain_secrets_file_is_a_finding_of_its_clause() -> None:
    # every string of a secrets.nix-like file is a secret by name: one that is SQL holds the password in a clause
    f = one("{\n  db = \"ALTER USER app WITH PASSWORD 'a1';\";\n}\n", "plain-secrets.nix")
    assert (f.rule, f.value.reveal()) == ("sql", b"a1")
