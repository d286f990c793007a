"""patch's verdict comes from a scan: "nothing to change" only when nothing is left (issue 12, part 1)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from nixmig.errors import ConfigError
from nixmig.nixsrc import leftover as lo
from nixmig.nixsrc import patch as pt
from nixmig.nixsrc import validate
from nixmig.nixsrc.model import model
from nixmig.nixsrc.scan import scan_source
from tests.helpers import EXAMPLE, FIXTURES, copy_example, plan_shape_case, run_cli, snapshot

SHAPES = FIXTURES / "shapes"

TOML = """\
[hosts.box]
address = "box.example.org"

[services.db]
host = "box"
container = "{container}"
database = "app"
role = "{role}"

[migrations.app-db]
service = "db"
secret = "app-db"
"""

MYSQL_ONLY = """{ config, ... }:
{
  age.secrets.other.file = ../secrets/other.age;
  virtualisation.oci-containers.containers.shop-db = {
    image = "mariadb:11";
    environment = {
      MARIADB_USER = "app";
      MARIADB_PASSWORD = "hunter2hunter2";
    };
  };
}
"""

NOTHING = """{ config, ... }:
{
  virtualisation.oci-containers.containers.web = {
    image = "nginx:1";
    ports = [ "80:80" ];
  };
}
"""


def _repo(tmp: Path, files: dict[str, str], *, container: str = "db", role: str = "app") -> Path:
    repo = tmp / "repo"
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    (repo / "nixmig.toml").write_text(TOML.format(container=container, role=role))
    return repo


def test_a_literal_no_rule_matches_is_reported_not_called_patched(tmp_path: Path) -> None:
    """The shape the old patch called "nothing to change" with exit 0 while scan found the password."""
    repo = _repo(tmp_path, {"hosts/box/db.nix": MYSQL_ONLY})
    before = snapshot(repo)
    for mode in ("--check", "--write"):
        out = run_cli("patch", "--repo", str(repo), mode)
        err, text = out.stderr.decode(), out.stdout.decode()
        assert out.returncode == 1, (mode, text, err)
        assert "nothing to change" not in err
        assert "hosts/box/db.nix:8:" in text and "MARIADB_PASSWORD" in text and "MySQL/MariaDB" in text
        assert "hunter2" not in text + err
    assert snapshot(repo) == before
    out = run_cli("patch", "--repo", str(repo), "--json")
    data = json.loads(out.stdout)
    assert data["clean"] is False
    assert [(m["file"], m["line"]) for m in data["manual"]] == [("hosts/box/db.nix", 8)]


def test_a_tree_with_neither_the_password_nor_the_secret_is_not_patched(tmp_path: Path) -> None:
    repo = _repo(tmp_path, {"hosts/box/web.nix": NOTHING})
    out = run_cli("patch", "--repo", str(repo), "--check")
    assert out.returncode == 1
    assert "found no hardcoded password of role 'app'" in out.stdout.decode()
    assert "nothing to change" not in out.stderr.decode()


def test_a_bare_copy_of_the_password_in_another_file_is_left_and_said() -> None:
    """The same value the plan replaces, bound elsewhere under a name no rule knows: reported by value."""
    src = pt.read_sources(EXAMPLE)
    name = "modules/system/linux/twenty-crm.nix"
    src[name] = src[name].replace(
        b"    };\n  };\n}", b'    };\n    environment.etc."x".text = "pw: postgres";\n  };\n}'
    )
    plan = pt.plan(src, pt.Spec(secret="twenty-db-password", host="newton", container="twenty-db-1"))
    left = [m for m in plan.manual if m.file == name]
    assert len(left) == 1 and "this migration's password" in left[0].what, plan.manual


def test_scan_finds_nothing_in_what_patch_wrote(tmp_path: Path) -> None:
    """`nixmig scan --fail-on-findings` passes right after a correct `patch --write` of the worked example
    (it used to flag patch's own bind mount "SRC:DST:ro" as a 2-character password)."""
    repo = copy_example(tmp_path)
    (repo / "nixmig.toml").write_text(
        TOML.format(container="twenty-db-1", role="postgres")
        .replace("box", "newton")
        .replace('secret = "app-db"', 'secret = "twenty-db-password"')
    )
    assert run_cli("patch", "--repo", str(repo), "--write").returncode == 0
    out = run_cli("scan", "--fail-on-findings", str(repo))
    assert out.returncode == 0, out.stdout.decode()
    out = run_cli("patch", "--repo", str(repo), "--check")
    assert out.returncode == 0 and "nothing to change" in out.stderr.decode()


def test_volume_specs_and_agenix_paths_are_not_passwords() -> None:
    src = b"""{ config, ... }: {
  a.volumes = [ "/run/agenix/db-password:/run/secrets/db-password:ro" "db-secret:/x:rw" ];
  b.passwordFile = config.age.secrets.db-password.path;
  c.environment.PASSWORD_FILE = "/run/secrets/db-password";
}
"""
    assert scan_source(src, "x.nix").findings == ()


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("module", "modules/system/linux/twenty.nix", "did you mean: modules/system/linux/twenty-crm.nix"),
        ("compose", "arion-compose.nix", "modules/system/linux/twenty/arion-compose.nix"),
        ("host_file", "hosts/newtn/default.nix", "did you mean: hosts/newton/default.nix"),
        ("db_service", "postgres", "candidates: db, redis, server, worker"),
        ("app_services", "servr", "did you mean: server"),
        ("unit", "twenty-arion", "arion-twenty"),
    ],
)
def test_a_key_that_names_nothing_is_an_error_with_the_candidates(key: str, value: str, said: str) -> None:
    spec = pt.Spec(secret="twenty-db-password", host="newton", container="twenty-db-1")
    given: dict[str, Any] = {key: (value,) if key == "app_services" else value}
    spec = dataclasses.replace(spec, **given)
    with pytest.raises(ConfigError) as exc:
        pt.plan(pt.read_sources(EXAMPLE), spec)
    assert repr(value) in str(exc.value) and said in (exc.value.hint or ""), (str(exc.value), exc.value.hint)


def test_a_file_option_set_to_a_path_is_no_password() -> None:
    """`adminpassFile = "/etc/x"` names a file: patch once took the path for the password, replaced it and
    claimed success with the password (in an /etc text it did not see) left."""
    src = {
        "cloud.nix": b"""{ pkgs, ... }:
{
  environment.etc."cloud-admin".source = ./admin.txt;
  services.nextcloud.config.adminpassFile = "/etc/cloud-admin";
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="cloud-admin-pass", role="admin"))
    assert plan.edits == ()
    assert plan.manual and "found no hardcoded password" in plan.manual[0].what


def test_a_by_hand_snippet_names_the_containers_real_unit_and_option() -> None:
    """An oci container's literal nixmig leaves (here: not in app_services) gets a snippet for the unit that
    starts it (docker-/podman-NAME through the backend option) and its environmentFiles, never
    `systemd.services.oci-containers`; the snippet is Nix a module can hold."""
    src = {
        "box.nix": b"""{ config, lib, pkgs, ... }:
{
  virtualisation.oci-containers.containers.shop-db = {
    image = "postgres:16";
    environment.POSTGRES_PASSWORD = "pw-for-db-1";
  };
  virtualisation.oci-containers.containers.web = {
    image = "example/web:1";
    environment.DATABASE_URL = "postgres://postgres:pw-for-db-1@db/web";
  };
  virtualisation.oci-containers.containers.api = {
    image = "example/api:1";
    environment.DATABASE_URL = "postgres://postgres:pw-for-db-1@db/api";
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="db-pw", container="db", app_services=("api",)))
    (m,) = [m for m in plan.manual if m.line == 9]
    assert '"${config.virtualisation.oci-containers.backend}-web"' in m.snippet
    assert "virtualisation.oci-containers.containers.web.environmentFiles" in m.snippet
    assert "systemd.services.oci-containers" not in m.snippet and "pw-for-db-1" not in m.snippet
    if shutil.which("nix-instantiate"):
        validate.check_all({"s.nix": ("{ config, lib, pkgs, ... }: {\n" + m.snippet + "\n}\n").encode()}, use_nix=True)


MARIADB = b"""{ config, lib, pkgs, ... }:
{
  virtualisation.oci-containers.containers.wiki-db = {
    image = "mariadb:11";
    environment = {
      MARIADB_USER = "wiki";
      MARIADB_PASSWORD = "wiki-pw-7";
      MARIADB_ROOT_PASSWORD = "root-pw-9";
    };
  };
  virtualisation.oci-containers.containers.wiki = {
    image = "example/wiki:2";
    environment.DB_PASSWD = "wiki-pw-7";
    environment.DATABASE_URL = "mysql://wiki:wiki-pw-7@wiki-db/wiki";
  };
}
"""


def test_strategy_move_patches_a_mariadb_user_and_its_apps_and_says_the_root_password() -> None:
    src = {"wiki.nix": MARIADB}
    rotate = pt.plan(src, pt.Spec(secret="wiki-db", role="wiki", container="wiki-db"))
    assert rotate.edits == () and {m.line for m in rotate.manual if "MySQL/MariaDB" in m.what} == {7, 8, 14}
    plan = pt.plan(src, pt.Spec(secret="wiki-db", role="wiki", container="wiki-db", strategy="move"))
    out = plan.results(src)["wiki.nix"].decode()
    assert 'MARIADB_PASSWORD_FILE = "/run/secrets/wiki-db";' in out
    assert '"${config.age.secrets.wiki-db.path}:/run/secrets/wiki-db:ro"' in out
    assert "wiki-pw-7" not in out and "environmentFiles" in out
    # the root password is another user's: left, and said with its line
    assert [(m.line, "MySQL/MariaDB" in m.what) for m in plan.manual] == [(8, True)]
    root = pt.plan(src, pt.Spec(secret="wiki-root", role="root", container="wiki-db", strategy="move"))
    assert 'MARIADB_ROOT_PASSWORD_FILE = "/run/secrets/wiki-root";' in root.results(src)["wiki.nix"].decode()
    if shutil.which("nix-instantiate"):
        validate.check_all(plan.results(src), use_nix=True)


def test_a_write_that_would_lose_a_kept_value_is_refused_and_names_the_commands(tmp_path: Path) -> None:
    """strategy move and also keep today's value: --write removes the only line that holds it, so
    before its .age exists the write is refused, nothing written, with the `secret new --from`
    commands; after them, the same write goes through (before: it wrote, and --from had nothing left)."""
    repo = tmp_path / "repo"
    shutil.copytree(Path(__file__).parent.parent / "fixtures" / "shapes" / "oci-mysql-user-and-root-also", repo)
    (repo / "case.json").unlink()
    (repo / "expected.diff").unlink()
    before = snapshot(repo)
    out = run_cli("patch", "--repo", str(repo), "--write")
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert "secrets/shop-db-password.age does not exist, and this write removes the line" in err
    assert snapshot(repo) == before
    takes = err.split("take the value(s) first: ")[1].split("; then")[0].split(" && ")
    assert [t.split()[3] for t in takes] == ["shop-db-password", "shop-db-root-password"]
    for t in takes:
        made = run_cli(*t.split()[1:], "--repo", str(repo))
        assert made.returncode == 0, made.stderr.decode()
    out = run_cli("patch", "--repo", str(repo), "--write")
    assert out.returncode == 0, out.stderr.decode()
    assert run_cli("patch", "--repo", str(repo), "--check").returncode == 0
    assert run_cli("scan", str(repo), "--fail-on-findings").returncode == 0


def test_a_mysql_password_set_twice_in_the_script_keeps_the_last_value(tmp_path: Path) -> None:
    """CREATE USER ... IDENTIFIED BY 'a'; then GRANT ... IDENTIFIED BY 'b' for the same account: the script
    ends with b (before: refused, "2 passwords"). The move keeps b: `secret new --from` is pointed at the
    GRANT's value (its clause starts at the end of the line before), never at the dead first value."""
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "shapes" / "native-mysql-initialscript-password-set-twice", repo)
    for extra in ("case.json", "expected.diff"):
        (repo / extra).unlink()
    out = run_cli("patch", "--repo", str(repo), "--write")
    err = out.stderr.decode()
    assert out.returncode == 1, err
    take = err.split("take the value(s) first: ")[1].split("; then")[0]
    assert take == "nixmig secret new cloud-db-password --from hosts/cloud/cloud.nix:13", err
    assert "first-try-11" not in err and "cloud-live-pw-72" not in err
    made = run_cli(*take.split()[1:], "--repo", str(repo))
    assert made.returncode == 0, made.stderr.decode()
    out = run_cli("patch", "--repo", str(repo), "--write")
    assert out.returncode == 0, out.stderr.decode()
    assert "sets the password of 'cloud'@'localhost' 2 times" in out.stderr.decode()
    # nextcloud's adminpass, another credential, stays (noted); a second write must not take it as the
    # migration's now that the first took the database's value (it pointed adminpassFile at the database's secret)
    written = snapshot(repo)
    again = run_cli("patch", "--repo", str(repo), "--write")
    assert again.returncode == 0 and snapshot(repo) == written, again.stdout.decode() + again.stderr.decode()
    assert 'adminpass = "cloud-admin-pw-9";' in (repo / "hosts/cloud/cloud.nix").read_text()


