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

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import compress
from typing import TYPE_CHECKING, Any, Protocol, cast

from nixmig.errors import NixmigError
from nixmig.reencrypt.errors import DatabaseError, IntegrityError, PlaintextError, SpecError
from nixmig.reencrypt.modes import Mode, OnPlaintext
from nixmig.reencrypt.schemes import Cipher, Failed, Keyring, blind_index_matches, parse
from nixmig.reencrypt.spec import Spec, TableSpec
from nixmig.sensitive import Secret

if TYPE_CHECKING:
    import psycopg

    from nixmig.reencrypt.workers import Decider

PROGRESS_TABLE = "nixmig_progress"
MAX_LISTED_FAILURES = 100
MAX_BATCH_RETRIES = 5
TEXT_TYPES = ("text", "character varying")
HMAC_TYPES = ("text", "character varying", "bytea")


@dataclass(frozen=True)
class Options:
    mode: Mode = Mode.REENCRYPT
    apply: bool = False
    batch_size: int = 1000
    on_plaintext: OnPlaintext = OnPlaintext.ERROR
    hmac_secret: Secret | None = None
    pause: float = 0.0  # seconds between batches, to spare a busy database
    jobs: int = 0  # worker processes deciding batches (decrypt/encrypt); 0: this process

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

# What happened to each value: one code per (row, column), so that a batch's counters are
# a few bytearray.count() calls and rows can be dropped from them (conflicts) cheaply.
_NULL, _MIGRATED, _NEW, _PLAIN_LEFT, _PLAIN_FAIL, _PLAIN_MIGRATED, _OLD = 0, 1, 2, 3, 4, 5, 6
_HMAC_FAIL, _UNWRITTEN, _PLAIN_UNWRITTEN, _PLAIN_HMAC_FAIL, _DEC_FAIL = 7, 8, 9, 10, 11
_NEW_HMAC_FAIL, _NEW_DEC_FAIL = 12, 13
_N_CODES = 14
_COUNTED: dict[str, tuple[int, ...]] = {
    "migrated": (_MIGRATED, _PLAIN_MIGRATED),
    "already_new": (_NEW, _NEW_HMAC_FAIL, _NEW_DEC_FAIL),
    "plaintext": (_PLAIN_LEFT, _PLAIN_FAIL, _PLAIN_MIGRATED, _PLAIN_UNWRITTEN, _PLAIN_HMAC_FAIL),
    "old_scheme": (_OLD,),
    "hmac_failed": (_HMAC_FAIL, _PLAIN_HMAC_FAIL, _NEW_HMAC_FAIL),
    "decrypt_failed": (_DEC_FAIL, _NEW_DEC_FAIL),
}
_PLAINTEXT = object()  # classification of a value without a scheme prefix
_NO_KEY = object()  # a scheme prefix no key here can read


@dataclass(slots=True)
class BatchResult:
    """The decisions for one batch of rows ``(pk, *columns, *hmac_columns)``."""

    rows: Sequence[Sequence[Any]]
    states: list[bytearray]  # per column, one code per row
    values: list[list[Any]]  # per column, one per row: the value to write (unchanged ones as read)
    changed: bytearray  # per row: at least one new ciphertext
    bad: bytearray  # per row: a failure, the row is not written
    failures: list[tuple[int, Failure]]

    def to_write(self) -> list[int]:
        changed, bad = self.changed, self.bad
        return [i for i in range(len(self.rows)) if changed[i] and not bad[i]]

    def row(self, ri: int) -> list[Any]:
        """The column values to write for one row."""
        return [col[ri] for col in self.values]

    def drop(self, indices: Sequence[int]) -> None:
        """Forget rows (changed meanwhile: they are decided again from a new read)."""
        for st in self.states:
            for i in indices:
                st[i] = _NULL
        for i in indices:
            self.changed[i] = 0
        gone = set(indices)
        self.failures = [(i, f) for i, f in self.failures if i not in gone]

    def counts(self) -> Counts:
        tally = [0] * _N_CODES
        for st in self.states:
            for code in range(1, _N_CODES):
                tally[code] += st.count(code)
        c = Counts()
        for name, codes in _COUNTED.items():
            setattr(c, name, sum(tally[k] for k in codes))
        return c

    def row_failures(self, ri: int) -> list[Failure]:
        return [f for i, f in self.failures if i == ri]


