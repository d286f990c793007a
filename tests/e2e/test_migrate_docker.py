"""`nixmig apply | status | rollback` on real parts: the worked example's twenty stack.

nixmig reaches "newton" (this machine) through a real sshd with strict known_hosts
and drives the harness's dockerd there with `docker -H …`; the database is the
container twenty-db-1 on the volume twenty_db-data (POSTGRES_PASSWORD=postgres,
seeded); the app stand-in keeps inserting a row every ~10 ms from its env file;
the deploy command plays NixOS activation (tests/e2e/twenty_stack.py).

One container serves the whole module: every test starts from a real reset (the
role's password set back to `postgres` and checked by a TCP login; a fresh repo
copy, secret, journal, agenix dir, env file and lock dir).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker  # noqa: TID251  (test harness, not product code)
import pytest

from nixmig.db.writer import Writer, count_found
from tests.e2e import twenty_stack as ts
from tests.harness import free_port
from tests.harness.dockerd import MANAGED_ROOT, DockerEngine
from tests.harness.sshd import SshServer


@dataclass(frozen=True)
class Stack:
    db: ts.Db
    keys: ts.Keys
    ssh: SshServer


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


@pytest.fixture
def site(stack: Stack, tmp_path: Path) -> ts.Site:
    ts.reset_db(stack.db)
    return ts.make_site(tmp_path / "site", stack.keys, stack.db, stack.ssh)


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    """Every app stand-in a test starts is stopped when it ends, whatever happened: one left writing with
    the old password after a failed test puts authentication failures into the next tests' server logs."""
    started: list[Writer] = []
    yield started
    for w in started:
        w.stop()


@pytest.fixture
def app(site: ts.Site) -> Iterator[Writer]:
    """The app stand-in, writing from before nixmig starts until the test's checks."""
    writer = site.writer()
    writer.start()
    ts.wait_until(lambda: len(writer.acknowledged) >= 10)
    try:
        yield writer
    finally:
        writer.stop()


def states(site: ts.Site) -> list[str]:
    status = ts.nixmig(site, "status", "--json")
    assert status.returncode == 0, status.stderr
    return [p["state"] for p in json.loads(status.stdout)["phases"]]


def stop_and_count(site: ts.Site, writer: Writer) -> tuple[int, int]:
    """Stop the writer; (acknowledged, found in the table)."""
    n = len(writer.acknowledged)
    ts.wait_until(lambda: len(writer.acknowledged) >= n + 10)  # it still writes after the run
    writer.stop()
    return len(writer.acknowledged), count_found(site.app_url(), writer.acknowledged)


def assert_rotated(site: ts.Site) -> None:
    assert site.db.login(site.password.reveal_str()) is None
    refused = site.db.login(ts.OLD_PASSWORD)
    assert refused is not None and "password authentication failed" in refused


def assert_not_rotated(site: ts.Site) -> None:
    assert site.db.login(ts.OLD_PASSWORD) is None
    refused = site.db.login(site.password.reveal_str())
    assert refused is not None and "password authentication failed" in refused


