"""A let-bound string whose name says nothing, read where a password goes (SQL, a URL's userinfo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixmig.nixsrc.scan import Kind, scan_source

pytestmark = pytest.mark.unit


def found(src: str) -> list[tuple[int, str, str]]:
    return [(f.line, f.rule, f.value.reveal().decode()) for f in scan_source(src.encode(), "hosts/box/db.nix").findings]


def test_a_neutral_let_read_in_sql_password_clause_is_a_password() -> None:
    src = """{ pkgs, ... }:
let
  ledgerDb = "Ledger-nn-pw-5";
in
{
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE ROLE ledger WITH LOGIN PASSWORD '${ledgerDb}';
  '';
}
"""
    assert found(src) == [(3, "read-as-sql", "Ledger-nn-pw-5")]
    (f,) = scan_source(src.encode(), "hosts/box/db.nix").findings
    assert f.kind is Kind.PASSWORD and f.attr_path == "ledgerDb"


def test_a_neutral_let_read_as_a_url_password_and_mysql_identified_by() -> None:
    src = """{ ... }:
let
  k = "Kk-nn-pw-77";
  m = "Mm-nn-pw-78";
in
{
  services.app.url = "postgres://app:${k}@db:5432/app";
  services.mysql.initialScript = builtins.toFile "i.sql" "CREATE USER 'a'@'%' IDENTIFIED BY '${m}';";
}
"""
    assert sorted(found(src)) == [(3, "read-as-url", "Kk-nn-pw-77"), (4, "read-as-sql", "Mm-nn-pw-78")]


@pytest.mark.parametrize(
    "use",
    [
        '"postgres://${k}@db/app"',  # the user, not the password
        '"postgres://app@${k}/app"',  # the host
        '"GRANT ALL ON DATABASE ${k} TO app;"',
        "\"ALTER ROLE app PASSWORD '${k}x';\"",  # part of it: not the whole value
        "''CREATE ROLE app PASSWORD :'${k}';''",
    ],
)
def test_other_reads_are_not(use: str) -> None:
    src = f'{{ ... }}:\nlet\n  k = "Kk-nn-pw-77";\nin\n{{\n  services.app.x = {use};\n}}\n'
    assert found(src) == []


def test_a_hash_or_a_placeholder_read_in_sql_is_not_a_password() -> None:
    src = """{ ... }:
let
  h = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy";
  p = "/run/secrets/app-db";
in
{
  services.postgresql.initialScript = builtins.toFile "i.sql" ''
    ALTER ROLE a PASSWORD '${h}';
    ALTER ROLE b PASSWORD '${p}';
  '';
}
"""
    assert [r for r in found(src) if r[1].startswith("read-as")] == []


def test_a_name_rule_finding_is_not_doubled() -> None:
    src = """{ ... }:
let
  dbPassword = "Dd-nn-pw-9";
in
{
  services.app.url = "postgres://app:${dbPassword}@db/app";
}
"""
    assert found(src) == [(3, "name", "Dd-nn-pw-9")]


def test_a_plain_files_neutral_key_read_as_a_password_elsewhere(tmp_path: Path) -> None:
    from nixmig.nixsrc.walk import scan_paths

    (tmp_path / "private").mkdir()
    plain = '{\n  smtpHost = "smtp.example.org";\n  albumsDb = "Alb-nn-pw-1";\n}\n'
    (tmp_path / "private" / "values.nix").write_text(plain)
    (tmp_path / "albums.nix").write_text(
        "{ pkgs, ... }:\nlet\n  private = import ./private/values.nix;\nin\n{\n"
        '  services.postgresql.initialScript = pkgs.writeText "i.sql"\n'
        "    \"ALTER ROLE a PASSWORD '${private.albumsDb}';\";\n"
        "  services.app.host = private.smtpHost;\n}\n"
    )
    run = scan_paths([str(tmp_path)], jobs=1)
    assert [(Path(f.file).name, f.line, f.rule) for f in run.findings] == [("values.nix", 3, "read-as-sql")]
    # the reader alone: the plain file is not among the paths scanned, nothing is said of it
    assert scan_paths([str(tmp_path / "albums.nix")], jobs=1).findings == []


def test_a_repo_file_read_into_a_password_is_a_finding(tmp_path: Path) -> None:
    from nixmig.nixsrc.walk import scan_paths

    (tmp_path / "pw.key").write_text("Key-file-pw-4\n")
    (tmp_path / "banner.txt").write_text("welcome\n")
    (tmp_path / "id.pub").write_text("ssh-ed25519 AAAA... me\n")
    (tmp_path / "app.nix").write_text(
        "{ lib, ... }:\nlet\n  pw = lib.strings.fileContents ./pw.key;\nin\n{\n"
        "  virtualisation.oci-containers.containers.db.environment.POSTGRES_PASSWORD = pw;\n"
        "  services.app.motd = builtins.readFile ./banner.txt;\n"
        "  users.users.me.openssh.authorizedKeys.keys = [ (builtins.readFile ./id.pub) ];\n}\n"
    )
    run = scan_paths([str(tmp_path)], jobs=1)
    found = [(Path(f.file).name, f.line, f.rule, f.attr_path) for f in run.findings]
    assert found == [("pw.key", 1, "file-read", "pw")]
