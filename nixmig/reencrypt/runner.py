"""The batch runner: keyset pagination, one transaction per batch with its checkpoint.

For each table, batch after batch (``WHERE pk > last ORDER BY pk LIMIT n``):

1. read the rows (primary key, the encrypted columns, their blind indexes);
2. :func:`process_rows` (pure): decrypt with the old scheme, check the blind
   index, encrypt with the new scheme, decrypt that again and compare;
3. write with compare-and-set: ``UPDATE ... FROM unnest(...)`` only where every
   column still holds the value that was read; rows the application changed
   meanwhile are read again ``FOR UPDATE`` and redone, so its writes are never
   overwritten;
4. write the checkpoint into ``nixmig_progress`` and commit, together.

A run killed at any point resumes from the last committed checkpoint; values
already in the new scheme are skipped, so running again is harmless. A dry run
does steps 1-2 in read-only transactions and writes nothing, not even the
progress table. Rows are named by primary key only, never by value.
"""

from __future__ import annotations

import enum
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from nixmig.reencrypt.errors import DatabaseError, IntegrityError, PlaintextError, SpecError
from nixmig.reencrypt.schemes import Cipher, Failed, Keyring, blind_index_matches, parse
from nixmig.reencrypt.spec import Spec, TableSpec
from nixmig.sensitive import Secret

if TYPE_CHECKING:
    import psycopg

PROGRESS_TABLE = "nixmig_progress"
MAX_LISTED_FAILURES = 100
MAX_BATCH_RETRIES = 5
TEXT_TYPES = ("text", "character varying")
HMAC_TYPES = ("text", "character varying", "bytea")


class Mode(enum.StrEnum):
    REENCRYPT = "reencrypt"
    ENCRYPT_PLAINTEXT = "encrypt-plaintext"
    VERIFY = "verify"


class OnPlaintext(enum.StrEnum):
    ERROR = "error"
    ENCRYPT = "encrypt"
    SKIP = "skip"
    FAIL = "fail"


@dataclass(frozen=True)
class Options:
    mode: Mode = Mode.REENCRYPT
    apply: bool = False
    batch_size: int = 1000
    on_plaintext: OnPlaintext = OnPlaintext.ERROR
    hmac_secret: Secret | None = None
    pause: float = 0.0  # seconds between batches, to spare a busy database

    @property
    def writes(self) -> bool:
        return self.apply and self.mode is not Mode.VERIFY


@dataclass(slots=True)
class Counts:
    """Rows scanned; every other counter counts values (cells)."""

    scanned: int = 0
    migrated: int = 0  # written with a new ciphertext (a dry run: would be)
    already_new: int = 0
    plaintext: int = 0
    old_scheme: int = 0  # left in an old scheme (verify; encrypt-plaintext without old key)
    hmac_failed: int = 0
    decrypt_failed: int = 0
    conflicts: int = 0  # rows changed by the application during the batch, read again

    def add(self, other: Counts) -> None:
        for f in _COUNT_FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in _COUNT_FIELDS}


_COUNT_FIELDS = tuple(f.name for f in fields(Counts))


@dataclass(frozen=True)
class Failure:
    pk: str
    column: str
    kind: str  # "hmac", "decrypt", "plaintext"
    reason: str


@dataclass
class TableStats:
    table: str
    counts: Counts = field(default_factory=Counts)
    failures: list[Failure] = field(default_factory=list)
    scanned_now: int = 0  # rows scanned by this invocation (a resumed run: since the resume)
    seconds: float = 0.0
    resumed: bool = False

    @property
    def rows_per_s(self) -> float:
        return self.scanned_now / self.seconds if self.seconds > 0 else 0.0

    def failed(self, opts: Options) -> int:
        """Values that make the run fail: unreadable, wrong blind index, refused plaintext."""
        c = self.counts
        refused = c.plaintext if opts.mode is Mode.REENCRYPT and opts.on_plaintext is OnPlaintext.FAIL else 0
        pending = c.plaintext + c.old_scheme if opts.mode is Mode.VERIFY else 0
        return c.hmac_failed + c.decrypt_failed + refused + pending


