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
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import paramiko

from nixmig.config import Host
from nixmig.remote.base import CHUNK, DEFAULT_TIMEOUT, CommandFailed, Result, TransportError, render, stdin_bytes
from nixmig.sensitive import Secret

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


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


def _transport_factory(
    sock: Any,
    *,
    gss_kex: bool = False,
    gss_deleg_creds: bool = True,
    disabled_algorithms: Mapping[str, Iterable[str]] | None = None,
) -> paramiko.Transport:
    return _Transport(sock, disabled_algorithms=disabled_algorithms)  # no GSS-API here


class SshTransport:
    def __init__(self, client: paramiko.SSHClient, name: str) -> None:
        self._client = client
        self.name = name

    @classmethod
    def connect(cls, host: Host, *, label: str | None = None, timeout: float = 15.0) -> SshTransport:
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
        if transport is not None:
            transport.set_keepalive(15)  # notice a dead host instead of hanging
        return cls(client, where)

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> Result:
        command = render(argv)
        result = self._exec(command, stdin_bytes(stdin), timeout)
        if check and not result.ok:
            raise CommandFailed(result, self.name)
        return result

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
        result = self._exec(command, stdin, timeout, sink=stdout)
        if check and not result.ok:
            raise CommandFailed(result, self.name)
        return result

    def _exec(
        self, command: str, data: bytes | BinaryIO | None, timeout: float, sink: BinaryIO | None = None
    ) -> Result:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise TransportError("the SSH connection is closed", where=self.name)
        chan = transport.open_session()
        feeder: threading.Thread | None = None
        try:
            chan.exec_command(command)
            if data is None:
                chan.shutdown_write()
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
                        chunk = chan.recv(CHUNK)
                        if sink is not None:
                            sink.write(chunk)
                        else:
                            out += chunk
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                    # done once the remote closed its output (EOF) and reported its exit status:
                    # sshd may send the status before the last of the output.
                    if (
                        chan.eof_received
                        and chan.exit_status_ready()
                        and not chan.recv_ready()
                        and not chan.recv_stderr_ready()
                    ):
                        break
                    if time.monotonic() > deadline:
                        raise TransportError(f"`{command}` timed out after {timeout:.0f}s", where=self.name)
                    sel.select(timeout=0.5)
            if feeder is not None:
                feeder.join(timeout=5)
            return Result(command, chan.recv_exit_status(), bytes(out), bytes(err))
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"`{command}` failed: {exc}", where=self.name) from None
        finally:
            chan.close()

    def hold(self, argv: Sequence[str], *, timeout: float = 30.0) -> _SshHeld:
        command = render(argv)
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise TransportError("the SSH connection is closed", where=self.name)
        chan = transport.open_session()
        chan.settimeout(timeout)
        chan.exec_command(command)
        buf = b""
        try:
            while b"\n" not in buf:
                chunk = chan.recv(1024)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            chan.close()
            raise TransportError(f"`{command}` did not answer in {timeout:.0f}s", where=self.name) from None
        if b"\n" not in buf:
            code = chan.recv_exit_status()
            err = b""
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(4096)
            chan.close()
            raise CommandFailed(Result(command, code, buf, err), self.name)
        chan.settimeout(None)
        return _SshHeld(chan, buf.split(b"\n", 1)[0].decode().strip())

    @contextlib.contextmanager
    def forward(self, host: str, port: int) -> Iterator[tuple[str, int]]:
        """A local listening socket relaying each connection over a direct-tcpip channel."""
        transport = self._client.get_transport()
        if transport is None:
            raise TransportError("the SSH connection is closed", where=self.name)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        stop = threading.Event()

        def relay(a: socket.socket | paramiko.Channel, b: socket.socket | paramiko.Channel) -> None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                while data := a.recv(CHUNK):
                    b.sendall(data)
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                b.close()

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, peer = listener.accept()
                except OSError:
                    return
                try:
                    chan = transport.open_channel("direct-tcpip", (host, port), peer)
                except (paramiko.SSHException, OSError):
                    conn.close()
                    continue
                threading.Thread(target=relay, args=(conn, chan), daemon=True).start()
                threading.Thread(target=relay, args=(chan, conn), daemon=True).start()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[0], listener.getsockname()[1]
        finally:
            stop.set()
            listener.close()

    def put(self, path: str, data: bytes | Secret, *, mode: int = 0o600) -> None:
        """Atomic write on the target: bytes go on stdin into a 0077-umask temp file, then rename."""
        script = 'umask 077; t=$(mktemp "$1.XXXXXX") && cat > "$t" && chmod "$2" "$t" && mv -f "$t" "$1"'
        self.run(["sh", "-c", script, "sh", path, f"{mode:o}"], stdin=data)

    def get(self, path: str) -> bytes:
        return self.run(["cat", "--", path]).stdout

    def close(self) -> None:
        self._client.close()


def _feed(src: BinaryIO, chan: paramiko.Channel) -> None:
    try:
        while chunk := src.read(CHUNK):
            chan.sendall(chunk)
    except (OSError, paramiko.SSHException):
        pass
    finally:
        chan.shutdown_write()


class _SshHeld:
    def __init__(self, chan: paramiko.Channel, first_line: str) -> None:
        self.chan = chan
        self.first_line = first_line

    def close(self) -> None:
        with contextlib.suppress(OSError, paramiko.SSHException):
            self.chan.shutdown_write()
            self.chan.recv_exit_status()
        self.chan.close()
