"""apply's round trips on the worked example's stack (real sshd, real dockerd), counted with
NIXMIG_TRACE: the engine's look at the target after a deploy that did not re-create the
database container is one docker inspect, not a psql (target.container_kept); a container
the journal does not know is still looked at in full and learned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker  # noqa: TID251  (test harness, not product code)
import pytest

from nixmig import config, engine
from nixmig.db import ops, shells
from tests.e2e import twenty_stack as ts
from tests.e2e.test_migrate_docker import Stack, assert_rotated
from tests.e2e.test_migrate_docker import site as site
from tests.e2e.test_migrate_docker import stack as stack
from tests.harness.dockerd import TEST_LABEL, container_address, wait_for_postgres
from tests.harness.postgres import conninfo


def _psql(r: dict[str, Any]) -> bool:
    return "psql" in r["cmd"].split()


def _windows(trace: list[dict[str, Any]], steps: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each phase's round trips; "after:PHASE": between its end and the next phase's start."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in trace:
        where = "before"
        for s in steps:
            if r["at"] >= s["started"]:
                where = s["phase"] if r["at"] <= s["finished"] else f"after:{s['phase']}"
        out.setdefault(where, []).append(r)
    return out


def test_the_look_after_a_deploy_is_one_docker_inspect(stack: Stack, site: ts.Site, tmp_path: Path) -> None:
    trace_file = tmp_path / "trace.jsonl"
    run = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key), env={"NIXMIG_TRACE": str(trace_file)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert_rotated(site)
    trace = [json.loads(line) for line in trace_file.read_text().splitlines()]
    journal = json.loads(site.journal.read_text())
    windows = _windows(trace, journal["steps"])
    shown = {k: [r["cmd"][:70] for r in v] for k, v in windows.items()}
    # the stack's deploys restart the app, not the database container: its ID is the journal's
    for phase in ("stage", "switch"):
        look = windows[f"after:{phase}"]
        assert len(look) == 1 and not _psql(look[0]), shown
        assert look[0]["cmd"].split()[3:6] == ["inspect", "--type", "container"], shown
    # psql: preflight's facts, the backup's counts, rotate's role and ALTER ROLE, verify's role and
    # counts; no other
    assert sum(map(_psql, trace)) == 5, shown
    rec = journal["meta"]["target"]
    assert rec["container_ids"] == [stack.db.container_id] and len(rec["clusters"]) == 1, rec


@pytest.mark.parametrize("known", [False, True])
def test_a_container_the_journal_does_not_have_is_looked_at_in_full(
    stack: Stack, site: ts.Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, known: bool
) -> None:
    """After a deploy that re-created the container (here: a record holding another ID), the
    engine reads the cluster too (after the inspect, take: one round trip with a psql) and
    learns both; with the ID recorded, one docker inspect and nothing learned."""
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("NIXMIG_TRACE", str(trace))
    ctx = engine.make_context(config.load(site.config), ts.MIGRATION)
    old = "0" * 64
    ids = [old, stack.db.container_id] if known else [old]
    try:
        assert ctx.t is not None  # connected first: the connection is a round trip of its own
        trace.unlink(missing_ok=True)
        ctx.journal.meta["target"] = {"host": None, "clusters": [], "container": ts.CONTAINER, "container_ids": ids}
        engine._observe(ctx)
        rec = ctx.journal.meta["target"]
        looks = [json.loads(line) for line in trace.read_text().splitlines()]
        assert not _psql(looks[0]), looks  # the container's ID first
        if known:
            assert len(looks) == 1 and rec["clusters"] == [] and rec["container_ids"] == ids, looks
        else:
            assert len(looks) == 2 and _psql(looks[1]), looks  # then target.take: ID and cluster
            assert rec["container_ids"] == [old, stack.db.container_id]
            assert len(rec["clusters"]) == 1 and rec["clusters"][0].isdigit()
    finally:
        ctx.close()


_FIRST_COMMAND = """
import json, sys
from pathlib import Path
from nixmig import config, engine
from nixmig.remote import ssh
from nixmig.secrets.age import load_identities