@dataclass(frozen=True)
class TablePlan:
    """A table checked against the database: what to read and how to write it."""

    spec: TableSpec
    schema: str
    pk: str
    pk_type: str  # types without modifiers (varchar, not varchar(10))
    columns: tuple[str, ...]
    column_types: tuple[str, ...]
    hmac_columns: tuple[str, ...]  # distinct blind-index columns, in read order
    hmac_types: tuple[str, ...]
    hmac_of: tuple[int | None, ...]  # per column: index into hmac_columns

    @property
    def name(self) -> str:
        return self.spec.name

    def contexts(self) -> list[str]:
        return [self.spec.context(c) for c in self.columns]

    def run_key(self, mode: Mode, keyring: Keyring) -> str:
        shape = json.dumps([self.columns, self.hmac_columns, self.hmac_of])
        digest = hashlib.sha256(shape.encode()).hexdigest()[:12]
        return f"{mode.value}:{keyring.new.scheme}:{digest}"


# ---- the pure core ----------------------------------------------------------------------


@dataclass(slots=True)
class RowResult:
    pk: Any
    counts: Counts
    values: list[str | None]  # the values to write (unchanged ones as read)
    changed: bool = False
    bad: bool = False
    failures: list[Failure] = field(default_factory=list)

    @property
    def write(self) -> bool:
        return self.changed and not self.bad


def process_rows(rows: Sequence[Sequence[Any]], plan: TablePlan, keyring: Keyring, opts: Options) -> list[RowResult]:
    """Decide every row of a batch: no I/O besides the ciphers' (Vault's batch calls).

    A row is ``(pk, *columns, *hmac_columns)``. A row with any failure is not written.
    """
    ncol = len(plan.columns)
    results = [RowResult(r[0], Counts(scanned=1), list(r[1 : 1 + ncol])) for r in rows]
    verify = opts.mode is Mode.VERIFY
    encrypt_plain = opts.mode is Mode.ENCRYPT_PLAINTEXT or opts.on_plaintext is OnPlaintext.ENCRYPT
    secret = opts.hmac_secret.reveal() if opts.hmac_secret is not None else None
    new = keyring.new
    for ci, (column, context) in enumerate(zip(plan.columns, plan.contexts(), strict=True)):
        hidx = plan.hmac_of[ci]
        check = secret if hidx is not None else None  # the HMAC secret, if this column has an index
        hpos = 1 + ncol + (hidx or 0)
        decrypt: dict[int, tuple[Cipher, list[int], list[str]]] = {}
        clear_idx: list[int] = []
        clear: list[bytes] = []
        for ri, row in enumerate(rows):
            value = row[1 + ci]
            if value is None:
                continue
            res = results[ri]
            sid = parse(value)
            if sid is None:
                res.counts.plaintext += 1
                if verify or (opts.on_plaintext is OnPlaintext.SKIP and not encrypt_plain):
                    continue
                if encrypt_plain:
                    clear_idx.append(ri)
                    clear.append(value.encode())
                elif opts.on_plaintext is OnPlaintext.FAIL:
                    _fail(res, column, "plaintext", "invalid ciphertext: no prefix")
                else:
                    raise PlaintextError(
                        "invalid ciphertext: no prefix",
                        where=f"{plan.name}.{column}, primary key {_pk(row[0])}",
                        hint="for data that was never encrypted use --mode encrypt-plaintext, "
                        "or choose --on-plaintext encrypt|skip|fail",
                    )
                continue
            if sid == new.scheme:
                res.counts.already_new += 1
                if verify:
                    _queue(decrypt, new, ri, value)
                continue
            if verify:
                res.counts.old_scheme += 1
                continue
            cipher = keyring.decoder(sid)
            if cipher is None:
                if opts.mode is Mode.ENCRYPT_PLAINTEXT:
                    res.counts.old_scheme += 1
                else:
                    res.counts.decrypt_failed += 1
                    _fail(res, column, "decrypt", f"no key for scheme {sid}")
                continue
            _queue(decrypt, cipher, ri, value)
        for cipher, idx, values in decrypt.values():
            for ri, out in zip(idx, cipher.decrypt_many(context, values), strict=True):
                if isinstance(out, Failed):
                    results[ri].counts.decrypt_failed += 1
                    _fail(results[ri], column, "decrypt", out.reason)
                elif verify:
                    if check is not None and not blind_index_matches(check, out, rows[ri][hpos]):
                        results[ri].counts.hmac_failed += 1
                        _fail(results[ri], column, "hmac", "HMAC verification failed")
                else:
                    clear_idx.append(ri)
                    clear.append(out)
        if verify or not clear_idx:
            continue
        todo_idx: list[int] = []
        todo: list[bytes] = []
        for ri, pt in zip(clear_idx, clear, strict=True):
            res = results[ri]
            if check is not None and not blind_index_matches(check, pt, rows[ri][hpos]):
                res.counts.hmac_failed += 1
                _fail(res, column, "hmac", "HMAC verification failed")
            elif not res.bad:
                todo_idx.append(ri)
                todo.append(pt)
        if not todo:
            continue
        cts = new.encrypt_many(context, todo)
        back = new.decrypt_many(context, cts)
        for ri, pt, ct, again in zip(todo_idx, todo, cts, back, strict=True):
            if isinstance(again, Failed) or again != pt:
                raise IntegrityError(
                    "a new ciphertext did not decrypt back to its plaintext",
                    where=f"{plan.name}.{column}, primary key {_pk(rows[ri][0])}",
                    hint="nothing of this batch was written; check the new key and report this",
                )
            res = results[ri]
            res.values[ci] = ct
            res.changed = True
            res.counts.migrated += 1
    for res in results:
        if res.bad and res.changed:
            res.counts.migrated = 0
    return results


