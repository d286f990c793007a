"""The migration engine's optional reencrypt phase on a local target: a real PostgreSQL cluster,
the local transport (its forward connects directly), the new password after rotate. Keys: a key
file for the old key, an agenix .age file (decrypted with the operator identity given to apply)
for the new one, the HMAC secret from the environment. SIGKILL after the phase and during its
batches, then resume; rollback re-encrypts back to the legacy scheme."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg  # noqa: TID251  (tests drive a real database)
import pytest

from nixmig.demo import OLD_PASSWORD, SECRET, Target
from nixmig.reencrypt import schemes
from nixmig.reencrypt.schemes import ContextCipher, LegacyCipher
from nixmig.secrets import age
from nixmig.secrets import recipients as rcp
from nixmig.sensitive import Secret
from tests.integration.test_migrate_local import journal, role_matches, target

pytestmark = pytest.mark.integration

__all__ = ["target"]  # the fixture, from the engine's own integration tests

NEW_PASSWORD = "n3w/pa+ss=w@rd:%?-long-enough"  # what the target fixture encrypts as the secret
OLD_KEY = Secret(os.urandom(32))
NEW_KEY = Secret(os.urandom(32))
HMAC = "test-only-hmac-secret"
USERS = 700
SESSIONS = 130
PHASES = ["preflight", "reencrypt-check", "backup", "stage", "rotate", "switch", "verify", "reencrypt", "cleanup"]

SPEC = """
[reencrypt.tables.users]
columns = ["email", "first_name"]
hmac = { email = "email_hmac" }

[reencrypt.tables.sessions]
columns = ["session_id"]
hmac = { session_id = "session_id_hmac" }
"""


def _settings(**extra: Any) -> str:
    values: dict[str, Any] = {
        "tables": "all",
        "old_key": "file:keys/old.key",
        "new_key": "secrets/pos-key-v2.age",
        "batch_size": 40,
        **extra,
    }
    return f"[migrations.{SECRET}.reencrypt]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


Truth = dict[str, dict[str, tuple[Any, ...]]]


def _seed(t: Target) -> Truth:
    """Tables with legacy ciphertexts (some already new, some NULL), blind indexes, keys in the repo."""
    legacy, new = LegacyCipher(OLD_KEY, 1), ContextCipher(NEW_KEY, 1)
    truth: Truth = {"users": {}, "sessions": {}}
    with psycopg.connect(host=str(t.socket_dir), port=t.port, user="postgres", dbname="default") as conn:
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text, email_hmac text, first_name text)")
        conn.execute("CREATE TABLE sessions (id uuid PRIMARY KEY, session_id text, session_id_hmac bytea)")
        with conn.cursor() as cur, cur.copy("COPY users FROM STDIN") as cp:
            for i in range(1, USERS + 1):
                email, first = f"user{i}@example.org", (None if i % 17 == 0 else f"First{i}-ü")
                truth["users"][str(i)] = (email, first)
                enc: list[str | None]
                if i % 11 == 0:  # written by an application already upgraded
                    enc = [new.encrypt_many("users.email", [email.encode()])[0]]
                    enc.append(new.encrypt_many("users.first_name", [first.encode()])[0] if first else None)
                else:
                    enc = [legacy.encrypt_many("", [email.encode()])[0]]
                    enc.append(legacy.encrypt_many("", [first.encode()])[0] if first else None)
                cp.write_row((i, enc[0], schemes.blind_index(HMAC.encode(), email.encode()).hex(), enc[1]))
        with conn.cursor() as cur, cur.copy("COPY sessions FROM STDIN") as cp:
            for i in range(SESSIONS):
                pk, sid = uuid.UUID(int=i * 7919 + 1), f"sess-{i:06d}"
                truth["sessions"][str(pk)] = (sid,)
                sealed = legacy.encrypt_many("", [sid.encode()])[0]
                cp.write_row((pk, sealed, schemes.blind_index(HMAC.encode(), sid.encode())))
    keys = t.repo / "keys"
    keys.mkdir()
    (keys / "old.key").write_text(base64.b64encode(OLD_KEY.reveal()).decode() + "\n")
    admin = rcp.parse(" ".join(t.admin_key.with_suffix(".pub").read_text().split()[:2]))
    agenix_file = age.encrypt(Secret(base64.b64encode(NEW_KEY.reveal())), [admin])
    (t.repo / "secrets" / "pos-key-v2.age").write_bytes(agenix_file)
    return truth


def _configure(t: Target, **extra: Any) -> None:
    cfg = t.repo / "nixmig.toml"
    cfg.write_text(cfg.read_text() + SPEC + "\n" + _settings(**extra))


def _run(t: Target, *args: str, popen: bool = False, env: dict[str, str] | None = None) -> Any:
    argv = [sys.executable, "-m", "nixmig", *args, "-c", str(t.repo / "nixmig.toml")]
    env = {**os.environ, "ENCRYPTION_HMAC_SECRET": HMAC, **(env or {})}
    if popen:
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)


def _dump(t: Target) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(host=str(t.socket_dir), port=t.port, user="postgres", dbname="default") as conn:
        return {
            "users": conn.execute("SELECT id, email, email_hmac, first_name FROM users ORDER BY id").fetchall(),
            "sessions": conn.execute("SELECT id, session_id, session_id_hmac FROM sessions ORDER BY id").fetchall(),
        }


def _expect_new(truth: Truth) -> dict[str, list[tuple[Any, ...]]]:
    """The uninterrupted run's end state: AES-SIV is deterministic, so it is known exactly."""
    c = ContextCipher(NEW_KEY, 1)
    users = []
    for pk in sorted(truth["users"], key=int):
        email, first = truth["users"][pk]
        users.append(
            (
                int(pk),
                c.encrypt_many("users.email", [email.encode()])[0],
                schemes.blind_index(HMAC.encode(), email.encode()).hex(),
                c.encrypt_many("users.first_name", [first.encode()])[0] if first else None,
            )
        )
    sessions = []
    for pk in sorted(truth["sessions"], key=uuid.UUID):
        (sid,) = truth["sessions"][pk]
        sessions.append(
            (
                uuid.UUID(pk),
                c.encrypt_many("sessions.session_id", [sid.encode()])[0],
                schemes.blind_index(HMAC.encode(), sid.encode()),
            )
        )
    return {"users": users, "sessions": sessions}


