"""apply's round trips to the target, counted (NIXMIG_TRACE, nixmig.remote.base.traced) on
a real PostgreSQL cluster through the local transport and the native runtime (the target
`nixmig demo` builds). Every command on a target costs a round trip (over SSH: a session,
~0.15 s on the e2e stack, bench/migrate.py); these are the budgets apply keeps:

- the target's identity is read once on a first run (preflight's own look), and not again
  after a phase that cannot change it (preflight, backup, rotate, verify, cleanup);
- preflight's queries go in one psql, which reads the catalog only; the rows are counted by
  one psql beside the backup's pg_dump, and once more by verify's one psql;
- rotate reads the host's secret once and the role once.

The trace names commands only (argv never holds a secret): the new password is not in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nixmig.demo import Target
from tests.integration.test_migrate_local import journal, nixmig
from tests.integration.test_migrate_local import target as target

NEW = "n3w/pa+ss=w@rd:%?-long-enough"  # the secret test_migrate_local's target puts in the repo


def _psql(r: dict[str, Any]) -> bool:
    return "psql" in r["cmd"].split()


def _by_phase(trace: list[dict[str, Any]], steps: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The round trips of each phase; "before" (locks, target check) and "after:PHASE" (between
    PHASE's end and the next phase's start: the engine's look at the target)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in trace:
        where = "before"
        for s in steps:
            if r["at"] >= s["started"]:
                where = s["phase"] if r["at"] <= s["finished"] else f"after:{s['phase']}"
        out.setdefault(where, []).append(r)
    return out


def test_apply_round_trips(target: Target, tmp_path: Path) -> None:
    trace_file = tmp_path / "trace.jsonl"
    run = nixmig(target, "apply", "--yes", "-i", str(target.admin_key), env={"NIXMIG_TRACE": str(trace_file)})
    assert run.returncode == 0, run.stdout + run.stderr
    text = trace_file.read_text()
    assert NEW not in text and "SCRAM-SHA-256" not in text
    assert trace_file.stat().st_mode & 0o777 == 0o600
    trace = [json.loads(line) for line in text.splitlines()]
    steps = journal(target)["steps"]
    assert isinstance(steps, list)
    phases = _by_phase(trace, steps)
    shown = {k: [r["cmd"][:60] for r in v] for k, v in phases.items()}

    # the first run reads the identity in preflight: none of it before (the database lock's name:
    # the socket's real path; then both locks, held by one process: nixmig.lock.acquire_all)
    assert [r["kind"] for r in phases["before"]] == ["run", "hold"], shown
    assert not [r for r in phases["before"] if _psql(r)], shown
    # no look at the target after a phase that keeps it (deploys may re-create a container: stage, switch)
    for phase in ("preflight", "backup", "rotate", "verify", "cleanup"):
        assert f"after:{phase}" not in phases, shown
    # preflight: the runtime's check, then role, size, cluster and tables in one psql
    assert len(phases["preflight"]) <= 3, shown
    assert sum(map(_psql, phases["preflight"])) == 1, shown
    # backup: the rows counted by one psql beside pg_dump, which started first
    (count,) = [r for r in phases["backup"] if _psql(r)]
    (dump,) = [r for r in phases["backup"] if "pg_dump" in r["cmd"].split()]
    assert count["at"] < dump["at"] + dump.get("secs", 1e9), shown
    # verify: the role and the counts in one psql
    assert sum(map(_psql, phases["verify"])) == 1, shown
    # rotate: the host's secret read once (its digest compared here), the role read once, ALTER ROLE
    assert sum(map(_psql, phases["rotate"])) == 2, shown
    assert len(phases["rotate"]) <= 3, shown
    # the identity preflight read is the one recorded
    rec = journal(target)["meta"]["target"]  # type: ignore[index]
    assert rec["clusters"] and rec["host"], rec


def test_preflight_reads_the_catalog_not_the_rows(target: Target) -> None:
    """preflight counts no row (the backup does, beside pg_dump: verify's baseline), so its time
    does not grow with the data: a table another session holds ACCESS EXCLUSIVE does not stop
    it, where a count(*) of that table would wait for the lock."""
    import subprocess
    import threading

    from nixmig import config, engine
    from nixmig.db import ops
    from nixmig.demo import SECRET

    ctx = engine.make_context(config.load(target.repo / "nixmig.toml"), SECRET)
    found: list[ops.Facts] = []
    locker = subprocess.Popen(ctx.runtime.psql(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert locker.stdin is not None and locker.stdout is not None
    try:
        locker.stdin.write("BEGIN; LOCK TABLE public.person IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
        locker.stdin.flush()
        assert locker.stdout.readline().strip() == "locked"  # held until its stdin closes
        reader = threading.Thread(target=lambda: found.append(ops.facts(ctx.t, ctx.runtime, "postgres")))
        reader.start()
        reader.join(20)
        assert found, "preflight's psql waited for the lock on public.person: it read the table"
    finally:
        locker.stdin.close()  # psql ends, the lock goes: a reader still waiting ends
        locker.wait(20)
    (facts,) = found
    assert facts.role_exists and facts.cluster.isdigit() and facts.db_bytes > 0
    try:
        assert facts.table_count == len(ops.snapshot(ctx.t, ctx.runtime)) > 0  # every user table
    finally:
        ctx.close()
