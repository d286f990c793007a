"""Strategy dual-role on real parts: the worked example's twenty stack (tests/e2e/twenty_stack.py).

nixmig reaches "newton" through a real sshd (strict known_hosts) and drives the
harness's dockerd there; the database is twenty-db-1 on twenty_db-data. The deploy
command runs the env-file renderer that the patched repo holds
(tests/harness/activation.py), so the app's URL, with its user, is what the patched
config renders. The app stand-in opens a new connection every 50 ms: one login
refused anywhere during apply or rollback would show as a failed connect.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker  # noqa: TID251  (test harness, not product code)
import pytest

from nixmig.db.connect import login_roles
from nixmig.db.writer import Writer, count_found
from nixmig.sensitive import Secret
from tests.e2e import twenty_stack as ts
from tests.harness.activation import Activation
from tests.harness.dockerd import MANAGED_ROOT, DockerEngine
from tests.harness.sshd import SshServer

PHASES = ["preflight", "backup", "stage", "add-role", "switch", "verify", "retire", "cleanup"]
NEW_ROLE = "postgres_v2"
RECONNECT_EVERY = 0.05


@dataclass(frozen=True)
class Stack:
    db: ts.Db
    keys: ts.Keys
    ssh: SshServer


@dataclass(frozen=True)
class DualSite:
    site: ts.Site
    act: Activation

    @property
    def db(self) -> ts.Db:
        return self.site.db

    def login(self, user: str, password: str) -> tuple[str | None, str]:
        return login_roles(self.db.ip, 5432, user, Secret(password), ts.DATABASE)

    def writer(self) -> Writer:
        w = self.act.writer(reconnect_every=RECONNECT_EVERY)
        _STARTED.append(w)
        w.start()
        ts.wait_until(lambda: len(w.acknowledged) >= 10)
        return w


# the app stand-ins a test started: stopped when it ends, whatever happened (one left writing with the old
# password after a failed test put authentication failures into the next tests' server logs: a cascade)
_STARTED: list[Writer] = []


@pytest.fixture(autouse=True)
def _stop_writers() -> Iterator[None]:
    yield
    while _STARTED:
        _STARTED.pop().stop()


@pytest.fixture(scope="module")
def stack(
    docker_engine: DockerEngine,
    docker_client: docker.DockerClient,
    pg_image: str,
    sshd: SshServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    with ts.exclusive():
        db = ts.start_db(docker_client, pg_image, docker_engine.base_url)
        try:
            yield Stack(db, ts.make_keys(tmp_path_factory.mktemp("twenty-keys")), sshd)
        finally:
            ts.remove_db(docker_client)


def reset(db: ts.Db) -> None:
    """The worked example's state: no second role (what a failed test left is removed), password `postgres`."""
    if db.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{NEW_ROLE}';").strip():
        db.psql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{NEW_ROLE}';\n"
            f"REASSIGN OWNED BY {NEW_ROLE} TO postgres;\nDROP OWNED BY {NEW_ROLE};\nDROP ROLE {NEW_ROLE};\n"
        )
    ts.reset_db(db)


def dual_site(stack: Stack, root: Path, *, fail_phases: tuple[str, ...] = ()) -> DualSite:
    reset(stack.db)
    site = ts.make_site(root, stack.keys, stack.db, stack.ssh)
    act = Activation(
        conf=root / "activation.json",
        repo=site.repo,
        host_key=site.keys.host_key,
        agenix_dir=site.agenix_dir,
        secret=ts.SECRET,
        app_dir=site.app_dir,
        unit_env_file=f"/run/twenty/{ts.SECRET}.env",
        fallback_url=stack.db.url(ts.OLD_PASSWORD),
        hosts={"db:5432": f"{stack.db.ip}:5432"},
    ).write()
    assert act.env_file == site.env_file  # the health check of make_site tests this file
    text = site.config.read_text()
    deploy = text.split('deploy = "')[1].split('"')[0]
    site.config.write_text(
        text.replace('strategy = "rotate"', 'strategy = "dual-role"').replace(deploy, act.deploy_command(fail_phases))
    )
    return DualSite(site, act)


