"""`nixmig apply` on the twenty stack (real sshd, dockerd, the app writing every ~10 ms)
when its SSH connection is cut in the middle of a phase: sshd's processes for that
connection are SIGKILLed. The run ends within seconds with one line saying what ran,
that the connection to newton was lost and that apply resumes; the journal marks the
phase failed; the next apply finishes verified, and every acknowledged write is there.

Run under the e2e lock: flock /tmp/nixmig-e2e.lock .venv/bin/pytest -q tests/e2e/test_connection_lost_docker.py
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg  # noqa: TID251  (test harness, not product code)
import pytest

from nixmig.db.writer import Writer
from nixmig.reencrypt import schemes
from nixmig.reencrypt.schemes import LegacyCipher
from nixmig.secrets import age
from nixmig.secrets import recipients as rcp
from nixmig.sensitive import Secret
from tests.e2e import ssh_cut
from tests.e2e import twenty_stack as ts
from tests.e2e.test_migrate_docker import Stack, app, assert_rotated, site, stack, stop_and_count
from tests.e2e.test_restore_test_docker import sessions
from tests.integration import test_reencrypt_phase as rp

__all__ = ["app", "site", "stack"]  # fixtures shared with test_migrate_docker


def steps(site: ts.Site) -> dict[str, dict[str, Any]]:
    return {s["phase"]: s for s in json.loads(site.journal.read_text())["steps"]}


def state_of(site: ts.Site, phase: str) -> str | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return steps(site)[phase]["state"]  # type: ignore[no-any-return]
    return None


def deploying(pid: int, phase: str) -> bool:
    """Whether a child of ``pid`` runs the deploy command for ``phase`` (NIXMIG_PHASE in its environment)."""
    for child in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{child}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
                continue
            if f"NIXMIG_PHASE={phase}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
                return True
    return False


def apply_and_cut(
    stack: Stack, site: ts.Site, when: Callable[[int], bool], env: dict[str, str] | None = None
) -> tuple[int, str, float]:
    """apply; once ``when(its pid)`` holds, cut each of its SSH connections. (exit code,
    stderr, seconds from the cut to the end of the run)."""
    argv = ["apply", "--yes", "-i", str(site.keys.admin_key), "-c", str(site.config)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nixmig", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 300
    try:
        while not when(proc.pid):
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"apply ended first: {out}{err}")
            assert time.monotonic() < deadline, "timed out waiting for the moment to cut"
            time.sleep(0.05)
        ports = ssh_cut.client_ports(proc.pid, stack.ssh.port)
        assert ports, "apply holds no SSH connection"
        cut_at = time.monotonic()
        for port in ports:
            assert ssh_cut.cut(stack.ssh.port, port), f"no sshd process holds the connection from port {port}"
        _, err = proc.communicate(timeout=120)  # before the fix: 6 hours at 100 % of a CPU
        secs = time.monotonic() - cut_at
        print(f"cut -> end of the run: {secs:.1f}s; {err.strip()}")  # measured, shown with -s
        return proc.returncode, err, secs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cut_during_the_backup_then_apply_resumes(stack: Stack, site: ts.Site, app: Writer) -> None:
    ts.grow(site.db, 60)  # a dump long enough to be cut in (the module's container keeps the rows)
    code, err, secs = apply_and_cut(stack, site, lambda _: any(s.startswith("pg_dump ") for s in sessions(site)))
    assert code == 1, err
    assert secs < 15, f"the run took {secs:.1f}s to notice"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nixmig: error: "), err
    assert "the connection to newton was lost" in lines[0] and "pg_dump" in lines[0]
    assert "`nixmig apply` resumes" in lines[0] and "Traceback" not in err
    state = steps(site)
    assert state["backup"]["state"] == "failed" and "the connection to newton was lost" in state["backup"]["error"]
    assert "stage" not in state or state["stage"]["state"] == "pending"
    assert not site.agenix_file.exists()
    ts.wait_until(lambda: sessions(site) == [], timeout=60)  # the cut dump's session ends

    again = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key))
    assert again.returncode == 0, again.stdout + again.stderr
    assert [s["state"] for s in steps(site).values()] == ["done"] * 7
    verify = steps(site)["verify"]["data"]["checks"]
    assert all(c["ok"] for c in verify), verify
    assert_rotated(site)
    acked, found = stop_and_count(site, app)
    assert acked > 50 and found == acked


def assert_resumes(site: ts.Site, app: Writer, env: dict[str, str] | None = None, phases: int = 7) -> None:
    again = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key), env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [s["state"] for s in steps(site).values()] == ["done"] * phases
    verify = steps(site)["verify"]["data"]["checks"]
    assert all(c["ok"] for c in verify), verify
    assert_rotated(site)
    assert site.app_url() == site.db.url(site.password.reveal_str())
    acked, found = stop_and_count(site, app)
    assert acked > 50 and found == acked


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nixmig: error: "), err
    assert "the connection to newton was lost" in lines[0] and "`nixmig apply` resumes" in lines[0]
    return lines[0]


# the deploy runs here (deploy-rs style) while nixmig's connection is cut: the phase's next
# command on the host finds it dead (stage compares digests there after its deploy; switch marks
# the server log there after its deploy, for verify: abe4131), so the phase itself stops
@pytest.mark.parametrize(("phase", "stops"), [("stage", "stage"), ("switch", "switch")])
def test_cut_during_a_deploy_then_apply_resumes(
    stack: Stack, site: ts.Site, app: Writer, phase: str, stops: str
) -> None:
    deploy = site.config.read_text().split('\ndeploy = "', 1)[1].split('"', 1)[0]
    slow = 'sh -c \'sleep 2; exec \\"$0\\" \\"$@\\"\' ' + deploy  # 2 s to cut the connection in
    site.edit_config(f'deploy = "{deploy}"', f'deploy = "{slow}"')
    code, err, secs = apply_and_cut(stack, site, lambda pid: deploying(pid, phase))
    assert code == 1, err
    assert secs < 15, f"the run took {secs:.1f}s to stop"
    line = one_line(err)
    state = steps(site)
    assert state[stops]["state"] == "failed" and "the connection to newton was lost" in state[stops]["error"], line
    assert all(state[p]["state"] == "done" for p in ts.PHASES[: ts.PHASES.index(stops)])
    assert_resumes(site, app)


def test_cut_during_rotate_then_apply_resumes(stack: Stack, site: ts.Site, app: Writer) -> None:
    # rotate's ALTER ROLE waits for a transaction of this test that altered the role (to what it
    # was) and has not ended: the cut lands in rotate, at its ALTER ROLE, however fast rotate's
    # round trips are (~0.05 s since its psql go to the container's shell: a 50 ms poll of the
    # journal alone often cut in switch). The ALTER goes on once the lock is gone (the psql in the
    # container outlives the cut), and the resumed run finds it done or does it.
    url = site.db.url(ts.OLD_PASSWORD)
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as look:
        holder.execute(f"ALTER ROLE {ts.ROLE} CONNECTION LIMIT -1")  # its row stays locked until the rollback

        def altering(_pid: int) -> bool:
            if state_of(site, "rotate") != "running":
                return False
            row = look.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted")
            return int((row.fetchone() or (0,))[0]) > 0

        try:
            code, err, secs = apply_and_cut(stack, site, altering)
        finally:
            holder.rollback()
    assert code == 1, err
    assert secs < 15, f"the run took {secs:.1f}s to stop"
    line = one_line(err)
    state = steps(site)
    assert state["rotate"]["state"] == "failed", line
    assert "switch" not in state or state["switch"]["state"] == "pending"
    assert site.app_url() == site.db.url(ts.OLD_PASSWORD)  # the services still run the old config
    assert_resumes(site, app)


def seed_reencrypt(site: ts.Site, users: int) -> rp.Truth:
    """tests/integration/test_reencrypt_phase's tables, keys and spec, in twenty-db-1 and the site's repo."""
    legacy = LegacyCipher(rp.OLD_KEY, 1)
    truth: rp.Truth = {"users": {}, "sessions": {}}
    with psycopg.connect(site.db.url(ts.OLD_PASSWORD)) as conn:
        conn.execute("DROP TABLE IF EXISTS users, sessions, nixmig_progress")
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text, email_hmac text, first_name text)")
        conn.execute("CREATE TABLE sessions (id uuid PRIMARY KEY, session_id text, session_id_hmac bytea)")
        with conn.cursor() as cur, cur.copy("COPY users FROM STDIN") as cp:
            for i in range(1, users + 1):
                email, first = f"user{i}@example.org", f"First{i}-ü"
                truth["users"][str(i)] = (email, first)
                enc = legacy.encrypt_many("", [email.encode(), first.encode()])
                cp.write_row((i, enc[0], schemes.blind_index(rp.HMAC.encode(), email.encode()).hex(), enc[1]))
        with conn.cursor() as cur, cur.copy("COPY sessions FROM STDIN") as cp:
            for i in range(50):
                pk, sid = uuid.UUID(int=i * 7919 + 1), f"sess-{i:06d}"
                truth["sessions"][str(pk)] = (sid,)
                sealed = legacy.encrypt_many("", [sid.encode()])[0]
                cp.write_row((pk, sealed, schemes.blind_index(rp.HMAC.encode(), sid.encode())))
    keys = site.repo / "keys"
    keys.mkdir()
    (keys / "old.key").write_text(base64.b64encode(rp.OLD_KEY.reveal()).decode() + "\n")
    sealed_key = age.encrypt(Secret(base64.b64encode(rp.NEW_KEY.reveal())), [rcp.parse(site.keys.admin_pub)])
    (site.repo / "secrets" / "pos-key-v2.age").write_bytes(sealed_key)
    site.config.write_text(site.config.read_text() + rp.SPEC + "\n" + rp._settings(batch_size=20, pause=0.05))
    return truth


def reencrypted(site: ts.Site) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(site.db.url(site.password.reveal_str())) as conn:
        return {
            "users": conn.execute("SELECT id, email, email_hmac, first_name FROM users ORDER BY id").fetchall(),
            "sessions": conn.execute("SELECT id, session_id, session_id_hmac FROM sessions ORDER BY id").fetchall(),
        }


def test_cut_during_the_reencrypt_batches_then_apply_resumes(stack: Stack, site: ts.Site, app: Writer) -> None:
    truth = seed_reencrypt(site, users=2000)
    env = {"ENCRYPTION_HMAC_SECRET": rp.HMAC}

    def past_200(_: int) -> bool:
        if state_of(site, "reencrypt") != "running":
            return False
        if site.db.psql("SELECT to_regclass('nixmig_progress') IS NOT NULL;").strip() != "t":
            return False
        sql = "SELECT count(*) FROM nixmig_progress WHERE table_name = 'users' AND NOT done AND last_pk::bigint >= 200;"
        return site.db.psql(sql).strip() != "0"

    try:
        code, err, secs = apply_and_cut(stack, site, past_200, env=env)
        assert code == 1, err
        assert secs < 15, f"the run took {secs:.1f}s to stop"
        line = one_line(err)
        assert steps(site)["reencrypt"]["state"] == "failed", line
        partly = reencrypted(site)["users"]
        assert any(r[1].startswith("ctx:v1:") for r in partly) and any(r[1].startswith("enc:v1:") for r in partly)
        assert_resumes(site, app, env=env, phases=9)
        assert reencrypted(site) == rp._expect_new(truth)
    finally:
        site.db.psql("DROP TABLE IF EXISTS users, sessions, nixmig_progress;")