def process_rows(rows: Sequence[Sequence[Any]], plan: TablePlan, keyring: Keyring, opts: Options) -> BatchResult:
    """Decide every row of a batch: no I/O besides the ciphers' (Vault's batch calls).

    A row with any failure is not written at all; its failures name the primary key
    and the column, never the value.
    """
    n, ncol = len(rows), len(plan.columns)
    cols = [[row[1 + ci] for row in rows] for ci in range(ncol)]
    batch = BatchResult(
        rows, [bytearray(n) for _ in range(ncol)], [list(c) for c in cols], bytearray(n), bytearray(n), []
    )
    verify = opts.mode is Mode.VERIFY
    encrypt_plain = opts.mode is Mode.ENCRYPT_PLAINTEXT or opts.on_plaintext is OnPlaintext.ENCRYPT
    plain_fail = not encrypt_plain and not verify and opts.on_plaintext is OnPlaintext.FAIL
    plain_error = not encrypt_plain and not verify and opts.on_plaintext is OnPlaintext.ERROR
    secret = opts.hmac_secret.reveal() if opts.hmac_secret is not None else None
    new = keyring.new
    new_prefix = new.scheme.prefix
    heads: dict[str, object] = {}  # "tag:vN:" -> the cipher that reads it, or _NO_KEY
    bad, failures = batch.bad, batch.failures

    def fail(ri: int, column: str, kind: str, reason: str) -> None:
        bad[ri] = 1
        failures.append((ri, Failure(str(rows[ri][0]), column, kind, reason)))

    def cipher_of(value: str) -> object:
        """The cipher that reads a value, _NO_KEY, or _PLAINTEXT (no scheme prefix)."""
        j = value.find(":", value.find(":") + 1)
        head = value[: j + 1] if j > 0 else ""
        cipher = heads.get(head)
        if cipher is None:
            sid = parse(value) if head else None
            if sid is None:
                return _PLAINTEXT  # not cached: plaintexts have any number of heads
            cipher = heads[head] = keyring.decoder(sid) or _NO_KEY
        return cipher

    every = list(range(n))
    for ci, (column, context) in enumerate(zip(plan.columns, plan.contexts(), strict=True)):
        st = batch.states[ci]
        hidx = plan.hmac_of[ci]
        check = secret if hidx is not None else None  # the HMAC secret, if this column has an index
        hpos = 1 + ncol + (hidx or 0)
        groups: dict[Any, tuple[list[int], list[str]]] = {}  # cipher -> (row indices, values)
        clear_idx: list[int] = []
        clear: list[bytes] = []
        col = cols[ci]
        rest: Sequence[int] = range(n)  # the rows left to the value-by-value loop below
        # Fast path: the values sharing the first one's scheme prefix (usually all of them)
        # are classified with a few list passes instead of a Python loop step each.
        first = next((v for v in col if v is not None), None)
        if first is not None:
            cipher = cipher_of(first)
            if first.startswith(new_prefix) or (cipher is not _PLAINTEXT and cipher is not _NO_KEY):
                head = new_prefix if first.startswith(new_prefix) else first[: first.find(":", first.find(":") + 1) + 1]
                hits = [v is not None and v.startswith(head) for v in col]
                idx = list(compress(range(n), hits))
                code = _NEW if head == new_prefix else _OLD if verify else _MIGRATED
                if len(idx) == n:
                    st[:] = bytes((code,)) * n
                else:
                    for ri in idx:
                        st[ri] = code
                if (verify and head == new_prefix) or (not verify and head != new_prefix):
                    values = col if len(idx) == n else [col[ri] for ri in idx]
                    groups[new if head == new_prefix else cipher] = (idx, values)
                if len(idx) + col.count(None) == n:
                    rest = ()
                else:
                    rest = [ri for ri in range(n) if not hits[ri] and col[ri] is not None]
        for ri in rest:
            value = col[ri]
            if value is None:
                continue
            if value.startswith(new_prefix):
                st[ri] = _NEW
                if verify:
                    _queue(groups, new, ri, value)
                continue
            cipher = cipher_of(value)
            if cipher is _PLAINTEXT:
                if encrypt_plain:
                    st[ri] = _PLAIN_MIGRATED
                    clear_idx.append(ri)
                    clear.append(value.encode())
                elif plain_fail:
                    st[ri] = _PLAIN_FAIL
                    fail(ri, column, "plaintext", "invalid ciphertext: no prefix")
                elif plain_error:
                    raise PlaintextError(
                        "invalid ciphertext: no prefix",
                        where=f"{plan.name}.{column}, primary key {rows[ri][0]}",
                        hint="for data that was never encrypted use --mode encrypt-plaintext, "
                        "or choose --on-plaintext encrypt|skip|fail",
                    )
                else:
                    st[ri] = _PLAIN_LEFT
            elif verify:
                st[ri] = _OLD
            elif cipher is _NO_KEY:
                if opts.mode is Mode.ENCRYPT_PLAINTEXT:
                    st[ri] = _OLD
                else:
                    st[ri] = _DEC_FAIL
                    fail(ri, column, "decrypt", f"no key for scheme {parse(value)}")
            else:
                st[ri] = _MIGRATED
                _queue(groups, cast("Cipher", cipher), ri, value)
        for decoder, (idx, values) in groups.items():
            outs = decoder.decrypt_many(context, values)
            if not verify and not any(o.__class__ is Failed for o in outs):
                clear_idx += idx
                clear += cast("list[bytes]", outs)
                continue
            for ri, out in zip(idx, outs, strict=True):
                if isinstance(out, Failed):
                    st[ri] = _NEW_DEC_FAIL if verify else _DEC_FAIL
                    fail(ri, column, "decrypt", out.reason)
                elif verify:
                    if check is not None and not blind_index_matches(check, out, rows[ri][hpos]):
                        st[ri] = _NEW_HMAC_FAIL
                        fail(ri, column, "hmac", "HMAC verification failed")
                else:
                    clear_idx.append(ri)
                    clear.append(out)
        if verify or not clear_idx:
            continue
        todo_idx, todo = clear_idx, clear
        if check is not None:
            oks = [blind_index_matches(check, pt, rows[ri][hpos]) for ri, pt in zip(clear_idx, clear, strict=True)]
            if not all(oks):
                todo_idx, todo = [], []
                for ri, pt, ok in zip(clear_idx, clear, oks, strict=True):
                    if ok:
                        todo_idx.append(ri)
                        todo.append(pt)
                    else:
                        st[ri] = _PLAIN_HMAC_FAIL if st[ri] == _PLAIN_MIGRATED else _HMAC_FAIL
                        fail(ri, column, "hmac", "HMAC verification failed")
        if not todo:
            continue
        cts = new.encrypt_many(context, todo)
        back = new.decrypt_many(context, cts)
        if back != todo:
            ri = next(i for i, a, b in zip(todo_idx, back, todo, strict=True) if a != b)
            raise IntegrityError(
                "a new ciphertext did not decrypt back to its plaintext",
                where=f"{plan.name}.{column}, primary key {rows[ri][0]}",
                hint="nothing of this batch was written; check the new key and report this",
            )
        if len(todo_idx) == n and todo_idx == every:  # every row, in order: the column is replaced
            batch.values[ci] = cts
            batch.changed[:] = b"\x01" * n
            continue
        out_values, changed = batch.values[ci], batch.changed
        for ri, ct in zip(todo_idx, cts, strict=True):
            out_values[ri] = ct
            changed[ri] = 1
    # rows with a failure are not written: what they would have migrated is not counted
    if failures:
        for ri in {i for i, _ in failures}:
            for st in batch.states:
                if st[ri] == _MIGRATED:
                    st[ri] = _UNWRITTEN
                elif st[ri] == _PLAIN_MIGRATED:
                    st[ri] = _PLAIN_UNWRITTEN
    return batch


