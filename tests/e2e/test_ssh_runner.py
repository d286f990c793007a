"""The ssh transport's runner (nixmig.remote.runner) on a real sshd: short commands share
one session; a timed-out command, a second thread and a host that cannot run the loop
each still get a right answer."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest

from nixmig.remote import runner
from nixmig.remote.base import TRACE_ENV, TransportError
from nixmig.remote.ssh import SshTransport
from tests.e2e.test_transport_ssh import host_for
from tests.harness.sshd import SshServer


def kinds(trace: Path) -> list[str]:
    return [json.loads(line)["kind"] for line in trace.read_text().splitlines()]


def test_short_commands_share_one_session(sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "trace"
    monkeypatch.setenv(TRACE_ENV, str(trace))
    t = SshTransport.connect(host_for(sshd))
    try:
        sessions = set()  # sshd starts each session's processes in a process session of its own
        for i in range(20):
            data = bytes([i]) * i if i % 2 else None
            r = t.run(["sh", "-c", 'cat; echo " $(ps -o sid= -p $$ | tr -d " ")"'], stdin=data)
            body, _, sid = r.stdout.rpartition(b" ")
            assert body == (data or b"")
            sessions.add(sid.strip())
        assert kinds(trace).count("runner") == 1 and kinds(trace).count("run") == 20
        assert len(sessions) == 1
        assert t.stream(["sh", "-c", "ps -o sid= -p $$"]).stdout.strip() not in sessions  # a stream has its own
    finally:
        t.close()


def test_a_timed_out_command_leaves_the_next_one_a_fresh_runner(sshd: SshServer) -> None:
    t = SshTransport.connect(host_for(sshd))
    try:
        assert t.run(["echo", "one"]).stdout == b"one\n"
        with pytest.raises(TransportError, match="timed out after 1s"):
            t.run(["sh", "-c", "echo partial; sleep 30"], timeout=1)
        assert t.run(["echo", "two"]).stdout == b"two\n"  # not the partial output of the one before
        assert t.run(["cat"], stdin=b"three").stdout == b"three"
    finally:
        t.close()


def test_a_second_thread_gets_a_session_of_its_own(sshd: SshServer) -> None:
    t = SshTransport.connect(host_for(sshd))
    try:
        t.run(["true"])  # the runner is up
        slow: list[bytes] = []
        started = threading.Event()

        def busy() -> None:
            started.set()
            slow.append(t.run(["sh", "-c", "sleep 1; echo slow"]).stdout)

        th = threading.Thread(target=busy)
        th.start()
        started.wait()
        assert t.run(["echo", "fast"]).stdout == b"fast\n"
        th.join(timeout=30)
        assert slow == [b"slow\n"]
    finally:
        t.close()


def test_a_host_that_cannot_run_the_loop_gets_a_session_per_command(
    sshd: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCRIPT", "exit 97")  # as a host without sh's `read` or GNU head would end
    t = SshTransport.connect(host_for(sshd))
    try:
        assert t.run(["cat"], stdin=b"still works").stdout == b"still works"
        assert t.run(["sh", "-c", "exit 5"], check=False).exit_code == 5
        assert t._runner_failed and t._runner is None
    finally:
        t.close()


def test_streams_and_held_processes_take_the_session_started_ahead(sshd: SshServer, tmp_path: Path) -> None:
    t = SshTransport.connect(host_for(sshd))
    try:
        for i in range(3):
            deadline = time.monotonic() + 10  # started from a thread (connect's, then the last use's)
            while t._spare is None and time.monotonic() < deadline:
                time.sleep(0.01)
            ahead = t._spare
            assert ahead is not None
            sink = io.BytesIO()
            r = t.stream(
                ["sh", "-c", 'cat; echo "$0" >&2; exit 3', f"arg {i}"],
                stdin=io.BytesIO(b"in"),
                stdout=sink,
                check=False,
            )
            assert (r.exit_code, sink.getvalue(), r.stderr) == (3, b"in", f"arg {i}\n".encode())
            assert t._spare is not ahead  # it was used; another one is being started
        held = t.hold(["sh", "-c", f"echo up; exec cat > {tmp_path / 'out'}"])
        assert held.first_line == "up"
        held.close()
    finally:
        t.close()


def test_connect_does_not_wait_for_the_spare_session(sshd: SshServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # its open and exec are two round trips to sshd (~40 ms of each apply's start): a thread's
    release, started = threading.Event(), threading.Event()
    real = SshTransport._start_spare

    def held_back(self: SshTransport) -> None:
        started.set()
        release.wait(10)
        real(self)

    monkeypatch.setattr(SshTransport, "_start_spare", held_back)
    t = SshTransport.connect(host_for(sshd))  # returns while the spare is held back
    try:
        assert started.wait(10) and t._spare is None
        assert t.run(["echo", "runs"]).stdout == b"runs\n"
        release.set()
        deadline = time.monotonic() + 10
        while t._spare is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t._spare is not None
        assert t.hold(["sh", "-c", "echo up; exec cat >/dev/null"]).first_line == "up"
    finally:
        release.set()
        t.close()


def test_a_spare_that_says_anything_else_is_not_used(sshd: SshServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "SPARE", "echo motd; " + runner.SPARE)  # a chatty login shell
    t = SshTransport.connect(host_for(sshd))
    try:
        assert t.stream(["echo", "clean"]).stdout == b"clean\n"
    finally:
        t.close()
