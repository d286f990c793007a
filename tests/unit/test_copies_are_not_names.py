"""A copy of a value is this migration's password only if the edits take that value out of the tree, and
never when the string names something (a user, a database): two public configurations (stop 20) were
refused with a dozen false "still holds this migration's password" lines."""

from __future__ import annotations

import shutil
from pathlib import Path

from nixmig.nixsrc import patch as pt
from tests.helpers import FIXTURES, run_cli

OTHER_ROLE = b"""{ pkgs, ... }:
{
  services.postgresql = {
    enable = true;
    initialScript = pkgs.writeText "init.sql" ''
      CREATE DATABASE blocky;
      CREATE USER blocky WITH PASSWORD 'blocky';
      GRANT ALL PRIVILEGES ON DATABASE blocky TO blocky;
      CREATE ROLE ledger WITH LOGIN PASSWORD 'ledger-pw';
      GRANT CONNECT ON DATABASE blocky TO ledger;
    '';
  };
  services.blocky.settings.queryLog.type = "postgresql";
}
"""


def test_another_role_s_password_is_no_copy_of_ours_in_the_second_pass(tmp_path: Path) -> None:
    """The other role's literal moves as a companion (also "role:blocky", value kept; it was a by-hand item
    before stop 22); its word, the database's name all over the file, is not carried to the second pass as a
    value the edits take out: no "still holds this migration's password", and the GRANTs naming it stay."""
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "shapes" / "native-initialscript-other-role", repo)
    (repo / "case.json").unlink()
    (repo / "expected.diff").unlink()
    (repo / "hosts/box/db.nix").write_bytes(OTHER_ROLE)
    proc = run_cli("patch", "--write", cwd=repo)
    err = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 1, err
    assert "take the value(s) first: nixmig secret new blocky-db-password --from hosts/box/db.nix:7;" in err, err
    assert run_cli("secret", "new", "blocky-db-password", "--from", "hosts/box/db.nix:7", cwd=repo).returncode == 0
    proc = run_cli("patch", "--write", cwd=repo)
    err = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, err
    assert "by hand: " not in err and "still holds this migration's password" not in err, err
    out = (repo / "hosts/box/db.nix").read_text()
    assert "GRANT ALL PRIVILEGES ON DATABASE blocky TO blocky;" in out and "PASSWORD 'blocky'" not in out, out


def test_a_name_equal_to_a_moved_value_is_no_copy_of_it() -> None:
    """EXAMPLES_DB = "examples" beside EXAMPLES_PASSWORD = "examples" (a companion moved onto its own
    secret): the database's name is not its password left behind."""
    src = {
        "app.nix": b"""{ ... }:
{
  virtualisation.oci-containers.containers.db = {
    image = "postgres:16";
    environment = {
      POSTGRES_PASSWORD = "Db-pw-88123";
      EXAMPLES_DB = "examples";
      EXAMPLES_PASSWORD = "examples";
    };
  };
}
"""
    }
    spec = pt.Spec(secret="db-password", host="box", container="db", also=(("EXAMPLES_PASSWORD", "examples-pw"),))
    plan = pt.plan(src, spec)
    assert not [m.what for m in plan.manual if "EXAMPLES_DB" in m.what], [m.what for m in plan.manual]
    out = plan.results(src)["app.nix"]
    assert b'EXAMPLES_DB = "examples"' in out and b"Db-pw-88123" not in out


def test_a_variable_named_like_a_database_holding_a_url_with_the_password_is_a_copy() -> None:
    """NC_DB = "pg://db:5432?u=postgres&p=PW&d=app" (nocodb's own URL form, a blind configuration, stop 20):
    the variable's name ends in DB, but the string is more than a name: the password in it is a copy left
    (the name rule above made this an exit 0 with the password left, found by a helper's experiment)."""
    src = {
        "data.nix": b"""{ ... }:
{
  virtualisation.oci-containers.containers.nocodb = {
    image = "nocodb/nocodb:latest";
    environment.NC_DB = "pg://root_db:5432?u=postgres&p=Nc-pw-55821&d=root_db";
  };
  virtualisation.oci-containers.containers.root_db = {
    image = "postgres";
    environment.POSTGRES_PASSWORD = "Nc-pw-55821";
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="nocodb-db-password", container="root_db"))
    assert any("NC_DB still holds this migration's password" in m.what for m in plan.manual), [
        m.what for m in plan.manual
    ]


def _plain_word_case(comment: str) -> tuple[object, bytes]:
    """oci-app-bare-password with the password "password" (a plain word) and ``comment`` after the app's line."""
    from tests.helpers import plan_shape_case

    case = "oci-app-bare-password"
    file = "hosts/box/photos.nix"
    text = (FIXTURES / "shapes" / case / file).read_bytes().replace(b"photos-pw-42", b"password")
    text = text.replace(b'DB_PASSWORD = "password";', b'DB_PASSWORD = "password"; # ' + comment.encode())
    return plan_shape_case(case, file, text)


def test_a_plain_word_password_in_a_comment_s_prose_is_no_copy() -> None:
    """``# Should match postgres password`` beside DB_PASSWORD = "password" (a public configuration, stop 21):
    the comment's word is prose, not a copy left commented out; the plan is whole."""
    plan, patched = _plain_word_case("Should match postgres password")
    assert not plan.manual, plan.manual  # type: ignore[attr-defined]
    assert b'"password"' not in patched


def test_a_plain_word_password_in_commented_out_code_is_a_copy() -> None:
    """The same word quoted in a comment (``# DB_PASSWORD = "password";``) is a copy left commented out."""
    plan, _ = _plain_word_case('old: DB_PASSWORD = "password";')
    assert any("a comment holds this migration's password" in m.what for m in plan.manual)  # type: ignore[attr-defined]