def _queue(groups: dict[Any, tuple[list[int], list[str]]], cipher: Cipher, ri: int, value: str) -> None:
    slot = groups.get(cipher)
    if slot is None:
        slot = groups[cipher] = ([], [])
    slot[0].append(ri)
    slot[1].append(value)


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


def connect_to(*, host: str, port: int, user: str, dbname: str, password: Secret) -> psycopg.Connection[Any]:
    """:func:`connect` from parts (the migration engine's tunnel, logged in with the new password)."""
    from psycopg.conninfo import make_conninfo

    dsn = make_conninfo(
        host=host,
        port=port,
        user=user,
        dbname=dbname,
        password=password.reveal_str(),
        sslmode="prefer",
        connect_timeout=10,
    )
    return connect(dsn)


def passes_done(conn: psycopg.Connection[Any], plans: Sequence[TablePlan], mode: Mode, keyring: Keyring) -> bool:
    """Whether every table's checkpoint for this pass (mode, new scheme, columns) says it ran to the end."""
    from psycopg import sql

    if not plans:
        return True
    schema = plans[0].schema
    try:
        exists = conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (schema, PROGRESS_TABLE))
        row = exists.fetchone()
        if row is None or row[0] is None:
            return False
        query = sql.SQL("SELECT run_key, table_name FROM {} WHERE done").format(sql.Identifier(schema, PROGRESS_TABLE))
        done = {(str(k), str(t)) for k, t in conn.execute(query)}
    finally:
        conn.rollback()
    return all((p.run_key(mode, keyring), p.name) in done for p in plans)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines and lines[0].startswith("connection failed") else (lines or [""])[0]


