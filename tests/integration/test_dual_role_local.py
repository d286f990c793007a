"""Strategy dual-role end to end on a local target: a real PostgreSQL cluster (initdb),
the local transport, the native runtime, and a deploy command that runs the env-file
renderer the patched config holds (tests/harness/activation.py). The app stand-in
opens a new connection every 50 ms, so a credential that stops working shows at once
as failed connects: it must see none, during apply and during rollback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg  # noqa: TID251  (test, not product code)
import pytest

from nixmig import config, engine
from nixmig.db import ops, roles
from nixmig.db.connect import login_roles, try_login
from nixmig.db.writer import Writer, count_found
from nixmig.demo import OLD_PASSWORD, SECRET, Target, seed, setup, write_config
from nixmig.errors import NixmigError
from nixmig.phases import dualrole
from nixmig.phases.base import Context
from nixmig.secrets import store
from nixmig.secrets.age import load_identities
from nixmig.secrets.generate import generate
from nixmig.sensitive import Secret
from tests.harness.activation import Activation

PHASES = ["preflight", "backup", "stage", "add-role", "switch", "verify", "retire", "cleanup"]
NEW_PASSWORD = "n3w/pa+ss=w@rd:%?-dual-role"  # a TEST password that needs percent-encoding
NEW_ROLE = "postgres_v2"  # the default: ROLE_v2


@dataclass
class Dual:
    t: Target
    act: Activation

    @property
    def cfg_path(self) -> Path:
        return self.t.repo / "nixmig.toml"

    @property
    def journal(self) -> Path:
        return self.t.repo / ".nixmig/journal/newton" / f"{SECRET}.json"

    def ctx(self, identities: bool = True) -> Context:
        return engine.make_context(
            config.load(self.cfg_path),
            SECRET,
            identities=load_identities([self.t.admin_key]) if identities else [],
            emit=lambda _m: None,
        )

    def sql(self, script: str, database: str | None = None) -> str:
        ctx = self.ctx(identities=False)
        return ops.psql(ctx.t, ctx.runtime, script, database=database)

    def login(self, user: str, password: str) -> tuple[str | None, str]:
        return login_roles("127.0.0.1", self.t.port, user, Secret(password), "default")


@pytest.fixture
def dual() -> Iterator[Dual]:
    root = Path(tempfile.mkdtemp(prefix="nixmig-it-dual-"))
    t = setup(root, lambda _m: None)
    try:
        os.environ["PATH"] = f"{t.bindir}:{os.environ['PATH']}"
        seed(t)
        host_pub = " ".join(t.host_key.with_suffix(".pub").read_text().split()[:2])
        admin_pub = " ".join(t.admin_key.with_suffix(".pub").read_text().split()[:2])
        cfg = write_config(t, admin_pub, host_pub)
        rules = t.repo / "secrets" / "secrets.nix"
        store.new_secret(rules, "twenty-app-secret", generate(32), force=True)
        store.new_secret(rules, SECRET, Secret(NEW_PASSWORD), like="twenty-app-secret")
        act = Activation(
            conf=root / "activation.json",
            repo=t.repo,
            host_key=t.host_key,
            agenix_dir=t.agenix_dir,
            secret=SECRET,
            app_dir=t.app_dir,
            unit_env_file=f"/run/twenty/{SECRET}.env",
            fallback_url=f"postgres://postgres:{OLD_PASSWORD}@127.0.0.1:{t.port}/default",
            hosts={"db:5432": f"127.0.0.1:{t.port}"},
        ).write()
        text = cfg.read_text()
        deploy = text.split('deploy = "')[1].split('"')[0]
        cfg.write_text(
            text.replace('strategy = "rotate"', 'strategy = "dual-role"').replace(deploy, act.deploy_command())
        )
        yield Dual(t, act)
    finally:
        subprocess.run(
            [
                *(["runuser", "-u", t.os_user, "--"] if os.geteuid() == 0 else []),
                str(t.bindir / "pg_ctl"),
                "-D",
                str(t.pg_data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def nixmig(d: Dual, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixmig", *args, "-c", str(d.cfg_path)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


def states(d: Dual) -> list[str]:
    r = nixmig(d, "status", "--json")
    assert r.returncode == 0, r.stderr
    return [p["state"] for p in json.loads(r.stdout)["phases"]]


def writer(d: Dual) -> Writer:
    w = d.act.writer(reconnect_every=0.05)
    w.start()
    deadline = 200
    while len(w.acknowledged) < 10 and deadline:
        import time

        time.sleep(0.02)
        deadline -= 1
    assert len(w.acknowledged) >= 10, "the app stand-in does not write"
    return w


def stop(w: Writer, d: Dual) -> tuple[int, int]:
    import time

    n = len(w.acknowledged)
    for _ in range(500):
        if len(w.acknowledged) >= n + 10:
            break
        time.sleep(0.02)
    w.stop()
    return len(w.acknowledged), count_found(d.act.app_url(), w.acknowledged)


def assert_migrated(d: Dual) -> None:
    assert d.login(NEW_ROLE, NEW_PASSWORD) == (None, "postgres")  # logs in, acts as the old role
    refused, _ = d.login("postgres", OLD_PASSWORD)
    assert refused is not None and "password authentication failed" in refused
    assert ops.role_state(d.ctx().t, d.ctx().runtime, "postgres").verifier is None
    assert d.act.app_user() == NEW_ROLE


def assert_not_migrated(d: Dual) -> None:
    assert d.login("postgres", OLD_PASSWORD) == (None, "postgres")
    assert not roles.info(d.ctx().t, d.ctx().runtime, NEW_ROLE).exists
    assert d.act.app_user() == "postgres"


def test_plan_lists_the_dual_role_phases_without_a_secret(dual: Dual) -> None:
    plan = nixmig(dual, "plan", "--json")
    assert plan.returncode == 0, plan.stderr
    steps = json.loads(plan.stdout)
    assert [s["phase"] for s in steps] == PHASES
    text = json.dumps(steps)
    assert f'GRANT \\"postgres\\" TO \\"{NEW_ROLE}\\"' in text and 'ALTER ROLE \\"postgres\\" PASSWORD NULL' in text
    assert "n3w/pa+ss" not in text and "SCRAM-SHA-256$4096:********" in text


def test_apply_keeps_every_login_working_then_rollback(dual: Dual) -> None:
    d = dual
    # what the old role carries that sessions of the new one must get too
    d.sql(
        "ALTER ROLE postgres SET statement_timeout = '7s';\n"
        'ALTER ROLE postgres IN DATABASE "default" SET search_path = "$user", public, extra;\n'
    )
    originals = {p: p.read_bytes() for p in d.t.repo.rglob("*.nix") if ".nixmig" not in p.parts}
    app = writer(d)
    run = nixmig(d, "apply", "--yes", "-i", str(d.t.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    assert states(d) == ["done"] * len(PHASES)
    assert_migrated(d)

    # the new role: the old one's attributes and settings, membership, and the mark
    info = roles.info(d.ctx().t, d.ctx().runtime, NEW_ROLE)
    assert info.attributes == roles.info(d.ctx().t, d.ctx().runtime, "postgres").attributes
    assert "SUPERUSER" in info.attributes and info.member_of == ("postgres",) and info.session_role == "postgres"
    assert info.comment == roles.mark("postgres", SECRET)
    with psycopg.connect(
        host="127.0.0.1", port=d.t.port, user=NEW_ROLE, password=NEW_PASSWORD, dbname="default", autocommit=True
    ) as conn:
        settings = conn.execute("SELECT current_setting('statement_timeout'), current_setting('search_path')")
        assert settings.fetchone() == ("7s", '"$user", public, extra')
        conn.execute("CREATE TABLE made_after_switch (id int)")
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'made_after_switch'").fetchone()
        assert owner == ("postgres",)  # new objects keep the old owner
        assert conn.execute("SELECT session_user").fetchone() == (NEW_ROLE,)

    # the app moved over without one refused login, nothing acknowledged is lost
    assert app.failed_connects == 0 and app.failed_attempts == 0
    acked, found = stop(app, d)
    assert acked > 50 and found == acked

    # the patched repo: the env file's URL and the module's user name the new role; patch has nothing left
    host = (d.t.repo / "hosts/newton/default.nix").read_text()
    assert f'user = "{NEW_ROLE}";' in host
    check = subprocess.run(
        [sys.executable, "-m", "nixmig", "patch", "--check", "--repo", str(d.t.repo)], capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    verify = json.loads(d.journal.read_text())["steps"][5]
    assert verify["phase"] == "verify" and all(c["ok"] for c in verify["data"]["checks"])
    assert len(verify["data"]["checks"]) >= 6

    # nothing in clear anywhere nixmig wrote or printed
    verifier = roles.info(d.ctx().t, d.ctx().runtime, NEW_ROLE).verifier
    assert verifier is not None
    for text in (d.journal.read_text(), run.stdout, run.stderr, (d.t.pg_data.parent / "log").read_text()):
        assert "n3w/pa+ss" not in text and "n3w%2Fpa" not in text
        assert verifier.reveal_str().split("$", 1)[1] not in text

    # rollback while the app writes (and reconnects): old password back first, then the old
    # config, then the role dropped once nothing is logged in as it
    app = writer(d)
    refused = nixmig(d, "rollback", "--yes")
    assert refused.returncode == 1 and "--identity" in refused.stderr
    assert states(d) == ["done"] * len(PHASES)
    back = nixmig(d, "rollback", "--yes", "-i", str(d.t.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert "rolled back: cleanup, retire, verify, switch, add-role, stage, backup, preflight" in back.stdout
    assert_not_migrated(d)
    assert app.failed_connects == 0 and app.failed_attempts == 0
    acked, found = stop(app, d)
    assert found == acked
    kept = d.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'made_after_switch';").strip()
    assert kept == "postgres"
    assert {p: p.read_bytes() for p in d.t.repo.rglob("*.nix") if ".nixmig" not in p.parts} == originals
    assert states(d) == ["undone"] * len(PHASES)

    # and it can run again after a rollback
    again = nixmig(d, "apply", "--yes", "-i", str(d.t.admin_key))
    assert again.returncode == 0, again.stdout + again.stderr
    assert_migrated(d)


@pytest.mark.parametrize("phase", PHASES[:-1])
def test_sigkill_after_each_phase_then_apply_again(dual: Dual, phase: str) -> None:
    app = writer(dual)
    killed = nixmig(dual, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": phase})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    done = {s["phase"]: s["state"] for s in json.loads(dual.journal.read_text())["steps"]}
    assert done[phase] == "done" and len(done) == PHASES.index(phase) + 1
    resumed = nixmig(dual, "apply", "--yes", "-i", str(dual.t.admin_key))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("done before, skipped") == PHASES.index(phase) + 1
    assert states(dual) == ["done"] * len(PHASES)
    assert_migrated(dual)
    assert app.failed_connects == 0
    acked, found = stop(app, dual)
    assert found == acked
    # the journal kept what rollback needs: it restores the old password
    back = nixmig(dual, "rollback", "--yes", "-i", str(dual.t.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert_not_migrated(dual)


def test_killed_inside_retire_keeps_the_sealed_verifier(dual: Dual) -> None:
    """A run killed after ALTER ROLE … PASSWORD NULL but before retire is journaled: apply
    again finds it done (check) and must keep the sealed old verifier for rollback."""
    ctx = dual.ctx()
    phases = engine.phases_for("dual-role")
    engine.apply(ctx)  # the whole run, then fake the kill: retire back to "running" as a kill leaves it
    journal = json.loads(dual.journal.read_text())
    step = next(s for s in journal["steps"] if s["phase"] == "retire")
    assert step["data"]["old_verifier_age"]
    step["state"], step["finished"] = "running", None
    journal["steps"] = [s for s in journal["steps"] if s["phase"] != "cleanup"]
    dual.journal.write_text(json.dumps(journal))
    assert [p.name for p in phases][-2:] == ["retire", "cleanup"]
    ctx = dual.ctx()
    engine.apply(ctx)
    assert ctx.journal.data("retire")["old_verifier_age"] == step["data"]["old_verifier_age"]
    engine.rollback(dual.ctx())
    assert_not_migrated(dual)


def test_a_foreign_role_of_that_name_stops_preflight(dual: Dual) -> None:
    dual.sql(f"CREATE ROLE {NEW_ROLE} LOGIN;")
    r = nixmig(dual, "apply", "--yes", "-i", str(dual.t.admin_key))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"role '{NEW_ROLE}' already exists and nixmig did not create it" in lines[0]
    assert "new_role" in lines[0] and "Traceback" not in r.stdout + r.stderr
    assert states(dual) == ["failed"] + ["pending"] * (len(PHASES) - 1)
    assert roles.info(dual.ctx().t, dual.ctx().runtime, NEW_ROLE).comment == ""  # untouched
    assert dual.login("postgres", OLD_PASSWORD) == (None, "postgres")


def test_verify_fails_while_a_client_still_uses_the_old_role(dual: Dual, monkeypatch: pytest.MonkeyPatch) -> None:
    """Something not moved by the deploy (another app on the old credentials) would fail once the
    old password is retired: verify says so and retire does not run."""
    monkeypatch.setattr(dualrole, "OLD_SESSIONS_WAIT", 1.0)
    with psycopg.connect(
        host="127.0.0.1", port=dual.t.port, user="postgres", password=OLD_PASSWORD, dbname="default"
    ) as straggler:
        ctx = dual.ctx()
        with pytest.raises(NixmigError, match="no client logged in as postgres over TCP any more"):
            engine.apply(ctx)
        straggler.execute("SELECT 1")  # still connected: nothing was cut off
    assert ctx.journal.state("verify") == "failed" and ctx.journal.state("retire") is None
    assert dual.login("postgres", OLD_PASSWORD) == (None, "postgres")
    engine.apply(dual.ctx())  # the straggler is gone: apply resumes at verify
    assert_migrated(dual)


def test_rollback_waits_for_the_new_role_to_be_unused(dual: Dual, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dualrole, "NEW_SESSIONS_WAIT", 1.0)
    engine.apply(dual.ctx())
    with psycopg.connect(
        host="127.0.0.1", port=dual.t.port, user=NEW_ROLE, password=NEW_PASSWORD, dbname="default"
    ) as still:
        with pytest.raises(NixmigError, match=f"sessions are still logged in as '{NEW_ROLE}'"):
            engine.rollback(dual.ctx())
        still.execute("SELECT 1")
        ctx = dual.ctx()
        assert ctx.journal.state("add-role") == "done" and ctx.journal.state("switch") == "undone"
    engine.rollback(dual.ctx())
    assert_not_migrated(dual)
    assert try_login("127.0.0.1", dual.t.port, NEW_ROLE, Secret(NEW_PASSWORD), "default") is not None


def test_a_plain_app_role_gets_its_privileges_and_nothing_more(dual: Dual) -> None:
    """Not a superuser: CREATEDB and a connection limit, a schema it owns, grants on another
    owner's table, a search_path. The second role can do exactly what it could, and what it
    creates as itself goes back to the old role when it is dropped."""
    dual.sql(
        "CREATE ROLE app LOGIN CREATEDB CONNECTION LIMIT 20;\n"
        "CREATE SCHEMA crm AUTHORIZATION app;\n"
        "GRANT SELECT, INSERT ON person TO app;\n"
        "GRANT USAGE ON SEQUENCE person_id_seq TO app;\n"
        "ALTER ROLE app SET search_path = crm, public;\n",
        database="default",
    )
    ctx = dual.ctx()
    old = roles.info(ctx.t, ctx.runtime, "app")
    roles.create(ctx.t, ctx.runtime, old, "app_v2", Secret("app-v2-password"), roles.mark("app", "m"), exists=False)
    info = roles.info(ctx.t, ctx.runtime, "app_v2")
    assert info.attributes == ("CREATEDB",) and info.connection_limit == 20 and info.member_of == ("app",)
    with psycopg.connect(
        host="127.0.0.1", port=dual.t.port, user="app_v2", password="app-v2-password", dbname="default", autocommit=True
    ) as conn:
        assert conn.execute("SELECT current_user, current_setting('search_path')").fetchone() == ("app", "crm, public")
        conn.execute("INSERT INTO person (email) VALUES ('v2@example.org')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM person")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM app_writes")
        conn.execute("CREATE TABLE made_as_app (id int)")  # in crm, the search_path's first schema
        conn.execute("SET ROLE NONE")  # as itself now: what it creates is its own
        conn.execute("CREATE TABLE crm.made_as_v2 (id int)")
    owners = "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'crm' ORDER BY 1;"
    assert dual.sql(owners, database="default").split() == ["made_as_app", "app", "made_as_v2", "app_v2"]
    assert roles.drop(ctx.t, ctx.runtime, "app_v2", "app") == ["default"]
    assert dual.sql(owners, database="default").split() == ["made_as_app", "app", "made_as_v2", "app"]
    assert not roles.info(ctx.t, ctx.runtime, "app_v2").exists