@pytest.fixture
def dual(stack: Stack, tmp_path: Path) -> DualSite:
    return dual_site(stack, tmp_path / "site")


def states(d: DualSite) -> list[str]:
    r = ts.nixmig(d.site, "status", "--json")
    assert r.returncode == 0, r.stderr
    return [p["state"] for p in json.loads(r.stdout)["phases"]]


def stop_and_count(d: DualSite, w: Writer) -> tuple[int, int]:
    n = len(w.acknowledged)
    ts.wait_until(lambda: len(w.acknowledged) >= n + 10)
    w.stop()
    return len(w.acknowledged), count_found(d.act.app_url(), w.acknowledged)


def assert_migrated(d: DualSite) -> None:
    assert d.login(NEW_ROLE, d.site.password.reveal_str()) == (None, ts.ROLE)  # acts as the old role
    refused, _ = d.login(ts.ROLE, ts.OLD_PASSWORD)
    assert refused is not None and "password authentication failed" in refused
    assert d.db.verifier() == ""  # PASSWORD NULL
    assert d.act.app_user() == NEW_ROLE


def assert_not_migrated(d: DualSite) -> None:
    assert d.login(ts.ROLE, ts.OLD_PASSWORD) == (None, ts.ROLE)
    assert not d.db.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{NEW_ROLE}';").strip()
    assert d.act.app_user() == ts.ROLE


