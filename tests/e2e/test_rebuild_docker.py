"""Strategy rebuild on real parts: the worked example's twenty stack over a real sshd and dockerd.

The database is twenty-db-1 on twenty_db-data; the deploy plays activation and arion's
``up`` of the db service from the patched compose file, evaluated by nix
(tests/harness/arion.py), so the switch to the new volume is what the patched Nix says.
The app stand-in writes every ~10 ms; ``app_stop`` makes it stop as a stopped unit would.
Every test starts from a fresh twenty-db-1 (a rebuild replaces it).

Asserted: nothing acknowledged is lost (writes during the freeze fail and are not
acknowledged), the copy is verified exactly and a difference stops before the switch,
a SIGKILL after any phase resumes, rollback (copying writes made after the switch back
into the old volume), a new image (the test image under a second tag standing in for a
16 image: the binaries are the same PostgreSQL 15, so the major version does not change).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker  # noqa: TID251  (test harness, not product code)
import pytest

from nixmig.db.writer import Writer, count_found, lost
from tests.e2e import rebuild_stack as rs
from tests.e2e import twenty_stack as ts
from tests.harness.dockerd import MANAGED_ROOT, DockerEngine
from tests.harness.sshd import SshServer


@dataclass(frozen=True)
class Stack:
    client: docker.DockerClient
    image: str
    docker_host: str
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
        try:
            yield Stack(
                docker_client, pg_image, docker_engine.base_url, ts.make_keys(tmp_path_factory.mktemp("keys")), sshd
            )
        finally:
            rs.cleanup(docker_client)


@pytest.fixture
def db(stack: Stack) -> Iterator[ts.Db]:
    rs.cleanup(stack.client)
    yield ts.start_db(stack.client, stack.image, stack.docker_host)
    rs.cleanup(stack.client)


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    """Every app stand-in a test starts is stopped when it ends, whatever happened."""
    started: list[Writer] = []
    yield started
    for w in started:
        w.stop()


def site_for(stack: Stack, db: ts.Db, root: Path, **kw: object) -> rs.RebuildSite:
    return rs.rebuild_site(root, stack.keys, db, stack.ssh, stack.image, **kw)  # type: ignore[arg-type]


def start_writer(r: rs.RebuildSite, writers: list[Writer]) -> Writer:
    w = r.act.writer()
    writers.append(w)
    w.start()
    ts.wait_until(lambda: len(w.acknowledged) >= 10)
    return w


def stop_and_count(r: rs.RebuildSite, w: Writer) -> tuple[int, int]:
    n = len(w.acknowledged)
    ts.wait_until(lambda: len(w.acknowledged) >= n + 10, timeout=30)  # it writes again after the run
    w.stop()
    return len(w.acknowledged), count_found(r.act.app_url(), w.acknowledged)


def states(r: rs.RebuildSite) -> list[str]:
    out = ts.nixmig(r.site, "status", "--json")
    assert out.returncode == 0, out.stderr
    return [p["state"] for p in json.loads(out.stdout)["phases"]]


def journal(r: rs.RebuildSite) -> dict[str, dict[str, object]]:
    return {s["phase"]: s for s in json.loads(r.site.journal.read_text())["steps"]}


def volume_names(stack: Stack) -> set[str]:
    return {v.name for v in stack.client.volumes.list()}


def assert_switched(r: rs.RebuildSite, new_volume: str) -> None:
    assert r.volumes() == {new_volume}
    assert r.login(r.site.password.reveal_str()) is None
    refused = r.login(ts.OLD_PASSWORD)
    assert refused is not None and "password authentication failed" in refused


def assert_on_old_volume(r: rs.RebuildSite) -> None:
    assert r.volumes() == {ts.VOLUME}
    assert r.login(ts.OLD_PASSWORD) is None


def test_apply_new_image_then_rollback_keeps_every_write(
    stack: Stack, db: ts.Db, tmp_path: Path, writers: list[Writer]
) -> None:
    stack.client.images.get(stack.image).tag(rs.UPGRADE_TAG)
    new_volume = "twenty_db-data-v2"
    r = site_for(stack, db, tmp_path / "site", new_volume=new_volume, new_image=rs.UPGRADE_TAG)
    needles = ts.secret_needles(r.site.password)
    sampler = ts.CmdlineSampler(needles)
    app = start_writer(r, writers)
    try:
        plan = ts.nixmig(r.site, "plan", "--json")
        assert plan.returncode == 0, plan.stderr
        assert [s["phase"] for s in json.loads(plan.stdout)] == rs.PHASES
        run = ts.nixmig(r.site, "apply", "--yes", "-i", str(r.site.keys.admin_key))
    finally:
        report = sampler.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert states(r) == ["done"] * len(rs.PHASES)

    # the service runs on the new volume with the new image; new password in, old out
    assert_switched(r, new_volume)
    assert r.image() == rs.UPGRADE_TAG
    compose = (r.site.repo / rs.COMPOSE).read_text()
    assert f'image.name = "{rs.UPGRADE_TAG}";' in compose
    assert f'name = "{new_volume}"' in compose and "external = true;" in compose
    steps = journal(r)
    assert steps["compare"]["data"]["rows"] > 20000  # type: ignore[index]
    retain = steps["switch"]["data"]["retain"]  # type: ignore[index]
    assert [(x["kind"], x["name"]) for x in retain] == [("volume", ts.VOLUME)]
    assert ts.VOLUME in volume_names(stack)  # kept, untouched: nothing mounts it
    assert not stack.client.containers.list(all=True, filters={"volume": ts.VOLUME})
    assert f"{ts.CONTAINER}-nixmig-new" not in {c.name for c in stack.client.containers.list(all=True)}
    acked, found = stop_and_count(r, app)
    assert acked > 50 and found == acked

    # no secret in any command line, the journal, the output or a log
    assert report.hits == [] and report.sweeps > 100
    assert any("pg_restore" in c for c in report.docker_exec), report.docker_exec[:8]
    texts = {
        "journal": r.site.journal.read_text(),
        "plan": plan.stdout + plan.stderr,
        "apply output": run.stdout + run.stderr,
        "sshd log": stack.ssh.log.read_text(errors="replace"),
        "container log": subprocess.run(
            db.docker("logs", ts.CONTAINER), capture_output=True, text=True, check=True
        ).stderr,
    }
    dockerd_log = MANAGED_ROOT / "dockerd.log"
    if db.docker_host == f"unix://{MANAGED_ROOT / 'docker.sock'}" and dockerd_log.exists():
        texts["dockerd log"] = dockerd_log.read_text(errors="replace")
    for what, text in texts.items():
        for n in needles:
            assert n not in text, f"the password is in the {what}"

    # rollback while the app writes on the new database: those writes are copied back
    app2 = start_writer(r, writers)
    back = ts.nixmig(r.site, "rollback", "--yes", "-i", str(r.site.keys.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert "copying it back into twenty_db-data" in back.stdout
    assert "copied back and verified" in back.stdout
    assert_on_old_volume(r)
    assert new_volume in volume_names(stack)  # retained
    retain = journal(r)["switch"]["data"]["retain"]  # type: ignore[index]
    assert [(x["kind"], x["name"], x["after"]) for x in retain] == [("volume", new_volume, "rollback")]
    assert not retain[0].get("holds_writes")  # copied back: gc may remove it after retention
    kept = gc_items(r)[new_volume]
    assert kept["action"] == "keep" and kept["reason"].startswith("retired by the rollback, retained "), kept
    acked2, found2 = stop_and_count(r, app2)
    assert found2 == acked2 and acked2 > 20
    assert count_found(r.act.app_url(), app.acknowledged) == len(app.acknowledged)  # the first run's too
    assert json.loads(ts.nixmig(r.site, "status", "--json").stdout)["rolled_back"] is True


def test_a_writer_that_is_not_the_app_is_refused_during_the_freeze_and_loses_nothing(
    stack: Stack, db: ts.Db, tmp_path: Path, writers: list[Writer]
) -> None:
    """A client nixmig does not stop (not one of the app's services: a cron job reading the
    app's env file, connecting straight to the database container as the superuser) keeps
    writing through apply and rollback: while the database is frozen its new connections
    are refused, so whatever it was told is committed is on the database that serves
    afterwards (before the fix: its writes during the freeze made the copy differ)."""
    r = site_for(stack, db, tmp_path / "site")
    # and a database whose name libpq's -d would read as a connection string: copied as itself
    odd = "dbname=default"
    psql = [*ts.PSQL[:-6], "-U", "postgres", "-d", "postgres", "-f", "-"]
    subprocess.run(
        db.docker("exec", "-i", "-u", "postgres", ts.CONTAINER, *psql),
        input=b'CREATE DATABASE "dbname=default";',
        check=True,
        capture_output=True,
    )
    into_odd = [*ts.PSQL[:-6], "-U", "postgres", "-d", "dbname='dbname=default'", "-f", "-"]
    subprocess.run(
        db.docker("exec", "-i", "-u", "postgres", ts.CONTAINER, *into_odd),
        input=b"CREATE TABLE marker AS SELECT generate_series(1, 7) AS n;",
        check=True,
        capture_output=True,
    )
    app = start_writer(r, writers)
    rogue = Writer(url_source=r.act.app_url, generation=r.act.generation)  # no `stopped`: app_stop misses it
    writers.append(rogue)
    rogue.start()
    ts.wait_until(lambda: len(rogue.acknowledged) >= 10)

    run = ts.nixmig(r.site, "apply", "--yes", "-i", str(r.site.keys.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "new connections refused" in run.stdout
    new_volume = journal(r)["preflight"]["data"]["new_volume"]  # type: ignore[index]
    assert isinstance(new_volume, str)
    assert_switched(r, new_volume)
    assert rogue.failed_connects > 0  # refused while frozen
    n = len(rogue.acknowledged)
    ts.wait_until(lambda: len(rogue.acknowledged) > n + 10)  # and writing to the new database
    # the writer is still running: lost() takes its list as it is now (count_found(...) ==
    # len(...) read it twice, and a write acknowledged between the two showed as lost)
    assert lost(r.act.app_url(), rogue.acknowledged) == []
    acked, found = stop_and_count(r, app)
    assert found == acked
    # the new server took the old one's pg_hba.conf without the freeze's rule
    hba = subprocess.run(
        db.docker("exec", "-u", "postgres", ts.CONTAINER, "sh", "-c", 'cat "$PGDATA/pg_hba.conf"'),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "nixmig freeze" not in hba and "host all all all" in hba
    rows = subprocess.run(
        db.docker("exec", "-i", "-u", "postgres", ts.CONTAINER, *into_odd),
        input=b"SELECT current_database(), count(*) FROM marker;",
        capture_output=True,
        check=True,
    ).stdout
    assert rows.decode().strip() == f"{odd}\t7"

    # rollback while both write on the new database: refused while frozen, every
    # acknowledged write copied back into the old volume
    app2 = start_writer(r, writers)
    failed = rogue.failed_connects
    back = ts.nixmig(r.site, "rollback", "--yes", "-i", str(r.site.keys.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert "copied back and verified" in back.stdout
    assert_on_old_volume(r)
    assert rogue.failed_connects > failed
    n = len(rogue.acknowledged)
    ts.wait_until(lambda: len(rogue.acknowledged) > n + 10)  # the old volume's rule is gone too
    rogue.stop()
    assert lost(r.act.app_url(), rogue.acknowledged) == []
    acked2, found2 = stop_and_count(r, app2)
    assert found2 == acked2


def test_a_write_the_refusal_does_not_reach_stops_the_switch(
    stack: Stack, db: ts.Db, tmp_path: Path, writers: list[Writer]
) -> None:
    """A session on the container's own socket is not refused (docker exec: root on the
    host). Written after the compare of a run that was killed there, it is found by the
    comparison the switch makes right before switching: nothing switches."""
    r = site_for(stack, db, tmp_path / "site")
    app = start_writer(r, writers)
    killed = ts.nixmig(r.site, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": "compare"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    refused = r.login(ts.OLD_PASSWORD)  # still frozen: a new login over TCP is refused
    assert refused is not None and "pg_hba.conf rejects connection" in refused
    subprocess.run(
        db.docker("exec", "-i", "-u", "postgres", ts.CONTAINER, *ts.PSQL),
        input=b"INSERT INTO app_writes (at) VALUES (now());",
        check=True,
        capture_output=True,
    )
    run = ts.nixmig(r.site, "apply", "--yes", "-i", str(r.site.keys.admin_key))
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "the copy is not exact" in lines[0], run.stderr
    assert "table default: public.app_writes:" in lines[0] and "nothing was switched" in lines[0]
    assert_on_old_volume(r)  # the rule is gone: the old password logs in over TCP again
    assert not r.act.stopped_file.exists()
    acked, found = stop_and_count(r, app)
    assert found == acked


def test_a_changed_row_in_the_copy_is_caught_and_rollback_removes_the_copy(
    stack: Stack, db: ts.Db, tmp_path: Path, writers: list[Writer]
) -> None:
    """Same row counts, one row different: the checksum finds it before the switch."""
    r = site_for(stack, db, tmp_path / "site")
    app = start_writer(r, writers)
    killed = ts.nixmig(r.site, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": "copy"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    scratch = f"{ts.CONTAINER}-nixmig-new"
    subprocess.run(
        db.docker("exec", "-i", "-u", "postgres", scratch, "psql", "-v", "ON_ERROR_STOP=1", "-d", ts.DATABASE),
        input=b"UPDATE person SET name = 'tampered' WHERE id = 1;",
        check=True,
        capture_output=True,
    )
    run = ts.nixmig(r.site, "apply", "--yes", "-i", str(r.site.keys.admin_key))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "table default: public.person: same 3000 rows, different content" in run.stderr
    assert "tampered" not in run.stdout + run.stderr
    assert_on_old_volume(r)
    new_volume = journal(r)["preflight"]["data"]["new_volume"]  # type: ignore[index]
    assert new_volume not in volume_names(stack)  # a copy not proven exact is removed at once

    back = ts.nixmig(r.site, "rollback", "--yes", "-i", str(r.site.keys.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert new_volume not in volume_names(stack)
    assert scratch not in {c.name for c in stack.client.containers.list(all=True)}
    assert_on_old_volume(r)
    assert not r.act.stopped_file.exists()
    acked, found = stop_and_count(r, app)
    assert found == acked


@pytest.mark.parametrize("phase", rs.PHASES[:-1])
def test_sigkill_after_each_phase_then_apply_again(
    stack: Stack, db: ts.Db, tmp_path: Path, writers: list[Writer], phase: str
) -> None:
    r = site_for(stack, db, tmp_path / "site", new_volume="twenty_db-data-next")
    app = start_writer(r, writers)
    killed = ts.nixmig(r.site, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": phase})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    done = {k: v["state"] for k, v in journal(r).items()}
    assert done[phase] == "done" and len(done) == rs.PHASES.index(phase) + 1
    resumed = ts.nixmig(r.site, "apply", "--yes", "-i", str(r.site.keys.admin_key))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("done before, skipped") == rs.PHASES.index(phase) + 1
    assert states(r) == ["done"] * len(rs.PHASES)
    assert_switched(r, "twenty_db-data-next")
    acked, found = stop_and_count(r, app)
    assert found == acked


def test_rollback_across_major_versions_refuses_to_drop_writes_unless_forced(
    stack: Stack, db: ts.Db, tmp_path: Path, writers: list[Writer]
) -> None:
    """A dump of a newer server does not restore into the older one. The test image is
    PostgreSQL 15 under both tags, so the journal is told the new server is one major
    version newer: that is all rollback reads to decide."""
    r = site_for(stack, db, tmp_path / "site", new_volume="twenty_db-data-up")
    run = ts.nixmig(r.site, "apply", "--yes", "-i", str(r.site.keys.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(r.site.journal.read_text())
    prov = next(s for s in doc["steps"] if s["phase"] == "provision")
    prov["data"]["new_major"] = prov["data"]["old_major"] + 1
    r.site.journal.write_text(json.dumps(doc))

    app = start_writer(r, writers)  # writes on the new database after the switch
    refused = ts.nixmig(r.site, "rollback", "--yes", "-i", str(r.site.keys.admin_key))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    line = refused.stderr.strip().splitlines()
    assert len(line) == 1 and "has changed since the switch" in line[0] and "--force" in line[0], refused.stderr
    assert states(r) == ["done"] * len(rs.PHASES)  # nothing undone
    assert_switched(r, "twenty_db-data-up")

    forced = ts.nixmig(r.site, "rollback", "--yes", "--force", "-i", str(r.site.keys.admin_key))
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "--force: the writes since the switch stay on twenty_db-data-up only" in forced.stdout
    assert_on_old_volume(r)
    assert "twenty_db-data-up" in volume_names(stack)
    acked, found = stop_and_count(r, app)
    assert found < acked  # exactly what --force says: the writes on the new volume are not here
    (retain,) = journal(r)["switch"]["data"]["retain"]  # type: ignore[index]
    assert retain["name"] == "twenty_db-data-up" and retain["holds_writes"] is True
    kept = gc_items(r)["twenty_db-data-up"]
    assert kept["action"] == "keep" and "writes a forced rollback left behind" in kept["reason"], kept


def gc_items(r: rs.RebuildSite) -> dict[str, dict[str, Any]]:
    """`nixmig gc --json` of the site: its items by name (a listing: nothing is removed without --yes)."""
    out = ts.nixmig(r.site, "gc", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    return {i["name"]: i for i in json.loads(out.stdout)["items"]}


def test_the_app_is_found_by_its_compose_project(stack: Stack) -> None:
    """Without app_stop: the running containers of the database's compose project are the app."""
    from nixmig.config import Service
    from nixmig.db import rebuild as rb
    from nixmig.remote.local import LocalTransport

    made = []
    try:
        for svc in ("db", "server", "worker"):
            made.append(
                stack.client.containers.run(
                    stack.image,
                    ["sleep", "300"],
                    name=f"nixmig-test-proj-{svc}-1",
                    detach=True,
                    labels={"nixmig.test": "1", rb.COMPOSE_PROJECT: "nixmigproj", rb.COMPOSE_SERVICE: svc},
                )
            )
        made.append(stack.client.containers.run(stack.image, ["sleep", "300"], name="nixmig-test-loose", detach=True))
        t = LocalTransport()
        service = Service(host="h", container="nixmig-test-proj-db-1", docker_host=stack.docker_host)
        info = rb.inspect_container(t, service, "nixmig-test-proj-db-1")
        assert info is not None
        assert rb.app_containers(t, service, info, ()) == ["nixmig-test-proj-server-1", "nixmig-test-proj-worker-1"]
        assert rb.app_containers(t, service, info, ("worker",)) == ["nixmig-test-proj-worker-1"]
        loose = rb.inspect_container(t, service, "nixmig-test-loose")
        assert loose is not None
        with pytest.raises(rb.RebuildError, match="set app_stop and app_start"):
            rb.app_containers(t, service, loose, ())
    finally:
        for c in made:
            c.remove(force=True)


@pytest.mark.parametrize("phase", ["provision", "freeze", "compare", "switch"])
def test_sigkill_after_a_phase_then_rollback(
    stack: Stack, db: ts.Db, tmp_path: Path, writers: list[Writer], phase: str
) -> None:
    """Killed with the copy made, the app frozen, or the service already on the new volume:
    rollback leaves the service on the old volume with every acknowledged write and the app running."""
    r = site_for(stack, db, tmp_path / "site", new_volume="twenty_db-data-k")
    app = start_writer(r, writers)
    killed = ts.nixmig(r.site, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": phase})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    back = ts.nixmig(r.site, "rollback", "--yes", "-i", str(r.site.keys.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert_on_old_volume(r)
    assert not r.act.stopped_file.exists()
    switched = rs.PHASES.index(phase) >= rs.PHASES.index("switch")
    assert ("twenty_db-data-k" in volume_names(stack)) == switched  # kept only once the service ran on it
    assert {c.name for c in stack.client.containers.list(all=True)} & {
        f"{ts.CONTAINER}-nixmig-new",
        f"{ts.CONTAINER}-nixmig-old",
    } == set()
    acked, found = stop_and_count(r, app)
    assert found == acked
