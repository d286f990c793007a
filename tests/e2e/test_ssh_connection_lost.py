"""A connection lost in the middle of a command, on a real sshd: the command ends at once
with ConnectionLost (what ran, that the connection to the host was lost, that apply
resumes), whether sshd's session processes are killed, the link goes silent (keepalives
unanswered) or the session closes without an exit status; and waiting for an exit status
is not a busy loop."""

from __future__ import annotations

import io
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from nixmig.remote.base import CommandFailed, ConnectionLost, Result
from nixmig.remote.ssh import SshTransport
from tests.e2e import ssh_cut
from tests.e2e.test_transport_ssh import host_for
from tests.harness.sshd import SshServer, known_hosts_line


class Background:
    """``t.stream(argv)`` in a thread: what it returned or raised, and when."""

    def __init__(self, t: SshTransport, argv: list[str], **kwargs: object) -> None:
        self.sink = io.BytesIO()
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.ended: float | None = None

        def run() -> None:
            try:
                self.result = t.stream(argv, stdout=self.sink, **kwargs)  # type: ignore[arg-type]
            except BaseException as exc:
                self.error = exc
            self.ended = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait_output(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.sink.getvalue():
            assert time.monotonic() < deadline and self.thread.is_alive(), "the command printed nothing"
            time.sleep(0.05)


def client_port(t: SshTransport) -> int:
    transport = t._client.get_transport()
    assert transport is not None
    return int(transport.sock.getsockname()[1])  # type: ignore[union-attr]


def test_killing_the_session_ends_a_streamed_command_within_seconds(sshd: SshServer) -> None:
    t = SshTransport.connect(host_for(sshd), label="newton")
    try:
        script = "while :; do echo tick; sleep 0.2; done"
        run = Background(t, ["sh", "-c", script], timeout=6 * 3600)
        run.wait_output()
        cpu = time.process_time()
        cut_at = time.monotonic()
        assert ssh_cut.cut(sshd.port, client_port(t)), "no sshd process holds that connection"
        run.thread.join(timeout=30)
        assert not run.thread.is_alive(), "the command still waits on a dead connection"
        assert run.ended is not None and run.ended - cut_at < 5
        assert time.process_time() - cpu < 2  # no spinning meanwhile
        assert isinstance(run.error, ConnectionLost), run.error
        line = run.error.line()
        assert "\n" not in line and script in line
        assert "the connection to newton was lost" in line and "`nixmig apply` resumes" in line
        assert line.startswith(f"newton ({sshd.user}@{sshd.host}:{sshd.port}): ")
        # the next command says so too, at once
        with pytest.raises(ConnectionLost, match="the connection to newton was lost"):
            t.run(["true"])
    finally:
        t.close()


def test_unanswered_keepalives_end_a_silent_command(sshd: SshServer, tmp_path: Path) -> None:
    link = ssh_cut.Partition((sshd.host, sshd.port))
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(sshd.host, link.port, sshd.host_public_key) + "\n")
    host = replace(host_for(sshd), port=link.port, known_hosts=str(known))
    t = SshTransport.connect(host, label="newton", keepalive=1.0, keepalive_count=3)
    try:
        # a live link: a command silent for longer than 3 keepalives is not cut (sshd answers them)
        started = time.monotonic()
        assert t.run(["sh", "-c", "sleep 5; echo done"]).stdout == b"done\n"
        assert time.monotonic() - started >= 5
        run = Background(t, ["sh", "-c", "echo started; sleep 600"], timeout=6 * 3600)
        run.wait_output()
        link.freeze()  # no FIN, no RST: only silence
        frozen_at = time.monotonic()
        run.thread.join(timeout=30)
        assert not run.thread.is_alive(), "the command still waits on a silent connection"
        assert run.ended is not None and run.ended - frozen_at < 8  # 3 keepalives of 1s, and some
        assert isinstance(run.error, ConnectionLost), run.error
        assert "the connection to newton was lost (no answer from it for " in run.error.line()
    finally:
        t.close()
        link.close()


def test_a_session_closed_without_an_exit_status(sshd: SshServer) -> None:
    t = SshTransport.connect(host_for(sshd), label="newton")
    try:
        with pytest.raises(ConnectionLost, match="closed without an exit status"):
            t.stream(["sh", "-c", "kill -9 $$"])  # sshd reports a signal, which is no exit status
        assert t.run(["echo", "still there"]).stdout == b"still there\n"  # the connection itself lives
        # the shell that runs the short commands (nixmig.remote.runner) killed in the middle of one:
        # that command's outcome is unknown, and the next command gets a new shell
        with pytest.raises(ConnectionLost, match="closed without an exit status"):
            t.run(["sh", "-c", "pkill -9 -f 'read -r t n d'; sleep 5"])
        assert t.run(["echo", "still there"]).stdout == b"still there\n"
    finally:
        t.close()