def test_a_mysql_password_in_a_repository_sql_file_is_taken_from_its_line_then_set_by_the_oneshot(
    tmp_path: Path,
) -> None:
    """services.mysql.initialScript = ./sql/setup.sql with IDENTIFIED BY '...' (before: scan saw nothing, patch
    said it found no password). scan lists it; patch makes it a by-hand item at its line there, naming the
    `secret new --from` that takes the value out of the SQL file; after the clause is replaced by hand, patch
    adds the oneshot and the tree scans clean."""
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "shapes" / "native-mysql-initialscript-sql-file-password", repo)
    (repo / "case.json").unlink()
    sql = repo / "hosts/shop/sql/setup.sql"
    found = run_cli("scan", str(repo), "--json")
    assert [f["file"].endswith("setup.sql") and f["line"] for f in json.loads(found.stdout)["findings"]] == [3]
    out = run_cli("patch", "--repo", str(repo), "--write")
    err = out.stdout.decode() + out.stderr.decode()
    assert out.returncode == 1 and "hosts/shop/sql/setup.sql:3:47: the password of 'shop'@'localhost'" in err, err
    take = err.split("take the value first (`")[1].split("`")[0]
    assert take == "nixmig secret new shop-db-password --from hosts/shop/sql/setup.sql:3"
    made = run_cli(*take.split()[1:], "--repo", str(repo))
    assert made.returncode == 0, made.stderr.decode()
    assert "shop-sql-pw-58" not in made.stdout.decode() + made.stderr.decode() + err
    sql.write_text(sql.read_text().replace(" IDENTIFIED BY 'shop-sql-pw-58'", " ACCOUNT LOCK"))
    out = run_cli("patch", "--repo", str(repo), "--write")
    assert out.returncode == 0, out.stderr.decode()
    assert (
        "ALTER USER 'shop'@'localhost' IDENTIFIED BY '$pw' ACCOUNT UNLOCK;"
        in (repo / "hosts/shop/default.nix").read_text()
    )
    assert run_cli("scan", str(repo), "--fail-on-findings").returncode == 0