cfg_path, key, migration = sys.argv[1:4]
loaded = []
real_run = ssh.SshTransport.run


def run(self, argv, *args, **kwargs):  # the real run, after noting what this process had loaded by then
    loaded.append((argv[3:5], sorted(m for m in ("psycopg", "tree_sitter", "jinja2") if m in sys.modules)))
    return real_run(self, argv, *args, **kwargs)


ssh.SshTransport.run = run
for phase in engine.phases_for("rotate", None):  # each phase's start, noted the same way
    def do(self, ctx, _real=type(phase).do, _name=phase.name):
        loaded.append((["phase", _name], sorted(m for m in ("psycopg", "tree_sitter", "jinja2") if m in sys.modules)))
        return _real(self, ctx)
    type(phase).do = do
import threading
from nixmig.nixsrc import patch
real_plan = patch.plan


def plan(*args, **kwargs):  # which thread plans the repo's patch
    loaded.append((["plan", threading.current_thread().name], []))
    return real_plan(*args, **kwargs)


patch.plan = plan
ctx = engine.make_context(
    config.load(Path(cfg_path)), migration, identities=load_identities([Path(key)]), emit=lambda _m: None
)
try:
    engine.apply(ctx)
finally:
    ctx.close()
print(json.dumps(loaded))
"""


def test_what_the_phases_need_is_loaded_beside_the_waits(stack: Stack, site: ts.Site) -> None:
    """engine._prepare and _beside: what the phases after the backup need, psycopg (verify),
    tree-sitter and jinja2 (the repo's patch, planned ahead), is loaded from a thread beside the
    backup (its main thread waits on pg_dump), and is there when the stage phase starts: not
    before the first command on the target (it was once, and the loading and the waits added
    up), nor before preflight (~0.4 s of CPU the first phase waited for)."""
    r = subprocess.run(
        [sys.executable, "-c", _FIRST_COMMAND, str(site.config), str(site.keys.admin_key), ts.MIGRATION],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen[0][0] == ["info", "-f"], seen  # the first command: docker info, the database lock's name
    assert seen[0][1] != ["jinja2", "psycopg", "tree_sitter"], seen  # sent while they load
    phases = {words[1]: (i, mods) for i, (words, mods) in enumerate(seen) if words[:1] == ["phase"]}
    assert "psycopg" not in phases["preflight"][1], seen  # verify's: loaded beside the backup
    stage = phases["stage"][0]
    assert all(mods == ["jinja2", "psycopg", "tree_sitter"] for _, mods in seen[stage:]), seen
    # the stage's and the switch's patches were planned beside the backup, and used: no plan after
    plans = [(i, words[1]) for i, (words, _) in enumerate(seen) if words[:1] == ["plan"]]
    assert [thread for _, thread in plans] == ["nixmig-prepare", "nixmig-prepare"], seen
    assert phases["backup"][0] < plans[0][0] and plans[-1][0] < stage, seen
    assert_rotated(site)


def test_every_psql_of_a_run_goes_through_one_shell_in_the_container(
    stack: Stack, site: ts.Site, tmp_path: Path
) -> None:
    """nixmig.db.shells: one `docker exec … sh` in the database's container, opened early
    (preflight's prepare, right after the connection: a session of its own), then preflight's
    psql, rotate's two and verify's one are frames to it (kind in-shell), not a docker exec
    each (~60-75 ms apiece here). Preflight's docker inspect, under the locks, is the check
    that the container of that name is the shell's, and after each deploy the engine's own:
    no inspect of its own."""
    trace_file = tmp_path / "trace.jsonl"
    run = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key), env={"NIXMIG_TRACE": str(trace_file)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert_rotated(site)
    trace = [json.loads(line) for line in trace_file.read_text().splitlines()]
    windows = _windows(trace, json.loads(site.journal.read_text())["steps"])
    shown = {k: [(r["kind"], r["cmd"][:70]) for r in v] for k, v in windows.items()}
    opened = [r for r in trace if r["kind"] == "shell"]
    assert len(opened) == 1 and opened[0] in windows["before"], shown
    locks = [r for r in windows["before"] if r["kind"] == "hold"]
    assert len(locks) == 1 and opened[0]["at"] < locks[0]["at"], shown  # opened before the locks are held
    kinds = {phase: [r["kind"] for r in windows[phase] if _psql(r)] for phase in ("preflight", "rotate", "verify")}
    assert kinds == {"preflight": ["in-shell"], "rotate": ["in-shell", "in-shell"], "verify": ["in-shell"]}, shown
    for phase in ("preflight", "rotate"):  # preflight's one inspect is the runtime's check
        assert sum("inspect" in r["cmd"].split() for r in windows[phase]) == (phase == "preflight"), shown


_CLUSTER = "SELECT system_identifier FROM pg_control_system();\n"


def _wait_ready(container: Any, password: str) -> None:
    ip, _ = container_address(container)
    wait_for_postgres(container, conninfo(host=ip, port=5432, user=ts.ROLE, password=password, dbname=ts.DATABASE))


def test_the_shell_is_left_once_its_container_stops_or_is_not_the_one_of_that_name(
    stack: Stack,
    site: ts.Site,
    docker_client: docker.DockerClient,
    pg_image: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """What a deploy may do under an open shell: restart the database's container (the shell
    ends with it: psql is a docker exec again, and a new shell is opened ahead), and put
    another container under its name while the old one still runs (renamed: the shell, in the
    old one by ID, is alive; the docker inspect after the deploy tells them apart, and psql
    reaches the new container's cluster, never the old one's)."""
    trace_file = tmp_path / "trace.jsonl"
    monkeypatch.setenv("NIXMIG_TRACE", str(trace_file))
    ctx = engine.make_context(config.load(site.config), ts.MIGRATION)
    t, rt = ctx.t, ctx.runtime
    other = None

    def psql() -> tuple[str, str]:
        """(the cluster psql reached, how: run = docker exec, in-shell = the shell)."""
        trace_file.unlink(missing_ok=True)
        out = ops.psql(t, rt, _CLUSTER).strip()
        kinds = [r["kind"] for r in map(json.loads, trace_file.read_text().splitlines()) if _psql(r)]
        assert len(kinds) == 1, kinds
        return out, kinds[0]

    try:
        shells.reuse(t, rt)  # a phase that keeps the target: the shell is opened ahead
        old, how = psql()
        assert how == "run" and old.isdigit()  # still opening: a docker exec, not a wait
        shells.reuse(t, rt)  # the next phase waits for it
        assert psql() == (old, "in-shell")

        subprocess.run(stack.db.docker("restart", ts.CONTAINER), check=True, capture_output=True)
        _wait_ready(docker_client.containers.get(ts.CONTAINER), ts.OLD_PASSWORD)
        assert psql() == (old, "run")  # the shell ended with the container's processes
        shells.reuse(t, rt)
        assert psql() == (old, "in-shell")  # another one, opened ahead

        shells.reuse(t, None)  # a deploy: another container under the name, the old one still running
        subprocess.run(stack.db.docker("rename", ts.CONTAINER, f"{ts.CONTAINER}-old"), check=True)
        other = docker_client.containers.run(
            pg_image,
            ["postgres", "-c", "fsync=off"],
            name=ts.CONTAINER,
            detach=True,
            environment={"POSTGRES_USER": ts.ROLE, "POSTGRES_PASSWORD": "x", "POSTGRES_DB": ts.DATABASE},
            labels={TEST_LABEL: "1"},
        )
        _wait_ready(other, "x")
        shells.reuse(t, rt)
        new, how = psql()
        assert how == "run" and new.isdigit() and new != old  # the new container's cluster
        shells.reuse(t, rt)
        assert psql() == (new, "in-shell")  # a shell in the new one
    finally:
        shells.close(t)
        ctx.close()
        if other is not None:
            other.remove(force=True, v=True)
        subprocess.run(stack.db.docker("rename", f"{ts.CONTAINER}-old", ts.CONTAINER), check=False)