def inspect(conn: psycopg.Connection[Any], spec: Spec) -> list[TablePlan]:
    """Check every table of the spec against the catalog; fail before anything runs."""
    from psycopg import sql

    def fetch(schema: str, table: str) -> Catalog:
        query = sql.SQL(CATALOG_SQL).format(schema=sql.Literal(schema), table=sql.Literal(table))
        row = conn.execute(query).fetchone()
        assert row is not None
        return Catalog.from_json(row[0])

    try:
        return inspect_with(spec, fetch)
    finally:
        conn.rollback()


def inspect_with(spec: Spec, fetch: Callable[[str, str], Catalog]) -> list[TablePlan]:
    """:func:`inspect` with the catalog read by ``fetch(schema, table)`` (psycopg, or psql on the target)."""
    plans = []
    problems: list[SpecError] = []
    for t in spec.tables:
        try:
            plans.append(plan_table(spec.schema, t, fetch(spec.schema, t.name)))
        except SpecError as exc:
            problems.append(exc)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise SpecError(first.what + more, where=first.where, hint=first.hint)
    return plans


# One row, one JSON value: what inspect needs to know about a table. {schema} and {table} are
# SQL literals (psycopg's sql.Literal, or nixmig.db.sql.literal for psql).
CATALOG_SQL = """\
WITH t AS (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = {schema} AND c.relname = {table} AND c.relkind IN ('r', 'p'))
SELECT json_build_object(
  'exists', EXISTS (SELECT 1 FROM t),
  'tables', (SELECT coalesce(json_agg(x.relname ORDER BY x.relname), '[]') FROM
             (SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = {schema} AND c.relkind IN ('r', 'p') ORDER BY 1 LIMIT 20) x),
  'types', (SELECT coalesce(json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod),
                                                      format_type(a.atttypid, NULL)) ORDER BY a.attnum), '[]')
            FROM pg_attribute a
            WHERE a.attrelid = (SELECT oid FROM t) AND a.attnum > 0 AND NOT a.attisdropped),
  'pk', (SELECT coalesce(json_agg(a.attname ORDER BY array_position(i.indkey, a.attnum)), '[]')
         FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = (SELECT oid FROM t) AND i.indisprimary))"""


