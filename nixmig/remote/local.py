"""The local transport: the target is this machine (on-host mode, tests)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, BinaryIO

from nixmig import fsutil
from nixmig.remote.base import (
    CHUNK,
    DEFAULT_TIMEOUT,
    CommandFailed,
    Result,
    TransportError,
    render,
    stdin_bytes,
    traced,
)
from nixmig.sensitive import Secret


class LocalTransport:
    name = "local"

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> Result:
        with traced("run", argv):
            return self._run(argv, stdin=stdin, timeout=timeout, check=check)

    def _run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> Result:
        command = render(argv)
        try:
            proc = subprocess.run(
                list(argv),
                input=stdin_bytes(stdin),
                stdin=subprocess.DEVNULL if stdin is None else None,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise TransportError(f"command not found: {argv[0]}", where=self.name) from None
        except subprocess.TimeoutExpired:
            raise TransportError(f"`{command}` timed out after {timeout:.0f}s", where=self.name) from None
        result = Result(command, proc.returncode, proc.stdout, proc.stderr)
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
        with traced("stream", argv):
            return self._stream(argv, stdin=stdin, stdout=stdout, timeout=timeout, check=check)

    def _stream(
        self,
        argv: Sequence[str],
        *,
        stdin: BinaryIO | None = None,
        stdout: BinaryIO | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> Result:
        command = render(argv)
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise TransportError(f"command not found: {argv[0]}", where=self.name) from None
        assert proc.stdout is not None and proc.stderr is not None
        err = bytearray()
        out = bytearray()
        threads = [threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True)]
        if stdin is not None:
            assert proc.stdin is not None
            threads.append(threading.Thread(target=_feed, args=(stdin, proc.stdin), daemon=True))
        for t in threads:
            t.start()
        out_fd = proc.stdout.fileno()
        while chunk := os.read(out_fd, CHUNK):  # what is there: a line-by-line reader is not held back
            if stdout is not None:
                stdout.write(chunk)
            else:
                out += chunk
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise TransportError(f"`{command}` timed out after {timeout:.0f}s", where=self.name) from None
        threads[0].join()  # all of stderr
        for t in threads[1:]:  # the feeder may wait on a source that outlives the command (as in ssh.py)
            t.join(timeout=5)
        result = Result(command, code, bytes(out), bytes(err))
        if check and not result.ok:
            raise CommandFailed(result, self.name)
        return result

    def hold(self, argv: Sequence[str], *, timeout: float = 30.0) -> _LocalHeld:
        with traced("hold", argv):
            return self._hold(argv, timeout)

    def _hold(self, argv: Sequence[str], timeout: float) -> _LocalHeld:
        command = render(argv)
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().decode().strip()
        if not line:
            err = proc.stderr.read().decode().strip()
            proc.wait(timeout=timeout)
            raise CommandFailed(Result(command, proc.returncode, b"", err.encode()), self.name)
        return _LocalHeld(proc, line)

    @contextlib.contextmanager
    def forward(self, host: str, port: int) -> Iterator[tuple[str, int]]:
        yield host, port

    def put(self, path: str, data: bytes | Secret, *, mode: int = 0o600) -> None:
        raw = data.reveal() if isinstance(data, Secret) else data
        fsutil.write_atomic(Path(path), raw, mode)

    def get(self, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise TransportError(f"cannot read {path}: {exc.strerror}", where=self.name) from None

    def close(self) -> None:
        return None


def _drain(src: IO[bytes], buf: bytearray) -> None:
    while chunk := src.read(CHUNK):
        buf += chunk


def _feed(src: BinaryIO, dst: IO[bytes]) -> None:
    try:
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            dst.flush()  # a conversation (psql fed statement by statement) must not wait on a buffer
    except BrokenPipeError:
        pass
    finally:
        with contextlib.suppress(BrokenPipeError):
            dst.close()


class _LocalHeld:
    def __init__(self, proc: subprocess.Popen[bytes], first_line: str) -> None:
        self.proc = proc
        self.first_line = first_line

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
