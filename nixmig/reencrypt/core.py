"""The pure core of the batch runner: its options, counters and results, and
:func:`process_rows`, which decides one batch (decrypt, check the blind index, encrypt,
decrypt again). No database and no I/O besides the ciphers' (Vault's batch calls): worker
processes import this module, never psycopg.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from itertools import compress
from typing import Any, cast

from nixmig.reencrypt.errors import IntegrityError, PlaintextError
from nixmig.reencrypt.modes import Mode, OnPlaintext
from nixmig.reencrypt.schemes import Cipher, Failed, Keyring, blind_index_matches, parse
from nixmig.reencrypt.spec import TableSpec
from nixmig.sensitive import Secret


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