def test_apply_then_rollback(stack: Stack, site: ts.Site, app: Writer, writers: list[Writer]) -> None:
    ssh_log = stack.ssh.log
    needles = ts.secret_needles(site.password)
    old_verifier = site.db.verifier()
    sampler = ts.CmdlineSampler(needles)
    try:
        plan = ts.nixmig(site, "plan", "--json")
        assert plan.returncode == 0, plan.stderr
        assert [s["phase"] for s in json.loads(plan.stdout)] == ts.PHASES
        run = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key))
    finally:
        report = sampler.stop()
    assert run.returncode == 0, run.stdout + run.stderr

    # the database: every acknowledged write is there; the new password works, the old one not
    assert_rotated(site)
    assert states(site) == ["done"] * 7
    verify = json.loads(site.journal.read_text())["steps"][5]
    assert verify["phase"] == "verify" and all(c["ok"] for c in verify["data"]["checks"])
    acked, found = stop_and_count(site, app)
    assert acked > 50 and found == acked
    assert app.failed_attempts == 0  # the app restarted onto the new password without one refused login

    # the host: agenix file and env file 0400, the URL percent-encoded
    assert site.agenix_file.read_bytes() == site.password.reveal()
    assert site.agenix_file.stat().st_mode & 0o777 == 0o400
    assert site.env_file.stat().st_mode & 0o777 == 0o400
    assert site.app_url() == site.db.url(site.password.reveal_str())
    assert "/+=@:%?" not in site.app_url()

    # the password was never in a command line, the journal, the output or a log
    assert report.hits == []
    assert report.sweeps > 100, report
    # nixmig's psql (-d dbname=…), in the container through its shell (nixmig.db.shells): seen
    assert any("dbname=" in c for c in report.psql), (report.psql[:5], report.docker_exec[:5])
    texts = {
        "journal": site.journal.read_text(),
        "plan": plan.stdout + plan.stderr,
        "apply output": run.stdout + run.stderr,
        "sshd log": ssh_log.read_text(errors="replace"),
        "container log": subprocess.run(
            site.db.docker("logs", ts.CONTAINER), capture_output=True, text=True, check=True
        ).stderr,
    }
    dockerd_log = MANAGED_ROOT / "dockerd.log"
    if site.db.docker_host == f"unix://{MANAGED_ROOT / 'docker.sock'}" and dockerd_log.exists():
        texts["dockerd log"] = dockerd_log.read_text(errors="replace")
    verifiers = [old_verifier, site.db.verifier()]
    assert all(v.startswith("SCRAM-SHA-256$") for v in verifiers)
    for what, text in texts.items():
        for n in needles:
            assert n not in text, f"the password is in the {what}"
        for v in verifiers:
            assert v.split("$", 1)[1] not in text, f"a verifier is in the {what}"
    backup = Path(json.loads(site.journal.read_text())["steps"][1]["data"]["path"])
    assert backup.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert backup.stat().st_mode & 0o777 == 0o600

    # rollback: needs the operator's identity, then restores the old password and config
    writer = site.writer()
    writers.append(writer)
    writer.start()
    refused = ts.nixmig(site, "rollback", "--yes")
    assert refused.returncode == 1 and "--identity" in refused.stderr
    assert states(site) == ["done"] * 7 and site.env_file.exists()
    back = ts.nixmig(site, "rollback", "--yes", "-i", str(site.keys.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert_not_rotated(site)
    assert not site.env_file.exists() and not site.agenix_file.exists()
    assert site.app_url() == site.db.url(ts.OLD_PASSWORD)
    status = json.loads(ts.nixmig(site, "status", "--json").stdout)
    assert status["rolled_back"] is True
    assert [p["state"] for p in status["phases"]] == ["undone"] * 7
    acked, found = stop_and_count(site, writer)
    assert found == acked
    # the old password is back before the app restarts onto it: not one refused login
    assert writer.failed_attempts == 0


@pytest.mark.parametrize("phase", ts.PHASES[:-1])
def test_sigkill_after_each_phase_then_apply_again(site: ts.Site, app: Writer, phase: str) -> None:
    killed = ts.nixmig(site, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": phase})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    journal = {s["phase"]: s["state"] for s in json.loads(site.journal.read_text())["steps"]}
    assert journal[phase] == "done" and len(journal) == ts.PHASES.index(phase) + 1
    # the host lock died with the killed run's SSH session: no waiting, no manual cleanup
    resumed = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("done before, skipped") == ts.PHASES.index(phase) + 1
    assert states(site) == ["done"] * 7
    assert_rotated(site)
    assert site.app_url() == site.db.url(site.password.reveal_str())
    acked, found = stop_and_count(site, app)
    assert found == acked


def _closed_port(site: ts.Site, ssh: SshServer) -> None:
    site.edit_config(f"port = {ssh.port}", f"port = {free_port()}")


def _empty_known_hosts(site: ts.Site, ssh: SshServer) -> None:
    empty = site.root / "empty_known_hosts"
    empty.write_text("")
    site.edit_config(f'known_hosts = "{ssh.known_hosts}"', f'known_hosts = "{empty}"')


def _no_role(site: ts.Site, ssh: SshServer) -> None:
    site.edit_config('role = "postgres"', 'role = "twenty"')


def _no_container(site: ts.Site, ssh: SshServer) -> None:
    site.edit_config(f'container = "{ts.CONTAINER}"', 'container = "nope"')


# case: (edit of nixmig.toml, what the error line says, the journal's first phase after the run)
BAD_INPUTS: dict[str, tuple[Callable[[ts.Site, SshServer], None], str, str]] = {
    "unreachable host": (_closed_port, "cannot connect: Unable to connect to port", "pending"),
    "unknown host key": (_empty_known_hosts, "unknown host key ssh-ed25519 SHA256:", "pending"),
    "missing role": (_no_role, "role 'twenty' does not exist", "failed"),
    "missing container": (_no_container, "container 'nope' not found", "failed"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_stops_cleanly(stack: Stack, site: ts.Site, case: str) -> None:
    edit, message, first = BAD_INPUTS[case]
    before = site.db.state()
    edit(site, stack.ssh)
    r = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key), timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nixmig: error: "), r.stderr
    assert message in lines[0] and "Traceback" not in r.stdout + r.stderr
    if case == "unknown host key":
        fingerprint = subprocess.run(
            ["ssh-keygen", "-lf", "-"], input=stack.ssh.host_public_key.encode(), capture_output=True, check=True
        ).stdout.split()[1]
        assert fingerprint.decode() in lines[0] and f"ssh-keyscan -p {stack.ssh.port} " in lines[0]
        assert (site.root / "empty_known_hosts").read_text() == ""  # nothing auto-accepted
    assert site.db.state() == before
    assert_not_rotated(site)
    assert not site.agenix_file.exists() and not site.env_file.exists()
    assert states(site) == [first] + ["pending"] * 6


def without_app_writes(state: dict[str, object]) -> dict[str, object]:
    tables = state["tables"]
    assert isinstance(tables, list)
    return {**state, "tables": [t for t in tables if not t.startswith("app_writes")]}


@pytest.mark.parametrize("phase", ["stage", "switch"])
def test_failing_deploy_stops_there_and_rolls_back(
    stack: Stack, tmp_path: Path, phase: str, writers: list[Writer]
) -> None:
    ts.reset_db(stack.db)
    site = ts.make_site(tmp_path / "site", stack.keys, stack.db, stack.ssh, fail_phases=[phase])
    before = without_app_writes(site.db.state())
    writer = site.writer()
    writers.append(writer)
    writer.start()
    r = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"deploy ({phase}) exited 1" in lines[0] and "Traceback" not in r.stdout
    assert "activation of the new generation failed" in r.stdout  # its output was streamed
    assert "nixmig apply` resumes here" in lines[0] and "nixmig rollback" in lines[0]
    done = ts.PHASES.index(phase)
    if phase == "stage":  # stopped before anything changed in the database
        assert without_app_writes(site.db.state()) == before
        assert_not_rotated(site)
    else:  # the password is rotated, the services still run the old config
        assert_rotated(site)
        assert not site.env_file.exists()

    # status and the journal say where it stopped and what to do next
    status = ts.nixmig(site, "status")
    assert status.returncode == 0
    row = next(ln for ln in status.stdout.splitlines() if ln.strip().startswith(phase))
    assert "failed" in row and f"deploy ({phase}) exited 1" in row
    assert states(site) == ["done"] * done + ["failed"] + ["pending"] * (6 - done)
    step = json.loads(site.journal.read_text())["steps"][done]
    assert step["state"] == "failed" and "nixmig rollback" in step["error"]

    back = ts.nixmig(site, "rollback", "--yes", "-i", str(site.keys.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    undone = "stage, backup, preflight" if phase == "stage" else "rotate, switch, stage, backup, preflight"
    assert f"rolled back: {undone}" in back.stdout
    assert without_app_writes(site.db.state()) == before  # the old verifier itself is back
    assert_not_rotated(site)
    assert not site.env_file.exists() and not site.agenix_file.exists()
    acked, found = stop_and_count(site, writer)
    assert found == acked and writer.failed_attempts == 0  # the app never noticed
