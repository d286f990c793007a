"""What the restore test's content checksum costs, against the row count it replaced and
against the pg_dump it runs beside.

On a throwaway PostgreSQL cluster (default durability), one table of N rows (default
2,000,000, ~330 MB: a bigint key, a timestamptz, two text columns), in one run:

- count:    the old restore check, `count(*)` of every table (nixmig.db.ops.SNAPSHOT_SQL);
- content:  the new one, row count and checksum of every row's text under the fixed
            session settings (nixmig.db.ops.CONTENT_SETTINGS + CONTENT_SQL), run once in the
            dump's snapshot and once in the restore;
- pg_dump:  `pg_dump -Fc` of the database to /dev/null, what the backup phase runs anyway.

Each is run --repeat times (default 3) interleaved; the fastest counts. Printed: seconds,
and content / pg_dump: the share the check adds to a restore-tested backup when the two
run one after the other (they run side by side in the snapshot, so on a machine with a
free core the added wall time is lower).

    .venv/bin/python bench/restore_check.py
    .venv/bin/python bench/restore_check.py --rows 500000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixmig.db.ops import CONTENT_SETTINGS, CONTENT_SQL, SNAPSHOT_SQL
from tests.harness.postgres import PgServer, pg_bindir, running_cluster


def _conn(server: PgServer) -> tuple[list[str], dict[str, str]]:
    """libpq options for argv (no password) and the environment carrying the password."""
    opts = ["-h", server.host, "-p", str(server.port), "-U", server.user, "-d", server.dbname]
    return opts, dict(os.environ, PGPASSWORD=server.password)


def psql(bindir: Path, server: PgServer, script: str) -> float:
    """Run a psql script (it may use \\gexec) against the server; its wall time."""
    opts, env = _conn(server)
    start = time.perf_counter()
    argv = [str(bindir / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *opts]
    subprocess.run(argv, input=script.encode(), check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def psql_value(bindir: Path, server: PgServer, query: str) -> str:
    opts, env = _conn(server)
    argv = [str(bindir / "psql"), "-X", "-q", "-At", *opts, "-c", query]
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout.strip()


def pg_dump(bindir: Path, server: PgServer) -> float:
    opts, env = _conn(server)
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run([str(bindir / "pg_dump"), "-Fc", *opts], stdout=null, check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    bindir = pg_bindir()
    with running_cluster(durable=True) as server:
        start = time.perf_counter()
        psql(
            bindir,
            server,
            "CREATE TABLE person (id bigint PRIMARY KEY, at timestamptz, email text, note text);\n"
            f"INSERT INTO person SELECT g, now() - g * interval '1 minute', 'p' || g || '@example.org', "
            f"md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) FROM generate_series(1, {args.rows}) g;\n"
            "VACUUM ANALYZE person;\nCHECKPOINT;\n",
        )
        size = psql_value(bindir, server, "SELECT pg_total_relation_size('person') / 1048576;")
        print(f"{args.rows:,} rows, {size} MiB, generated in {time.perf_counter() - start:.1f} s; {_load()}")
        runs: dict[str, list[float]] = {"count": [], "content": [], "pg_dump": []}
        for _ in range(args.repeat):
            runs["count"].append(psql(bindir, server, SNAPSHOT_SQL))
            runs["content"].append(psql(bindir, server, CONTENT_SETTINGS + CONTENT_SQL))
            runs["pg_dump"].append(pg_dump(bindir, server))
    best = {k: min(v) for k, v in runs.items()}
    for k, v in runs.items():
        print(f"{k:<10}{best[k]:>8.2f} s   runs: {', '.join(f'{x:.2f}' for x in v)}")
    print(f"at the end: {_load()}")
    print(f"content / count   = {best['content'] / best['count']:.1f}x")
    print(f"content / pg_dump = {best['content'] / best['pg_dump']:.2f} (per side: the snapshot's and the restore's)")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


if __name__ == "__main__":
    main()