def test_the_refusal_names_the_let_binding_that_holds_a_kept_value(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(Path(__file__).parent.parent / "fixtures" / "shapes" / "oci-mysql-user-and-root-also", repo)
    for extra in ("case.json", "expected.diff"):
        (repo / extra).unlink()
    toml = repo / "nixmig.toml"
    toml.write_text("\n".join(ln for ln in toml.read_text().splitlines() if not ln.startswith("also")) + "\n")
    (nix,) = [p for p in repo.rglob("*.nix") if "secrets" not in p.parts]
    nix.write_text(
        '{ config, ... }:\nlet\n  pw = "let-bound-pw-9";\nin\n{\n'
        '  virtualisation.oci-containers.containers.shop-db = {\n    image = "mysql:8.0";\n'
        '    environment = { MYSQL_USER = "shop"; MYSQL_DATABASE = "shop"; MYSQL_PASSWORD = pw; };\n  };\n}\n'
    )
    rel = nix.relative_to(repo).as_posix()
    out = run_cli("patch", "--repo", str(repo), "--write")
    assert out.returncode == 1
    assert f"take the value(s) first: nixmig secret new shop-db-password --from {rel}:3;" in out.stderr.decode()


def test_a_mariadb_password_an_app_names_by_its_user_is_refused_under_rotate() -> None:
    """The app's DB_USER / DB_PASSWD name the role, so the plan takes DB_PASSWD's value as the password,
    and MARIADB_PASSWORD holds it too. Under rotate that was moved like any app variable and patch
    said done (realcfg 39, romm): apply would then run PostgreSQL's phases against MariaDB. Nothing
    is written; the line names strategy move."""
    src = {
        "romm.nix": b"""{ config, lib, pkgs, ... }:
{
  virtualisation.oci-containers.containers.games-db = {
    image = "mariadb:11";
    environment = {
      MARIADB_DATABASE = "games";
      MARIADB_USER = "games_user";
      MARIADB_PASSWORD = "games-pw-4411";
    };
  };
  virtualisation.oci-containers.containers.games = {
    image = "example/games:3";
    environment = {
      DB_HOST = "games-db";
      DB_USER = "games_user";
      DB_PASSWD = "games-pw-4411";
    };
  };
}
"""
    }
    spec = pt.Spec(secret="games-db-password", role="games_user", container="games-db", migration="games")
    plan = pt.plan(src, spec, find_companions=True)
    assert plan.edits == () and plan.auto_also == ()
    first = plan.manual[0]
    assert first.line == 8 and 'set strategy = "move" in [migrations.games]' in first.what
    assert "--from romm.nix:8" in first.what and "nothing is written" in " ".join(plan.notes)
    moved = pt.plan(src, dataclasses.replace(spec, strategy="move"), find_companions=True)
    assert moved.edits and moved.manual == ()


REDIS_ONLY = {
    "redis.nix": b"""{ config, ... }:
{
  services.redis.servers.forge = {
    enable = true;
    requirePass = "forge-redis-83";
  };
}
"""
}


def test_a_redis_password_is_never_rotated_as_the_migration_s_own() -> None:
    """requirePass is no database's password: under rotate it would get the new database password while
    redis' clients keep the old one (realcfg 33: patch moved it onto the rotated secret, exit 0). Under
    rotate it is refused, naming strategy move; under move (init's draft for it) it moves, value kept."""
    rotate = pt.plan(REDIS_ONLY, pt.Spec(secret="forge-redis", role="forge", migration="forge-redis"))
    assert rotate.edits == ()
    (m,) = rotate.manual
    assert m.line == 5 and "no database's password" in m.what and 'strategy "move"' in m.what
    move = pt.plan(REDIS_ONLY, pt.Spec(secret="forge-redis", role="forge", strategy="move"))
    out = move.results(REDIS_ONLY)["redis.nix"].decode()
    assert "requirePassFile = config.age.secrets.forge-redis.path;" in out and move.manual == ()


def test_peertube_reads_its_database_password_file_as_its_own_user() -> None:
    """nixpkgs' peertube unit cats database.passwordFile in its script, as services.peertube.user: a
    root-only agenix file would leave peertube unable to log in (realcfg 36, by eye)."""
    src = {
        "peertube.nix": b"""{ config, pkgs, ... }:
{
  services.peertube.database.user = "tube";
  services.peertube.database.passwordFile = pkgs.writeText "tube-db" "tube-pw-552";
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE ROLE tube LOGIN PASSWORD 'tube-pw-552';
  '';
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="tube-db-password", role="tube"))
    out = plan.results(src)["peertube.nix"].decode()
    assert "owner = config.services.peertube.user;" in out, out
    assert "tube-pw-552" not in out and plan.manual == ()


def test_function_files_called_without_config_stay_refused() -> None:
    """The fixture oci-function-files-called-with-module-args, with a caller that passes pkgs and lib
    but not config: the files cannot take config, so nothing is written and the first line says why."""
    root = Path(__file__).parent.parent / "fixtures" / "shapes" / "oci-function-files-called-with-module-args"
    sources = pt.read_sources(root)
    caller = "hosts/box/containers/default.nix"
    sources[caller] = sources[caller].replace(b"inherit config pkgs lib;", b"inherit pkgs lib;")
    spec = pt.Spec(secret="wiki-db-password", role="wiki", container="wiki-db")
    plan = pt.plan(sources, spec)
    assert plan.edits == ()
    assert "not a NixOS module nixmig can give" in plan.manual[0].what
    assert pt.plan(pt.read_sources(root), spec).edits  # with config passed: patched (the fixture)


def test_freshrss_reads_its_database_pass_file_as_its_own_user() -> None:
    """nixpkgs' freshrss-config runs as services.freshrss.user and cats database.passFile: the agenix file
    is owned by that user (realcfg6 15, the held-out set's by-eye review: root-only 0400, permission denied)."""
    src = {
        "rss.nix": b"""{ config, pkgs, ... }:
{
  services.freshrss.database = { type = "pgsql"; user = "rss"; passFile = pkgs.writeText "p" "rss-pw-8812"; };
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE ROLE rss LOGIN PASSWORD 'rss-pw-8812';
  '';
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="rss-db-password", role="rss"))
    out = plan.results(src)["rss.nix"].decode()
    assert "owner = config.services.freshrss.user;" in out, out
    assert "rss-pw-8812" not in out and plan.manual == ()
    # and the oneshot finds a server on another port (settings.port names its socket; 07 of the same set)
    assert "-p ${toString (config.services.postgresql.settings.port or config.services.postgresql.port or 5432)}" in out


def test_a_module_held_as_a_value_is_patched_as_a_module_file_and_a_wrapped_one_is_said_as_such() -> None:
    """flake-parts' flake.modules.nixos.X = { config, ... }: { ... }: the module value is patched as the same
    module in a file of its own would be (before: refused as 'a NixOS module held as a value', realcfg6 05).
    A value nixmig does not read as a module (the author's wrapper function around it) is still said as such
    (before that: 'a migration with strategy move moves one such value' to a nixmig.toml that had one)."""
    module = b"""{ config, lib, ... }: {
    virtualisation.oci-containers.containers.wikidb = {
      image = "lscr.io/linuxserver/mariadb";
      environment = { MYSQL_USER = "wiki"; MYSQL_PASSWORD = "Wiki-db-7781"; };
    };
  }"""
    spec = pt.Spec(secret="wiki-db", role="wiki", container="wikidb", strategy="move")
    held = {"modules/db.nix": b"{ inputs, ... }:\n{\n  flake.modules.nixos.wikidb = " + module + b";\n}\n"}
    alone = {"modules/db.nix": module + b"\n"}
    plan, file_plan = pt.plan(held, spec), pt.plan(alone, spec)
    assert plan.manual == () == file_plan.manual
    assert [e.replacement for e in plan.edits] == [e.replacement for e in file_plan.edits]
    after = plan.results(held)["modules/db.nix"].decode()
    assert after.index("age.secrets.wiki-db") < after.rindex("};\n}")  # inside the module value
    wrapped = {"modules/db.nix": b"{ inputs, ... }:\n{\n  flake.modules.nixos.wikidb = mkWiki (" + module + b");\n}\n"}
    (m,) = [m for m in pt.plan(wrapped, spec).manual if m.line == 6]
    assert "inside flake.modules.nixos.wikidb, a NixOS module held as a value" in m.what
    assert lo.module_as_value(("virtualisation", "oci-containers", "containers", "x", "environment", "V")) == ""


def test_a_variable_naming_a_user_or_database_with_the_password_s_value_is_no_credential() -> None:
    """password == user name is common ("postgres"): PGUSER / PGDATABASE holding it are names, not a
    companion to move (env_words splits PGUSER into pg + user); HASHING_SEED holding it is one."""
    src = {
        "app.nix": b"""{ config, ... }:
{
  virtualisation.oci-containers.containers.db = {
    image = "postgres:16";
    environment = { POSTGRES_PASSWORD = "postgres"; };
  };
  virtualisation.oci-containers.containers.app = {
    image = "example/app:1";
    environment = {
      DATABASE_URL = "postgres://postgres:postgres@db/postgres";
      PGUSER = "postgres";
      PGDATABASE = "postgres";
      HASHING_SEED = "postgres";
    };
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="db-password", role="postgres", container="db", migration="m"))
    assert [m.companion for m in plan.manual] == ["HASHING_SEED"], [m.what for m in plan.manual]


def test_an_env_text_logging_in_as_another_role_is_not_taken_for_this_one_s_on_a_second_run() -> None:
    """The SQL a unit runs gives role immich its password; the apps' /etc env text logs in as postgres
    with another value. The first --write moves the SQL's; a second run, with no literal of role immich
    left, took the env text's DB_PASSWORD (and DB_USERNAME, its value the same) for immich's and moved
    them: a second --write changed the tree (realcfg 25 with init's draft, `wrong`)."""
    src = {
        "immich.nix": b"""{ config, pkgs, ... }:
{
  systemd.services.create-immich-db = {
    after = [ "podman-postgres.service" ];
    serviceConfig.Type = "oneshot";
    serviceConfig.ExecStart = ''
      ${pkgs.podman}/bin/podman exec -i postgres psql -U postgres \\
        -c "CREATE ROLE immich WITH LOGIN PASSWORD 'Immich-sql-41';"
    '';
  };
  environment.etc."immich/.env".text = ''
    DB_HOSTNAME=postgres
    DB_USERNAME=postgres
    DB_PASSWORD=postgres
  '';
  virtualisation.oci-containers.containers.immich = {
    image = "ghcr.io/immich-app/immich-server:release";
    environmentFiles = [ /etc/immich/.env ];
  };
}
"""
    }
    spec = pt.Spec(secret="immich-db-password", role="immich", container="postgres", migration="immich-db-password")
    first = pt.plan(src, spec)
    after = {**src, **first.results(src)}
    out = after["immich.nix"].decode()
    assert "Immich-sql-41" not in out and "DB_PASSWORD=postgres" in out and "DB_USERNAME=postgres" in out
    again = pt.plan(after, spec)
    assert again.edits == (), [e.explanation for e in again.edits]


def test_a_password_bound_under_a_plain_name_and_read_elsewhere_too_is_said_not_called_patched() -> None:
    """`s = "..."` (a name that says nothing) read by the app's NOTES_DB_PASSWORD and by a hash in an /etc
    file; the SQL a unit runs holds the same value. The app's use is moved, the binding must stay for the
    other use: said, with that use's line, never "patched" (before: exit 0 with the literal left)."""
    src = (SHAPES / "oci-let-plain-name-password-and-unit-sql" / "hosts" / "box" / "notes.nix").read_bytes()
    src = src.replace(
        b"  systemd.services.notes-db-init",
        b'  environment.etc."notes/hash".text = builtins.hashString "sha256" s;\n  systemd.services.notes-db-init',
    )
    spec = pt.Spec(secret="notes-db-password", role="notes", container="postgres")
    plan = pt.plan({"notes.nix": src}, spec)
    assert any(
        "the hardcoded password, bound at notes.nix" in m.what and "/etc/notes/hash" in m.what for m in plan.manual
    )
    assert b"Notes-pw-2218" in plan.results({"notes.nix": src})["notes.nix"]  # the binding stays, said


def test_a_container_whose_unit_name_is_computed_is_said_not_rendered_for_a_unit_that_may_not_exist() -> None:
    """serviceName set by an expression: nixmig cannot tell the unit that starts the container, so it
    writes no ExecStartPre for a guessed one (the container's --env-file would name a file nothing writes)."""
    src = (SHAPES / "oci-container-service-name" / "hosts" / "box" / "wiki.nix").read_bytes()
    src = src.replace(b'serviceName = "wiki-server";', b'serviceName = "${config.networking.hostName}-wiki";')
    spec = pt.Spec(secret="wiki-db-password", role="wiki", container="wiki-db")
    plan = pt.plan({"wiki.nix": src}, spec)
    out = plan.results({"wiki.nix": src}).get("wiki.nix", b"")
    assert b'-wiki".serviceConfig' not in out and b"environmentFiles" not in out
    assert any("WIKI_DB_PASSWORD" in m.what or "unit" in m.what for m in plan.manual), plan.manual


def test_a_script_s_pgpassword_is_said_on_the_second_run_too() -> None:
    """PGPASSWORD=... in a unit's script where nixmig cannot replace it (here in a heredoc): said by hand on
    the first run (the value is the database's); after the database's variable moved, the second run must
    still say it, not call the tree patched (a sweep of real files, stop 18: exit 1, then exit 0 with the
    literal still there). Written on a command line of the script it moves (shapes/script_literal.py)."""
    heredoc = b"""cat > /run/report/env <<EOF
    PGPASSWORD=Report-pw-61
    EOF
    ${pkgs.postgresql}/bin/psql -h localhost -U app -c 'select 1'"""
    template = b"""{ pkgs, ... }:
{
  virtualisation.oci-containers.containers.db = {
    image = "postgres:16";
    environment = { POSTGRES_USER = "app"; POSTGRES_PASSWORD = "Report-pw-61"; };
  };
  systemd.services.report.script = ''
    SCRIPT
  '';
}
"""
    src = {"app.nix": template.replace(b"SCRIPT", heredoc)}
    spec = pt.Spec(secret="app-db-password", role="app", container="db")
    first = pt.plan(src, spec)
    assert any("systemd.services.report.script" in m.what for m in first.manual), first.manual
    after = {**src, **first.results(src)}
    again = pt.plan(after, spec)
    assert any("systemd.services.report.script" in m.what for m in again.manual), again.manual
    plain = {"app.nix": template.replace(b"SCRIPT", b"PGPASSWORD=Report-pw-61 ${pkgs.postgresql}/bin/psql -U app")}
    moved = pt.plan(plain, spec)
    assert moved.manual == (), [m.what for m in moved.manual]
    assert b"Report-pw-61" not in moved.results(plain)["app.nix"]


def test_a_comment_holding_the_password_goes_or_is_said() -> None:
    """A copy of the password left commented out is in the file's text (the Nix store, the repo): a comment
    alone on its line goes, one after code is said; masked in the diff either way (a sweep, stop 18: it was
    left, exit 0, and printed in clear as the diff's context)."""
    src = {
        "db.nix": b"""{ ... }:
{
  virtualisation.oci-containers.containers.db = {
    image = "postgres:16";
    environment = {
      # POSTGRES_PASSWORD = "Old-copy-pw-72";
      POSTGRES_USER = "app"; # was app / Old-copy-pw-72
      POSTGRES_PASSWORD = "Old-copy-pw-72";
    };
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="app-db-password", role="app", container="db"))
    out = plan.results(src)["db.nix"].decode()
    assert "# POSTGRES_PASSWORD" not in out and "# was app / Old-copy-pw-72" in out
    assert [m.line for m in plan.manual] == [7] and "a comment holds" in plan.manual[0].what
    assert "Old-copy-pw-72" not in plan.diff(src)


def test_a_let_named_for_another_credential_with_the_database_s_value_is_said_as_another_credential() -> None:
    """`appSecretKey = "..."` holding the database's value, read where nixmig has no edit: said as another
    credential (its own secret), not as "the hardcoded password ... the binding stays until this use reads
    the secret" (which told the user to give a secret key the database's secret; by-eye review, stop 18)."""
    src = {
        "a.nix": b"""{ pkgs, ... }:
let
  appSecretKey = "Same-redacted-9";
in
{
  virtualisation.oci-containers.containers.db = {
    image = "postgres:16";
    environment = { POSTGRES_USER = "app"; POSTGRES_PASSWORD = "Same-redacted-9"; };
  };
  virtualisation.oci-containers.containers.web = {
    image = "example/web";
    cmd = [ "--secret" appSecretKey ];
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="app-db-password", role="app", container="db"))
    (m,) = plan.manual
    assert m.line == 3 and "under another credential's name (a key)" in m.what, m.what


def test_a_kept_value_an_env_file_line_cannot_hold_is_refused_for_an_app_under_move() -> None:
    """strategy move keeps the value; an app's bare DB_PASSWORD goes into an env file line that the renderer
    writes only for A-Z a-z 0-9 - . _ ~. With `&^*` in it the unit stopped at every start while patch said
    the tree was patched (a second sweep of real files, stop 18, W9): said instead, by hand."""
    src = {
        "app.nix": b"""{ ... }: {
  virtualisation.oci-containers.containers.db = {
    image = "mariadb:11";
    environment = { MYSQL_USER = "app"; MYSQL_PASSWORD = "B&Bpa^ss*1"; MYSQL_DATABASE = "app"; };
  };
  virtualisation.oci-containers.containers.app = {
    image = "example/app";
    environment = { DB_HOST = "db"; DB_USER = "app"; DB_PASSWORD = "B&Bpa^ss*1"; };
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="app-db-password", role="app", container="db", strategy="move"))
    assert any("DB_PASSWORD: the value strategy move keeps" in m.what for m in plan.manual), plan.manual
    assert b"DB_PASSWORD ''' " not in plan.results(src)["app.nix"]


def test_a_literal_inside_a_binding_an_edit_wraps_is_still_said_on_the_first_run() -> None:
    """The renderer goes first among a unit's own ExecStartPre (an edit that wraps the binding and keeps its
    text): the SQL in that ExecStartPre still sets the old password at every start. The first run said
    nothing (the literal was "covered" by the edit) and exit 0; only a second run saw it (a second sweep of
    real files, stop 18, W6)."""
    src = {
        "app.nix": b"""{ config, lib, pkgs, ... }: {
  services.mysql = { enable = true; package = pkgs.mariadb; ensureDatabases = [ "app" ];
    ensureUsers = [ { name = "app"; ensurePermissions."app.*" = "ALL PRIVILEGES"; } ]; };
  systemd.services.app = {
    wantedBy = [ "multi-user.target" ];
    environment = { DATABASE_USERNAME = "app"; DATABASE_PASSWORD = "Wrapped-pw-44"; };
    serviceConfig.ExecStartPre = "+${pkgs.writeShellScript "db-init" ''
      echo "ALTER USER 'app'@'localhost' IDENTIFIED BY 'Wrapped-pw-44';" | ${pkgs.mariadb}/bin/mariadb
    ''}";
    serviceConfig.ExecStart = "${pkgs.hello}/bin/hello";
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="app-db-password", role="app", strategy="move"))
    assert any("ExecStartPre still holds" in m.what for m in plan.manual), plan.manual


def test_a_move_of_one_service_s_secret_never_takes_another_service_s_in_the_same_file() -> None:
    """Two strategy-move migrations init drafts from one file, lanraragi's passwordFile (a store file) and
    redis' requirePass: each took the other's (the secrets swapped, lanraragi's store file left) and both
    said patched (a second sweep of real files, stop 18, W7). The migration's service key names the nixpkgs
    service: only its options are this migration's; several there is said, not guessed."""
    src = {
        "app.nix": b"""{ pkgs, ... }: {
  services.lanraragi = {
    enable = true;
    passwordFile = pkgs.writeText "lrr-pass" "Lrr-admin-pw-1";
    redis.passwordFile = pkgs.writeText "lrr-pass" "Lrr-redis-pw-2";
  };
  services.redis.servers.other = { enable = true; port = 9998; requirePass = "Other-redis-pw-3"; };
}
"""
    }
    redis = pt.plan(src, pt.Spec(secret="redis-password", strategy="move", service="redis", migration="redis-password"))
    out = redis.results(src)["app.nix"].decode()
    assert "requirePassFile = config.age.secrets.redis-password.path" in out
    assert 'writeText "lrr-pass" "Lrr-redis-pw-2"' in out  # lanraragi's own redis password: not this one
    lrr = pt.plan(src, pt.Spec(secret="lanraragi-password", strategy="move", service="lanraragi", migration="l"))
    assert lrr.manual  # two store files of lanraragi: which is the one? said, not guessed
    assert b"lanraragi-password" not in lrr.results(src).get("app.nix", src["app.nix"]).split(b"servers.other")[1]


def test_a_file_option_of_the_repo_s_own_module_is_taken_only_when_something_reads_it() -> None:
    """The repo's module declares database.passwordFile but reads only database.password (a public
    configuration, stop 19): pointing the option at the secret would leave the service without its
    password. Refused, naming the declaration; once the module reads it, the option is taken."""
    case = "native-repo-module-password-file-unread"
    module = (SHAPES / case / "modules" / "shelf.nix").read_bytes()
    plan, _ = plan_shape_case(case, "modules/shelf.nix", module)
    assert isinstance(plan, pt.Plan)
    host = (SHAPES / case / "hosts/box/shelf.nix").read_bytes()
    assert b'database.password = "Shelf-pw-31";' in plan.results({"hosts/box/shelf.nix": host}).get(
        "hosts/box/shelf.nix", host
    )
    (item,) = plan.manual
    assert item.file == "hosts/box/shelf.nix" and item.line == 6
    assert "services.shelf.database.passwordFile, declared at modules/shelf.nix:11:22, is read nowhere" in item.what
    reads = module.replace(
        b"DB_PASSWORD = cfg.database.password;", b"DB_PASSWORD_FILE = toString cfg.database.passwordFile;"
    )
    plan, _ = plan_shape_case(case, "modules/shelf.nix", reads)
    assert isinstance(plan, pt.Plan)
    assert plan.manual == (), [m.what for m in plan.manual]
    patched = plan.results({"hosts/box/shelf.nix": host})
    assert b"database.passwordFile = config.age.secrets.shelf-db-password.path;" in patched["hosts/box/shelf.nix"]


def test_a_move_with_no_literal_found_sets_no_option_and_says_so() -> None:
    """strategy move keeps a value taken from a literal: with password_option named but no literal of the
    migration found (a published photoprism file, stop 19: exit 0, passwordFile set, the admin password
    left in settings), nothing is set and the verdict lists what is there."""
    src = {
        "photos.nix": b"""{ config, ... }:
{
  services.photoprism = {
    enable = true;
    settings.PHOTOPRISM_SITE_TITLE = "Photos";
  };
  services.other.token = "Other-tok-93a";
}
"""
    }
    spec = pt.Spec(
        secret="photoprism-admin-password",
        strategy="move",
        password_option="services.photoprism.passwordFile",
        service="photoprism",
    )
    plan = pt.plan(src, spec)
    assert not plan.edits
    assert any("found no literal of this migration" in m.what for m in plan.manual), plan.manual


def test_a_compose_like_wrapper_option_is_said_as_the_author_s_own() -> None:
    """elia.compose.NAME.services.APP.environment (a public configuration, stop 19): the author's wrapper
    around containers, not "a NixOS module held as a value" with advice to move it into a file."""
    src = {
        "joplin.nix": b"""{ ... }:
{
  elia.compose.joplin.services.db = {
    image = "postgres:16";
    environment.POSTGRES_PASSWORD = "Jop-pw-4471";
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="joplin-db-password", role="postgres"))
    assert not plan.edits
    (item,) = plan.manual
    assert "inside elia.compose.joplin, the author's own option" in item.what
    assert "held as a value (flake-parts" not in item.what


def test_a_user_name_equal_to_the_password_is_no_copy_of_it() -> None:
    """PAPERLESS_DBPASS = "postgres" beside PAPERLESS_DBUSER = "postgres" (a public configuration, stop 19):
    the user's name is no copy of the password left behind (copies_left), whatever role the migration names."""
    src = {
        "paperless.nix": b"""{ ... }:
{
  services.paperless = {
    enable = true;
    settings = {
      PAPERLESS_DBHOST = "/run/postgresql";
      PAPERLESS_DBUSER = "postgres";
      PAPERLESS_DBPASS = "postgres";
    };
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="paperless-db-password", role="paperless"))
    assert plan.edits
    assert not any("PAPERLESS_DBUSER" in m.what for m in plan.manual), [m.what for m in plan.manual]


def test_a_container_password_beside_another_user_than_the_default_role_says_to_set_role() -> None:
    """An app container's database password beside its user variable naming another user than the role
    (the default postgres when nixmig.toml's service sets none; a public configuration, stop 19): the line
    says which user, and to set the service's role."""
    src = {
        "photos.nix": b"""{ ... }:
{
  virtualisation.oci-containers.containers.photoprism = {
    image = "photoprism/photoprism";
    environment = {
      PHOTOPRISM_DATABASE_USER = "photoprism";
      PHOTOPRISM_DATABASE_PASSWORD = "Photo-pw-5531";
    };
  };
}
"""
    }
    # (a rotation: under move, whose password it is does not matter, test_move_any_user.py)
    plan = pt.plan(src, pt.Spec(secret="photoprism-db-password"))
    (item,) = [m for m in plan.manual if "PHOTOPRISM_DATABASE_PASSWORD" in m.what]
    assert "this migration's role is 'postgres'" in item.what
    assert "PHOTOPRISM_DATABASE_USER = 'photoprism', set that user as the service's role" in item.what


def test_photoprism_s_admin_password_moves_to_its_password_file_under_move() -> None:
    """settings.PHOTOPRISM_ADMIN_PASSWORD, the migration's own secret under strategy move (a public
    configuration, stop 19: refused, 'no file option'): the key goes, services.photoprism.passwordFile
    names the agenix file (nixpkgs loads it with LoadCredential: root-only is right)."""
    src = {
        "photos.nix": b"""{ config, ... }:
{
  services.photoprism = {
    enable = true;
    settings.PHOTOPRISM_ADMIN_PASSWORD = "Admin-pw-7713";
  };
}
"""
    }
    spec = pt.Spec(secret="photoprism-admin-password", strategy="move", service="photoprism")
    plan = pt.plan(src, spec)
    assert plan.manual == (), [m.what for m in plan.manual]
    out = plan.results(src)["photos.nix"]
    assert b"Admin-pw-7713" not in out
    assert b"passwordFile = config.age.secrets.photoprism-admin-password.path;" in out
    assert b"owner" not in out


def test_bookstack_reads_its_files_as_its_user() -> None:
    """appKeyFile from an /etc text (a public configuration, stop 19: moved root-only, which bookstack-setup,
    running as bookstack, cannot read): the agenix file is owned by services.bookstack.user."""
    src = {
        "bookstack.nix": b"""{ ... }:
{
  services.bookstack = {
    enable = true;
    appKeyFile = "/etc/bookstack-appkey";
  };
  environment.etc."bookstack-appkey".text = "base64:Bk-key-0192837465";
}
"""
    }
    spec = pt.Spec(secret="bookstack-app-key", strategy="move", service="bookstack")
    plan = pt.plan(src, spec)
    assert plan.manual == (), [m.what for m in plan.manual]
    assert b"owner = config.services.bookstack.user;" in plan.results(src)["bookstack.nix"]


def test_the_role_hint_never_prints_a_user_name_that_is_the_password() -> None:
    """DB_USER = "Same-as-pw-4410" beside DB_PASSWORD = "Same-as-pw-4410": the hint names the variable only."""
    src = {
        "app.nix": b"""{ ... }:
{
  virtualisation.oci-containers.containers.app = {
    image = "example/app";
    environment = {
      DB_USER = "Same-as-pw-4410";
      DB_PASSWORD = "Same-as-pw-4410";
    };
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="app-db-password"))
    (item,) = [m for m in plan.manual if "DB_PASSWORD" in m.what]
    assert "the container logs in as, DB_USER, set that user" in item.what
    assert "Same-as-pw-4410" not in " ".join(m.what + m.snippet for m in plan.manual)


def test_a_module_nixos_rejects_for_a_stray_key_beside_config_says_so() -> None:
    """A top-level `config.services.postgresql` beside top-level `virtualisation...` (a public configuration,
    stop 19: refused as "not this migration's"): the module system rejects such a module; the line says
    that and how to fix it, and nothing is edited."""
    src = {
        "data.nix": b"""{ config, ... }:
{
  config.services.postgresql.enable = true;
  virtualisation.oci-containers.containers.db = {
    image = "postgres:16";
    environment.POSTGRES_PASSWORD = "Stray-pw-4410";
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="db-password", container="db"))
    assert not plan.edits
    (item,) = [m for m in plan.manual if "POSTGRES_PASSWORD" in m.what]
    assert "NixOS rejects this module as written" in item.what and "`virtualisation`" in item.what, item.what


def test_a_nixos_test_s_password_is_said_as_the_test_s_fixture() -> None:
    """nodes + testScript (nixpkgs' own mysql test, a blind configuration of stop 20): the refusal names the
    shape, a NixOS test, instead of "a module held as a value"."""
    src = {
        "test.nix": b"""import ./make-test-python.nix ({ pkgs, ... }: {
  name = "db";
  nodes.db = { ... }: {
    services.mysql.enable = true;
    services.mysql.initialScript = pkgs.writeText "init" "CREATE USER 'u'@'localhost' IDENTIFIED BY 'Test-pw-771';";
  };
  testScript = ''
    db.wait_for_unit("mysql")
  '';
})
"""
    }
    plan = pt.plan(src, pt.Spec(secret="db-password", role="u", strategy="move"))
    assert not plan.edits
    assert plan.manual and all("is a NixOS test" in m.what for m in plan.manual if m.file), [
        m.what for m in plan.manual
    ]


def test_another_secret_in_an_edited_file_is_said_in_a_note_without_its_value() -> None:
    """A file patch edits and calls done holds another hardcoded secret (grafana's admin password beside
    the database's): not this migration's, so no by-hand item, but said (file:line, where), never the value."""

    case, file = "oci-app-bare-password", "hosts/box/photos.nix"
    text = (FIXTURES / "shapes" / case / file).read_bytes()
    text = text.replace(
        b"{\n  virtualisation",
        b'{\n  services.grafana.settings.security.admin_password = "Gr4f-adm1n-xx";\n  virtualisation',
        1,
    )
    plan, patched = plan_shape_case(case, file, text)
    assert not plan.manual, plan.manual  # type: ignore[attr-defined]
    notes = [n for n in plan.notes if "holds another hardcoded password" in n]  # type: ignore[attr-defined]
    assert notes == [notes[0]] and notes[0].startswith(f"{file}:3: services.grafana.settings.security.admin_password")
    assert "Gr4f" not in notes[0] and b"Gr4f-adm1n-xx" in patched


ORDER_WRAP = b"""{ lib, ... }:
let
  mkDb = { environment = { POSTGRES_PASSWORD = "dflt-helper-pw"; }; };
in
{
  options.wrap = lib.mkOption { type = lib.types.attrs; default = { }; };
}
"""
ORDER_SERVICE = b"""{ ... }:
let
  recipes_password = "Rcp-real-pw-41";
in
{
  wrap.recipes.db.env.POSTGRES_PASSWORD = recipes_password;
}
"""


def test_the_refusal_s_first_item_is_in_a_file_that_names_the_migration(tmp_path: Path) -> None:
    """Nothing recognised (the author's own wrapper): every credential is listed, and the first, the
    refusal's headline, is the one in the file that names the role, not a helper's default elsewhere
    (a public configuration, stop 21: its headline was a fallback "postgres" in an unused helper)."""
    from nixmig import config

    toml = tmp_path / "nixmig.toml"
    toml.write_text((FIXTURES / "shapes" / "native-initialscript-sql" / "nixmig.toml").read_text())
    cfg = config.load(toml)
    (migration,) = cfg.migrations
    assert cfg.services[cfg.migrations[migration].service].role == "ledger"
    sources = {"modules/wrap.nix": ORDER_WRAP, "services/ledger.nix": ORDER_SERVICE.replace(b"recipes", b"ledger")}
    plan = pt.plan(sources, pt.spec_for(cfg, migration))
    files = [m.file for m in plan.manual]
    assert files[:2] == ["services/ledger.nix", "modules/wrap.nix"], files


def test_a_password_in_sql_nixmig_cannot_edit_gets_sql_advice_not_an_env_file_recipe() -> None:
    """A password in SQL nixmig does not take out (here a value with a quote it would have to unescape; two
    public configurations, stop 22): by hand; the recipe printed under it was an env file rendered for a
    unit, with the password as a variable named initialScript. Now: what to do with SQL, no snippet."""
    src = {
        "db.nix": b"""{ pkgs, ... }:
{
  services.postgresql.enable = true;
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE USER app WITH PASSWORD 'app'''pw-6710';
  '';
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="app-db-password", role="app"))
    (item,) = plan.manual
    assert (item.file, item.line) == ("db.nix", 5), item
    assert "SQL text" in item.what and "ALTER ROLE" in item.what and item.snippet == "", item
    assert "EnvironmentFile" not in item.what


def test_another_role_of_an_initial_script_moves_as_a_companion_its_value_kept(tmp_path: Path) -> None:
    """initialScript setting the migration's role's password and another role's (two blind cases, stop 22):
    the other one moves onto its own secret with its value kept (also "role:reports"), its own oneshot; the
    first --write names the `secret new --from` that takes it from its line, the second writes, and nixmig.toml
    gets the also entry."""
    repo = tmp_path / "repo"
    shutil.copytree(SHAPES / "native-initialscript-other-role", repo)
    (repo / "case.json").unlink()
    (repo / "expected.diff").unlink()
    run_cli("secret", "new", "ledger-db-password", "--repo", str(repo))
    out = run_cli("patch", "--repo", str(repo), "--write")
    err = out.stderr.decode()
    assert out.returncode == 1, err
    takes = err.split("take the value(s) first: ")[1].split("; then")[0].split(" && ")
    assert [t.split()[3:] for t in takes] == [["reports-db-password", "--from", "hosts/box/db.nix:7"]], takes
    assert run_cli(*takes[0].split()[1:], "--repo", str(repo)).returncode == 0
    out = run_cli("patch", "--repo", str(repo), "--write")
    assert out.returncode == 0, out.stderr.decode()
    nix = (repo / "hosts/box/db.nix").read_text()
    assert "reports-pw" not in nix and "ALTER ROLE \"reports\" PASSWORD :'pw';" in nix
    assert "config.age.secrets.reports-db-password.path" in nix
    assert 'also = { "role:reports" = "reports-db-password" }' in (repo / "nixmig.toml").read_text()
    assert run_cli("patch", "--repo", str(repo), "--check").returncode == 0
    assert run_cli("scan", str(repo), "--fail-on-findings").returncode == 0


def test_a_password_word_inside_secret_names_is_no_copy_of_it() -> None:
    """The password "password" beside sops secret names "authentik.email.password" (a blind case, stop 22):
    a segment of a dotted or slashed name is no copy; a word of its own still is."""
    token = lo.copies_of([b"password"])
    assert token.search(b'config.sops.placeholder."authentik.email.password"') is None
    assert token.search(b"paperless/password.env") is None
    assert token.search(b"postgres://u:password@db/x") is not None
    assert token.search(b"PGPASSWORD=password psql") is not None
    assert token.search(b"mysql -ppassword") is not None


PLAIN_WORD = b"""{ pkgs, ... }:
{
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE ROLE "matrix-synapse" WITH LOGIN PASSWORD 'synapse';
  '';
  virtualisation.oci-containers.containers.cache.image = "synapse:latest";
  systemd.services.synapse-workers.script = ''
    echo "# The replication listener on the main synapse process." > /var/lib/w.yaml
    %s
  '';
}
"""


@pytest.mark.parametrize(
    ("line", "copy"),
    [
        ("true", False),
        ("psql --password synapse", True),
        ("export DB_PASS=synapse", True),
        ("mysql -p synapse -u root", True),
        ("curl -u admin:synapse http://x", True),
    ],
)
def test_a_plain_word_password_in_prose_or_an_image_name_is_no_copy_of_it(line: str, copy: bool) -> None:
    """The password "synapse" (blind cases, stop 23): a script's prose ("the main synapse process") and a
    container image's reference ("synapse:latest") are no copies of it, and patch is right to patch; after
    a flag, a secret's name, ``=`` or ``:`` the word is a copy still, and nothing is written."""
    src = {"m.nix": PLAIN_WORD % line.encode()}
    plan = pt.plan(src, pt.Spec(secret="synapse-db-password", role="matrix-synapse"))
    left = [m for m in plan.manual if "still holds this migration's password" in m.what]
    assert [m.line for m in left] == ([9] if copy else []), [m.what for m in plan.manual]
    assert plan.edits and (bool(plan.manual) == copy), [m.what for m in plan.manual]


@pytest.mark.parametrize(
    ("line", "copy"),
    [
        ('"password": "${config.sops.placeholder.smtp}"', False),
        ('{"user": "me", "password": "x"}', False),
        ("password: x", False),
        ("password = x", False),
        ("uri = postgres://u@db/x", False),
        ('"secret": "password"', True),
        ("password = password", True),
        ("pass=password", True),
        ("if [ $a == password ]; then :; fi", True),
    ],
)
def test_a_plain_word_password_as_a_key_of_a_text_is_no_copy_of_it(line: str, copy: bool) -> None:
    """The password "password" (realcfg33/04): a JSON, YAML or ini key of that name in a text (sops' template
    of immich's config.json) and a URL's scheme are no copies of it; a value is, also after its own key."""
    src = {"m.nix": PLAIN_WORD.replace(b"'synapse'", b"'password'") % line.replace("postgres:", "password:").encode()}
    plan = pt.plan(src, pt.Spec(secret="synapse-db-password", role="matrix-synapse"))
    left = [m for m in plan.manual if "still holds this migration's password" in m.what]
    assert [m.line for m in left] == ([9] if copy else []), [m.what for m in plan.manual]


STANDALONE_ARION = b"""{ pkgs, ... }:
{
  project.name = "shop";
  services.db.service = {
    image = "postgres:16";
    environment.POSTGRES_PASSWORD = "Shop-arion-pw-1";
  };
  services.api.service = {
    image = "shop-api";
    environment.DATABASE_URL = "postgres://postgres:Shop-arion-pw-1@db/shop";
  };
  services.admin.nixos.configuration.environment.variables.ADMIN_DB_PASSWORD = "Shop-arion-pw-1";
}
"""


def test_an_arion_project_no_nixos_module_runs_is_refused_by_its_first_line() -> None:
    """Nine blind files (stop 23) were arion-compose.nix files run with `arion up`, no NixOS module in their
    repository: refused, but each with another first line (a variable's unit, "no module to declare
    age.secrets.X in"). The first line now says why (no host module: agenix cannot reach it), each item
    once; a literal inside services.NAME.nixos (a NixOS system arion builds into the image) is said as that."""
    src = {"arion-compose.nix": STANDALONE_ARION, "secrets/secrets.nix": b"{ }\n"}
    plan = pt.plan(src, pt.Spec(secret="shop-db-password", role="postgres", container="shop-db-1"))
    first = plan.manual[0].what
    assert first.startswith("no module to declare age.secrets.shop-db-password in: no .nix file of the repository is")
    keys = [(m.file, m.line, m.col, m.what) for m in plan.manual]
    assert len(keys) == len(set(keys)), keys
    (nixos,) = [m for m in plan.manual if m.line == 12]
    assert "inside the NixOS configuration arion builds and runs in the container admin" in nixos.what


SHARED_VALUE = b"""{ pkgs, ... }:
{
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE USER "matrix-synapse" WITH LOGIN PASSWORD 'Shared-pw-4410';
  '';
  services.matrix-synapse.settings.registration_shared_secret = "Shared-pw-4410";
}
"""


@pytest.mark.parametrize("strategy", ["rotate", "move"])
def test_another_credential_sharing_the_database_s_value_is_said_as_two_secrets_in_one(strategy: str) -> None:
    """synapse's registration_shared_secret holding the database's value (a blind case, stop 22): still a
    literal of this migration's value, so nothing is written (any strategy); the line says it is another
    secret sharing the value, to give its own secret first, and no snippet wires it to the database's secret
    (the generic recipe rendered it from the database's secret, which a rotation changes)."""
    src = {"synapse.nix": SHARED_VALUE}
    plan = pt.plan(src, pt.Spec(secret="synapse-db-password", role="matrix-synapse", strategy=strategy))
    said = [m.what for m in plan.manual] + list(plan.notes)
    assert not any("Shared-pw-4410" in x for x in said), said
    (m,) = [m for m in plan.manual if m.line == 6]
    assert "another credential (by its name) that shares the database's value" in m.what, m.what
    assert "its own secret first" in m.what
    assert m.snippet == "" and "synapse-db-password" not in m.what, m


def test_a_let_binding_nothing_reads_is_said_as_dead() -> None:
    """`let dbPassword = "...";` that nothing in the file reads (a blind case, stop 22): the by-hand line says
    so (delete it; the value is in the history) instead of "no template for this shape"; a name read by an
    `inherit` elsewhere is not dead."""
    text = b"""{ pkgs, ... }:
let
  dbPassword = "Dead-pw-3391";
in
{
  services.nginx.enable = true;
}
"""
    plan = pt.plan({"cloud.nix": text}, pt.Spec(secret="cloud-db-password", role="cloud"))
    (m,) = plan.manual
    assert m.line == 3 and "its name appears nowhere else in cloud.nix: nothing in this file reads it" in m.what
    inherited = text.replace(b"services.nginx.enable = true;", b"environment.variables = { inherit dbPassword; };")
    plan = pt.plan({"cloud.nix": inherited}, pt.Spec(secret="cloud-db-password", role="cloud"))
    assert not any("appears nowhere else" in m.what for m in plan.manual), [m.what for m in plan.manual]


def test_mysql_s_if_not_exists_in_an_initial_script_is_said_as_sql_postgres_rejects() -> None:
    """`CREATE USER IF NOT EXISTS app WITH PASSWORD '...'` (a blind case, stop 22): PostgreSQL rejects the
    statement, so it never set anything; the line says that, not "drop the clause" (which leaves it invalid)."""
    src = {
        "db.nix": b"""{ pkgs, ... }:
{
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE DATABASE app;
    CREATE USER IF NOT EXISTS app WITH PASSWORD 'If-pw-2208';
  '';
}
"""
    }
    (m,) = pt.plan(src, pt.Spec(secret="app-db-password", role="app")).manual
    assert m.line == 5 and "IF NOT EXISTS: MySQL's syntax, which PostgreSQL rejects" in m.what, m.what


def test_a_custom_option_read_elsewhere_is_said_with_where_it_is_read() -> None:
    """`postgres.password = "..."` (the repo's own option) read as `${config.postgres.password}` in the
    initialScript (a blind case, stop 22): the line names where it is read instead of "no service reads it"."""
    src = {
        "pg.nix": b"""{ lib, config, pkgs, ... }:
{
  options.postgres.password = lib.mkOption { type = lib.types.str; };
  config = lib.mkMerge [
    { postgres.password = "Opt-pw-5521"; }
    {
      services.postgresql.initialScript = pkgs.writeText "init.sql" ''
        CREATE ROLE app WITH LOGIN PASSWORD '${config.postgres.password}';
      '';
    }
  ];
}
"""
    }
    items = pt.plan(src, pt.Spec(secret="app-db-password", role="app")).manual
    assert any("it is read as config.postgres.password at pg.nix:8" in m.what for m in items), items


TWO_ROLES = b"""{ pkgs, ... }:
{
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE USER app WITH PASSWORD 'App-pw-7781';
    CREATE USER dash WITH PASSWORD 'Dash-pw-7782';
  '';
  services.grafana.provision.datasources.settings.datasources = [
    { name = "app"; type = "postgres"; user = "dash"; secureJsonData.password = "Dash-pw-7782"; }
  ];
  CLIENT
}
"""


def test_a_companion_role_s_grafana_datasource_reads_its_secret_and_another_client_blocks() -> None:
    """A companion role (also "role:dash", value kept; 10H/07 with init's draft, stop 22) whose value a
    grafana datasource holds: the datasource reads $__file of the companion's secret, owned by grafana (it
    was left in the store while patch said patched). A client nixmig has no edit for keeps the value in the
    store: by hand, nothing written."""
    spec = pt.Spec(secret="app-db-password", role="app", also=(("role:dash", "dash-db-password"),))
    src = {"db.nix": TWO_ROLES.replace(b"CLIENT", b"")}
    plan = pt.plan(src, spec)
    assert plan.manual == (), [m.what for m in plan.manual]
    out = plan.results(src)["db.nix"].decode()
    assert "Pw-7782" not in out.replace("Dash-pw", "Pw") and "App-pw-7781" not in out
    assert 'secureJsonData.password = "$__file{${config.age.secrets.dash-db-password.path}}";' in out
    dash = out[out.index("age.secrets.dash-db-password = {") :]
    assert 'owner = "grafana";' in dash[: dash.index("};")], dash
    src = {"db.nix": TWO_ROLES.replace(b"CLIENT", b'environment.etc."dash.conf".text = "password=Dash-pw-7782";')}
    plan = pt.plan(src, spec)
    assert [m.line for m in plan.manual] == [10], [m.what for m in plan.manual]


def test_a_let_whose_only_binding_goes_goes_with_it() -> None:
    """``let pw = "..."; in { ... }`` whose only binding patch removes: no ``let in`` is left behind (valid
    Nix, but noise a reviewer would ask about); a let that binds something else too keeps the rest."""
    mod = """{ pkgs, ... }:
let
%s
in
{
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE ROLE ledger WITH LOGIN PASSWORD '${ledgerPw}';
  '';
}
"""
    for extra, kept in (("", False), ('  port = "5432";\n', True)):
        src = {"db.nix": (mod % (extra + '  ledgerPw = "Ledger-let-9";')).encode()}
        plan = pt.plan(src, pt.Spec(secret="ledger-db-password", role="ledger"))
        out = plan.results(src)["db.nix"].decode()
        assert "Ledger-let-9" not in out and plan.manual == ()
        assert ("let\n" in out and 'port = "5432";' in out) == kept, out
        assert out.startswith("{ pkgs, config, ... }:\n{\n") != kept, out


def test_the_diff_masks_every_credential_on_its_context_lines() -> None:
    """A blind case (stop 23): gitlab's root password and secret key, store files beside the database's, were
    printed in clear on the diff's context lines (only the migration's value was masked)."""
    src = {
        "gitlab.nix": b"""{ pkgs, ... }: {
  services.gitlab = {
    databasePasswordFile = pkgs.writeText "dbPassword" "Gitlab-db-pw-1";
    initialRootPasswordFile = pkgs.writeText "rootPassword" "Gitlab-root-pw-2";
    secrets.secretFile = pkgs.writeText "secret" "xlHvN7tfexeTbFVHbkVKESQbyTZXG9v1TZ1me9Tx";
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="gitlab-db-password", role="gitlab"))
    diff = plan.diff(src)
    assert "config.age.secrets.gitlab-db-password.path" in diff
    for value in ("Gitlab-db-pw-1", "Gitlab-root-pw-2", "xlHvN7tfexeTbFVHbkVKESQbyTZXG9v1TZ1me9Tx"):
        assert value not in diff, value
    assert diff.count('"********"') == 3, diff


@pytest.mark.parametrize(("strategy", "etc", "said"), [("rotate", "pretalx/pretalx.cfg", True),
                                                       ("move", "pretalx/pretalx.cfg", False),
                                                       ("rotate", "motd", False)])  # fmt: skip
def test_a_repo_file_linked_into_etc_for_the_role_is_a_client_nixmig_cannot_read(
    strategy: str, etc: str, said: bool
) -> None:
    """A blind case (stop 23): pretalx read its database password from /etc/pretalx/pretalx.cfg, a repository
    file (git-crypt) linked by environment.etc.source; patch rotated the role and said nothing of it."""
    module = """{ pkgs, ... }:
{
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE ROLE pretalx WITH LOGIN PASSWORD 'Pretalx-pw-31';
  '';
  environment.etc."ETC".source = ./pretalx.cfg;
}
"""
    src = {"db.nix": module.replace("ETC", etc).encode()}
    plan = pt.plan(src, pt.Spec(secret="pretalx-db-password", role="pretalx", strategy=strategy))
    items = [m for m in plan.manual if "a file of the repository nixmig does not read" in m.what]
    assert bool(items) == said, [m.what for m in plan.manual]
    if said:
        assert items[0].line == 6 and "./pretalx.cfg" in items[0].what


def test_an_arion_project_with_its_database_alone_and_no_nixos_module_is_refused() -> None:
    """The same with nothing but the database's container (three blind cases, stop 23): the plan had no other
    item, the first line was not added, and --write wrote POSTGRES_PASSWORD_FILE and a mount of an agenix file
    nothing declares, exit 0. Refused, nothing to write."""
    src = {
        "arion-compose.nix": b"""{ pkgs, ... }:
{
  project.name = "courier";
  services.db.service = {
    image = "postgres:16";
    environment.POSTGRES_PASSWORD = "Courier-pw-5";
  };
}
""",
        "secrets/secrets.nix": b"{ }\n",
    }
    plan = pt.plan(src, pt.Spec(secret="courier-db-password", role="postgres", container="courier-db-1"))
    assert plan.edits == ()
    assert plan.manual and "no .nix file of the repository is a NixOS module" in plan.manual[0].what


def test_a_second_write_of_a_move_leaves_the_service_s_other_store_file_alone() -> None:
    """A blind case with init's draft (stop 23): a move of gitlab's databasePasswordFile (a store file) beside
    initialRootPasswordFile (another); the second --write found no password left and took the service's one
    store file left, the root password's, as the migration's: it moved it onto the database's secret."""
    src = {
        "gitlab.nix": b"""{ pkgs, ... }:
{
  services.gitlab = {
    databasePasswordFile = pkgs.writeText "dbPassword" "Gitlab-db-pw-8";
    initialRootPasswordFile = pkgs.writeText "rootPassword" "Gitlab-root-pw-9";
  };
}
"""
    }
    spec = pt.Spec(secret="gitlab-database-password", role="gitlab", strategy="move", service="gitlab")
    first = pt.plan(src, spec)
    after = {**src, **first.results(src)}
    assert b"databasePasswordFile = config.age.secrets.gitlab-database-password.path" in after["gitlab.nix"]
    assert b"Gitlab-root-pw-9" in after["gitlab.nix"]
    again = pt.plan(after, spec)
    assert again.edits == (), [e.explanation for e in again.edits]


def test_an_os_login_password_is_said_as_no_databases_with_no_recipe() -> None:
    """users.users.NAME.password (maptogether, 18C/02): when patch recognised nothing, every credential is said;
    the login password's item named this migration's secret in an env-file recipe. Now: why, no recipe."""
    src = {
        "host.nix": b"{ ... }:\n{\n  users.users.demo = {\n    isNormalUser = true;\n"
        b'    password = "demo-login-5";\n  };\n}\n'
    }
    plan = pt.plan(src, pt.Spec(secret="app-db-password", role="app"))
    (item,) = [m for m in plan.manual if m.line == 5]
    assert "an OS account's login password" in item.what and "hashedPasswordFile" in item.what
    assert item.snippet == "" and "demo-login-5" not in item.what


def test_a_removed_mysql_root_password_option_is_said_as_removed_not_as_a_missing_move() -> None:
    """services.mysql.rootPassword (18E/09): nixpkgs removed it; the item said to write a strategy move
    migration, which the case's nixmig.toml was; and it offered an env file mysql.service never reads."""
    src = {
        "db.nix": b"{ pkgs, ... }:\n{\n  services.mysql = {\n    enable = true;\n    package = pkgs.mariadb;\n"
        b'    rootPassword = "root-pw-93";\n  };\n}\n'
    }
    plan = pt.plan(src, pt.Spec(secret="mariadb-root-password", role="root", strategy="move"))
    (item,) = [m for m in plan.manual if m.line == 6]
    assert "nixpkgs removed this option" in item.what and 'strategy = "move"' not in item.what
    assert item.snippet == "" and "root-pw-93" not in item.what


def test_an_option_inside_a_submodule_type_is_no_option_at_its_syntax_path() -> None:
    """18G/03: `ensureUsers = mkOption { type = attrsOf (submodule { options.passwordFile = mkOption ...; }); }`
    was read as an option services.nextcloud.ensureUsers.type.options.passwordFile, and patch planned to set
    it (a user named `type`, an option nothing declares). Only the outer option is one."""
    src = (
        b"{ lib, ... }:\n{\n  options.services.portal.users = lib.mkOption {\n    type = lib.types.attrsOf "
        b"(lib.types.submodule { options.passwordFile = lib.mkOption { }; });\n  };\n}\n"
    )
    assert [p for p, _ in model("portal.nix", src).options] == [("services", "portal", "users")]


def test_a_move_with_no_line_taken_names_the_first_items_line(tmp_path: Path) -> None:
    """18E/09, 18F/05, 18G/02: the missing .age's note printed `--from FILE:LINE` literally."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "secrets.nix").write_text('let box = "age1x"; in { }\n')
    (tmp_path / "db.nix").write_text(
        "{ pkgs, ... }:\n{\n  services.mysql = {\n    enable = true;\n    package = pkgs.mariadb;\n"
        '    rootPassword = "root-pw-93";\n  };\n}\n'
    )
    (tmp_path / "nixmig.toml").write_text(
        '[hosts.box]\naddress = "box"\n\n[services.mariadb]\nhost = "box"\nruntime = "native"\nrole = "root"\n\n'
        '[migrations.mariadb-root-password]\nservice = "mariadb"\nsecret = "mariadb-root-password"\nstrategy = "move"\n'
    )
    proc = run_cli("patch", "--explain", cwd=tmp_path)
    err = proc.stderr.decode()
    assert "--from db.nix:6`" in err and "FILE:LINE" not in err and "root-pw-93" not in err


INIT_SQL = b"""{ pkgs, ... }:
{
  services.postgresql.enable = true;
  services.postgresql.initialScript = pkgs.writeText "init.sql" ''
    CREATE ROLE shop WITH LOGIN PASSWORD 'shop-sql-pw-8';
  '';
}
"""


@pytest.mark.parametrize("app", [False, True])
def test_a_rotation_whose_password_nothing_else_holds_says_its_clients_are_elsewhere(app: bool) -> None:
    """18F/01 (a compiled Go app), 18F/03 (a devel.cfg): the role's password only in the initialScript, its
    clients outside the repo's Nix; patch rotated it without a word. Said once; not when an app holds it."""
    src = {"db.nix": INIT_SQL}
    if app:
        src["app.nix"] = (
            b'{ ... }:\n{\n  systemd.services.shop.environment.DATABASE_URL = "postgres://shop:shop-sql-pw-8@localhost/shop";\n}\n'
        )
    plan = pt.plan(src, pt.Spec(secret="shop-db-password", role="shop"))
    said = [n for n in plan.notes if n.startswith("no other place in the repository's .nix files holds role shop's")]
    assert len(said) == (0 if app else 1) and plan.edits
    assert not any("shop-sql-pw-8" in n for n in plan.notes)


def test_httpds_removed_extra_subservices_are_said_as_removed_with_no_recipe() -> None:
    """18F/05: a WordPress dbPassword under services.httpd's extraSubservices got an env-file recipe for httpd
    (RuntimeDirectory = "httpd", which the httpd module sets itself) that nothing would read."""
    src = {
        "web.nix": b"{ ... }:\n{\n  services.httpd.virtualHosts = [ {\n    extraSubservices = [ {\n"
        b'      serviceType = "wordpress";\n      dbPassword = "wp-db-pw-55";\n    } ];\n  } ];\n}\n'
    }
    plan = pt.plan(src, pt.Spec(secret="wordpress-db-password", role="wordpress", strategy="move"))
    (item,) = [m for m in plan.manual if m.line == 6]
    assert "extraSubservices were removed from nixpkgs" in item.what and item.snippet == ""


def test_docker_containers_edits_say_the_nixpkgs_they_need() -> None:
    plan, _ = plan_shape_case(
        "oci-docker-containers-old-name",
        "hosts/box/forum.nix",
        (SHAPES / "oci-docker-containers-old-name/hosts/box/forum.nix").read_bytes(),
    )
    assert any(n.startswith("docker-containers is the option's name before NixOS 20.09") for n in plan.notes)  # type: ignore[attr-defined]


def test_a_login_password_beside_the_patched_script_is_a_note_saying_what_it_is() -> None:
    """18C/02 after its clause went: the note said "a migration of its own (strategy move)", which nixmig has
    not for an OS account's password."""
    src = {
        "db.nix": INIT_SQL.replace(b"}\n", b'  users.users.demo.password = "demo-login-5";\n}\n')[:-1] + b"\n",
    }
    plan = pt.plan(src, pt.Spec(secret="shop-db-password", role="shop"))
    (note,) = [n for n in plan.notes if "users.users.demo.password" in n]
    assert "an OS account's login password" in note and "strategy move" not in note and plan.manual == ()


def test_a_let_bound_password_left_gets_no_env_file_recipe_named_after_the_binding() -> None:
    """18H/03: the recipe for `pgPassword = "..."` (read as DB_PASS=${pgPassword} by a unit) would have written
    pgPassword=... into an env file: the binding's name is no variable anything reads."""
    src = {
        "net.nix": b'let\n  pgPassword = "let-pw-771";\nin\n{\n  application = { ... }: {\n'
        b'    systemd.services.app.serviceConfig.Environment = "DB_PASS=${pgPassword}";\n  };\n}\n'
    }
    plan = pt.plan(src, pt.Spec(secret="app-db-password", role="app"))
    items = [m for m in plan.manual if m.line == 2]
    assert items and all(m.snippet == "" for m in items)


def test_a_url_in_environment_variables_is_said_as_every_shells_with_no_recipe() -> None:
    """18H/01: environment.variables.DATABASE_URL (every login shell's) beside the app's own: "no template"
    and an env-file recipe for a unit named after environment.variables."""
    src = {
        "host.nix": b'{ ... }:\n{\n  environment.variables.DATABASE_URL = "postgresql://inv:inv-pw-662@localhost/inv";\n}\n'
    }
    plan = pt.plan(src, pt.Spec(secret="inv-db-password", role="inv"))
    (item,) = [m for m in plan.manual if m.line == 3]
    assert "every login shell of the host gets it" in item.what and item.snippet == ""


KEYCLOAK_ETC = b"""{ config, pkgs, lib, ... }:
{
  environment.etc."kc-db-pass".text = "kc-db-pw-818";
  services.keycloak = {
    enable = true;
    initialAdminPassword = "kc-admin-pw-919";
    database.passwordFile = "/etc/kc-db-pass";
  };
}
"""


def test_a_second_write_of_a_move_does_not_take_another_credential_of_the_service() -> None:
    """12L/04 with init's draft (a move of keycloak's own secret): the first write moves the /etc text the database
    passwordFile reads; the second took keycloak's initialAdminPassword, another credential, as the migration's
    and rendered it from the database's secret (the bench: "second --write changed ..."). Now nothing."""
    spec = pt.Spec(secret="kc-db-pass-password", role="postgres", strategy="move", service="keycloak")
    src = {"kc.nix": KEYCLOAK_ETC}
    first = pt.plan(src, spec, find_companions=True)
    assert first.edits and first.manual == ()
    after = {**src, **first.results(src)}
    assert b"kc-db-pw-818" not in after["kc.nix"] and b"kc-admin-pw-919" in after["kc.nix"]
    again = pt.plan(after, spec, find_companions=True)
    assert again.edits == () and again.manual == ()


def test_an_unreadable_sql_file_a_nix_file_names_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its password would go unseen (a verdict without it): one line, not a traceback (root reads any file,
    so the read fails by hand here)."""
    (tmp_path / "init.sql").write_text("CREATE ROLE shop WITH LOGIN PASSWORD 'x-unread-1';\n")
    src = {"db.nix": b"{ ... }: { services.postgresql.initialScript = ./init.sql; }\n"}

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigError, match=r"cannot read init\.sql, the SQL file db\.nix names: Permission denied"):
        pt.read_texts(tmp_path, src)


CONTAINER_SQL = """{ pkgs, ... }:
{
  containers.db = {
    autoStart = true;
    config = { ... }: {
      services.postgresql = {
        enable = true;
        initialScript = pkgs.writeText "init.sql" ''
          CREATE ROLE notes WITH LOGIN PASSWORD 'notes-ctr-pw-3';
          CREATE DATABASE notes OWNER notes;
        '';
      };
    };
  };
  containers.app.config = { ... }: {
    environment.etc."notes-db-pass".text = "notes-ctr-pw-3";
  };
}
"""


@pytest.mark.parametrize("strategy", ["rotate", "move"])
def test_sql_inside_a_nixos_container_is_said_as_that_with_no_env_file_recipe(strategy: str) -> None:
    """An initialScript inside containers.NAME.config (19B/02, 19C/05): the item said "nixmig has no edit for
    this statement" (of a plain CREATE ROLE of the migration's role) and the container's /etc text got an env
    file recipe for a placeholder UNIT on the host; now each says the container, and no recipe."""
    src = {"notes.nix": CONTAINER_SQL.encode()}
    plan = pt.plan(src, pt.Spec(secret="notes-db-password", role="notes", strategy=strategy))
    by_line = {m.line: m for m in plan.manual}
    if strategy == "rotate":  # the database phases cannot reach the container's server: move is named
        assert plan.edits == ()
        assert "in the declarative NixOS container db (containers.db.config" in by_line[9].what
        assert "no edit for this statement" not in by_line[9].what
        assert 'with strategy = "move" it moves it' in by_line[9].what
    else:  # moved (the clause out, a oneshot inside: fixture native-container-initialscript-move)
        assert 9 not in by_line
    assert "inside the declarative NixOS container app" in by_line[16].what
    assert all(m.snippet == "" for m in plan.manual), [m.snippet[:80] for m in plan.manual]


SQL_FILE_VARIANTS = {
    # name: (setup.sql, the item's words for the first statement, the --from line, setup.sql after the by-hand step)
    "grant-after-create": (
        "CREATE USER 'shop'@'localhost';\nGRANT ALL ON shop.* TO 'shop'@'localhost' IDENTIFIED BY 'shop-v-pw-1';\n",
        "delete the IDENTIFIED BY '...' clause (GRANT ... TO 'shop'@'localhost';), then",
        2,
        "CREATE USER 'shop'@'localhost' ACCOUNT LOCK;\nGRANT ALL ON shop.* TO 'shop'@'localhost';\n",
    ),
    "grant-creates": (
        "GRANT ALL ON shop.* TO 'shop'@'localhost' IDENTIFIED BY 'shop-v-pw-1';\n",
        "and create the account locked before it (CREATE USER 'shop'@'localhost' ACCOUNT LOCK;)",
        1,
        "CREATE USER 'shop'@'localhost' ACCOUNT LOCK;\nGRANT ALL ON shop.* TO 'shop'@'localhost';\n",
    ),
    "alter": (
        "ALTER USER 'shop'@'localhost' IDENTIFIED BY 'shop-v-pw-1';\n",
        "with ACCOUNT LOCK (ALTER USER 'shop'@'localhost' ACCOUNT LOCK;)",
        1,
        "ALTER USER 'shop'@'localhost' ACCOUNT LOCK;\n",
    ),
    "set-twice": (
        "CREATE USER 'shop'@'localhost' IDENTIFIED BY 'shop-old-pw-0';\n"
        "GRANT ALL ON shop.* TO 'shop'@'localhost'\n  IDENTIFIED BY 'shop-v-pw-1';\n",
        "(an earlier value: the account ends with the one at line 3)",
        3,
        "CREATE USER 'shop'@'localhost' ACCOUNT LOCK;\nGRANT ALL ON shop.* TO 'shop'@'localhost';\n",
    ),
}


@pytest.mark.parametrize("variant", sorted(SQL_FILE_VARIANTS))
def test_a_mysql_sql_file_s_by_hand_step_fits_its_statement(variant: str, tmp_path: Path) -> None:
    """Each statement's own way out of its IDENTIFIED BY (review25: GRANT ... ACCOUNT LOCK is a syntax error, an
    ALTER USER got no oneshot, a script setting the password twice sent `--from` to the stale value)."""
    sql_text, words, line, after = SQL_FILE_VARIANTS[variant]
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "shapes" / "native-mysql-initialscript-sql-file-password", repo)
    (repo / "case.json").unlink()
    sql = repo / "hosts/shop/sql/setup.sql"
    sql.write_text(sql_text)
    out = run_cli("patch", "--repo", str(repo), "--explain")
    said = out.stdout.decode() + out.stderr.decode()
    assert words in said, said
    assert said.count(f"--from hosts/shop/sql/setup.sql:{line}`") >= 2, said  # each item, and the .age note
    assert "shop-v-pw-1" not in said and "shop-old-pw-0" not in said
    made = run_cli(
        "secret", "new", "shop-db-password", "--from", f"hosts/shop/sql/setup.sql:{line}", "--repo", str(repo)
    )
    assert made.returncode == 0, made.stderr.decode()
    sql.write_text(after)
    done = run_cli("patch", "--repo", str(repo), "--write")
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    nix = (repo / "hosts/shop/default.nix").read_text()
    assert "ALTER USER 'shop'@'localhost' IDENTIFIED BY '$pw' ACCOUNT UNLOCK;" in nix


def test_mariadb_s_create_or_replace_user_is_a_create() -> None:
    """MariaDB's CREATE OR REPLACE USER ... IDENTIFIED BY (review25: refused, telling a move to use move)."""
    src = {
        "db.nix": b"""{ pkgs, ... }:
{
  services.mysql = {
    enable = true;
    package = pkgs.mariadb;
    initialScript = pkgs.writeText "init.sql" ''
      CREATE OR REPLACE USER 'wiki'@'localhost' IDENTIFIED BY 'wiki-orr-pw-5';
      GRANT ALL ON wiki.* TO 'wiki'@'localhost';
    '';
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="wiki-db", role="wiki", strategy="move"))
    out = plan.results(src)["db.nix"].decode()
    assert plan.manual == (), [m.what for m in plan.manual]
    assert "CREATE OR REPLACE USER 'wiki'@'localhost' ACCOUNT LOCK;" in out and "wiki-orr-pw-5" not in out


def test_a_move_whose_value_no_line_holds_any_more_is_told_stdin(tmp_path: Path) -> None:
    """The clause is out, the .age not made: no FILE:LINE can give the value, so the note names `--stdin`
    (review25: it named `--from FILE:LINE`, which leads nowhere)."""
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "shapes" / "native-mysql-initialscript-sql-file-clause-gone", repo)
    for extra in ("case.json", "expected.diff"):
        (repo / extra).unlink()
    out = run_cli("patch", "--repo", str(repo), "--explain")
    said = out.stdout.decode() + out.stderr.decode()
    assert "secrets/shop-db-password.age does not exist yet" in said, said
    assert "if no line holds it any more, `--stdin` with the value the service has now" in said, said