@dataclass(frozen=True)
class Catalog:
    """What the catalog says about one table."""

    exists: bool
    tables: tuple[str, ...]  # the schema's tables (the first 20), for the hint when it does not exist
    types: dict[str, tuple[str, str]]  # column -> (type with modifiers, type without)
    pk: tuple[str, ...]  # primary key columns, in key order

    @classmethod
    def from_json(cls, data: Any) -> Catalog:
        if isinstance(data, str):
            data = json.loads(data)
        return cls(
            bool(data["exists"]),
            tuple(str(x) for x in data["tables"]),
            {str(n): (str(full), str(base)) for n, full, base in data["types"]},
            tuple(str(x) for x in data["pk"]),
        )


def plan_table(schema: str, t: TableSpec, cat: Catalog) -> TablePlan:
    """A table of the spec checked against its catalog entry (pure)."""
    where = f"{schema}.{t.name}"
    if not cat.exists:
        raise SpecError(
            f"table {t.name!r} does not exist in schema {schema!r}",
            where=where,
            hint="fix the spec or --tables; tables there: " + (", ".join(cat.tables) or "(none)"),
        )
    types, pk_cols = cat.types, list(cat.pk)
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
    count: Any
    count_done: Any
    create_stage: Any
    copy_stage: Any
    copy_types: list[str] | None  # binary COPY with these types, or None: text COPY
    clear_stage: Any
    update: Any


def _statements(plan: TablePlan) -> _Sql:
    from psycopg import sql

    tbl = sql.Identifier(plan.schema, plan.name)
    pk = sql.Identifier(plan.pk)
    pk_type = sql.SQL(plan.pk_type)
    # A temporary table per target table: each batch is COPYed into it and applied with one
    # UPDATE ... FROM. It lives in the session, and is emptied at every commit.
    stage = sql.Identifier("nixmig_stage_" + hashlib.sha256(f"{plan.schema}.{plan.name}".encode()).hexdigest()[:12])
    sel = sql.SQL(", ").join(
        [pk, *(sql.Identifier(c) for c in plan.columns), *(sql.Identifier(h) for h in plan.hmac_columns)]
    )
    base = sql.SQL("SELECT {sel} FROM {tbl}").format(sel=sel, tbl=tbl)
    defs = [sql.SQL("k {}").format(pk_type)]
    sets, cas = [], []
    for i, (col, typ) in enumerate(zip(plan.columns, plan.column_types, strict=True)):
        o, n = sql.Identifier(f"o{i}"), sql.Identifier(f"n{i}")
        defs += [sql.SQL("{} {}").format(o, sql.SQL(typ)), sql.SQL("{} {}").format(n, sql.SQL(typ))]
        sets.append(sql.SQL("{} = u.{}").format(sql.Identifier(col), n))
        cas.append(sql.SQL("t.{} IS NOT DISTINCT FROM u.{}").format(sql.Identifier(col), o))
    for i, (col, typ) in enumerate(zip(plan.hmac_columns, plan.hmac_types, strict=True)):
        h = sql.Identifier(f"h{i}")
        defs.append(sql.SQL("{} {}").format(h, sql.SQL(typ)))
        cas.append(sql.SQL("t.{} IS NOT DISTINCT FROM u.{}").format(sql.Identifier(col), h))
    update = sql.SQL(
        "UPDATE {tbl} AS t SET {sets} FROM {stage} AS u "
        "WHERE t.{pk} = u.k AND t.{pk} >= %s AND t.{pk} <= %s AND {cas} RETURNING t.{pk}"
    ).format(tbl=tbl, sets=sql.SQL(", ").join(sets), stage=stage, pk=pk, cas=sql.SQL(" AND ").join(cas))
    # Binary COPY (less work on both sides) when every staged type has a binary dumper for the
    # Python values psycopg reads for it; text COPY otherwise.
    staged = [plan.pk_type]
    for typ in plan.column_types:
        staged += [typ, typ]
    staged += list(plan.hmac_types)
    binary = all(t in _BINARY_COPY_TYPES for t in staged)
    # The bounds are the batch's first and last keys: without them the planner may merge-join
    # from the start of the primary key index at every batch, which grows with the table.
    return _Sql(
        first=sql.SQL("{} ORDER BY {} LIMIT %s").format(base, pk),
        after=sql.SQL("{} WHERE {} > %s ORDER BY {} LIMIT %s").format(base, pk, pk),
        by_pk=sql.SQL("{} WHERE {} = ANY(%s::{}[]) ORDER BY {} FOR UPDATE").format(base, pk, pk_type, pk),
        count=sql.SQL("SELECT count(*) FROM {}").format(tbl),
        count_done=sql.SQL("SELECT count(*) FROM {} WHERE {} <= %s").format(tbl, pk),
        create_stage=sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            stage, sql.SQL(", ").join(defs)
        ),
        copy_stage=sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)" if binary else "COPY {} FROM STDIN").format(stage),
        copy_types=staged if binary else None,
        clear_stage=sql.SQL("DELETE FROM {}").format(stage),
        update=update,
    )