def test_a_command_killed_by_a_signal_fails_with_its_status(sshd: SshServer) -> None:
    t = SshTransport.connect(host_for(sshd), label="newton")
    try:
        with pytest.raises(CommandFailed) as exc:
            t.run(["sh", "-c", "kill -9 $$"])  # through the runner: its shell reports 128 + 9
        assert exc.value.result.exit_code == 137
        assert t.run(["echo", "next"]).stdout == b"next\n"
    finally:
        t.close()


def test_waiting_for_the_exit_status_after_eof_is_not_a_busy_loop(sshd: SshServer) -> None:
    t = SshTransport.connect(host_for(sshd))
    try:
        cpu, wall = time.process_time(), time.monotonic()
        # closes its output at once (EOF reaches us), exits 3 s later (then the exit status)
        result = t.run(["sh", "-c", "exec >/dev/null 2>&1; sleep 3"])
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        assert result.ok and wall >= 3
        assert cpu < 0.5, f"{cpu:.2f}s of CPU in {wall:.2f}s waiting"  # the busy loop took 1.6 s of 3.2
    finally:
        t.close()


class _CutOnFirstWrite(io.RawIOBase):
    """A stream's consumer that breaks the connection's sending side while the command's
    output is still arriving: the first write waits for a full window, then shuts the
    socket for writing (a link that fails in the sending direction first). paramiko's next
    send (the window adjust of the following read) fails in this thread with EOFError,
    before its own thread has heard the end from sshd."""

    def __init__(self, t: SshTransport) -> None:
        self.t = t
        self.writes = 0

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        self.writes += 1
        if self.writes == 1:
            time.sleep(1.0)
            transport = self.t._client.get_transport()
            assert transport is not None and transport.is_active()
            transport.sock.shutdown(socket.SHUT_WR)
        return len(data)  # type: ignore[arg-type]


def test_a_send_that_fails_under_a_stream_is_a_lost_connection(sshd: SshServer, tmp_path: Path) -> None:
    # paramiko raises EOFError where a send fails (window adjust, close): out of a backup's
    # stream that was click's bare "Aborted!" (CI, test_cut_during_the_backup_then_apply_resumes)
    data = tmp_path / "data"
    data.write_bytes(b"\0" * (32 << 20))
    t = SshTransport.connect(host_for(sshd))
    try:
        with pytest.raises(ConnectionLost) as lost:
            t.stream(["cat", "--", str(data)], stdout=_CutOnFirstWrite(t))  # type: ignore[arg-type]
        assert "the connection to 127.0.0.1 was lost" in str(lost.value), lost.value
        assert "`cat -- " in str(lost.value) and "`nixmig apply` resumes" in lost.value.line()
        with pytest.raises(ConnectionLost):  # the connection is known dead: no command tries it
            t.run(["true"])
    finally:
        t.close()  # quiet on a dead socket too


def test_a_held_lock_and_the_connection_close_quietly_on_a_dead_socket(sshd: SshServer) -> None:
    # the engine releases its locks (and the CLI closes the transport) on the way out of a
    # phase that lost its connection: an EOFError there took the place of the ConnectionLost
    t = SshTransport.connect(host_for(sshd))
    held = t.hold(["sh", "-c", "echo locked; cat >/dev/null"])
    assert held.first_line == "locked"
    transport = t._client.get_transport()
    assert transport is not None
    transport.sock.shutdown(socket.SHUT_WR)
    held.close()
    t.close()


def test_a_dead_socket_under_a_shell_s_command_is_a_lost_connection_not_an_ended_shell(sshd: SshServer) -> None:
    # nixmig.db.shells: a shell that ends mid-command is a failed command (exit 255, the
    # container stopped), a lost connection is ConnectionLost; the send that finds the socket
    # dead (EOFError) comes before paramiko's thread says inactive
    t = SshTransport.connect(host_for(sshd))
    try:
        script = 'echo here; exec sh -c "$0"'
        shell = t.shell(["sh", "-c", script, runner_script()])
        transport = t._client.get_transport()
        assert transport is not None
        assert shell.run(["echo", "hi"], shown_as=["echo", "hi"]).stdout == b"hi\n"
        transport.sock.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionLost) as lost:
            shell.run(["echo", "hi"], shown_as=["psql", "-c", "SELECT 1"])
        assert "the connection to 127.0.0.1 was lost" in str(lost.value) and "`psql -c 'SELECT 1'`" in str(lost.value)
    finally:
        t.close()


def runner_script() -> str:
    from nixmig.remote import runner

    return runner.SCRIPT
