"""The local transport: the target is this machine (on-host mode, tests)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from nixmig import fsutil
from nixmig.remote.base import DEFAULT_TIMEOUT, CommandFailed, Result, TransportError, render, stdin_bytes
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