_BINARY_COPY_TYPES = frozenset({"smallint", "integer", "bigint", "text", "character varying", "bytea", "uuid"})


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

    q = _statements(plan)
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
                raise _db_error(exc, plan) from None
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
        _unlock(writer, key, plan)
    sink.finish(plan.name)
    return stats


def _prepare_writer(writer: psycopg.Connection[Any], q: _Sql, key: str, plan: TablePlan, stats: TableStats) -> Any:
    """Lock the table for this run, create the stage, and load a checkpoint to resume from."""
    from psycopg import sql

    _lock(writer, key, plan)
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
    q: _Sql,
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
                    updated = _write(writer, q, plan, current, todo, bounds)
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
            raise _db_error(exc, plan) from None
    raise AssertionError("unreachable")


def _db_error(exc: BaseException, plan: TablePlan) -> NixmigError:
    from psycopg import errors

    if isinstance(exc, NixmigError):
        return exc
    if isinstance(exc, errors.StringDataRightTruncation):
        return DatabaseError(
            "a new ciphertext does not fit in its column",
            where=plan.name,
            hint="ciphertexts are longer than plaintexts: ALTER the column TYPE text",
        )
    if isinstance(exc, errors.Error):
        return DatabaseError(
            f"batch failed ({exc.sqlstate or 'no sqlstate'}): {_first_line(str(exc))}",
            where=plan.name,
            hint="nothing of this batch was written; run again to resume",
        )
    return DatabaseError(f"batch failed: {type(exc).__name__}", where=plan.name)


def _write(
    conn: psycopg.Connection[Any],
    q: _Sql,
    plan: TablePlan,
    batch: BatchResult,
    todo: Sequence[int],
    batch_bounds: tuple[Any, Any],
) -> set[Any]:
    """COPY the rows to write into the stage, then one compare-and-set UPDATE; the keys written."""
    ncol = len(plan.columns)
    rows, values = batch.rows, batch.values
    # Column by column: (pk, old0, new0, old1, new1, ..., hmac columns) as the stage has them.
    staged: list[list[Any]] = [[rows[i][0] for i in todo]]
    for ci in range(ncol):
        new = values[ci]
        staged.append([rows[i][1 + ci] for i in todo])
        staged.append([new[i] for i in todo])
    for hi in range(1 + ncol, len(rows[0]) if rows else 0):
        staged.append([rows[i][hi] for i in todo])
    with conn.cursor() as cur:
        with cur.copy(q.copy_stage) as cp:
            if q.copy_types is not None:
                cp.set_types(q.copy_types)
            for rec in zip(*staged, strict=True):
                cp.write_row(rec)
        bounds = (batch_bounds[0], batch_bounds[1])
        return {r[0] for r in cur.execute(q.update, bounds).fetchall()}


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
