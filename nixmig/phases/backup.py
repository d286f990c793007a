"""backup: pg_dump -Fc streamed from the target and age-encrypted on the fly."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from nixmig.errors import NixmigError
from nixmig.phases.base import Action, Context
from nixmig.secrets.age import decrypt_stream, encrypt_stream


class BackupError(NixmigError):
    """The backup could not be taken or does not restore."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _pipe() -> tuple[BinaryIO, BinaryIO]:
    r, w = os.pipe()
    return os.fdopen(r, "rb"), os.fdopen(w, "wb")


class Backup:
    name = "backup"
    title = "encrypted backup"

    def describe(self, ctx: Context) -> list[Action]:
        return [
            Action("run", " ".join(ctx.runtime.pg_dump()) + "  | age -r <operator> > .nixmig/backups/…dump.age"),
            Action("check", "sha256 in the journal; pg_restore --list on the decrypted stream"),
        ]

    def check(self, ctx: Context) -> bool:
        data = ctx.journal.data(self.name)
        path = data.get("path")
        if not isinstance(path, str) or not Path(path).is_file():
            return False
        return _sha256(Path(path)) == data.get("sha256")

    def do(self, ctx: Context) -> dict[str, Any]:
        if not ctx.operator_recipients:
            raise BackupError(
                "no operator recipients to encrypt the backup to",
                where=ctx.cfg.path,
                hint='set operator.recipients = ["ssh-ed25519 …"] in nixmig.toml',
            )
        ctx.backups_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        final = ctx.backups_dir / f"{ctx.name}-{stamp}.dump.age"
        partial = final.with_suffix(".partial")
        reader, writer = _pipe()
        failure: list[BaseException] = []

        def encrypt() -> None:
            try:
                with reader, partial.open("wb") as out:
                    partial.chmod(0o600)
                    encrypt_stream(reader, out, ctx.operator_recipients)
                    out.flush()
                    os.fsync(out.fileno())
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=encrypt, daemon=True)
        thread.start()
        try:
            with writer:
                result = ctx.t.stream(ctx.runtime.pg_dump(), stdout=writer, check=False, timeout=6 * 3600)
        finally:
            thread.join()
        if not result.ok or failure:
            partial.unlink(missing_ok=True)
            why = result.tail() if not result.ok else f"encryption failed: {failure[0]}"
            raise BackupError(f"pg_dump failed: {why}", where=ctx.t.name)
        partial.rename(final)
        digest = _sha256(final)
        entries = self._verify(ctx, final)
        ctx.emit(
            f"{final.name}: {final.stat().st_size} bytes encrypted, {entries} archive entries, sha256 {digest[:12]}…"
        )
        return {"path": str(final), "sha256": digest, "bytes": final.stat().st_size, "entries": entries}

    def _verify(self, ctx: Context, path: Path) -> int:
        """pg_restore --list over the decrypted stream (needs an operator identity)."""
        if not ctx.identities:
            ctx.emit("no operator identity given (--identity): backup not test-read")
            return -1
        reader, writer = _pipe()
        failure: list[BaseException] = []

        def decrypt() -> None:
            try:
                with writer, path.open("rb") as src:
                    decrypt_stream(src, writer, ctx.identities, where=path)
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=decrypt, daemon=True)
        thread.start()
        with reader:
            result = ctx.t.stream(ctx.runtime.pg_restore_list(), stdin=reader, check=False)
            # pg_restore --list stops reading after the table of contents: decrypt the rest
            # here, so every chunk is authenticated and the decrypting thread is not cut off
            while reader.read(1 << 20):
                pass
        thread.join()
        if failure:
            raise BackupError(f"cannot decrypt the backup to test it: {failure[0]}", where=path)
        if not result.ok:
            raise BackupError(f"pg_restore --list rejects the backup: {result.tail()}", where=path)
        return sum(1 for line in result.stdout.decode().splitlines() if line and not line.startswith(";"))

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        return None  # backups are kept for the retention period