def test_apply_then_rollback_without_one_failed_login(stack: Stack, dual: DualSite) -> None:
    d, site = dual, dual.site
    needles = ts.secret_needles(site.password)
    old_verifier = site.db.verifier()
    tables_before = {t.split("\t")[0]: int(t.split("\t")[1]) for t in site.db.state()["tables"]}  # type: ignore[attr-defined]
    app = d.writer()
    sampler = ts.CmdlineSampler(needles)
    try:
        plan = ts.nixmig(site, "plan", "--json")
        assert plan.returncode == 0, plan.stderr
        assert [s["phase"] for s in json.loads(plan.stdout)] == PHASES
        run = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key))
    finally:
        report = sampler.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert states(d) == ["done"] * len(PHASES)
    assert_migrated(d)

    # the app: moved to the new role without one refused login, nothing acknowledged lost
    assert app.failed_connects == 0 and app.failed_attempts == 0, (app.failed_connects, app.failed_attempts)
    acked, found = stop_and_count(d, app)
    assert acked > 100 and found == acked

    # verification: exact, every check passed; every table has at least its rows
    steps = json.loads(site.journal.read_text())["steps"]
    verify = next(s for s in steps if s["phase"] == "verify")
    checks = {c["check"]: c for c in verify["data"]["checks"]}
    assert all(c["ok"] for c in checks.values()), checks
    assert "no authentication failure in the server log since the switch" in checks
    assert f"{NEW_ROLE} logs in with the new password" in checks
    assert f"no client logged in as {ts.ROLE} over TCP any more" in checks
    tables_after = {t.split("\t")[0]: int(t.split("\t")[1]) for t in site.db.state()["tables"]}  # type: ignore[attr-defined]
    assert tables_after.keys() == tables_before.keys()
    assert all(tables_after[k] == v for k, v in tables_before.items() if k != "app_writes")
    assert tables_after["app_writes"] >= tables_before["app_writes"] + acked

    # the host: agenix file and env file 0400; the URL the patched config renders, percent-encoded
    assert site.agenix_file.read_bytes() == site.password.reveal()
    assert site.agenix_file.stat().st_mode & 0o777 == 0o400
    assert site.env_file.stat().st_mode & 0o777 == 0o400
    env = site.env_file.read_text()
    assert env.startswith(f"PG_DATABASE_URL=postgres://{NEW_ROLE}:") and env.rstrip().endswith("@db:5432/default")
    assert "/+=@:%?" not in env

    # the password and the verifiers were never in a command line, the journal, the output or a log
    assert report.hits == [] and report.sweeps > 100, report
    assert any(ts.CONTAINER in c and "psql" in c for c in report.docker_exec), report.docker_exec[:5]
    new_verifier = site.db.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{NEW_ROLE}';").strip()
    texts = {
        "journal": site.journal.read_text(),
        "plan": plan.stdout + plan.stderr,
        "apply output": run.stdout + run.stderr,
        "sshd log": stack.ssh.log.read_text(errors="replace"),
        "container log": subprocess.run(
            site.db.docker("logs", ts.CONTAINER), capture_output=True, text=True, check=True
        ).stderr,
    }
    dockerd_log = MANAGED_ROOT / "dockerd.log"
    if site.db.docker_host == f"unix://{MANAGED_ROOT / 'docker.sock'}" and dockerd_log.exists():
        texts["dockerd log"] = dockerd_log.read_text(errors="replace")
    assert old_verifier.startswith("SCRAM-SHA-256$") and new_verifier.startswith("SCRAM-SHA-256$")
    for what, text in texts.items():
        for n in needles:
            assert n not in text, f"the password is in the {what}"
        for v in (old_verifier, new_verifier):
            assert v.split("$", 1)[1] not in text, f"a verifier is in the {what}"

    # rollback, while the app writes and reconnects: not one refused login either
    app = d.writer()
    refused = ts.nixmig(site, "rollback", "--yes")
    assert refused.returncode == 1 and "--identity" in refused.stderr
    assert states(d) == ["done"] * len(PHASES)
    back = ts.nixmig(site, "rollback", "--yes", "-i", str(site.keys.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert "rolled back: cleanup, retire, verify, switch, add-role, stage, backup, preflight" in back.stdout
    assert_not_migrated(d)
    assert site.db.verifier() == old_verifier  # the very verifier it had
    assert not site.env_file.exists() and not site.agenix_file.exists()
    assert states(d) == ["undone"] * len(PHASES)
    assert app.failed_connects == 0 and app.failed_attempts == 0, (app.failed_connects, app.failed_attempts)
    acked, found = stop_and_count(d, app)
    assert found == acked


@pytest.mark.parametrize("phase", PHASES[:-1])
def test_sigkill_after_each_phase_then_apply_again(dual: DualSite, phase: str) -> None:
    site = dual.site
    app = dual.writer()
    killed = ts.nixmig(site, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": phase})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    journal = {s["phase"]: s["state"] for s in json.loads(site.journal.read_text())["steps"]}
    assert journal[phase] == "done" and len(journal) == PHASES.index(phase) + 1
    resumed = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("done before, skipped") == PHASES.index(phase) + 1
    assert states(dual) == ["done"] * len(PHASES)
    assert_migrated(dual)
    assert app.failed_connects == 0
    acked, found = stop_and_count(dual, app)
    assert found == acked


def test_failing_switch_deploy_rolls_back_and_drops_the_role(stack: Stack, tmp_path: Path) -> None:
    d = dual_site(stack, tmp_path / "site", fail_phases=("switch",))
    site = d.site
    app = d.writer()
    r = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "deploy (switch) exited 1" in lines[0] and "nixmig rollback" in lines[0]
    assert states(d) == ["done"] * 4 + ["failed"] + ["pending"] * 3
    # the second role exists and works, the app is still on the old one, whose password still works
    assert d.login(NEW_ROLE, site.password.reveal_str()) == (None, ts.ROLE)
    assert d.login(ts.ROLE, ts.OLD_PASSWORD) == (None, ts.ROLE) and d.act.app_user() == ts.ROLE
    back = ts.nixmig(site, "rollback", "--yes", "-i", str(site.keys.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert "rolled back: switch, add-role, stage, backup, preflight" in back.stdout
    assert f"dropped role {NEW_ROLE}" in back.stdout
    assert_not_migrated(d)
    assert app.failed_connects == 0 and app.failed_attempts == 0
    acked, found = stop_and_count(d, app)
    assert found == acked
