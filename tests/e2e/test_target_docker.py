"""The journal is tied to its target over real SSH and docker (the worked example's stack):
the first apply records the host key the SSH connection verified, the container's ID and
the cluster's system_identifier; pointed at another container (another cluster), resume
and rollback refuse before doing anything, and nothing changes on either database."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker  # noqa: TID251  (test harness, not product code)
import pytest

from nixmig import config, engine
from nixmig import target as identity
from nixmig.db.runtime import runtime_for
from tests.e2e import twenty_stack as ts
from tests.e2e.test_migrate_docker import Stack, assert_not_rotated, assert_rotated, states
from tests.e2e.test_migrate_docker import site as site
from tests.e2e.test_migrate_docker import stack as stack
from tests.harness.dockerd import TEST_LABEL, container_address, wait_for_postgres
from tests.harness.postgres import conninfo

OTHER = "nixmig-test-other-db"


@pytest.fixture
def other_db(docker_client: docker.DockerClient, pg_image: str) -> Iterator[str]:
    """Another PostgreSQL container on the same engine: its own initdb, its own cluster."""
    env = {"POSTGRES_USER": ts.ROLE, "POSTGRES_PASSWORD": ts.OLD_PASSWORD, "POSTGRES_DB": ts.DATABASE}
    c = docker_client.containers.run(
        pg_image,
        ["postgres", "-c", "fsync=off"],
        name=OTHER,
        detach=True,
        environment={**env, "POSTGRES_INITDB_ARGS": "--no-sync"},
        labels={TEST_LABEL: "1"},
    )
    try:
        ip, _ = container_address(c)
        wait_for_postgres(c, conninfo(host=ip, port=5432, user=ts.ROLE, password=ts.OLD_PASSWORD, dbname=ts.DATABASE))
        yield OTHER
    finally:
        c.remove(force=True, v=True)


def _verifier(db: ts.Db, container: str) -> str:
    r = subprocess.run(
        db.docker("exec", "-i", "-u", "postgres", container, "psql", "-X", "-A", "-t", "-U", ts.ROLE, "-d", "postgres"),
        input=f"SELECT rolpassword FROM pg_authid WHERE rolname = '{ts.ROLE}';".encode(),
        capture_output=True,
        check=True,
    )
    return r.stdout.decode().strip()


def test_resume_and_rollback_refuse_another_container(stack: Stack, site: ts.Site, other_db: str) -> None:
    killed = ts.nixmig(
        site, "apply", "--yes", "-i", str(site.keys.admin_key), env={"NIXMIG_TEST_SIGKILL_AFTER": "rotate"}
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert_rotated(site)
    rec = json.loads(site.journal.read_text())["meta"]["target"]
    fp = subprocess.run(
        ["ssh-keygen", "-lf", "-"], input=stack.ssh.host_public_key.encode(), capture_output=True, check=True
    ).stdout.split()[1]
    assert rec["host"] == f"ssh-ed25519 {fp.decode()}"  # the key the SSH connection verified
    assert rec["container"] == ts.CONTAINER and rec["container_ids"] == [stack.db.container_id]
    assert len(rec["clusters"]) == 1 and rec["clusters"][0].isdigit()

    mine, theirs = stack.db.verifier(), _verifier(stack.db, other_db)
    journal_before = site.journal.read_bytes()
    site.edit_config(f'container = "{ts.CONTAINER}"', f'container = "{other_db}"')
    for args in (("apply", "--yes"), ("rollback", "--yes", "-i", str(site.keys.admin_key))):
        r = ts.nixmig(site, *args)
        assert r.returncode == 1, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "belongs to another target: the cluster's system_identifier is " in lines[0]
        assert f"the container is {other_db} (" in lines[0] and f"the journal's was {ts.CONTAINER} (" in lines[0]
    assert stack.db.verifier() == mine and _verifier(stack.db, other_db) == theirs
    assert site.journal.read_bytes() == journal_before
    assert states(site)[:4] == ["done"] * 4

    site.edit_config(f'container = "{other_db}"', f'container = "{ts.CONTAINER}"')
    r = ts.nixmig(site, "rollback", "--yes", "-i", str(site.keys.admin_key))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_not_rotated(site)
    assert _verifier(stack.db, other_db) == theirs


def test_take_reads_container_and_cluster_in_one_round_trip(
    stack: Stack, site: ts.Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """target.take over SSH: the container's ID and the cluster's system_identifier in one
    command on the host (apply takes it after each deploy); a container that is gone is a
    TargetUnknown, not an ID."""
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("NIXMIG_TRACE", str(trace))
    ctx = engine.make_context(config.load(site.config), ts.MIGRATION)
    try:
        t = ctx.t  # connected first: the connection is a round trip of its own
        trace.unlink(missing_ok=True)
        now = identity.take(t, ctx.runtime)
        assert now.container == ts.CONTAINER and now.container_id == stack.db.container_id
        assert now.cluster is not None and now.cluster.isdigit()
        assert len(trace.read_text().splitlines()) == 1
        gone = replace(ctx.service, container="nixmig-test-no-such-container")
        with pytest.raises(identity.TargetUnknown, match="system_identifier"):
            identity.take(t, runtime_for(gone))
    finally:
        ctx.close()
