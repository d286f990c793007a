"""The batch runner: keyset pagination, one transaction per batch with its checkpoint.

For each table, batch after batch (``WHERE pk > last ORDER BY pk LIMIT n``):

1. read the rows (primary key, the encrypted columns, their blind indexes);
2. :func:`process_rows` (pure): decrypt with the old scheme, check the blind
   index, encrypt with the new scheme, decrypt that again and compare;
3. write with compare-and-set: COPY the rows into a temporary stage, then
   ``UPDATE ... FROM`` the stage only where every column still holds the value
   that was read; rows the application changed meanwhile are read again
   ``FOR UPDATE`` and redone, so its writes are never overwritten;
4. write the checkpoint into ``nixmig_progress`` and commit, together.

A run killed at any point resumes from the last committed checkpoint; values
already in the new scheme are skipped, so running again is harmless. A dry run
does steps 1-2 in read-only transactions and writes nothing, not even the
progress table. Rows are named by primary key only, never by value.

This module is the pipeline (:func:`run`); the pure decisions are in
:mod:`nixmig.reencrypt.core`, the catalog checks (:func:`inspect`) in
:mod:`nixmig.reencrypt.catalog`, the SQL, the progress table and the connections in
:mod:`nixmig.reencrypt.database`. The names callers use are re-exported here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from nixmig.reencrypt.catalog import CATALOG_SQL as CATALOG_SQL
from nixmig.reencrypt.catalog import Catalog as Catalog
from nixmig.reencrypt.catalog import inspect as inspect
from nixmig.reencrypt.catalog import inspect_with as inspect_with
from nixmig.reencrypt.core import BatchResult as BatchResult
from nixmig.reencrypt.core import Counts as Counts
from nixmig.reencrypt.core import Failure as Failure
from nixmig.reencrypt.core import Options as Options
from nixmig.reencrypt.core import TablePlan as TablePlan
from nixmig.reencrypt.core import TableStats as TableStats
from nixmig.reencrypt.core import process_rows as process_rows
from nixmig.reencrypt.database import (
    PROGRESS_TABLE,
    Sql,
    db_error,
    ensure_progress_table,
    lock,
    statements,
    unlock,
    write,
)
from nixmig.reencrypt.database import connect as connect
from nixmig.reencrypt.database import connect_to as connect_to
from nixmig.reencrypt.database import passes_done as passes_done
from nixmig.reencrypt.errors import DatabaseError, SpecError
from nixmig.reencrypt.schemes import Keyring

if TYPE_CHECKING:
    import psycopg

    from nixmig.reencrypt.workers import Decider

MAX_LISTED_FAILURES = 100
MAX_BATCH_RETRIES = 5


class ProgressSink(Protocol):
    def start(self, table: str, total: int, done: int) -> None: ...
    def advance(self, table: str, rows: int) -> None: ...
    def finish(self, table: str) -> None: ...


class _NoProgress:
    def start(self, table: str, total: int, done: int) -> None:
        pass

    def advance(self, table: str, rows: int) -> None:
        pass

    def finish(self, table: str) -> None:
        pass


def run(
    conn: psycopg.Connection[Any],
    plans: Sequence[TablePlan],
    keyring: Keyring,
    opts: Options,
    progress: ProgressSink | None = None,
    *,
    writer: psycopg.Connection[Any] | None = None,
) -> list[TableStats]:
    """Run every table in order; return the statistics (also of a dry run).

    ``conn`` reads (outside of any transaction); ``writer``, a second connection to the
    same database, writes each batch with its checkpoint, in a thread, while the next
    batch is read and decided. ``writer`` is required with ``opts.apply``.
    """
    if opts.batch_size < 1:
        raise SpecError("--batch-size must be at least 1", where="--batch-size")
    if opts.writes and writer is None:
        raise ValueError("run(..., writer=) needs a second connection to write")
    if opts.jobs < 0:
        raise SpecError("--jobs must be 0 or more", where="--jobs")
    from nixmig.reencrypt.workers import Decider

    sink = progress or _NoProgress()
    conn.rollback()
    conn.autocommit = True
    # Nothing may write through the reading connection; a dry run writes nothing at all.
    conn.execute("SET default_transaction_read_only = on")
    decider = Decider(keyring, opts)
    try:
        if opts.writes and plans:
            assert writer is not None
            writer.rollback()
            ensure_progress_table(writer, plans[0].schema)
        return [_run_table(conn, writer, plan, keyring, opts, sink, decider) for plan in plans]
    finally:
        decider.close()
        if not conn.closed:
            conn.execute("RESET default_transaction_read_only")
            conn.autocommit = False


@dataclass
class _Done:
    rows: int
    counts: Counts
    failures: list[Failure]


def _run_table(
    conn: psycopg.Connection[Any],
    writer: psycopg.Connection[Any] | None,
    plan: TablePlan,
    keyring: Keyring,
    opts: Options,
    sink: ProgressSink,
    decider: Decider,
) -> TableStats:
    """Three stages overlap: this thread reads batch N+k, ``decider`` decides N+1..N+k
    (worker processes; in this thread when k = 0), the writer thread writes batch N.
    Batches are written in order, one at a time, so each checkpoint covers every batch
    before it."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    q = statements(plan)
    stats = TableStats(plan.name)
    key = plan.run_key(opts.mode, keyring)
    last: Any = None
    if writer is not None and opts.writes:
        last = _prepare_writer(writer, q, key, plan, stats)
    total = conn.execute(q.count).fetchone()[0]  # type: ignore[index]
    done_rows = conn.execute(q.count_done, (last,)).fetchone()[0] if last is not None else 0  # type: ignore[index]
    sink.start(plan.name, int(total), int(done_rows))

    def account(done: _Done) -> None:
        stats.counts, stats.failures = done.counts, done.failures
        stats.scanned_now += done.rows
        sink.advance(plan.name, done.rows)

    writes = writer is not None and opts.writes  # a dry run or verify writes nothing, even given a writer
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nixmig-writer") if writes else None
    deciding: deque[tuple[Future[BatchResult], Any, bool]] = deque()  # (batch, its last key, last batch?)
    pending: Future[_Done] | None = None
    started = time.monotonic()

    def write_next() -> None:
        nonlocal pending
        fut, batch_last, batch_finished = deciding.popleft()
        batch = fut.result()
        if pending is not None:
            account(pending.result())
            pending = None
        if pool is not None and writer is not None:
            pending = pool.submit(
                _write_batch, writer, q, plan, keyring, opts, key, batch, batch_last, batch_finished, stats
            )
        else:
            account(_tally(stats, batch, batch.counts(), 0))

    try:
        finished = False
        while not finished:
            try:
                if last is None:
                    rows = conn.execute(q.first, (opts.batch_size,)).fetchall()
                else:
                    rows = conn.execute(q.after, (last, opts.batch_size)).fetchall()
            except Exception as exc:
                raise db_error(exc, plan) from None
            finished = len(rows) < opts.batch_size
            if rows:
                last = rows[-1][0]
            deciding.append((decider.submit(plan, rows), last, finished))
            while len(deciding) > decider.depth or (finished and deciding):
                write_next()
            if opts.pause > 0 and not finished:
                time.sleep(opts.pause)
        if pending is not None:
            account(pending.result())
            pending = None
    finally:
        for fut, _, _ in deciding:  # an error: let the batches in flight end first
            with contextlib.suppress(Exception):
                fut.result()
        if pending is not None:
            with contextlib.suppress(Exception):
                pending.result()
        if pool is not None:
            pool.shutdown(wait=True)
    stats.seconds = time.monotonic() - started
    if writer is not None and opts.writes:
        unlock(writer, key, plan)
    sink.finish(plan.name)
    return stats


