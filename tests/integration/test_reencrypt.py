"""`nixmig reencrypt` on a real PostgreSQL: counters, resume after SIGKILL, a concurrent
writer, dry runs, spec errors, and the Vault provider (against a real OpenBao)."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg  # noqa: TID251  (tests drive a real database)
import pytest
from psycopg import sql  # noqa: TID251

from nixmig.reencrypt import runner, schemes
from nixmig.reencrypt.errors import PlaintextError
from nixmig.reencrypt.modes import Mode, OnPlaintext
from nixmig.reencrypt.schemes import ContextCipher, Keyring, LegacyCipher
from nixmig.reencrypt.spec import EXAMPLE_SPEC, Spec, TableSpec
from nixmig.sensitive import Secret
from tests.harness.openbao import OpenBao
from tests.harness.postgres import PgServer

pytestmark = pytest.mark.integration

OLD = Secret(os.urandom(32))
NEW = Secret(os.urandom(32))
HMAC = Secret(b"test-only-hmac-secret")

DDL = {
    "users": "id bigint PRIMARY KEY, email text, email_hmac text, first_name text, last_name varchar(400)",
    "invitations": "id text PRIMARY KEY, email text, email_hmac text, token text, token_hmac text",
    "guest_orders": "id integer PRIMARY KEY, customer_name text, customer_phone text, customer_email text, "
    "customer_email_hmac text, ip_address text, user_agent text",
    "delivery_addresses": "id bigint PRIMARY KEY, full_address text, geocoding_result text",
    "notifications": "id bigint PRIMARY KEY, recipient text, body text",
    "sessions": "id uuid PRIMARY KEY, session_id text, session_id_hmac bytea, ip_address text",
    "consent_records": "id bigint PRIMARY KEY, ip_address text",
}
SIZES = {
    "users": 400,
    "invitations": 150,
    "guest_orders": 300,
    "delivery_addresses": 120,
    "notifications": 250,
    "sessions": 200,
    "consent_records": 90,
}
KINDS = ("normal", "plaintext", "corrupt", "bad_hmac", "new", "null")


@dataclass
class Expect:
    scanned: int = 0
    legacy: int = 0  # legacy cells in rows that are migrated
    already_new: int = 0
    plaintext: int = 0
    hmac_failed: int = 0
    decrypt_failed: int = 0
    failed_pks: set[tuple[str, str]] = field(default_factory=set)
    plain_rows_other: int = 0  # legacy cells in rows that hold a plaintext value


@dataclass
class Dataset:
    rows: dict[str, list[tuple[Any, ...]]]
    plain: dict[str, dict[str, list[str | None]]]  # table -> str(pk) -> plaintexts per column
    expect: dict[str, Expect]


def _value(rng: random.Random, table: str, column: str, i: int) -> str:
    if "email" in column or column == "recipient":
        return f"person{i}.{rng.randrange(10**6)}@example.org"
    if "ip" in column:
        return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
    if column == "geocoding_result":
        return json.dumps({"lat": rng.uniform(-90, 90), "lon": rng.uniform(-180, 180), "q": "Straße"})
    return f"{table}-{column}-{i}-{rng.randrange(10**9)}-ü"


def _pk(table: str, i: int, rng: random.Random) -> Any:
    if table == "invitations":
        return f"inv-{i:05d}"
    if table == "sessions":
        return uuid.UUID(int=rng.getrandbits(128))
    return i + 1


def make_dataset(seed: int = 7) -> Dataset:
    rng = random.Random(seed)
    legacy, new = LegacyCipher(OLD, 1), ContextCipher(NEW, 1)
    rows: dict[str, list[tuple[Any, ...]]] = {}
    plain: dict[str, dict[str, list[str | None]]] = {}
    expect: dict[str, Expect] = {}
    for t in EXAMPLE_SPEC.tables:
        cols = [c.name for c in t.columns]
        hmac_cols = [c.hmac for c in t.columns if c.hmac]
        e = expect[t.name] = Expect()
        rows[t.name], plain[t.name] = [], {}
        for i in range(SIZES[t.name]):
            kind = rng.choices(KINDS, weights=(70, 6, 5, 5, 8, 6))[0]
            if kind == "bad_hmac" and not hmac_cols:
                kind = "normal"
            pts: list[str | None] = [_value(rng, t.name, c, i) for c in cols]
            if kind == "null":
                pts[rng.randrange(len(cols))] = None
            target = rng.randrange(len(cols))
            pk = _pk(t.name, i, rng)
            stored: list[str | None] = []
            for ci, (c, pt) in enumerate(zip(cols, pts, strict=True)):
                if pt is None:
                    stored.append(None)
                elif kind == "new":
                    stored.append(new.encrypt_many(t.context(c), [pt.encode()])[0])
                elif kind == "plaintext" and ci == target:
                    stored.append(pt)
                elif kind == "corrupt" and ci == target:
                    ct = legacy.encrypt_many("", [pt.encode()])[0]
                    mid = len(ct) // 2
                    stored.append(ct[:mid] + ("A" if ct[mid] != "A" else "B") + ct[mid + 1 :])
                else:
                    stored.append(legacy.encrypt_many("", [pt.encode()])[0])
            hmacs: list[Any] = []
            bad_col = next((c.name for c in t.columns if c.hmac), None)
            for col in t.columns:
                if not col.hmac:
                    continue
                pt = pts[cols.index(col.name)]
                if pt is None:
                    hmacs.append(None)
                    continue
                src = pt + "-tampered" if kind == "bad_hmac" and col.name == bad_col else pt
                digest = schemes.blind_index(HMAC.reveal(), src.encode())
                hmacs.append(digest if t.name == "sessions" else digest.hex())
            rows[t.name].append((pk, *stored, *hmacs))
            plain[t.name][str(pk)] = pts
            nonnull = sum(p is not None for p in pts)
            e.scanned += 1
            if kind == "new":
                e.already_new += nonnull
            elif kind == "plaintext":
                e.plaintext += 1
                e.plain_rows_other += nonnull - 1
                e.failed_pks.add((str(pk), cols[target]))
            elif kind == "corrupt":
                e.decrypt_failed += 1
                e.failed_pks.add((str(pk), cols[target]))
            elif kind == "bad_hmac":
                e.hmac_failed += 1
                assert bad_col is not None
                e.failed_pks.add((str(pk), bad_col))
            else:
                e.legacy += nonnull
    return Dataset(rows, plain, expect)


def load(dsn: str, data: Dataset) -> None:
    with psycopg.connect(dsn) as conn:
        for t in EXAMPLE_SPEC.tables:
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(t.name), sql.SQL(DDL[t.name])))
            names = ["id", *(c.name for c in t.columns), *(c.hmac for c in t.columns if c.hmac)]
            copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(t.name), sql.SQL(", ").join(map(sql.Identifier, names))
            )
            with conn.cursor() as cur, cur.copy(copy) as cp:
                for row in data.rows[t.name]:
                    cp.write_row(row)


def dump(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with psycopg.connect(dsn) as conn:
        for t in EXAMPLE_SPEC.tables:
            names = ["id", *(c.name for c in t.columns), *(c.hmac for c in t.columns if c.hmac)]
            query = sql.SQL("SELECT {} FROM {} ORDER BY 1").format(
                sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(t.name)
            )
            out[t.name] = conn.execute(query).fetchall()
    return out


def row_versions(dsn: str) -> dict[str, Any]:
    """Every row's version (ctid, xmin, xmax) and every relation's file: any write changes one.

    An UPDATE to the same value, a lock, a delete and re-insert or a table rewrite all show
    here while a dump stays equal; what autovacuum does (forks, hint bits) does not, so this
    is the "nothing written" check, not the database's size.
    """
    out: dict[str, Any] = {}
    with psycopg.connect(dsn) as conn:
        for t in EXAMPLE_SPEC.tables:
            query = sql.SQL("SELECT ctid::text, xmin::text, xmax::text FROM {} ORDER BY ctid").format(
                sql.Identifier(t.name)
            )
            out[t.name] = conn.execute(query).fetchall()
        out["relations"] = conn.execute(
            "SELECT c.relname, c.relkind, c.relfilenode FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
            " ORDER BY 1"
        ).fetchall()
    return out


def write_keys(tmp: Path) -> tuple[Path, Path]:
    old, new = tmp / "old.key", tmp / "new.key"
    old.write_text(base64.b64encode(OLD.reveal()).decode() + "\n")
    new.write_text(base64.b64encode(NEW.reveal()).decode() + "\n")
    return old, new


def cli(dsn: str, tmp: Path, *args: str, env: dict[str, str] | None = None, popen: bool = False) -> Any:
    old, new = write_keys(tmp)
    full_env = dict(os.environ, DATABASE_URL=dsn, ENCRYPTION_HMAC_SECRET=HMAC.reveal_str(), COLUMNS="200")
    full_env.update(env or {})
    argv = [sys.executable, "-m", "nixmig", "reencrypt", "--old-key", str(old), "--new-key", f"file:{new}", *args]
    if popen:
        return subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp)
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=300, cwd=tmp, check=False)


def by_table(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["table"]: t for t in report["tables"]}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return make_dataset()


# ---- counters, state, idempotence, verify ------------------------------------------------


def test_apply_counts_every_row_and_lists_failures_by_pk(pg_db: PgServer, tmp_path: Path, dataset: Dataset) -> None:
    load(pg_db.dsn, dataset)
    res = cli(pg_db.dsn, tmp_path, "--apply", "--on-plaintext", "fail", "--batch-size", "37", "--json")
    assert res.returncode == 1, res.stderr  # failures were found
    assert "back up the database" in res.stderr and "old key" in res.stderr
    report = by_table(json.loads(res.stdout))
    for name, e in dataset.expect.items():
        got = report[name]
        assert got["scanned"] == e.scanned, name
        assert got["migrated"] == e.legacy, name
        assert got["already_new"] == e.already_new, name
        assert got["plaintext"] == e.plaintext, name
        assert got["hmac_failed"] == e.hmac_failed, name
        assert got["decrypt_failed"] == e.decrypt_failed, name
        assert got["old_scheme"] == 0 and got["conflicts"] == 0
        assert {(f["pk"], f["column"]) for f in got["failures"]} == e.failed_pks, name
    # No value, key or secret on any output.
    blob = res.stdout + res.stderr
    assert "@example.org" not in blob and HMAC.reveal_str() not in blob

    # The database: migrated rows are ctx:v1 and decrypt to their plaintext; failed rows are untouched.
    after = dump(pg_db.dsn)
    ring = ContextCipher(NEW, 1)
    for t in EXAMPLE_SPEC.tables:
        cols = [c.name for c in t.columns]
        failed = {pk for pk, _ in dataset.expect[t.name].failed_pks}
        before = {str(r[0]): r for r in dataset.rows[t.name]}
        for row in after[t.name]:
            pk = str(row[0])
            if pk in failed:
                assert row == before[pk]
                continue
            for ci, c in enumerate(cols):
                pt = dataset.plain[t.name][pk][ci]
                if pt is None:
                    assert row[1 + ci] is None
                else:
                    assert row[1 + ci].startswith("ctx:v1:")
                    assert ring.decrypt_many(t.context(c), [row[1 + ci]]) == [pt.encode()]

    # Running again is harmless: only the failed rows are left, nothing is rewritten.
    again = by_table(json.loads(cli(pg_db.dsn, tmp_path, "--apply", "--on-plaintext", "fail", "--json").stdout))
    assert all(t["migrated"] == 0 for t in again.values())
    assert dump(pg_db.dsn) == after

    # verify: read-only, and says what is still not in the new scheme.
    res = cli(pg_db.dsn, tmp_path, "--mode", "verify", "--json")
    assert res.returncode == 1
    verify = by_table(json.loads(res.stdout))
    for name, e in dataset.expect.items():
        assert verify[name]["already_new"] == e.legacy + e.already_new, name
        assert verify[name]["plaintext"] == e.plaintext, name
        assert verify[name]["hmac_failed"] == 0, name
    assert dump(pg_db.dsn) == after


def test_plaintext_rows_stop_the_default_run_with_a_clear_error(
    pg_db: PgServer, tmp_path: Path, dataset: Dataset
) -> None:
    load(pg_db.dsn, dataset)
    res = cli(pg_db.dsn, tmp_path, "--tables", "users")
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[-1]
    assert "invalid ciphertext: no prefix" in line and "encrypt-plaintext" in line and "users." in line
    # encrypt-plaintext then takes the plaintext rows (and the legacy ones, with the old key).
    res = cli(pg_db.dsn, tmp_path, "--tables", "users", "--mode", "encrypt-plaintext", "--apply", "--json")
    users = by_table(json.loads(res.stdout))["users"]
    e = dataset.expect["users"]
    assert users["migrated"] == e.legacy + e.plaintext + e.plain_rows_other


def test_dry_run_changes_no_byte(pg_db: PgServer, tmp_path: Path, dataset: Dataset) -> None:
    load(pg_db.dsn, dataset)
    before, before_versions = dump(pg_db.dsn), row_versions(pg_db.dsn)
    res = cli(pg_db.dsn, tmp_path, "--on-plaintext", "skip", "--json")
    assert res.returncode == 1, res.stderr  # corrupt and bad-HMAC rows
    report = by_table(json.loads(res.stdout))
    assert json.loads(res.stdout)["dry_run"] is True
    for name, e in dataset.expect.items():
        assert report[name]["migrated"] == e.legacy + e.plain_rows_other, name  # would migrate
    assert "back up" not in res.stderr
    assert dump(pg_db.dsn) == before
    with psycopg.connect(pg_db.dsn) as conn:
        assert conn.execute("SELECT to_regclass('nixmig_progress')").fetchone() == (None,)
    assert row_versions(pg_db.dsn) == before_versions


def test_human_report(pg_db: PgServer, tmp_path: Path, dataset: Dataset) -> None:
    load(pg_db.dsn, dataset)
    res = cli(pg_db.dsn, tmp_path, "--on-plaintext", "skip", "--tables", "users,invitations")
    out = res.stdout
    assert "would migrate" in out and "HMAC failed" in out and "rows/s" in out
    assert "HMAC verification failed: check the HMAC secret" in out
    hm = next(pk for pk, c in dataset.expect["users"].failed_pks if c == "email")
    assert any(f"users.email primary key {pk}" in out for pk, c in dataset.expect["users"].failed_pks)
    assert hm


# ---- resume after SIGKILL ---------------------------------------------------------------


def _clone(pg_db: PgServer, name: str) -> PgServer:
    with psycopg.connect(pg_db.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(pg_db.dbname))
        )
    return pg_db.with_db(name)


def _drop(pg_db: PgServer, name: str) -> None:
    with psycopg.connect(pg_db.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _wait_gone(pids: Sequence[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
        time.sleep(0.05)
    assert not alive, f"processes left behind: {alive}"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_sigkill_then_resume_equals_an_uninterrupted_run(pg_db: PgServer, tmp_path: Path, dataset: Dataset) -> None:
    load(pg_db.dsn, dataset)
    name_a, name_b = f"{pg_db.dbname}_a", f"{pg_db.dbname}_b"
    a, b = _clone(pg_db, name_a), _clone(pg_db, name_b)
    try:
        args = ("--apply", "--on-plaintext", "encrypt", "--batch-size", "16")
        res = cli(a.dsn, tmp_path, *args, "--json")
        assert res.returncode == 1  # corrupt / bad HMAC rows

        proc = cli(b.dsn, tmp_path, *args, "--pause", "0.02", popen=True)
        deadline = time.monotonic() + 60
        with psycopg.connect(b.dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = None
                if conn.execute("SELECT to_regclass('nixmig_progress')").fetchone() != (None,):
                    row = conn.execute(
                        "SELECT count(*) FROM nixmig_progress WHERE table_name = 'guest_orders' AND last_pk IS NOT NULL"
                    ).fetchone()
                if row and row[0]:
                    break
                time.sleep(0.01)
        children = _children(proc.pid)  # the worker process(es) deciding batches (--jobs)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert children, "the run had started its worker processes"
        _wait_gone(children)  # none outlives a killed run
        with psycopg.connect(b.dsn) as conn:
            state = conn.execute("SELECT table_name, done FROM nixmig_progress ORDER BY 1").fetchall()
        assert ("guest_orders", False) in state  # killed mid-table

        res = cli(b.dsn, tmp_path, *args, "--json")
        assert res.returncode == 1, res.stderr
        report = by_table(json.loads(res.stdout))
        assert report["guest_orders"]["resumed"] is True
        # the resumed table's counters cover the whole pass, as if never interrupted
        e = dataset.expect["guest_orders"]
        assert report["guest_orders"]["scanned"] == e.scanned
        assert report["guest_orders"]["decrypt_failed"] == e.decrypt_failed
        assert dump(a.dsn) == dump(b.dsn)
    finally:
        _drop(pg_db, name_a)
        _drop(pg_db, name_b)


@pytest.mark.parametrize("mode", [Mode.REENCRYPT, Mode.VERIFY])
def test_worker_processes_decide_exactly_as_one_process(pg_db: PgServer, dataset: Dataset, mode: Mode) -> None:
    load(pg_db.dsn, dataset)
    ring = Keyring(ContextCipher(NEW, 1), (LegacyCipher(OLD, 1),))
    results = {}
    for jobs in (0, 2):
        name = f"{pg_db.dbname}_j{jobs}"
        db = _clone(pg_db, name)
        try:
            opts = runner.Options(
                mode=mode,
                apply=mode is not Mode.VERIFY,
                batch_size=23,
                on_plaintext=OnPlaintext.ENCRYPT,
                hmac_secret=HMAC,
                jobs=jobs,
            )
            conn, writer = runner.connect(db.dsn), runner.connect(db.dsn)
            try:
                stats = runner.run(conn, runner.inspect(conn, EXAMPLE_SPEC), ring, opts, writer=writer)
            finally:
                conn.close()
                writer.close()
            results[jobs] = ([(s.table, s.counts, s.failures) for s in stats], dump(db.dsn))
        finally:
            _drop(pg_db, name)
    assert results[0] == results[2]
    counts = {t: c for t, c, _ in results[2][0]}
    assert counts["users"].scanned == dataset.expect["users"].scanned
    if mode is Mode.REENCRYPT:
        assert counts["users"].migrated > 0 and results[2][1] != dump(pg_db.dsn)
    else:
        assert counts["users"].old_scheme > 0 and results[2][1] == dump(pg_db.dsn)


def test_an_error_in_a_worker_is_the_same_one_line_error(pg_db: PgServer, dataset: Dataset) -> None:
    load(pg_db.dsn, dataset)
    ring = Keyring(ContextCipher(NEW, 1), (LegacyCipher(OLD, 1),))
    messages = []
    for jobs in (0, 1):
        conn = runner.connect(pg_db.dsn)
        try:
            opts = runner.Options(batch_size=10, hmac_secret=HMAC, jobs=jobs)  # --on-plaintext error
            with pytest.raises(PlaintextError) as err:
                runner.run(conn, runner.inspect(conn, EXAMPLE_SPEC), ring, opts)
        finally:
            conn.close()
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "invalid ciphertext: no prefix" in messages[0]
    assert "encrypt-plaintext" in messages[0] and "primary key" in messages[0]


# ---- the application keeps writing --------------------------------------------------------

USERS = Spec((TableSpec("users", EXAMPLE_SPEC.tables[0].columns),))


def _users(dsn: str, n: int) -> dict[int, tuple[str, str, str]]:
    rng = random.Random(3)
    legacy = LegacyCipher(OLD, 1)
    truth = {}
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("CREATE TABLE users ({})").format(sql.SQL(DDL["users"])))
        with (
            conn.cursor() as cur,
            cur.copy("COPY users (id, email, email_hmac, first_name, last_name) FROM STDIN") as cp,
        ):
            for i in range(1, n + 1):
                email, first, last = f"u{i}@example.org", f"First{i}", f"Last{rng.randrange(10**6)}"
                truth[i] = (email, first, last)
                enc = legacy.encrypt_many("", [email.encode(), first.encode(), last.encode()])
                cp.write_row((i, enc[0], schemes.blind_index(HMAC.reveal(), email.encode()).hex(), enc[1], enc[2]))
    return truth


def _app_write(conn: psycopg.Connection[Any], pk: int, email: str, first: str, last: str, new_scheme: bool) -> None:
    if new_scheme:  # an application already upgraded: writes the new scheme
        c = ContextCipher(NEW, 1)
        vals = [
            c.encrypt_many(f"users.{col}", [v.encode()])[0]
            for col, v in zip(("email", "first_name", "last_name"), (email, first, last), strict=True)
        ]
    else:  # the old application: legacy ciphertexts
        vals = LegacyCipher(OLD, 1).encrypt_many("", [email.encode(), first.encode(), last.encode()])
    conn.execute(
        "UPDATE users SET email = %s, email_hmac = %s, first_name = %s, last_name = %s WHERE id = %s",
        (vals[0], schemes.blind_index(HMAC.reveal(), email.encode()).hex(), vals[1], vals[2], pk),
    )


def _check_truth(dsn: str, truth: dict[int, tuple[str, str, str]], *, all_new: bool) -> None:
    ring = Keyring(ContextCipher(NEW, 1), (LegacyCipher(OLD, 1),))
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, email, email_hmac, first_name, last_name FROM users ORDER BY id").fetchall()
    assert len(rows) == len(truth)
    for pk, email, email_hmac, first, last in rows:
        for col, value, want in zip(("email", "first_name", "last_name"), (email, first, last), truth[pk], strict=True):
            sid = schemes.parse(value)
            assert sid is not None
            if all_new:
                assert sid == schemes.SchemeId("ctx", 1), (pk, col)
            dec = ring.decoder(sid)
            assert dec is not None
            assert dec.decrypt_many(f"users.{col}", [value]) == [want.encode()], (pk, col)
        assert email_hmac == schemes.blind_index(HMAC.reveal(), truth[pk][0].encode()).hex()


class _WritesBetweenReadAndWrite(ContextCipher):
    """The new cipher, plus an application write to each batch's first rows the first time
    a batch is encrypted: exactly the window compare-and-set must cover."""

    def __init__(self, dsn: str, truth: dict[int, tuple[str, str, str]]) -> None:
        super().__init__(NEW, 1)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.truth = truth
        self.hit: set[int] = set()
        self.batch = 0

    def encrypt_many(self, context: str, plaintexts: Sequence[bytes]) -> list[str]:
        if context == "users.email" and len(plaintexts) > 2:  # a first pass, not a redo
            self.batch += 1
            for pk in (self.batch * 25 - 24, self.batch * 25 - 23):  # batch_size 25
                if pk in self.truth and pk not in self.hit:
                    self.hit.add(pk)
                    email = f"changed{pk}@example.org"
                    self.truth[pk] = (email, f"NewFirst{pk}", f"NewLast{pk}")
                    _app_write(self.conn, pk, *self.truth[pk], new_scheme=pk % 2 == 0)
        return super().encrypt_many(context, plaintexts)


def test_writes_between_read_and_write_are_never_overwritten(pg_db: PgServer) -> None:
    truth = _users(pg_db.dsn, 300)
    cipher = _WritesBetweenReadAndWrite(pg_db.dsn, truth)
    opts = runner.Options(apply=True, batch_size=25, hmac_secret=HMAC)
    conn, writer = runner.connect(pg_db.dsn), runner.connect(pg_db.dsn)
    try:
        plans = runner.inspect(conn, USERS)
        (stats,) = runner.run(conn, plans, Keyring(cipher, (LegacyCipher(OLD, 1),)), opts, writer=writer)
    finally:
        conn.close()
        writer.close()
        cipher.conn.close()
    assert stats.counts.conflicts == len(cipher.hit) == 24
    assert stats.counts.scanned == 300
    # rows the app rewrote in the new scheme are "already new", the others were migrated
    assert stats.counts.migrated + stats.counts.already_new == 900
    _check_truth(pg_db.dsn, truth, all_new=True)


def test_a_concurrent_writer_loses_nothing(pg_db: PgServer, tmp_path: Path) -> None:
    truth = _users(pg_db.dsn, 3000)
    stop = threading.Event()
    lock = threading.Lock()
    writes = 0

    def writer() -> None:
        nonlocal writes
        rng = random.Random(11)
        with psycopg.connect(pg_db.dsn, autocommit=True) as conn:
            while not stop.is_set():
                pk = rng.randrange(1, 3001)
                vals = (f"w{writes}-{pk}@example.org", f"WFirst{writes}", f"WLast{writes}")
                with lock:
                    _app_write(conn, pk, *vals, new_scheme=rng.random() < 0.5)
                    truth[pk] = vals
                    writes += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        res = cli(pg_db.dsn, tmp_path, "--tables", "users", "--apply", "--batch-size", "50", "--json")
    finally:
        stop.set()
        thread.join()
    assert res.returncode == 0, res.stderr
    assert writes > 100
    # Every value decrypts to the application's last write; legacy values written after the
    # migrator passed a row are allowed, and a second run takes them.
    _check_truth(pg_db.dsn, truth, all_new=False)
    res = cli(pg_db.dsn, tmp_path, "--tables", "users", "--apply", "--json")
    assert res.returncode == 0
    _check_truth(pg_db.dsn, truth, all_new=True)


# ---- errors before anything runs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("ddl", "column", "message"),
    [
        ("CREATE TABLE t (id int PRIMARY KEY, a text)", "nope.a", "table 'nope' does not exist"),
        ("CREATE TABLE t (id int PRIMARY KEY, a text)", "t.b", "column t.b does not exist"),
        ("CREATE TABLE t (id int, a text)", "t.a", "table 't' has no primary key"),
        ("CREATE TABLE t (x int, y int, a text, PRIMARY KEY (x, y))", "t.a", "composite primary key"),
        ("CREATE TABLE t (id int PRIMARY KEY, a integer)", "t.a", "column t.a is integer, not text"),
        ("CREATE TABLE t (id int PRIMARY KEY, a text, h integer)", "t.a=h", "column t.h is integer"),
    ],
)
def test_spec_errors_before_anything_runs(pg_db: PgServer, tmp_path: Path, ddl: str, column: str, message: str) -> None:
    with psycopg.connect(pg_db.dsn) as conn:
        conn.execute(ddl)
    res = cli(pg_db.dsn, tmp_path, "--column", column, "--apply")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    with psycopg.connect(pg_db.dsn) as conn:
        assert conn.execute("SELECT to_regclass('nixmig_progress')").fetchone() == (None,)


def test_connection_error_is_one_line_without_the_password(tmp_path: Path) -> None:
    dsn = "host=127.0.0.1 port=1 user=u password=pw-SEKRIT dbname=d connect_timeout=2"
    res = cli(dsn, tmp_path, "--no-hmac-check")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect" in lines[0] and "u@127.0.0.1:1/d" in lines[0]
    assert "SEKRIT" not in res.stderr


def test_a_primary_key_of_another_type_goes_through_text_copy(pg_db: PgServer, tmp_path: Path) -> None:
    with psycopg.connect(pg_db.dsn) as conn:
        conn.execute("CREATE TABLE t (id numeric(12, 2) PRIMARY KEY, a text)")
        conn.execute("INSERT INTO t SELECT g / 4.0, 'v' || g FROM generate_series(1, 130) g")
    args = ("--column", "t.a", "--mode", "encrypt-plaintext", "--batch-size", "20", "--apply", "--json")
    res = cli(pg_db.dsn, tmp_path, *args)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["tables"][0]["migrated"] == 130
    c = ContextCipher(NEW, 1)
    with psycopg.connect(pg_db.dsn) as conn:
        for pk, value in conn.execute("SELECT id, a FROM t"):
            assert c.decrypt_many("t.a", [value]) == [f"v{int(pk * 4)}".encode()]


def test_ciphertext_too_long_for_a_varchar(pg_db: PgServer, tmp_path: Path) -> None:
    with psycopg.connect(pg_db.dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, a varchar(10))")
        conn.execute("INSERT INTO t VALUES (1, 'plain')")
    res = cli(pg_db.dsn, tmp_path, "--column", "t.a", "--mode", "encrypt-plaintext", "--apply")
    assert res.returncode == 1
    assert "does not fit in its column" in res.stderr and "TYPE text" in res.stderr


# ---- Vault transit (against a real OpenBao; more in test_vault_openbao.py) ---------------------


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[OpenBao]:
    with OpenBao(tmp_path / "openbao", audit=True) as server:
        server.enable_transit()
        server.create_key("pos-encryption-key")
        server.create_key("pos-encryption-key-ctx", derived=True, convergent=True)
        yield server


def test_vault_provider_end_to_end(pg_db: PgServer, tmp_path: Path, vault: OpenBao) -> None:
    from nixmig.reencrypt.keys import VaultContextCipher, VaultLegacyCipher, VaultSettings, VaultTransit

    transit = VaultTransit(VaultSettings(vault.url, Secret(vault.token)))
    old = VaultLegacyCipher(transit, "pos-encryption-key")
    emails = [f"v{i}@example.org" for i in range(120)]
    enc = old.encrypt_many("", [e.encode() for e in emails])
    # one batch_input request for the lot, not one per value
    assert transit.requests == [120]
    with psycopg.connect(pg_db.dsn) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text, email_hmac text)")
        for i, (e, c) in enumerate(zip(emails, enc, strict=True)):
            conn.execute(
                "INSERT INTO users VALUES (%s, %s, %s)", (i, c, schemes.blind_index(HMAC.reveal(), e.encode()).hex())
            )
    env = {"VAULT_ADDR": vault.url, "VAULT_TOKEN": vault.token}
    args = ["--column", "users.email=email_hmac", "--batch-size", "50", "--apply", "--json"]
    argv = [
        sys.executable,
        "-m",
        "nixmig",
        "reencrypt",
        "--old-key",
        "vault",
        "--new-key",
        "vault:pos-encryption-key-ctx",
    ]
    full_env = dict(os.environ, DATABASE_URL=pg_db.dsn, ENCRYPTION_HMAC_SECRET=HMAC.reveal_str(), **env)
    res = subprocess.run([*argv, *args], env=full_env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    (users,) = json.loads(res.stdout)["tables"]
    assert users["migrated"] == 120
    assert vault.token not in res.stdout + res.stderr
    # one batch_input request per batch and column, not one per value (OpenBao's audit log)
    batched = vault.batch_sizes("decrypt")
    assert batched and max(batched) == 50
    new = VaultContextCipher(transit, "pos-encryption-key-ctx")
    with psycopg.connect(pg_db.dsn) as conn:
        stored = [r[0] for r in conn.execute("SELECT email FROM users ORDER BY id")]
    assert all(s.startswith("vctx:v1:") for s in stored)
    assert new.decrypt_many("users.email", stored) == [e.encode() for e in emails]

    # Rotating the Vault key: the next run moves vctx:v1 to vctx:v2.
    vault.rotate("pos-encryption-key-ctx")
    res = subprocess.run([*argv, *args], env=full_env, capture_output=True, text=True, timeout=120, check=False)
    assert json.loads(res.stdout)["tables"][0]["migrated"] == 120