def _assert_legacy(t: Target, truth: Truth) -> None:
    old = LegacyCipher(OLD_KEY, 1)
    after = _dump(t)
    for pk, email, _, first in after["users"]:
        assert email.startswith("enc:v1:") and old.decrypt_many("", [email]) == [truth["users"][str(pk)][0].encode()]
        want = truth["users"][str(pk)][1]
        assert (first is None) if want is None else old.decrypt_many("", [first]) == [want.encode()]
    for pk, sid, _ in after["sessions"]:
        assert old.decrypt_many("", [sid]) == [truth["sessions"][str(pk)][0].encode()]


def _states(t: Target) -> dict[str, str]:
    return {s["phase"]: s["state"] for s in journal(t)["steps"]}  # type: ignore[attr-defined]


def test_plan_apply_status_rollback(target: Target) -> None:
    truth = _seed(target)
    _configure(target)
    plan = _run(target, "plan", "--json")
    assert plan.returncode == 0, plan.stderr
    steps = json.loads(plan.stdout)
    assert [s["phase"] for s in steps] == PHASES
    text = json.dumps(steps)
    assert "public.users: re-encrypt email (blind index email_hmac), first_name" in text
    assert "batches of 40 rows" in text and "file:keys/old.key" in text and "secrets/pos-key-v2.age" in text
    for secret in (base64.b64encode(OLD_KEY.reveal()).decode(), base64.b64encode(NEW_KEY.reveal()).decode(), HMAC):
        assert secret not in plan.stdout + plan.stderr

    run = _run(target, "apply", "--yes", "-i", str(target.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    assert _dump(target) == _expect_new(truth)
    assert role_matches(target, NEW_PASSWORD)
    out = run.stdout + run.stderr
    assert "users: re-encrypting 700 rows" in out and "keep the old key (file:keys/old.key)" in out
    for secret in (base64.b64encode(OLD_KEY.reveal()).decode(), base64.b64encode(NEW_KEY.reveal()).decode(), HMAC):
        assert secret not in out and secret not in json.dumps(journal(target))
    data = next(s for s in journal(target)["steps"] if s["phase"] == "reencrypt")["data"]  # type: ignore[attr-defined]
    upgraded = {i for i in range(1, USERS + 1) if i % 11 == 0}  # written new: both columns unless NULL
    nulls = {i for i in range(1, USERS + 1) if i % 17 == 0}
    users = data["tables"]["users"]
    assert users["migrated"] == 2 * (USERS - len(upgraded)) - len(nulls - upgraded)
    assert users["already_new"] == 2 * len(upgraded) - len(nulls & upgraded)
    assert data["tables"]["sessions"]["migrated"] == SESSIONS and data["scheme"] == "ctx:v1"
    status = json.loads(_run(target, "status", "--json").stdout)
    assert [p["phase"] for p in status["phases"]] == PHASES and all(p["state"] == "done" for p in status["phases"])

    again = _run(target, "apply", "--yes", "-i", str(target.admin_key))
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == len(PHASES)

    back = _run(target, "rollback", "--yes", "-i", str(target.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    _assert_legacy(target, truth)  # every value, the already-new ones too, readable by the old application
    assert role_matches(target, OLD_PASSWORD)


def test_sigkill_after_the_phase_then_resume(target: Target) -> None:
    truth = _seed(target)
    _configure(target)
    env = {"NIXMIG_TEST_SIGKILL_AFTER": "reencrypt"}
    killed = _run(target, "apply", "--yes", "-i", str(target.admin_key), env=env)
    assert killed.returncode == -9
    assert _states(target)["reencrypt"] == "done" and "cleanup" not in _states(target)
    resumed = _run(target, "apply", "--yes", "-i", str(target.admin_key))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "reencrypt: done before, skipped" in resumed.stdout.replace("[8/9] ", "")
    assert _dump(target) == _expect_new(truth)


def test_sigkill_during_the_batches_resumes_to_the_uninterrupted_end_state(target: Target) -> None:
    truth = _seed(target)
    _configure(target, pause=0.02, batch_size=20)
    proc = _run(target, "apply", "--yes", "-i", str(target.admin_key), popen=True)
    deadline = time.monotonic() + 120
    seen = False
    # over the unix socket (trust): a password attempt would be a login failure that verify rightly reports
    with psycopg.connect(host=str(target.socket_dir), port=target.port, user="postgres", dbname="default") as conn:
        conn.autocommit = True
        while time.monotonic() < deadline and proc.poll() is None and not seen:
            if conn.execute("SELECT to_regclass('nixmig_progress')").fetchone() != (None,):
                row = conn.execute(
                    "SELECT count(*) FROM nixmig_progress WHERE table_name = 'users' AND NOT done"
                    " AND last_pk::bigint >= 200"
                ).fetchone()
                seen = bool(row and row[0])
            time.sleep(0.01)
    assert seen, "the phase never got past its first batches: " + (proc.communicate()[1] if proc.poll() else "")
    children = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _states(target)["reencrypt"] == "running"
    _wait_gone(children)
    partly = _dump(target)["users"]
    assert any(r[1].startswith("ctx:v1:") for r in partly) and any(r[1].startswith("enc:v1:") for r in partly)

    resumed = _run(target, "apply", "--yes", "-i", str(target.admin_key))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "users: re-encrypting 700 rows, resuming after" in resumed.stdout
    assert _dump(target) == _expect_new(truth)
    assert all(s == "done" for s in _states(target).values())


def test_wrong_spec_or_missing_identity_stops_before_the_backup(target: Target) -> None:
    _seed(target)
    cfg = target.repo / "nixmig.toml"
    base = cfg.read_text()
    cfg.write_text(base + SPEC.replace('"first_name"', '"nickname"') + "\n" + _settings())
    r = _run(target, "apply", "--yes", "-i", str(target.admin_key))
    assert r.returncode == 1
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .endswith("column users.nickname does not exist — columns of users: id, email, email_hmac, first_name")
    ), r.stderr
    assert _states(target) == {"preflight": "done", "reencrypt-check": "failed"}
    assert role_matches(target, OLD_PASSWORD) and not list((target.repo / ".nixmig").rglob("*.age"))

    cfg.write_text(base + SPEC + "\n" + _settings())
    r = _run(target, "apply", "--yes")  # no -i: the .age new key cannot be read
    assert r.returncode == 1 and "needs an identity" in r.stderr and "--identity" in r.stderr
    assert _states(target)["reencrypt-check"] == "failed" and role_matches(target, OLD_PASSWORD)

    cfg.write_text(base + SPEC + "\n" + _settings().replace('tables = "all"', 'tables = ["users", "nope"]'))
    r = _run(target, "plan")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "migrations.twenty-db-password.reencrypt.tables: table 'nope' is not in the spec" in r.stderr


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _wait_gone(pids: list[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and _zombie(p) is False]
        time.sleep(0.05)
    assert not alive, f"processes left behind: {alive}"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_plaintext_stops_the_phase_then_the_fixed_config_resumes(target: Target) -> None:
    truth = _seed(target)
    with psycopg.connect(host=str(target.socket_dir), port=target.port, user="postgres", dbname="default") as conn:
        conn.execute("UPDATE users SET first_name = 'Plain' WHERE id = 333")  # never encrypted
    truth["users"]["333"] = (truth["users"]["333"][0], "Plain")
    _configure(target)
    r = _run(target, "apply", "--yes", "-i", str(target.admin_key))
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "invalid ciphertext: no prefix" in line and "users.first_name, primary key 333" in line
    assert 'mode = "encrypt-plaintext"' in line and "Plain" not in r.stdout + r.stderr
    assert _states(target)["reencrypt"] == "failed" and role_matches(target, NEW_PASSWORD)

    cfg = target.repo / "nixmig.toml"
    cfg.write_text(cfg.read_text() + 'on_plaintext = "encrypt"\n')
    r = _run(target, "apply", "--yes", "-i", str(target.admin_key))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _dump(target) == _expect_new(truth)
