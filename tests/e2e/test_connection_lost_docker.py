"""`nixmig apply` on the twenty stack (real sshd, dockerd, the app writing every ~10 ms)
when its SSH connection is cut in the middle of a phase: sshd's processes for that
connection are SIGKILLed. The run ends within seconds with one line saying what ran,
that the connection to newton was lost and that apply resumes; the journal marks the
phase failed; the next apply finishes verified, and every acknowledged write is there.

Run under the e2e lock: flock /tmp/nixmig-e2e.lock .venv/bin/pytest -q tests/e2e/test_connection_lost_docker.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from nixmig.db.writer import Writer
from tests.e2e import ssh_cut
from tests.e2e import twenty_stack as ts
from tests.e2e.test_migrate_docker import Stack, app, assert_rotated, site, stack, stop_and_count
from tests.e2e.test_restore_test_docker import sessions

__all__ = ["app", "site", "stack"]  # fixtures shared with test_migrate_docker


def steps(site: ts.Site) -> dict[str, dict[str, Any]]:
    return {s["phase"]: s for s in json.loads(site.journal.read_text())["steps"]}


def apply_and_cut(stack: Stack, site: ts.Site, when: Callable[[], bool]) -> tuple[int, str, float]:
    """apply; once ``when()`` holds, cut each of its SSH connections. (exit code, stderr,
    seconds from the cut to the end of the run)."""
    argv = ["apply", "--yes", "-i", str(site.keys.admin_key), "-c", str(site.config)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nixmig", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    try:
        while not when():
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
        return proc.returncode, err, time.monotonic() - cut_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cut_during_the_backup_then_apply_resumes(stack: Stack, site: ts.Site, app: Writer) -> None:
    ts.grow(site.db, 60)  # a dump long enough to be cut in (the module's container keeps the rows)
    code, err, secs = apply_and_cut(stack, site, lambda: any(s.startswith("pg_dump ") for s in sessions(site)))
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
