"""Strategy dual-role, the pure parts: its plan, the new_role key, the SQL it sends, the Nix edits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nixmig import config, engine
from nixmig.db import ops, roles
from nixmig.errors import ConfigError
from nixmig.journal import Journal
from nixmig.nixsrc import patch as pt
from nixmig.nixsrc import validate
from nixmig.nixsrc.edits import apply_edits
from nixmig.remote.base import Transport
from tests.helpers import ADMIN_PUB, EXAMPLE, NEWTON_PUB, copy_example

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed")
HOST = "hosts/newton/default.nix"
COMPOSE = "modules/system/linux/twenty/arion-compose.nix"
MODULE = "modules/system/linux/twenty-crm.nix"


def write_cfg(repo: Path, migration_extra: str = "", service_extra: str = "") -> config.Config:
    (repo / "nixmig.toml").write_text(
        f"""[operator]
recipients = ["{ADMIN_PUB}"]
[hosts.newton]
address = "newton.example.org"
age_recipient = "{NEWTON_PUB}"
[services.twenty-db]
host = "newton"
container = "twenty-db-1"
volume = "twenty_db-data"
database = "default"
{service_extra}
[migrations.twenty-db-password]
service = "twenty-db"
secret = "twenty-db-password"
deploy = "deploy --skip-checks .#newton"
{migration_extra}
"""
    )
    return config.load(repo / "nixmig.toml")


def no_connect() -> Transport:
    raise AssertionError("plan must not connect")


def test_plan_has_the_dual_role_phases_and_masks(tmp_path: Path) -> None:
    cfg = write_cfg(copy_example(tmp_path), 'strategy = "dual-role"')
    steps = engine.plan(engine.make_context(cfg, "twenty-db-password", connect=no_connect))
    assert [s.phase for s in steps] == [
        "preflight",
        "backup",
        "stage",
        "add-role",
        "switch",
        "verify",
        "retire",
        "cleanup",
    ]
    acts = {s.phase: "\n".join(a.text for a in s.actions) for s in steps}
    assert "role 'postgres_v2' does not exist" in acts["preflight"]
    assert "PASSWORD 'SCRAM-SHA-256$4096:********'" in acts["add-role"]
    assert """GRANT "postgres" TO "postgres_v2"; ALTER ROLE "postgres_v2" SET role = 'postgres'""" in acts["add-role"]
    assert 'no client is logged in as "postgres" over TCP' in acts["verify"]
    assert 'ALTER ROLE "postgres" PASSWORD NULL' in acts["retire"]
    assert "NIXMIG_PHASE=switch deploy --skip-checks .#newton" in acts["switch"]
    # rollback mirrors apply: old password back, old config, then the role dropped
    order = [p.name for p in engine.undo_order(engine.phases_for("dual-role"))]
    assert order[:5] == ["cleanup", "retire", "verify", "switch", "add-role"]


def test_new_role_key(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    cfg = write_cfg(repo, 'strategy = "dual-role"\nnew_role = "twenty_v2"')
    assert config.new_role_for(cfg.migrations["twenty-db-password"], cfg.services["twenty-db"]) == "twenty_v2"
    cfg = write_cfg(repo, 'strategy = "dual-role"', 'role = "twenty"')
    assert config.new_role_for(cfg.migrations["twenty-db-password"], cfg.services["twenty-db"]) == "twenty_v2"
    bad = {
        'strategy = "dual-role"\nnew_role = "pg_twenty"': "'pg_twenty' is not a usable role name",
        'strategy = "dual-role"\nnew_role = "twenty-v2"': "'twenty-v2' is not a usable role name",
        'strategy = "dual-role"\nnew_role = "' + "x" * 64 + '"': "is not a usable role name",
        'strategy = "dual-role"\nnew_role = "postgres"': "'postgres' is the service's role",
        'new_role = "twenty_v2"': 'only used with strategy = "dual-role"',
    }
    for extra, message in bad.items():
        with pytest.raises(ConfigError) as err:
            write_cfg(repo, extra)
        line = err.value.line()
        assert "\n" not in line and "migrations.twenty-db-password.new_role" in line and message in line, line
    with pytest.raises(ConfigError, match="is the service's admin_role"):
        write_cfg(repo, 'strategy = "dual-role"\nnew_role = "admin"', 'role = "app"\nadmin_role = "admin"')


def test_create_sql_copies_attributes_quotes_names_and_converges() -> None:
    old = roles.RoleInfo("o'ld\"x", True, attributes=("CREATEDB", "BYPASSRLS"), connection_limit=20)
    script = roles.create_sql(old, "o_v2", "SCRAM-SHA-256$4096:c2FsdA==$a:b", "nixmig mark", exists=False)
    lines = script.splitlines()
    assert lines[:2] == ["BEGIN;", ops.hush_sql(local=True).strip()]  # no log, no statistics keep the verifier
    assert "'log_min_duration_statement', '-1'" in lines[1] and "'pg_stat_statements.track_utility'" in lines[1]
    assert lines[2] == 'CREATE ROLE "o_v2" LOGIN;'
    assert lines[3] == (
        'ALTER ROLE "o_v2" WITH LOGIN INHERIT NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION BYPASSRLS'
        " CONNECTION LIMIT 20 PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b';"
    )
    assert 'GRANT "o\'ld""x" TO "o_v2";' in lines
    assert """ALTER ROLE "o_v2" SET role = 'o''ld"x';""" in lines
    assert "WHERE rolname = 'o''ld\"x'" in script  # the settings copy names the old role as a literal
    assert lines[-1] == "COMMIT;" and script.count("SCRAM-SHA-256$") == 1
    again = roles.create_sql(old, "o_v2", "SCRAM-SHA-256$4096:c2FsdA==$a:b", "nixmig mark", exists=True)
    assert "CREATE ROLE" not in again and 'ALTER ROLE "o_v2" WITH LOGIN' in again
    # a dollar-quote tag no name can close early
    tricky = roles.create_sql(roles.RoleInfo("a$nixmig$b", True), "n", "v", "m", exists=True)
    assert "DO $nixmig_$\n" in tricky and tricky.count("$nixmig_$") == 2


def dual_spec() -> pt.Spec:
    return pt.Spec(secret="twenty-db-password", host="newton", container="twenty-db-1", login_role="twenty_v2")


@needs_nix
def test_patch_moves_the_services_to_the_new_role() -> None:
    sources = pt.read_sources(EXAMPLE)
    plan = pt.plan(sources, dual_spec())
    assert not plan.manual
    results = plan.results(sources)
    validate.check_all(results, use_nix=True)  # every file parses with nix-instantiate --parse
    host = results[HOST].decode()
    assert host == sources[HOST].decode().replace(
        '      user = "postgres";\n',
        '      user = "twenty_v2";\n      passwordFile = config.age.secrets.twenty-db-password.path;\n',
    )
    module = results[MODULE].decode()
    assert "printf '%s=%s%s%s\\n' PG_DATABASE_URL postgres://twenty_v2: \"$password\" @db:5432/default" in module
    assert "postgres://postgres:" not in module
    compose = results[COMPOSE].decode()
    assert 'POSTGRES_USER = "postgres";' in compose  # the database container keeps its superuser
    assert 'POSTGRES_PASSWORD_FILE = "/run/secrets/twenty-db-password";' in compose
    # the same as the rotate patch, but for the user in the URL and the module's user option
    rotate = pt.plan(sources, pt.Spec(secret="twenty-db-password", host="newton", container="twenty-db-1"))
    plain = rotate.results(sources)
    assert results[COMPOSE] == plain[COMPOSE]
    assert module.replace("postgres://twenty_v2:", "postgres://postgres:") == plain[MODULE].decode()
    # the stage config is the same as rotate's: only age.secrets
    assert plan.results(sources, stage_only=True) == rotate.results(sources, stage_only=True)
    # idempotent: planning again over the result has nothing left to do
    after = {**sources, **results}
    assert pt.plan(after, dual_spec()).clean
    # and every byte outside the edits is kept
    for name, new in results.items():
        edits = [e for e in plan.edits if e.file == name]
        assert apply_edits(sources[name], edits) == new


def test_patch_leaves_a_user_option_naming_someone_else() -> None:
    sources = dict(pt.read_sources(EXAMPLE))
    sources[HOST] = sources[HOST].replace(b'user = "postgres";', b'user = "reporting";')
    results = pt.plan(sources, dual_spec()).results(sources)
    assert b'user = "reporting";' in results[HOST]


def test_spec_for_takes_the_login_role_from_the_strategy(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    cfg = write_cfg(repo, 'strategy = "dual-role"\nnew_role = "twenty_v2"')
    assert pt.spec_for(cfg, "twenty-db-password").login_role == "twenty_v2"
    assert pt.spec_for(write_cfg(repo), "twenty-db-password").login_role is None


def test_a_rerun_phase_keeps_its_rollback_material(tmp_path: Path) -> None:
    j = Journal.open(tmp_path, "newton", "m")
    j.begin("retire")
    j.steps["retire"].data = {"old_verifier_age": "c2VhbGVk"}
    j.save()  # then killed before finish
    again = Journal.open(tmp_path, "newton", "m")
    again.begin("retire")
    assert again.data("retire") == {"old_verifier_age": "c2VhbGVk"}
    again.fail("retire", "psql failed")
    again.begin("retire")  # a failed phase run again keeps it too
    assert again.data("retire") == {"old_verifier_age": "c2VhbGVk"}
    again.finish("retire", {"old_verifier_age": "c2VhbGVk"})
    again.undone("retire")
    again.begin("retire")  # an undone phase starts afresh
    assert again.data("retire") == {}
    assert json.loads((tmp_path / "newton" / "m.json").read_text())["steps"][0]["data"] == {}
