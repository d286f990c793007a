"""The Transport protocol and its Result, shared by the local and ssh transports.

Every command goes through :func:`render`: argv is quoted with shlex in one
place, a :class:`~nixmig.sensitive.Secret` is refused in argv (secrets travel
on stdin or in 0400 files), and the text that may be logged is produced here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from nixmig.errors import NixmigError
from nixmig.sensitive import Secret

DEFAULT_TIMEOUT = 300.0


class CommandFailed(NixmigError):
    """A command on a target exited non-zero; carries its Result."""

    def __init__(self, result: Result, where: str) -> None:
        self.result = result
        super().__init__(
            f"`{result.command}` exited {result.exit_code}: {result.tail()}",
            where=where,
        )


class TransportError(NixmigError):
    """The target cannot be reached, or refused us (host key, auth, network)."""


class ConnectionLost(TransportError):
    """The connection to the target died while a command ran (cut, a session closed without
    an exit status, keepalives unanswered): the command's outcome is unknown; apply resumes."""

    def __init__(self, what: str, *, where: str) -> None:
        super().__init__(
            what, where=where, hint="check the host and the network, then `nixmig apply` resumes (or `nixmig rollback`)"
        )


def short(argv: Sequence[str], limit: int = 160) -> str:
    """A command for a one-line message: a `sh -c SCRIPT sh ARGS…` wrapper shown as the program
    it wraps, a long one cut in the middle (the program and its last arguments stay)."""
    if len(argv) > 3 and argv[0] == "sh" and argv[1] == "-c":
        argv = ["sh", "-c", "…", *argv[3:]]
    one = " ".join(shlex.join(argv).split())
    if len(one) <= limit:
        return one
    half = (limit - 3) // 2
    return f"{one[:half]} … {one[-half:]}"


@dataclass(frozen=True)
class Result:
    command: str  # shell-quoted, safe to log: argv never holds a secret
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 3) -> str:
        """The last lines of stderr (or stdout), on one line, for an error message."""
        text = (self.stderr or self.stdout).decode("utf-8", "replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"


def render(argv: Sequence[str]) -> str:
    """The one place argv becomes a shell command line."""
    if not argv:
        raise ValueError("empty argv")
    for arg in argv:
        if isinstance(arg, Secret):
            raise TypeError("a Secret must travel on stdin or in a file, never in argv")
        if not isinstance(arg, str):
            raise TypeError(f"argv items must be str, not {type(arg).__name__}")
    return shlex.join(argv)


def stdin_bytes(stdin: bytes | Secret | None) -> bytes | None:
    if isinstance(stdin, Secret):
        return stdin.reveal()
    return stdin


class Held(Protocol):
    first_line: str

    def close(self) -> None: ...


class Transport(Protocol):
    """What a phase may do on a target."""

    name: str  # "newton (root@10.0.0.5:22)" or "local": for messages

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> Result: ...

    def stream(
        self,
        argv: Sequence[str],
        *,
        stdin: BinaryIO | None = None,
        stdout: BinaryIO | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> Result:
        """Like run, for data too big for memory: stdin is read from a file object in
        chunks and stdout is written to one (Result.stdout is then empty)."""
        ...

    def put(self, path: str, data: bytes | Secret, *, mode: int = 0o600) -> None:
        """Write a file on the target atomically with ``mode`` (the data never in argv)."""
        ...

    def hold(self, argv: Sequence[str], *, timeout: float = 30.0) -> Held:
        """Start a process that lives as long as this handle (or this program: a SIGKILL
        closes its stdin / the SSH session). Returns once it printed its first line."""
        ...

    def forward(self, host: str, port: int) -> AbstractContextManager[tuple[str, int]]:
        """A (host, port) for libpq that reaches host:port as seen from the target. Over ssh
        the host is a fresh 0700 directory holding the Unix socket ``.s.PGSQL.<port>``
        (only this user reaches it, no TCP port opened here); locally it is host, port."""
        ...

    def get(self, path: str) -> bytes: ...

    def close(self) -> None: ...


CHUNK = 1 << 16

TRACE_ENV = "NIXMIG_TRACE"


@contextlib.contextmanager
def traced(kind: str, argv: Sequence[str] | str) -> Iterator[None]:
    """Round trips to the target, for bench/migrate.py: with NIXMIG_TRACE=FILE set, each
    command (kind "in-shell": run by a shell already open in a container, nixmig.db.shells),
    held process, forward and connection appends one JSON line (when it started,
    how long it took, its kind, the command as a one-line message shows it: argv never
    holds a secret, see render) to FILE, created 0600. Unset: nothing is written."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        yield
        return
    started, t0 = time.time(), time.perf_counter()
    try:
        yield
    finally:
        shown = argv if isinstance(argv, str) else short(argv, 200)
        line = json.dumps({"at": started, "secs": time.perf_counter() - t0, "kind": kind, "cmd": shown})
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