def _prepare_writer(writer: psycopg.Connection[Any], q: Sql, key: str, plan: TablePlan, stats: TableStats) -> Any:
    """Lock the table for this run, create the stage, and load a checkpoint to resume from."""
    from psycopg import sql

    lock(writer, key, plan)
    with writer.transaction():
        writer.execute(q.create_stage)
        row = writer.execute(
            sql.SQL("SELECT last_pk::{}, done, counters FROM {} WHERE run_key = %s AND table_name = %s").format(
                sql.SQL(plan.pk_type), sql.Identifier(plan.schema, PROGRESS_TABLE)
            ),
            (key, plan.name),
        ).fetchone()
    if row is None or row[1] or row[0] is None:
        return None  # a first run, or the last one finished: a new pass from the start
    saved = row[2]
    stats.resumed = True
    stats.counts = Counts(**{k: int(v) for k, v in saved.get("counts", {}).items()})
    stats.failures = [Failure(**f) for f in saved.get("failures", [])]
    return row[0]


def _tally(stats: TableStats, batch: BatchResult, delta: Counts, conflicts: int, *more: BatchResult) -> _Done:
    counts = Counts(**stats.counts.as_dict())
    delta.scanned = len(batch.rows)
    delta.conflicts = conflicts
    counts.add(delta)
    failures = list(stats.failures)
    for b in (batch, *more):
        failures.extend(f for _, f in b.failures)
    return _Done(len(batch.rows), counts, failures[:MAX_LISTED_FAILURES])


