"""The ssh transport (paramiko): the only module that imports paramiko.

Host keys are always verified against a known_hosts file. An unknown host or
a changed key stops the run with the fingerprint and the command to add it;
nothing is ever auto-accepted.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from nixmig.config import Host
from nixmig.remote import runner
from nixmig.remote.base import (
    CHUNK,
    DEFAULT_TIMEOUT,
    CommandFailed,
    ConnectionLost,
    Result,
    TransportError,
    render,
    short,
    stdin_bytes,
    traced,
)
from nixmig.sensitive import Secret

# paramiko without the import of invoke it tries (~35 ms of a run's start-up, with invoke's own
# imports of asyncio and unittest.mock): paramiko.config uses invoke only for ssh_config's
# `Match exec`, and nixmig reads no ssh_config. Only while paramiko loads (None in
# sys.modules: the import system's "not installed"): `import invoke` works as before
# afterwards, and a process that has imported either already is left as it is.
_NO_INVOKE = "invoke" not in sys.modules and "paramiko" not in sys.modules
if _NO_INVOKE:
    sys.modules["invoke"] = None  # type: ignore[assignment]
try:
    import paramiko
finally:
    if _NO_INVOKE:
        del sys.modules["invoke"]

# paramiko logs a reset connection at ERROR from its thread; without a handler Python's
# last resort prints that to stderr, a second line beside nixmig's own (--debug still shows it)
logging.getLogger("paramiko").addHandler(logging.NullHandler())

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
# OpenSSH's ServerAliveInterval / ServerAliveCountMax: a keepalive after KEEPALIVE seconds
# without sending, the connection cut after KEEPALIVE_COUNT of them without hearing the host
KEEPALIVE = 5.0
KEEPALIVE_COUNT = 4
# A read from a channel takes all it holds (at most its window: paramiko's 2 MiB). paramiko
# keeps a channel's input in an array and moves what a read leaves to the array's front: a
# stream read 64 KiB at a time from a full window moved ~16 times its own bytes, CPU taken
# from the pg_dump beside it when the reader falls behind (a loaded machine). Never a
# socket's recv (that allocates the size asked for).
RECV_ALL = 1 << 26


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def _host_id(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: Path, port: int) -> None:
        self.known_hosts = known_hosts
        self.port = port

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        addr = hostname.split("]")[0].lstrip("[")
        kind = key.get_name().removeprefix("ssh-")
        port = f"-p {self.port} " if self.port != 22 else ""
        raise TransportError(
            f"unknown host key {fingerprint(key)} for {hostname}, not in {self.known_hosts}",
            hint=f"check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_{kind}_key.pub), "
            f"then add it: ssh-keyscan {port}-t {kind} {addr} >> {self.known_hosts}",
        )


class _Transport(paramiko.Transport):
    """paramiko's transport with AES-GCM first: an AEAD cipher needs no separate HMAC,
    which cuts the CPU of receiving a backup by a third (bench/migrate.py). CTR stays
    as the fallback; CBC and 3DES are not offered."""

    _preferred_ciphers = (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
        "aes192-ctr",
        "aes256-ctr",
    )

    def __init__(self, sock: Any, **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self.heard = time.monotonic()  # when the last packet from the host arrived
        self.lost: str | None = None  # why the watchdog cut the connection
        read = self.packetizer.read_message

        def read_message() -> Any:
            message = read()
            self.heard = time.monotonic()
            return message

        self.packetizer.read_message = read_message  # type: ignore[method-assign]

    def keep_alive(self, interval: float, count: int) -> None:
        """After ``interval`` seconds without sending, ask sshd a `keepalive@openssh.com` that
        wants a reply (paramiko's own keepalive wants none, so it can never tell a dead host);
        ``count`` intervals without hearing anything from the host cut the connection, which
        closes every channel: a command, a held lock and a forward end instead of hanging."""
        self.packetizer.set_keepalive(interval, self._ping)
        threading.Thread(target=self._watch, args=(interval, count), name="nixmig-ssh-watchdog", daemon=True).start()

    def _ping(self) -> None:
        message = paramiko.Message()
        message.add_byte(bytes([paramiko.common.MSG_GLOBAL_REQUEST]))
        message.add_string("keepalive@openssh.com")
        message.add_boolean(True)  # want a reply: sshd answers (with a failure), proving it is there
        self._send_user_message(message)  # type: ignore[attr-defined]  # not in the stubs

    def _watch(self, interval: float, count: int) -> None:
        while self.is_active():
            time.sleep(min(interval, 1.0))
            silent = time.monotonic() - self.heard
            if silent > interval * count:
                self.lost = f"no answer from it for {silent:.0f}s"
                self.cut()
                return

    def cut(self) -> None:
        """End the connection from any thread, even one blocked on a full send buffer."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.packetizer.close()


def _transport_factory(
    sock: Any,
    *,
    gss_kex: bool = False,
    gss_deleg_creds: bool = True,
    disabled_algorithms: Mapping[str, Iterable[str]] | None = None,
) -> paramiko.Transport:
    return _Transport(sock, disabled_algorithms=disabled_algorithms)  # no GSS-API here


class SshTransport:
    def __init__(self, client: paramiko.SSHClient, name: str, label: str) -> None:
        self._client = client
        self.name = name
        self.label = label  # the host's name alone, for "the connection to X was lost"
        # one shell that runs the short commands (nixmig.remote.runner): started on the first
        # `run`, used by one thread at a time (another thread's command gets a session of its own)
        self._runner: paramiko.Channel | None = None
        self._runner_lock = threading.Lock()
        self._runner_hello: runner.Reply | None = None  # the first frame's answer, not read yet
        self._runner_failed = False  # the host could not run it: every command gets its own session
        # one session started ahead (runner.SPARE), for the next command that needs a session of
        # its own (a stream, a held lock): sshd's start of it is then already paid
        self._spare: paramiko.Channel | None = None
        self._spare_lock = threading.Lock()

    @classmethod
    def connect(
        cls,
        host: Host,
        *,
        label: str | None = None,
        timeout: float = 15.0,
        keepalive: float = KEEPALIVE,
        keepalive_count: int = KEEPALIVE_COUNT,
    ) -> SshTransport:
        name = label or host.address
        where = f"{name} ({host.user}@{host.address}:{host.port})"
        known = Path(host.known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(known))
        except FileNotFoundError:
            raise TransportError(
                f"known_hosts file {known} does not exist",
                where=where,
                hint="set hosts.<name>.known_hosts, or add the host's key to ~/.ssh/known_hosts",
            ) from None
        client.set_missing_host_key_policy(_RejectUnknown(known, host.port))
        identity = str(Path(host.identity).expanduser()) if host.identity else None
        if identity is not None and not Path(identity).is_file():
            raise TransportError(f"identity file {identity} does not exist", where=where)
        try:
            with traced("connect", f"ssh {host.user}@{host.address}:{host.port}"):
                client.connect(
                    host.address,
                    port=host.port,
                    username=host.user,
                    key_filename=identity,
                    look_for_keys=identity is None,
                    allow_agent=True,
                    timeout=timeout,
                    banner_timeout=timeout,
                    auth_timeout=timeout,
                    transport_factory=_transport_factory,
                )
        except TransportError as exc:
            client.close()
            raise TransportError(exc.what, where=where, hint=exc.hint) from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            hid = _host_id(host.address, host.port)
            raise TransportError(
                f"HOST KEY MISMATCH: the host offers {fingerprint(exc.key)}, "
                f"{known} says {fingerprint(exc.expected_key)}",
                where=where,
                hint=f"if the host was reinstalled, verify the new key and run: ssh-keygen -R '{hid}' -f {known}",
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise TransportError(
                f"authentication failed for {host.user}",
                where=where,
                hint="check hosts.<name>.identity / user, or load the key into ssh-agent",
            ) from None
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise TransportError(
                f"cannot connect: {reason}",
                where=where,
                hint="check hosts.<name>.address and port, and that sshd runs",
            ) from None
        transport = client.get_transport()
        if isinstance(transport, _Transport):
            transport.keep_alive(keepalive, keepalive_count)  # notice a dead host instead of hanging
        ssh = cls(client, where, name)
        ssh.start_runner()
        # the spare from a thread: its session's open and exec are two round trips to sshd
        # (~40 ms here) that connect need not wait for; the first held lock comes later
        threading.Thread(target=ssh._start_spare, name="nixmig-ssh-spare", daemon=True).start()
        return ssh

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> Result:
        command, data, shown = render(argv), stdin_bytes(stdin), f"`{short(argv)}`"
        with traced("run", argv):
            result = None
            if self._runner_lock.acquire(blocking=False):
                try:
                    result = self._run_in_runner(command, data, timeout, shown)
                finally:
                    self._runner_lock.release()
            if result is None:
                result = self._exec(command, data, timeout, shown=shown)
        if check and not result.ok:
            raise CommandFailed(result, self.name)
        return result

    def _run_in_runner(self, command: str, data: bytes | None, timeout: float, shown: str) -> Result | None:
        """The command through the runner shell; None when the host cannot run one."""
        chan = self._runner_channel(shown)
        if chan is None:
            return None
        try:
            return self._converse(chan, command, data, timeout, shown)
        except BaseException:
            self._drop_runner()  # out of step, timed out or dead: the next command starts a new one
            raise

    def _runner_channel(self, shown: str) -> paramiko.Channel | None:
        if self._runner is not None and not (self._runner.closed or self._runner.eof_received):
            if self._runner_hello is None:
                return self._runner
        else:
            self._drop_runner()
            if self._runner_failed:
                return None
            self.start_runner()
        chan, hello = self._runner, self._runner_hello
        transport = self._live(shown)
        try:
            if chan is None or hello is None:
                raise TransportError("the command runner did not start", where=self.name)
            self._receive(chan, hello, None, 30.0, ":", "the command runner")
        except (TransportError, OSError, EOFError, paramiko.SSHException) as exc:
            self._drop_runner()
            # (a dead socket found by _receive has cut the transport already: inactive)
            if _broken(exc) or not transport.is_active():
                raise self._lost(shown, transport, None, broken=_broken(exc)) from None
            # a host without sh or head: each command in a session of its own, as before
            self._runner_failed = True
            return None
        self._runner_hello = None
        return chan

    def start_runner(self) -> None:
        """Open the runner's session and send it a first frame, without waiting: sshd starts
        its shell meanwhile (connect calls this, so that start overlaps the first lock's);
        the first command reads the answer."""
        if self._runner is not None or self._runner_failed:
            return
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            return
        try:
            with traced("runner", "sh -c RUNNER"):
                chan = transport.open_session()
                chan.exec_command(render(["sh", "-c", runner.SCRIPT]))
                self._runner_hello = self._send_frame(chan, ":", None)[0]
        except (OSError, EOFError, paramiko.SSHException):
            self._runner_failed = not transport.is_active()  # a dead link: the next command says so
            return
        self._runner = chan

    def _start_spare(self) -> None:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            return
        try:
            chan = transport.open_session()
            chan.exec_command(render(["sh", "-c", runner.SPARE]))
        except (OSError, EOFError, paramiko.SSHException):
            return  # none ahead: the next session starts when it is needed
        with self._spare_lock:
            old, self._spare = self._spare, chan
        if old is not None:
            _close(old)

    def _session(self, transport: paramiko.Transport, command: str, *, fresh: bool = False) -> paramiko.Channel:
        """A session running ``command``: the spare one when it is ready, else a new one;
        ``fresh``: a new one (opened ahead of its use: the spare stays for what comes first)."""
        chan = None
        if not fresh:
            with self._spare_lock:
                chan, self._spare = self._spare, None
        if chan is not None:
            if _ready(chan):
                chan.sendall(runner.handover(command))
                threading.Thread(target=self._start_spare, name="nixmig-ssh-spare", daemon=True).start()
                return chan
            _close(chan)  # it died, or the host's shell said more than it should: not used
        chan = transport.open_session()
        chan.exec_command(command)
        return chan

    def _drop_runner(self) -> None:
        chan, self._runner, self._runner_hello = self._runner, None, None
        if chan is not None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                chan.close()

    @staticmethod
    def _send_frame(
        chan: paramiko.Channel, command: str, data: bytes | None
    ) -> tuple[runner.Reply, threading.Thread | None]:
        token, payload = runner.frame(command, data)
        if len(payload) <= CHUNK:
            chan.sendall(payload)
            return runner.Reply(token), None
        # from a thread while we read, so neither side's window can fill up
        sender = threading.Thread(target=_send, args=(payload, chan), daemon=True)
        sender.start()
        return runner.Reply(token), sender

    def _converse(self, chan: paramiko.Channel, command: str, data: bytes | None, timeout: float, shown: str) -> Result:
        """One frame to the runner, its output until both end markers."""
        transport = self._live(shown)
        try:
            reply, sender = self._send_frame(chan, command, data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost(shown, transport, chan, broken=_broken(exc)) from None
        self._receive(chan, reply, sender, timeout, command, shown)
        assert reply.status is not None
        return Result(command, reply.status, bytes(reply.out), bytes(reply.err))

    def _receive(
        self,
        chan: paramiko.Channel,
        reply: runner.Reply,
        sender: threading.Thread | None,
        timeout: float,
        command: str,
        shown: str,
    ) -> None:
        transport = self._live(shown)
        try:
            deadline = time.monotonic() + timeout
            with selectors.DefaultSelector() as sel:
                sel.register(chan, selectors.EVENT_READ)
                while not reply.done:
                    while chan.recv_ready():
                        reply.feed_out(chan.recv(RECV_ALL))
                    while chan.recv_stderr_ready():
                        reply.feed_err(chan.recv_stderr(RECV_ALL))
                    if reply.done:
                        break
                    if chan.closed or chan.eof_received or not transport.is_active():
                        # the shell ended in the middle of a command (killed, or the connection died)
                        raise self._lost(shown, transport, chan)
                    if time.monotonic() > deadline:
                        raise TransportError(f"`{command}` timed out after {timeout:.0f}s", where=self.name)
                    sel.select(timeout=0.5)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if _broken(exc) or not transport.is_active() or chan.closed:
                raise self._lost(shown, transport, chan, broken=_broken(exc)) from None
            raise TransportError(f"`{command}` failed: {exc}", where=self.name) from None
        if sender is not None:
            sender.join(timeout=5)

    def stream(
        self,
        argv: Sequence[str],
        *,
        stdin: BinaryIO | None = None,
        stdout: BinaryIO | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> Result:
        command = render(argv)
        with traced("stream", argv):
            result = self._exec(command, stdin, timeout, sink=stdout, shown=f"`{short(argv)}`")
        if check and not result.ok:
            raise CommandFailed(result, self.name)
        return result

    def _live(self, shown: str) -> paramiko.Transport:
        transport = self._client.get_transport()
        if transport is None:
            raise TransportError("the SSH connection is closed", where=self.name)
        if not transport.is_active():
            raise self._lost(shown, transport, None, started=False)
        return transport

    def _lost(
        self,
        shown: str,
        transport: paramiko.Transport,
        chan: paramiko.Channel | None,
        *,
        started: bool = True,
        broken: bool = False,
    ) -> ConnectionLost:
        """What a command whose connection or session died raises (its outcome is unknown).
        ``broken``: paramiko raised EOFError in this thread (_broken)."""
        if broken:
            _cut(transport)
        elif transport.is_active() and chan is not None and (chan.closed or chan.eof_received):
            return ConnectionLost(
                f"{shown}: its SSH session closed without an exit status (the session or the command was killed)",
                where=self.name,
            )
        cause = getattr(transport, "lost", None) or _cause(transport.saved_exception)
        when = "while running" if started else "before"
        return ConnectionLost(f"the connection to {self.label} was lost ({cause}) {when} {shown}", where=self.name)

    def _exec(
        self,
        command: str,
        data: bytes | BinaryIO | None,
        timeout: float,
        sink: BinaryIO | None = None,
        *,
        shown: str,
    ) -> Result:
        """``shown``: the command as a one-line message names it."""
        transport = self._live(shown)
        chan: paramiko.Channel | None = None
        try:
            chan = self._session(transport, command)
            if data is None:
                chan.shutdown_write()
                feeder = None
            else:
                # Feed stdin from a thread while we read, so neither side's window can fill up.
                src = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
                feeder = threading.Thread(target=_feed, args=(src, chan), daemon=True)
                feeder.start()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            with selectors.DefaultSelector() as sel:
                sel.register(chan, selectors.EVENT_READ)
                while True:
                    while chan.recv_ready():
                        chunk = chan.recv(RECV_ALL)
                        if sink is not None:
                            sink.write(chunk)
                        else:
                            out += chunk
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(RECV_ALL)
                    if not chan.recv_ready() and not chan.recv_stderr_ready():
                        # done once the remote closed its output (EOF) and reported its exit status:
                        # sshd may send the status before the last of the output.
                        if chan.exit_status != -1 and (chan.eof_received or chan.closed):
                            break
                        # a channel closed without an exit status, or a dead connection, never sends one
                        if chan.closed or not transport.is_active():
                            raise self._lost(shown, transport, chan)
                    if time.monotonic() > deadline:
                        raise TransportError(f"`{command}` timed out after {timeout:.0f}s", where=self.name)
                    if chan.eof_received or chan.closed:
                        # after EOF the channel's pipe stays readable: select would return at once
                        # (a busy loop); wait for the exit status (or the close) instead
                        chan.status_event.wait(0.5)
                    else:
                        sel.select(timeout=0.5)
            if feeder is not None:
                feeder.join(timeout=5)
            return Result(command, chan.exit_status, bytes(out), bytes(err))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if _broken(exc) or not transport.is_active() or (chan is not None and chan.closed):
                raise self._lost(shown, transport, chan, broken=_broken(exc)) from None
            raise TransportError(f"`{command}` failed: {exc}", where=self.name) from None
        finally:
            if chan is not None:
                _close(chan)

    def hold(self, argv: Sequence[str], *, timeout: float = 30.0) -> _SshHeld:
        with traced("hold", argv):
            return self._hold(argv, timeout)

    def _hold(self, argv: Sequence[str], timeout: float, *, fresh: bool = False) -> _SshHeld:
        command, shown = render(argv), f"`{short(argv)}`"
        transport = self._live(shown)
        try:
            chan = self._session(transport, command, fresh=fresh)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost(shown, transport, None, broken=_broken(exc)) from None
        chan.settimeout(timeout)
        buf = b""
        try:
            while b"\n" not in buf:
                chunk = chan.recv(1024)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            _close(chan)
            raise TransportError(f"`{command}` did not answer in {timeout:.0f}s", where=self.name) from None
        if b"\n" not in buf:
            if chan.exit_status == -1 and (chan.closed or not transport.is_active()):
                _close(chan)
                raise self._lost(shown, transport, chan)
            code = chan.recv_exit_status()
            err = b""
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(4096)
            _close(chan)
            raise CommandFailed(Result(command, code, buf, err), self.name)
        chan.settimeout(None)
        return _SshHeld(chan, buf.split(b"\n", 1)[0].decode().strip())

    def shell(self, argv: Sequence[str], *, timeout: float = 30.0) -> SshShell:
        """A runner shell (nixmig.remote.runner.SCRIPT) that ``argv`` starts after printing one
        line (``docker exec -i … sh -c SCRIPT`` behind a line naming the container's ID): the
        short commands meant for its inside each cost a frame on this channel, not a new
        ``docker exec`` (~60 ms on the e2e stack). In a session of its own, not the spare
        (it is opened ahead, from a thread: nixmig.db.shells). Raises TransportError or
        CommandFailed when it does not start (no sh or head there: the caller runs its
        commands as before)."""
        with traced("shell", argv):
            held = self._hold(argv, timeout, fresh=True)
            chan, shown = held.chan, f"`{short(argv)}`"
            try:
                reply, sender = self._send_frame(chan, ":", None)
                self._receive(chan, reply, sender, timeout, ":", shown)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                _close(chan)
                raise self._lost(shown, chan.get_transport(), chan, broken=_broken(exc)) from None
            except BaseException:
                _close(chan)
                raise
            if reply.status != 0:
                _close(chan)
                raise TransportError(f"{shown} did not start its shell (exit {reply.status})", where=self.name)
        return SshShell(self, chan, held.first_line)

    @contextlib.contextmanager
    def forward(self, host: str, port: int) -> Iterator[tuple[str, int]]:
        """A Unix socket in a fresh 0700 directory, relaying each connection over a direct-tcpip
        channel to host:port as seen from the target. Yields (directory, port), which libpq reads
        as the socket ``directory/.s.PGSQL.port``: only this user can connect, where a listener
        on 127.0.0.1 let any local user reach the database. No TCP port is opened here."""
        what = f"the forward to {host}:{port}"
        transport = self._live(what)
        folder = _socket_dir()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stop = threading.Event()
        try:
            listener.bind(str(Path(folder) / f".s.PGSQL.{port}"))
            listener.listen(8)
        except OSError as exc:
            listener.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise TransportError(f"cannot open a forward socket in {folder}: {exc.strerror}", where=self.name) from None

        def relay(a: socket.socket | paramiko.Channel, b: socket.socket | paramiko.Channel) -> None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                while data := a.recv(CHUNK):
                    b.sendall(data)
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                if isinstance(b, socket.socket):
                    # close() alone sends nothing while the other relay thread is in recv() on
                    # it: the client would wait forever on a connection whose channel died
                    b.shutdown(socket.SHUT_RDWR)
                b.close()

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                try:
                    with traced("channel", f"direct-tcpip {host}:{port}"):
                        chan = transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0))
                except (paramiko.SSHException, OSError, EOFError):
                    conn.close()
                    continue
                threading.Thread(target=relay, args=(conn, chan), daemon=True).start()
                threading.Thread(target=relay, args=(chan, conn), daemon=True).start()

        thread = threading.Thread(target=accept, name="nixmig-forward", daemon=True)
        thread.start()
        try:
            yield folder, port
        except Exception as exc:
            if not transport.is_active():  # what failed through it failed for that reason
                raise self._lost(what, transport, None) from exc
            raise
        finally:
            stop.set()
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
            listener.close()
            shutil.rmtree(folder, ignore_errors=True)
        if not transport.is_active():  # what ran through it may have failed for that reason
            raise self._lost(what, transport, None)

    def put(self, path: str, data: bytes | Secret, *, mode: int = 0o600) -> None:
        """Atomic write on the target: bytes go on stdin into a 0077-umask temp file, then rename."""
        script = 'umask 077; t=$(mktemp "$1.XXXXXX") && cat > "$t" && chmod "$2" "$t" && mv -f "$t" "$1"'
        self.run(["sh", "-c", script, "sh", path, f"{mode:o}"], stdin=data)

    def get(self, path: str) -> bytes:
        return self.run(["cat", "--", path]).stdout

    def close(self) -> None:
        self._drop_runner()
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            _close(spare)
        self._client.close()


def _broken(exc: BaseException) -> bool:
    """paramiko raises EOFError only where the connection's socket is dead: its send of any
    message (a window adjust, a channel's EOF or close) failed, or a read found the end. In
    the thread that sends, that can come before paramiko's own thread has heard the end
    (the transport still says active): it is a lost connection all the same, never a bare
    EOFError out of nixmig (click's "Aborted!")."""
    return isinstance(exc, EOFError)


def _cut(transport: paramiko.Transport) -> None:
    """A transport whose socket is dead (_broken) ended now, so every thread sees the loss:
    once this returns it says inactive and its channels closed (a shell's caller tells a
    lost connection from an ended shell by that: SshShell.run)."""
    if isinstance(transport, _Transport):
        transport.cut()
    else:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            transport.close()
    if threading.current_thread() is not transport:
        transport.join(timeout=5)  # its thread's end: reads fail at once on the shut socket


def _close(chan: paramiko.Channel) -> None:
    """Close a channel quietly: on a dead socket paramiko's send of the close raises EOFError
    (_broken), which must not take the place of what the caller raises or returns."""
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        chan.close()


def _cause(exc: BaseException | None) -> str:
    """Why paramiko's transport thread ended, in a few words."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return "closed by the host or the network"


def _socket_dir() -> str:
    """A fresh directory only this user can enter (mkdtemp: 0700), short enough for a socket path."""
    folder = tempfile.mkdtemp(prefix="nixmig-fwd-")
    if len(folder) + len("/.s.PGSQL.65535") >= 100:  # sun_path holds 108 bytes
        Path(folder).rmdir()
        folder = tempfile.mkdtemp(prefix="nixmig-fwd-", dir="/tmp")
    return folder


def _ready(chan: paramiko.Channel, timeout: float = 10.0) -> bool:
    """Whether a spare session said exactly runner.READY (waiting for it as long as a new
    session would take to start)."""
    got = b""
    chan.settimeout(timeout)
    try:
        while len(got) < len(runner.READY):
            chunk = chan.recv(len(runner.READY) - len(got))
            if not chunk:
                return False
            got += chunk
    except (OSError, EOFError, paramiko.SSHException):
        return False
    finally:
        chan.settimeout(None)
    return got == runner.READY and not chan.recv_stderr_ready()


def _send(payload: bytes, chan: paramiko.Channel) -> None:
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        chan.sendall(payload)  # a failure shows as the runner's end, where the reply is read


def _feed(src: BinaryIO, chan: paramiko.Channel) -> None:
    try:
        while chunk := src.read(CHUNK):
            chan.sendall(chunk)
    except (OSError, ValueError, EOFError, paramiko.SSHException):
        pass  # the channel or the source closed under us: the command's result says why
    finally:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            chan.shutdown_write()


class SshShell:
    """A runner shell inside something the target starts (``SshTransport.shell``); its
    ``lock`` is held by the one thread using it (another thread's command runs the usual way)."""

    def __init__(self, ssh: SshTransport, chan: paramiko.Channel, first_line: str) -> None:
        self._ssh = ssh
        self.chan = chan
        self.first_line = first_line
        self.lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return not (self.chan.closed or self.chan.eof_received or self.chan.exit_status_ready())

    def run(
        self,
        argv: Sequence[str],
        *,
        shown_as: Sequence[str],
        stdin: bytes | Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Result:
        """``argv`` run by the shell; the Result (and a message) name it as ``shown_as``, the
        command it stands for (``docker exec … psql …``). The shell ending mid-command (the
        container stopped) is a failed command, exit 255, as that ``docker exec`` would have
        failed; a lost connection is ConnectionLost as for any command."""
        command, data = render(argv), stdin_bytes(stdin)
        full, shown = render(shown_as), f"`{short(shown_as)}`"
        with traced("in-shell", shown_as):
            try:
                r = self._ssh._converse(self.chan, command, data, timeout, shown)
            except ConnectionLost:
                transport = self._ssh._client.get_transport()
                if transport is None or not transport.is_active():
                    raise
                self.close()
                why = b"the shell in the container ended during the command (the container stopped or was re-created)"
                return Result(full, 255, b"", why)
            except BaseException:
                self.close()  # out of step (timed out): never used again
                raise
        return Result(full, r.exit_code, r.stdout, r.stderr)

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.chan.close()


class _SshHeld:
    def __init__(self, chan: paramiko.Channel, first_line: str) -> None:
        self.chan = chan
        self.first_line = first_line

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.chan.shutdown_write()
            self.chan.recv_exit_status()
        _close(self.chan)
