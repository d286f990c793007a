"""The migration strategies side by side, on the same generated database, in one run.

Real parts, as the e2e tier (tests/e2e/twenty_stack.py): the container twenty-db-1
(docker) grown to --size-mb MiB, reached over a real sshd on 127.0.0.1 with strict
known_hosts, and a deploy command that runs the env-file renderer of the patched repo
and restarts the app (tests/harness/activation.py), the same for every strategy.

Two app stand-ins write during each apply, a row every ~10 ms each:
- server: one long-lived connection, reconnecting only when the deploy restarts it;
- worker: a new connection every --reconnect-every seconds (a pool with a short
  lifetime, or a job runner connecting per job), so a credential the app holds
  that stops working shows at once.

For each strategy, printed:
- total: wall time of `nixmig apply` (process start to exit), and its ratio to the
  first strategy's in this run (the baseline, rotate by default);
- window: the write-unavailability window, the longest gap between two
  acknowledged writes during the apply (server timestamps of the rows), per app,
  and the server's minus the app's restart gap measured without nixmig in this run;
- failed: the failed connection attempts of each app during the apply.
Each strategy is rolled back after it is measured, and the database reset, so the next
one starts from the same state; a lost acknowledged write fails the run.

A strategy plugs in by name: add a Strategy to STRATEGIES (see `prepare_common`).
rebuild's deploy also plays arion's `up` of the db service from the patched compose
file (tests/harness/arion.py), and its apps are stopped by its freeze (app_stop), as
stopped services: they make no attempt then, and their window is the freeze.

    flock /tmp/nixmig-e2e.lock .venv/bin/python bench/strategies.py --size-mb 200
    .venv/bin/python bench/strategies.py --strategies dual-role --size-mb 50
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixmig.db.writer import count_found
from tests.e2e import twenty_stack as ts
from tests.harness.activation import Activation
from tests.harness.dockerd import client_for, docker_engine_context, ensure_pg_image, prune_leftovers
from tests.harness.sshd import SshServer, sshd_factory_context

APPS = ("server", "worker")


def say(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Bench:
    """What every strategy shares in one run (a rebuild's rollback recreates twenty-db-1:
    its reset updates ``db`` to the new container's address)."""

    root: Path
    db: ts.Db
    ssh: SshServer
    keys: ts.Keys


@dataclass(frozen=True)
class Prepared:
    site: ts.Site
    act: Activation


@dataclass(frozen=True)
class Strategy:
    name: str
    # a fresh site (repo copy, secret, nixmig.toml) set up for this strategy
    prepare: Callable[[Bench, Path], Prepared]
    # back to the state every strategy starts from (after `nixmig rollback`)
    reset: Callable[[Bench], None]


def prepare_common(strategy: str, extra_toml: str = "") -> Callable[[Bench, Path], Prepared]:
    """A site on the twenty stack with `strategy = STRATEGY` (and extra migration keys)."""

    def prepare(b: Bench, root: Path) -> Prepared:
        site = ts.make_site(root, b.keys, b.db, b.ssh)
        act = Activation(
            conf=root / "activation.json",
            repo=site.repo,
            host_key=site.keys.host_key,
            agenix_dir=site.agenix_dir,
            secret=ts.SECRET,
            app_dir=site.app_dir,
            unit_env_file=f"/run/twenty/{ts.SECRET}.env",
            fallback_url=b.db.url(ts.OLD_PASSWORD),
            hosts={"db:5432": f"{b.db.ip}:5432"},
        ).write()
        text = site.config.read_text()
        deploy = text.split('deploy = "')[1].split('"')[0]
        text = text.replace('strategy = "rotate"', f'strategy = "{strategy}"\n{extra_toml}')
        site.config.write_text(text.replace(deploy, act.deploy_command()))
        return Prepared(site, act)

    return prepare


def reset_common(b: Bench) -> None:
    """Password `postgres` again, no second role."""
    if b.db.psql("SELECT 1 FROM pg_roles WHERE rolname = 'postgres_v2';").strip():
        b.db.psql("REASSIGN OWNED BY postgres_v2 TO postgres;\nDROP OWNED BY postgres_v2;\nDROP ROLE postgres_v2;\n")
    ts.reset_db(b.db)


def prepare_rebuild(b: Bench, root: Path) -> Prepared:
    """strategy rebuild (tests/e2e/rebuild_stack.py): the deploy also plays arion's `up` of the db
    service from the patched compose file, the app resolves `db` at each connect and can be stopped."""
    from tests.e2e import rebuild_stack as rs

    r = rs.rebuild_site(root, b.keys, b.db, b.ssh, rs.container_image(b.db.docker_host))
    return Prepared(r.site, r.act)


def reset_rebuild(b: Bench) -> None:
    """No copy left (scratch containers, the volumes a rebuild made); twenty-db-1 as it is now."""
    from tests.e2e import rebuild_stack as rs

    client = client_for(b.db.docker_host)
    try:
        rs.remove_copies(client)
    finally:
        client.close()
    b.db = dataclasses.replace(b.db, ip=rs.container_ip(b.db.docker_host))
    reset_common(b)


STRATEGIES: dict[str, Strategy] = {
    "rotate": Strategy("rotate", prepare_common("rotate"), reset_common),
    "dual-role": Strategy("dual-role", prepare_common("dual-role"), reset_common),
    "rebuild": Strategy("rebuild", prepare_rebuild, reset_rebuild),
}


def ack_times(db: ts.Db, ids: list[int]) -> list[float]:
    """Server timestamps (epoch seconds) of the acknowledged rows, in commit order."""
    out = db.psql(
        "CREATE TEMP TABLE acked (id bigint);\nCOPY acked FROM STDIN;\n"
        + "".join(f"{i}\n" for i in ids)
        + "\\.\nSELECT extract(epoch FROM w.at) FROM app_writes w JOIN acked USING (id) ORDER BY w.id;\n"
    )
    return [float(x) for x in out.split()]


def longest_gap(times: list[float], start: float, end: float) -> tuple[float, float]:
    """(longest gap between consecutive acks within [start, end], when it began)."""
    inside = [t for t in times if start <= t <= end]
    best, at = 0.0, start
    for a, b in itertools.pairwise(inside):
        if b - a > best:
            best, at = b - a, a
    return best, at


def phase_at(journal: dict[str, object], when: float) -> str:
    steps = journal["steps"]
    assert isinstance(steps, list)
    for s in steps:
        if s["started"] <= when <= (s["finished"] or when):
            return str(s["phase"])
    return "between phases"


@dataclass
class Result:
    name: str
    total: float
    gaps: dict[str, tuple[float, str]]
    failed_connects: dict[str, int]
    failed_attempts: dict[str, int]
    acked: int
    found: int
    restart: float
    outcome: str


def run_one(b: Bench, s: Strategy, reconnect_every: float, root: Path) -> Result:
    say(f"== {s.name}")
    s.reset(b)
    p = s.prepare(b, root)
    writers = {
        "server": p.act.writer(),
        "worker": p.act.writer(reconnect_every=reconnect_every or None),
    }
    for w in writers.values():
        w.start()
    time.sleep(1.0)
    # the app's restart without nixmig, three times: what any deploy costs the server app
    marks = []
    for _ in range(3):
        marks.append(time.time())
        p.site.restart_app()
        time.sleep(1.0)
    before = {k: (w.failed_connects, w.failed_attempts) for k, w in writers.items()}
    began = time.time()
    start = time.perf_counter()
    run = ts.nixmig(p.site, "apply", "--yes", "-i", str(p.site.keys.admin_key), timeout=6 * 3600)
    total = time.perf_counter() - start
    ended = time.time()
    during = {k: (w.failed_connects - before[k][0], w.failed_attempts - before[k][1]) for k, w in writers.items()}
    time.sleep(0.5)
    for w in writers.values():
        w.stop()
    journal = json.loads(p.site.journal.read_text())
    outcome = "ok"
    if run.returncode != 0:  # measured all the same, then rolled back
        failed = [st["phase"] for st in journal["steps"] if st["state"] == "failed"]
        outcome = f"failed at {failed[0] if failed else '?'}"
        say(f"  apply FAILED: {run.stderr.strip().splitlines()[-1]}")
    for step in journal["steps"]:
        say(f"  {step['phase']:10} {(step['finished'] or step['started']) - step['started']:7.2f}s {step['state']}")
    ids = [i for w in writers.values() for i in w.acknowledged]
    found = count_found(p.act.app_url(), ids)
    gaps: dict[str, tuple[float, str]] = {}
    restart = 0.0
    for k, w in writers.items():
        times = ack_times(b.db, w.acknowledged)
        gap, at = longest_gap(times, began, ended)
        gaps[k] = (gap, phase_at(journal, at))
        if k == "server":
            restart = statistics.median(longest_gap(times, m - 0.2, m + 0.8)[0] for m in marks)
    back = ts.nixmig(p.site, "rollback", "--yes", "-i", str(p.site.keys.admin_key), timeout=6 * 3600)
    if back.returncode != 0:
        say(back.stdout + back.stderr)
        raise SystemExit(f"nixmig rollback ({s.name}) FAILED")
    s.reset(b)
    return Result(
        s.name,
        total,
        gaps,
        {k: v[0] for k, v in during.items()},
        {k: v[1] for k, v in during.items()},
        len(ids),
        found,
        restart,
        outcome,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200, help="database size to generate (MiB, default 200)")
    parser.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help=f"comma-separated, in order; the first is the baseline (default {','.join(STRATEGIES)})",
    )
    parser.add_argument(
        "--reconnect-every",
        type=float,
        default=0.1,
        help="the worker app's connection lifetime (s, default 0.1; 0: one connection, like the server)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="run every strategy this many times, interleaved")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {', '.join(unknown)}; known: {', '.join(STRATEGIES)}")

    root = Path(tempfile.mkdtemp(prefix="nixmig-bench-strategies-"))
    results: list[Result] = []
    say(f"target: docker container {ts.CONTAINER} over a real sshd (transport ssh); {os.cpu_count()} CPUs")
    with docker_engine_context() as engine, sshd_factory_context() as start_sshd, ts.exclusive():
        client = client_for(engine)
        prune_leftovers(client)
        image = ensure_pg_image(client)
        ssh = start_sshd()
        try:
            t0 = time.perf_counter()
            db = ts.start_db(client, image, engine.base_url)
            size = ts.grow(db, args.size_mb)
            say(f"database: {size / 2**20:.0f} MiB generated in {time.perf_counter() - t0:.0f}s")
            b = Bench(root, db, ssh, ts.make_keys(root / "keys"))
            db.state()  # warm cache for every strategy alike
            for i in range(args.rounds):
                for n in names:
                    say(f"-- round {i + 1}/{args.rounds}")
                    results.append(run_one(b, STRATEGIES[n], args.reconnect_every, b.root / f"{n}-{i + 1}"))
        finally:
            ts.remove_db(client)
            client.close()
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)

    say("")
    say(
        f"database {size / 2**20:.0f} MiB; apps: server (one connection), worker (new connection every "
        f"{args.reconnect_every * 1000:.0f} ms); window = longest gap between acknowledged writes during apply"
    )
    say("every run:")
    say(HEAD)
    for r in results:
        line(r)
    say(f"median over {args.rounds} round(s) (failed connections: the sum):")
    summary = [merge([r for r in results if r.name == n]) for n in names]
    base = summary[0].total
    say(HEAD)
    for r in summary:
        line(r, base)
    say(f"ratio: total time / {summary[0].name}'s, in this run")
    ok = all(r.found == r.acked for r in results)
    if not ok:
        say("LOST acknowledged writes")
    return 0 if ok else 1