def _write_batch(
    writer: psycopg.Connection[Any],
    q: Sql,
    plan: TablePlan,
    keyring: Keyring,
    opts: Options,
    key: str,
    batch: BatchResult,
    last: Any,
    finished: bool,
    stats: TableStats,
) -> _Done:
    """One batch's transaction: compare-and-set, redo the rows changed meanwhile, checkpoint."""
    from psycopg import errors, sql
    from psycopg.types.json import Jsonb

    checkpoint = sql.SQL(
        "INSERT INTO {} (run_key, table_name, last_pk, done, counters, updated_at) "
        "VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (run_key, table_name) DO UPDATE SET "
        "last_pk = EXCLUDED.last_pk, done = EXCLUDED.done, counters = EXCLUDED.counters, "
        "updated_at = now()"
    ).format(sql.Identifier(plan.schema, PROGRESS_TABLE))
    saved_states = [bytearray(s) for s in batch.states]
    saved_changed = bytearray(batch.changed)
    saved_failures = list(batch.failures)
    for attempt in range(MAX_BATCH_RETRIES + 1):
        try:
            with writer.transaction():
                redone: list[BatchResult] = []
                conflicts = 0
                current, todo = batch, batch.to_write()
                bounds = (batch.rows[0][0], batch.rows[-1][0]) if batch.rows else (None, None)
                for _ in range(MAX_BATCH_RETRIES):
                    if not todo:
                        break
                    updated = write(writer, q, plan, current, todo, bounds)
                    missed = [i for i in todo if current.rows[i][0] not in updated]
                    if not missed:
                        break
                    # The application changed these rows since they were read: read them
                    # again, locked this time, and decide again from what they hold now.
                    conflicts += len(missed)
                    current.drop(missed)
                    again = writer.execute(q.by_pk, ([current.rows[i][0] for i in missed],)).fetchall()
                    writer.execute(q.clear_stage)
                    current = process_rows(again, plan, keyring, opts)
                    redone.append(current)
                    todo = current.to_write()
                else:
                    if todo:
                        raise DatabaseError(
                            f"{len(todo)} row(s) kept changing under compare-and-set",
                            where=plan.name,
                            hint="run again (it resumes)",
                        )
                delta = batch.counts()
                for b in redone:
                    delta.add(b.counts())
                done = _tally(stats, batch, delta, conflicts, *redone)
                saved = {"counts": done.counts.as_dict(), "failures": [asdict(f) for f in done.failures]}
                writer.execute(
                    checkpoint, (key, plan.name, None if last is None else str(last), finished, Jsonb(saved))
                )
            return done
        except (errors.DeadlockDetected, errors.SerializationFailure):
            if attempt == MAX_BATCH_RETRIES:
                raise DatabaseError(
                    f"the batch ending at primary key {last} kept deadlocking with the application",
                    where=plan.name,
                    hint="run again (it resumes), or with a smaller --batch-size",
                ) from None
            batch.states[:] = [bytearray(s) for s in saved_states]
            batch.changed[:] = saved_changed
            batch.failures = list(saved_failures)
            time.sleep(0.05 * (attempt + 1))
        except errors.Error as exc:
            raise db_error(exc, plan) from None
    raise AssertionError("unreachable")
