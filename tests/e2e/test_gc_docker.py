"""`nixmig gc` over a real sshd against a real dockerd: what journals retain (old volumes,
old containers, files) and scratch containers a killed run left behind.

The journal is written the way the phases write it (a `retain` list in a step's data,
nixmig.gc's convention); the containers and volumes are real, made with the harness's
test image. gc lists first, keeps everything while a nixmig run holds the host's lock,
then removes what is past retention and nothing else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker  # noqa: TID251  (test harness, not product code)
import docker.errors  # noqa: TID251
import pytest

from nixmig import lock
from nixmig.journal import Journal
from nixmig.remote.local import LocalTransport
from tests.harness.dockerd import TEST_LABEL, DockerEngine, PgContainer, PgContainerFactory
from tests.harness.sshd import SshServer

MIG = "twenty-db-password"


def when(days: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).isoformat()


@pytest.fixture
def made(docker_client: docker.DockerClient, pg_image: str) -> Iterator[list[str]]:
    """Names of containers and volumes made here; removed afterwards whatever gc did."""
    names: list[str] = []
    yield names
    for n in names:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(n).remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(n).remove(force=True)


def gc(repo: Path, *args: str) -> tuple[int, dict[str, tuple[str, str, bool]]]:
    r = subprocess.run(
        [sys.executable, "-m", "nixmig", "gc", "--json", "-c", str(repo / "nixmig.toml"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.stdout, r.stderr
    report = json.loads(r.stdout)
    return r.returncode, {i["name"]: (i["action"], i["reason"], i["removed"]) for i in report["items"]}


def test_gc_on_a_docker_host(
    tmp_path: Path,
    sshd: SshServer,
    docker_engine: DockerEngine,
    docker_client: docker.DockerClient,
    pg_image: str,
    pg_container: PgContainerFactory,
    made: list[str],
) -> None:
    client = docker_client
    labels = {TEST_LABEL: "1"}
    running: PgContainer = pg_container(password="x")  # the database in use: its container and volume
    client.volumes.create("nixmig-gc-old-data", labels=labels)
    made.append("nixmig-gc-old-data")
    for name in ("nixmig-gc-old-db", "nixmig-gc-recent-db"):
        client.containers.create(pg_image, name=name, labels=labels)
        made.append(name)
    scratch = f"nixmig-restore-test-{MIG}-20200101t000000z"
    client.containers.create(pg_image, name=scratch, labels={**labels, "nixmig.restore-test": MIG})
    client.containers.create(pg_image, name="leftover-of-another-phase", labels={**labels, "nixmig.scratch": MIG})
    client.containers.create(pg_image, name="not-ours", labels=labels)
    made += [scratch, "leftover-of-another-phase", "not-ours"]
    old_file = tmp_path / "old.dump"
    old_file.write_bytes(b"x")

    repo = tmp_path / "repo"
    repo.mkdir()
    lock_dir = tmp_path / "lock"
    (repo / "nixmig.toml").write_text(f"""