HEAD = (
    f"  {'strategy':10} {'total':>8} {'ratio':>6} {'window server':>22} {'window worker':>22} "
    f"{'server-restart':>15} {'failed conn s/w':>16} {'acked/found':>14}  apply"
)


def line(r: Result, base: float | None = None) -> None:
    gs, gw = r.gaps["server"], r.gaps["worker"]
    ratio = f"{r.total / base:6.2f}" if base else f"{'':6}"
    say(
        f"  {r.name:10} {r.total:7.2f}s {ratio} {gs[0] * 1000:7.0f} ms ({gs[1]:>9}) "
        f"{gw[0] * 1000:7.0f} ms ({gw[1]:>9}) {(gs[0] - r.restart) * 1000:12.0f} ms "
        f"{r.failed_connects['server']:>7}/{r.failed_connects['worker']:<8} {r.acked:>7}/{r.found:<6}  {r.outcome}"
    )


def merge(rs: list[Result]) -> Result:
    """Medians of the times and windows, sums of the counts, every outcome."""

    def med_gap(app: str) -> tuple[float, str]:
        ordered = sorted(r.gaps[app] for r in rs)
        return ordered[(len(ordered) - 1) // 2]

    return Result(
        rs[0].name,
        statistics.median(r.total for r in rs),
        {app: med_gap(app) for app in APPS},
        {app: sum(r.failed_connects[app] for r in rs) for app in APPS},
        {app: sum(r.failed_attempts[app] for r in rs) for app in APPS},
        sum(r.acked for r in rs),
        sum(r.found for r in rs),
        statistics.median(r.restart for r in rs),
        ", ".join(sorted({r.outcome for r in rs})),
    )


if __name__ == "__main__":
    sys.exit(main())