def _queue(decrypt: dict[int, tuple[Cipher, list[int], list[str]]], cipher: Cipher, ri: int, value: str) -> None:
    slot = decrypt.get(id(cipher))
    if slot is None:
        slot = decrypt[id(cipher)] = (cipher, [], [])
    slot[1].append(ri)
    slot[2].append(value)


def _fail(res: RowResult, column: str, kind: str, reason: str) -> None:
    res.bad = True
    res.failures.append(Failure(_pk(res.pk), column, kind, reason))


def _pk(value: Any) -> str:
    return str(value)


# ---- the database -----------------------------------------------------------------------


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` of a conninfo string or URL, without its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        d = conninfo_to_dict(dsn)
    except Exception:
        return "the database given by --db"
    host = str(d.get("host") or "localhost")
    if host.startswith("/"):
        host = "unix socket"
    user = f"{d['user']}@" if d.get("user") else ""
    port = f":{d['port']}" if d.get("port") else ""
    return f"{user}{host}{port}/{d.get('dbname') or ''}"


def connect(dsn: str) -> psycopg.Connection[Any]:
    import psycopg

    try:
        return psycopg.connect(dsn, application_name="nixmig-reencrypt")
    except psycopg.Error as exc:
        raise DatabaseError(
            f"cannot connect: {_first_line(str(exc))}",
            where=describe_dsn(dsn),
            hint="check --db (or DATABASE_URL) and that the server accepts this role",
        ) from None
    except Exception as exc:  # a malformed conninfo
        raise DatabaseError(
            f"cannot connect: {type(exc).__name__}",
            where="--db",
            hint="pass a libpq conninfo ('host=... dbname=...') or a postgresql:// URL",
        ) from None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines and lines[0].startswith("connection failed") else (lines or [""])[0]


def inspect(conn: psycopg.Connection[Any], spec: Spec) -> list[TablePlan]:
    """Check every table of the spec against the catalog; fail before anything runs."""
    plans = []
    problems: list[SpecError] = []
    for t in spec.tables:
        try:
            plans.append(_inspect_table(conn, spec.schema, t))
        except SpecError as exc:
            problems.append(exc)
    conn.rollback()
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise SpecError(first.what + more, where=first.where, hint=first.hint)
    return plans


def _inspect_table(conn: psycopg.Connection[Any], schema: str, t: TableSpec) -> TablePlan:
    where = f"{schema}.{t.name}"
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, t.name),
    ).fetchone()
    if row is None:
        existing = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 1 LIMIT 20",
                (schema,),
            )
        ]
        raise SpecError(
            f"table {t.name!r} does not exist in schema {schema!r}",
            where=where,
            hint="fix the spec or --tables; tables there: " + (", ".join(existing) or "(none)"),
        )
    oid = row[0]
    types: dict[str, tuple[str, str]] = {
        name: (typ, base)
        for name, typ, base in conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), "
            "format_type(a.atttypid, NULL) FROM pg_attribute a "
            "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (oid,),
        )
    }
    pk_cols = [
        r[0]
        for r in conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
            (oid,),
        )
    ]
    if t.primary_key is not None:
        if t.primary_key not in types:
            raise SpecError(f"primary_key column {t.primary_key!r} does not exist in {t.name}", where=where)
        pk = t.primary_key
    elif not pk_cols:
        raise SpecError(
            f"table {t.name!r} has no primary key",
            where=where,
            hint="batches page on the primary key: add one, or set primary_key in the spec to a unique non-null column",
        )
    elif len(pk_cols) > 1:
        raise SpecError(
            f"table {t.name!r} has a composite primary key ({', '.join(pk_cols)})",
            where=where,
            hint="set primary_key in the spec to a unique non-null column",
        )
    else:
        pk = pk_cols[0]

    def check(col: str, allowed: tuple[str, ...], what: str) -> str:
        if col not in types:
            raise SpecError(
                f"column {t.name}.{col} does not exist",
                where=where,
                hint=f"columns of {t.name}: {', '.join(types)}",
            )
        full, base = types[col]
        if base not in allowed:
            raise SpecError(
                f"column {t.name}.{col} is {full}, not {what}",
                where=where,
                hint=f"ALTER TABLE {t.name} ALTER COLUMN {col} TYPE text"
                if allowed == TEXT_TYPES
                else "a blind index is hex text or bytea",
            )
        return base  # arrays are cast to the type without its modifier: a varchar(n) cast truncates

    col_types = tuple(check(c.name, TEXT_TYPES, "text or varchar") for c in t.columns)
    hmac_cols: list[str] = []
    hmac_of: list[int | None] = []
    for c in t.columns:
        if c.hmac is None:
            hmac_of.append(None)
            continue
        if c.hmac not in hmac_cols:
            hmac_cols.append(c.hmac)
        hmac_of.append(hmac_cols.index(c.hmac))
    hmac_types = tuple(check(h, HMAC_TYPES, "text or bytea") for h in hmac_cols)
    for c in t.columns:
        if c.name == pk or c.name in hmac_cols:
            raise SpecError(f"column {t.name}.{c.name} is a key or blind index", where=where)
    return TablePlan(
        t,
        schema,
        pk,
        types[pk][1],
        tuple(c.name for c in t.columns),
        col_types,
        tuple(hmac_cols),
        hmac_types,
        tuple(hmac_of),
    )


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


@dataclass(frozen=True)
class _Sql:
    first: Any
    after: Any
    by_pk: Any
    update: Any
    count: Any
    count_done: Any


def _statements(plan: TablePlan) -> _Sql:
    from psycopg import sql

    tbl = sql.Identifier(plan.schema, plan.name)
    pk = sql.Identifier(plan.pk)
    pk_type = sql.SQL(plan.pk_type)
    sel = sql.SQL(", ").join(
        [pk, *(sql.Identifier(c) for c in plan.columns), *(sql.Identifier(h) for h in plan.hmac_columns)]
    )
    base = sql.SQL("SELECT {sel} FROM {tbl}").format(sel=sel, tbl=tbl)
    arrays = [sql.SQL("%s::{}[]").format(pk_type)]
    names = [sql.Identifier("k")]
    sets, cas = [], []
    for i, (col, typ) in enumerate(zip(plan.columns, plan.column_types, strict=True)):
        arrays += [sql.SQL("%s::{}[]").format(sql.SQL(typ))] * 2
        o, n = sql.Identifier(f"o{i}"), sql.Identifier(f"n{i}")
        names += [o, n]
        sets.append(sql.SQL("{} = u.{}").format(sql.Identifier(col), n))
        cas.append(sql.SQL("t.{} IS NOT DISTINCT FROM u.{}").format(sql.Identifier(col), o))
    for i, (col, typ) in enumerate(zip(plan.hmac_columns, plan.hmac_types, strict=True)):
        arrays.append(sql.SQL("%s::{}[]").format(sql.SQL(typ)))
        h = sql.Identifier(f"h{i}")
        names.append(h)
        cas.append(sql.SQL("t.{} IS NOT DISTINCT FROM u.{}").format(sql.Identifier(col), h))
    update = sql.SQL(
        "UPDATE {tbl} AS t SET {sets} FROM unnest({arrays}) AS u({names}) WHERE t.{pk} = u.k AND {cas} RETURNING t.{pk}"
    ).format(
        tbl=tbl,
        sets=sql.SQL(", ").join(sets),
        arrays=sql.SQL(", ").join(arrays),
        names=sql.SQL(", ").join(names),
        pk=pk,
        cas=sql.SQL(" AND ").join(cas),
    )
    return _Sql(
        first=sql.SQL("{} ORDER BY {} LIMIT %s").format(base, pk),
        after=sql.SQL("{} WHERE {} > %s ORDER BY {} LIMIT %s").format(base, pk, pk),
        by_pk=sql.SQL("{} WHERE {} = ANY(%s::{}[]) ORDER BY {} FOR UPDATE").format(base, pk, pk_type, pk),
        update=update,
        count=sql.SQL("SELECT count(*) FROM {}").format(tbl),
        count_done=sql.SQL("SELECT count(*) FROM {} WHERE {} <= %s").format(tbl, pk),
    )


def ensure_progress_table(conn: psycopg.Connection[Any], schema: str) -> None:
    from psycopg import sql

    with conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " run_key text NOT NULL,"
                " table_name text NOT NULL,"
                " last_pk text,"
                " done boolean NOT NULL DEFAULT false,"
                " counters jsonb NOT NULL DEFAULT '{{}}',"
                " updated_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (run_key, table_name))"
            ).format(sql.Identifier(schema, PROGRESS_TABLE))
        )


def run(
    conn: psycopg.Connection[Any],
    plans: Sequence[TablePlan],
    keyring: Keyring,
    opts: Options,
    progress: ProgressSink | None = None,
) -> list[TableStats]:
    """Run every table in order; return the statistics (also of a dry run)."""
    if opts.batch_size < 1:
        raise SpecError("--batch-size must be at least 1", where="--batch-size")
    sink = progress or _NoProgress()
    if opts.writes and plans:
        ensure_progress_table(conn, plans[0].schema)
    conn.read_only = not opts.writes
    try:
        return [_run_table(conn, plan, keyring, opts, sink) for plan in plans]
    finally:
        if not conn.closed:
            conn.rollback()
            conn.read_only = False


def _run_table(
    conn: psycopg.Connection[Any],
    plan: TablePlan,
    keyring: Keyring,
    opts: Options,
    sink: ProgressSink,
) -> TableStats:
    from psycopg import errors, sql
    from psycopg.types.json import Jsonb

    q = _statements(plan)
    stats = TableStats(plan.name)
    key = plan.run_key(opts.mode, keyring)
    progress_tbl = sql.Identifier(plan.schema, PROGRESS_TABLE)
    last: Any = None
    if opts.writes:
        _lock(conn, key, plan)
        row = conn.execute(
            sql.SQL("SELECT last_pk::{}, done, counters FROM {} WHERE run_key = %s AND table_name = %s").format(
                sql.SQL(plan.pk_type), progress_tbl
            ),
            (key, plan.name),
        ).fetchone()
        if row is not None and not row[1] and row[0] is not None:
            last, saved = row[0], row[2]
            stats.resumed = True
            stats.counts = Counts(**{k: int(v) for k, v in saved.get("counts", {}).items()})
            stats.failures = [Failure(**f) for f in saved.get("failures", [])]
    total = conn.execute(q.count).fetchone()[0]  # type: ignore[index]
    done_rows = conn.execute(q.count_done, (last,)).fetchone()[0] if last is not None else 0  # type: ignore[index]
    conn.commit()
    sink.start(plan.name, int(total), int(done_rows))
    checkpoint = sql.SQL(
        "INSERT INTO {} (run_key, table_name, last_pk, done, counters, updated_at) "
        "VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (run_key, table_name) DO UPDATE SET "
        "last_pk = EXCLUDED.last_pk, done = EXCLUDED.done, counters = EXCLUDED.counters, "
        "updated_at = now()"
    ).format(progress_tbl)
    started = time.monotonic()
    while True:
        for attempt in range(MAX_BATCH_RETRIES + 1):
            try:
                with conn.transaction():
                    n, batch_last, delta, failures = _batch(conn, q, plan, keyring, opts, last)
                    counts = Counts(**stats.counts.as_dict())
                    counts.add(delta)
                    listed = (stats.failures + failures)[:MAX_LISTED_FAILURES]
                    finished = n < opts.batch_size
                    if opts.writes:
                        saved = {"counts": counts.as_dict(), "failures": [asdict(f) for f in listed]}
                        conn.execute(
                            checkpoint,
                            (
                                key,
                                plan.name,
                                None if batch_last is None else str(batch_last),
                                finished,
                                Jsonb(saved),
                            ),
                        )
                break
            except (errors.DeadlockDetected, errors.SerializationFailure):
                if attempt == MAX_BATCH_RETRIES:
                    raise DatabaseError(
                        f"batch after primary key {last} kept deadlocking with the application",
                        where=plan.name,
                        hint="run again (it resumes), or with a smaller --batch-size",
                    ) from None
                time.sleep(0.05 * (attempt + 1))
            except errors.StringDataRightTruncation:
                raise DatabaseError(
                    "a new ciphertext does not fit in its column",
                    where=plan.name,
                    hint="ciphertexts are longer than plaintexts: ALTER the column TYPE text",
                ) from None
            except errors.Error as exc:
                raise DatabaseError(
                    f"batch failed ({exc.sqlstate or 'no sqlstate'}): {_first_line(str(exc))}",
                    where=plan.name,
                    hint="nothing of this batch was written; run again to resume",
                ) from None
        stats.counts = counts
        stats.failures = listed
        stats.scanned_now += n
        if batch_last is not None:
            last = batch_last
        sink.advance(plan.name, n)
        if finished:
            break
        if opts.pause > 0:
            time.sleep(opts.pause)
    stats.seconds = time.monotonic() - started
    if opts.writes:
        _unlock(conn, key, plan)
    sink.finish(plan.name)
    return stats


def _batch(
    conn: psycopg.Connection[Any],
    q: _Sql,
    plan: TablePlan,
    keyring: Keyring,
    opts: Options,
    last: Any,
) -> tuple[int, Any, Counts, list[Failure]]:
    """One batch inside its transaction: read, decide, compare-and-set, redo the conflicts."""
    if last is None:
        rows = conn.execute(q.first, (opts.batch_size,)).fetchall()
    else:
        rows = conn.execute(q.after, (last, opts.batch_size)).fetchall()
    if not rows:
        return 0, None, Counts(), []
    results = {r.pk: r for r in process_rows(rows, plan, keyring, opts)}
    conflicts = 0
    if opts.writes:
        pending = [r for r in results.values() if r.write]
        current = {r[0]: r for r in rows}
        for _ in range(MAX_BATCH_RETRIES):
            if not pending:
                break
            updated = _write(conn, q, plan, pending, current)
            missed = [r.pk for r in pending if r.pk not in updated]
            if not missed:
                break
            # The application changed these rows since they were read: read them again,
            # locked this time, and decide again from what they hold now.
            conflicts += len(missed)
            for pk in missed:
                del results[pk]
            again = conn.execute(q.by_pk, (missed,)).fetchall()
            current.update((r[0], r) for r in again)
            redone = process_rows(again, plan, keyring, opts)
            results.update((r.pk, r) for r in redone)
            pending = [r for r in redone if r.write]
        else:
            if pending:
                raise DatabaseError(
                    f"{len(pending)} row(s) kept changing under compare-and-set",
                    where=plan.name,
                    hint="run again (it resumes)",
                )
    delta = Counts()
    failures: list[Failure] = []
    for r in results.values():
        delta.add(r.counts)
        failures.extend(r.failures)
    delta.scanned = len(rows)
    delta.conflicts = conflicts
    return len(rows), rows[-1][0], delta, failures


def _write(
    conn: psycopg.Connection[Any],
    q: _Sql,
    plan: TablePlan,
    pending: Sequence[RowResult],
    current: dict[Any, Sequence[Any]],
) -> set[Any]:
    ncol = len(plan.columns)
    params: list[list[Any]] = [[r.pk for r in pending]]
    for ci in range(ncol):
        params.append([current[r.pk][1 + ci] for r in pending])
        params.append([r.values[ci] for r in pending])
    for hi in range(len(plan.hmac_columns)):
        params.append([current[r.pk][1 + ncol + hi] for r in pending])
    return {row[0] for row in conn.execute(q.update, params).fetchall()}


def _lock(conn: psycopg.Connection[Any], key: str, plan: TablePlan) -> None:
    got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"{key}|{plan.name}",)).fetchone()
    conn.commit()
    if not got or not got[0]:
        raise DatabaseError(
            "another nixmig reencrypt is running on this table",
            where=plan.name,
            hint="wait for it to finish, or stop it; a new run resumes from its checkpoint",
        )


def _unlock(conn: psycopg.Connection[Any], key: str, plan: TablePlan) -> None:
    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"{key}|{plan.name}",))
    conn.commit()
