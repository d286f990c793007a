"""Cutting one SSH connection to a test sshd the way a dead link or a killed session does:
SIGKILL to the sshd processes that hold the server's end of that TCP connection (found in
/proc/net/tcp and /proc/PID/fd), and a TCP relay that can stop passing bytes without
closing anything (a network partition: no FIN, no RST, only silence)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from pathlib import Path


def _addr(text: str) -> tuple[str, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)[::-1] if len(host) == 8 else bytes.fromhex(host)
    return (socket.inet_ntoa(raw) if len(raw) == 4 else raw.hex()), int(port, 16)


def _tcp() -> list[tuple[tuple[str, int], tuple[str, int], int]]:
    """(local, remote, inode) of every TCP socket of this network namespace."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                rows.append((_addr(f[1]), _addr(f[2]), int(f[9])))
    return rows


def _owners(inodes: set[int]) -> list[int]:
    links = {f"socket:[{i}]" for i in inodes}
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in links:
                        pids.append(int(pid))
                        break
    return pids


def client_ports(pid: int, server_port: int) -> list[int]:
    """The local ports of ``pid``'s TCP connections to ``server_port`` (its SSH connections)."""
    mine = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    mine.add(int(link[8:-1]))
    return [local[1] for local, remote, inode in _tcp() if inode in mine and remote[1] == server_port]


def cut(server_port: int, client_port: int) -> list[int]:
    """SIGKILL every process holding the server's end of the connection from ``client_port``
    (sshd's per-connection processes): the kernel closes the connection. Returns the pids."""
    inodes = {inode for local, remote, inode in _tcp() if local[1] == server_port and remote[1] == client_port}
    pids = _owners(inodes) if inodes else []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


class Partition:
    """A TCP relay 127.0.0.1:port -> target; ``freeze()`` stops passing bytes both ways while
    every socket stays open, as a cable pulled out between two routers would."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = threading.Event()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4)
        self.port: int = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.target)
            self._socks += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                if self.frozen.is_set():
                    return  # frozen for good: drop the bytes, stop reading, close nothing
                b.sendall(data)

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