[operator]
recipients = []
[hosts.newton]
address = "{sshd.host}"
port = {sshd.port}
user = "{sshd.user}"
identity = "{sshd.identity}"
known_hosts = "{sshd.known_hosts}"
lock_dir = "{lock_dir}"
[services.twenty-db]
host = "newton"
container = "{running.name}"
volume = "{running.volume}"
docker_host = "{docker_engine.base_url}"
[migrations.{MIG}]
service = "twenty-db"
secret = "{MIG}"
""")
    j = Journal.open(repo / ".nixmig" / "journal", "newton", MIG)
    j.begin("preflight")
    j.finish("preflight")
    j.begin("switch")
    retain = [
        {"kind": "volume", "name": "nixmig-gc-old-data", "until": when(-1)},
        {"kind": "volume", "name": running.volume, "until": when(-1)},
        {"kind": "container", "name": running.name, "until": when(-1)},
        {"kind": "container", "name": "nixmig-gc-old-db", "until": when(-1)},
        {"kind": "container", "name": "nixmig-gc-recent-db", "until": when(+3)},
        {"kind": "volume", "name": "nixmig-gc-gone", "until": when(-1)},
        {"kind": "file", "name": str(old_file), "until": when(-1)},
    ]
    j.finish("switch", {"retain": retain})
    j.complete()

    code, items = gc(repo)
    assert code == 0
    assert items["nixmig-gc-old-data"][:2] == ("remove", items["nixmig-gc-old-data"][1])
    assert items["nixmig-gc-old-data"][1].startswith("retention ended")
    assert items[running.volume][:2] == ("keep", f"still mounted by {running.name}")
    assert items[running.name][:2] == ("keep", "running")
    assert items["nixmig-gc-old-db"][0] == "remove"
    assert items["nixmig-gc-recent-db"][0] == "keep" and "more days" in items["nixmig-gc-recent-db"][1]
    assert items["nixmig-gc-gone"][:2] == ("keep", "gone already")
    assert items[str(old_file)][0] == "remove"
    assert items[scratch][0] == "remove" and "left by a killed run" in items[scratch][1]
    assert items["leftover-of-another-phase"][0] == "remove"
    assert "not-ours" not in items
    assert not any(removed for _, _, removed in items.values())  # listing removes nothing
    client.containers.get(scratch)
    assert old_file.exists()

    # a nixmig run holds the host's lock: nothing on that host is touched
    held = lock.acquire(LocalTransport(), str(lock_dir), f"newton-{MIG}")
    try:
        code, items = gc(repo, "--yes")
    finally:
        held.close()
    assert code == 0
    assert items["nixmig-gc-old-data"][:2] == ("keep", f"a nixmig run holds {lock_dir}/newton-{MIG}.lock on newton")
    assert items[scratch][0] == "keep"
    assert not any(removed for _, _, removed in items.values())
    client.volumes.get("nixmig-gc-old-data")

    code, items = gc(repo, "--yes")
    assert code == 0, items
    removed = {n for n, (_, _, r) in items.items() if r}
    assert removed == {"nixmig-gc-old-data", "nixmig-gc-old-db", str(old_file), scratch, "leftover-of-another-phase"}
    for gone in ("nixmig-gc-old-db", scratch, "leftover-of-another-phase"):
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(gone)
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get("nixmig-gc-old-data")
    assert not old_file.exists()
    for kept in (running.name, "nixmig-gc-recent-db", "not-ours"):
        client.containers.get(kept)
    client.volumes.get(running.volume)


def test_gc_keeps_what_an_unfinished_migration_retains(
    tmp_path: Path, sshd: SshServer, docker_engine: DockerEngine, docker_client: docker.DockerClient, made: list[str]
) -> None:
    docker_client.volumes.create("nixmig-gc-rollback-path", labels={TEST_LABEL: "1"})
    made.append("nixmig-gc-rollback-path")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "nixmig.toml").write_text(f"""
[operator]
recipients = []
[hosts.newton]
address = "{sshd.host}"
port = {sshd.port}
user = "{sshd.user}"
identity = "{sshd.identity}"
known_hosts = "{sshd.known_hosts}"
lock_dir = "{tmp_path / "lock"}"
[services.twenty-db]
host = "newton"
container = "twenty-db-1"
docker_host = "{docker_engine.base_url}"
[migrations.{MIG}]
service = "twenty-db"
secret = "{MIG}"
""")
    j = Journal.open(repo / ".nixmig" / "journal", "newton", MIG)
    j.begin("switch")
    j.finish("switch", {"retain": [{"kind": "volume", "name": "nixmig-gc-rollback-path", "until": when(-30)}]})
    j.begin("verify")
    j.fail("verify", "verification failed")
    code, items = gc(repo, "--yes")
    assert code == 0
    assert items["nixmig-gc-rollback-path"] == (
        "keep",
        f"migration {MIG} on newton is not finished: it is the rollback path",
        False,
    )
    docker_client.volumes.get("nixmig-gc-rollback-path")
