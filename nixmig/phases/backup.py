"""backup: pg_dump -Fc streamed from the target and age-encrypted on the fly.

One pass over the dump, in threads joined by pipes, so it is never plaintext on
any disk and nothing is read twice:

    target: pg_dump -Fc | dd obs=1M  ──ssh──▶  age encrypt ──▶ file (.partial, 0600, fsync; renamed, dir fsynced)
                                                     │        └─▶ sha256
                                                     └─▶ age decrypt (operator identity) ──ssh──▶ pg_restore --list

``dd obs=1M`` on the target only regroups pg_dump's 4 KiB writes into big blocks:
each SSH packet costs paramiko a fixed amount of Python, so small ones cost the
pipeline a CPU that pg_dump needs (4x less CPU on our side, measured by
bench/migrate.py). The ciphertext is hashed and test-decrypted as it is written,
from the same bytes that reach the file: the sha256 in the journal is the file's,
and pg_restore --list reads the archive's table of contents back through the
operator's identity.

``--restore-test`` (Context.restore_test) restores the finished file into a scratch
target and compares the row count and a content checksum of every table with
those of the dump's own snapshot (nixmig.db.snapshot explains why only those are
exact while the services keep writing); see :func:`restore_test`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from nixmig import backupname, fsutil
from nixmig.db import ops, scratch
from nixmig.db.ops import TableContent
from nixmig.db.snapshot import ExportedSnapshot
from nixmig.errors import NixmigError
from nixmig.phases.base import Action, Context
from nixmig.remote.base import Result
from nixmig.secrets.age import decrypt_stream, encrypt_stream

# Runs "$@" with its output regrouped into 1 MiB blocks, keeping its exit status (POSIX sh: no pipefail).
REBLOCK = 'exec 3>&1; s=$( { { "$@"; echo $? >&4; } | dd ibs=65536 obs=1048576 status=none >&3; } 4>&1 ); exit $s'
TABLE_ROWS_SHOWN = 12
PIPE_SIZE = 1 << 20  # fs.pipe-max-size's default: any user may ask for it


class BackupError(NixmigError):
    """The backup could not be taken or does not restore."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _pipe(*, raw: bool = False) -> tuple[BinaryIO, BinaryIO]:
    """A pipe between two threads of the backup: PIPE_SIZE in the kernel (Linux's default is
    64 KiB: the encrypting thread's 1 MiB writes and the dump's reads then switched threads
    every 64 KiB) and a read buffer as big (age reads 8 KiB at a time)."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):  # above fs.pipe-max-size, or not Linux: the default
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    if raw:
        return os.fdopen(r, "rb", buffering=0), os.fdopen(w, "wb", buffering=0)
    return os.fdopen(r, "rb", buffering=PIPE_SIZE), os.fdopen(w, "wb")


def dump_argv(ctx: Context, snapshot: str | None = None) -> list[str]:
    return ["sh", "-c", REBLOCK, "sh", *ctx.runtime.pg_dump(snapshot)]


class _Sink(io.RawIOBase):
    """Where the ciphertext goes: the file, a running sha256, and (when verifying) a pipe.

    Every SYNC_EVERY bytes a helper thread fdatasyncs the file while the writing goes
    on, so the fsync that makes the backup durable before anything changes has only
    the last few MiB left to wait for, instead of the whole dump."""

    SYNC_EVERY = 64 << 20

    def __init__(self, out: BinaryIO, copy: BinaryIO | None) -> None:
        self.out = out
        self.copy = copy
        self.sha = hashlib.sha256()
        self.size = 0
        self.copy_failed: str | None = None
        self._synced_at = 0
        self._sync = threading.Event()
        self._closing = False
        self._syncer = threading.Thread(target=self._sync_loop, name="nixmig-fdatasync", daemon=True)
        self._syncer.start()

    def _sync_loop(self) -> None:
        while True:
            self._sync.wait()
            self._sync.clear()
            if self._closing:
                return
            with contextlib.suppress(OSError):  # the final fsync reports a failing disk
                os.fdatasync(self.out.fileno())

    def finish(self) -> None:
        """Stop the syncing thread (before the file is closed)."""
        self._closing = True
        self._sync.set()
        self._syncer.join()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.out.write(chunk)
        self.sha.update(chunk)
        self.size += len(chunk)
        if self.size - self._synced_at >= self.SYNC_EVERY:
            self._synced_at = self.size
            self._sync.set()
        if self.copy is not None:
            try:
                self.copy.write(chunk)
            except (BrokenPipeError, ValueError) as exc:  # the verifier stopped: it says why
                self.copy_failed = str(exc) or type(exc).__name__
                self.copy = None
        return len(chunk)


class _Worker:
    """A thread whose exception is kept for the caller."""

    def __init__(self, name: str, fn: Callable[[], None]) -> None:
        self.failure: BaseException | None = None

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                self.failure = exc

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join()


def _drain(src: BinaryIO) -> None:
    while src.read(1 << 20):
        pass


class Backup:
    name = "backup"
    title = "encrypted backup"
    keeps_target = True  # a restore test uses a scratch target: engine._observe skipped
    loads_ahead = True  # seconds of waiting on pg_dump: the later phases' prepare runs beside it (engine._beside)

    def describe(self, ctx: Context) -> list[Action]:
        snap = "<exported snapshot>" if ctx.restore_test else None
        actions = []
        if ctx.restore_test:
            actions.append(
                Action(
                    "sql",
                    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT pg_export_snapshot(); "
                    "row count and content checksum of every table in it (held open until pg_dump ends)",
                )
            )
        else:
            actions.append(Action("sql", "exact row count of every table, read beside pg_dump (verify's baseline)"))
        actions += [
            Action("run", " ".join(dump_argv(ctx, snap)) + "  | age -r <operator> > .nixmig/backups/…dump.age"),
            Action("check", "sha256 in the journal; pg_restore --list on the decrypted stream (with -i)"),
        ]
        if not ctx.restore_test:
            actions.append(
                Action("check", "restore test: off (apply --restore-test restores the backup and compares every table)")
            )
            return actions
        target = scratch.for_backup(ctx.runtime, ctx.name, "<stamp>")
        actions += [Action("run", line) for line in target.plan()]
        actions += [
            Action("local", "age -d <backup> | " + " ".join(target.runtime.pg_restore(target.database))),
            Action(
                "check",
                f"row count and content checksum of every table in {target.describe()} == the dump's snapshot's",
            ),
            Action("run", f"remove {target.describe()} (also on failure)"),
        ]
        return actions

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
        if ctx.restore_test and not ctx.identities:
            raise BackupError(
                "--restore-test decrypts the backup on this machine, and no operator identity was given",
                where=ctx.cfg.path,
                hint="pass -i/--identity with the private key of one of operator.recipients",
            )
        if ctx.restore_test:
            for name in scratch.remove_leftovers(ctx.t, ctx.runtime, ctx.name):
                ctx.emit(f"removed {name}, left by an earlier run that was killed during its restore test")
        fsutil.mkdir_durable(ctx.backups_dir, 0o700)
        stamp = backupname.free_stamp(ctx.backups_dir, ctx.name)
        final = ctx.backups_dir / backupname.final(ctx.name, stamp)
        partial = ctx.backups_dir / backupname.partial(ctx.name, stamp)
        expected: dict[str, TableContent] | None = None
        if ctx.restore_test:
            with ExportedSnapshot(ctx.t, ctx.runtime) as snap:
                sink, entries = self._dump(ctx, partial, snap.id)
                expected = snap.content()
            counted = {name: c.rows for name, c in expected.items()}
        else:
            # verify's baseline: every table's exact row count, read by a psql of its own beside
            # pg_dump (both read every row; side by side, apply waits for one pass, not two)
            with ThreadPoolExecutor(1, thread_name_prefix="nixmig-count") as pool:
                counting = pool.submit(ops.snapshot, ctx.t, ctx.runtime)
                sink, entries = self._dump(ctx, partial, None)  # on failure, the count is waited for
                try:
                    counted = counting.result()
                except NixmigError as exc:
                    partial.unlink(missing_ok=True)
                    raise BackupError(
                        f"cannot count the rows of every table beside pg_dump: {exc.line()}",
                        where=ctx.t.name,
                        hint="nothing was changed on the database; run `nixmig apply` again",
                    ) from None
        # the file was fsynced as it was closed; the directory now, or a power cut may lose the
        # new name (and so the backup) after the journal says the backup is there
        fsutil.rename_durable(partial, final)
        digest = sink.sha.hexdigest()
        what = f"{entries} archive entries" if entries >= 0 else "not test-read (no --identity)"
        ctx.emit(f"{final.name}: {sink.size} bytes encrypted, {what}, sha256 {digest[:12]}…")
        ctx.emit(f"{len(counted)} tables, {sum(counted.values())} rows at the backup")
        data: dict[str, Any] = {
            "path": str(final),
            "sha256": digest,
            "bytes": sink.size,
            "entries": entries,
            "tables": counted,  # row counts only, never a value
        }
        if expected is not None:
            data["restore_test"] = restore_test(ctx, final, expected, stamp)
        return data

    def _dump(self, ctx: Context, partial: Path, snapshot: str | None) -> tuple[_Sink, int]:
        """pg_dump over the transport into the encrypted file; returns the sink and the
        archive's entry count from pg_restore --list (-1 without an identity)."""
        plain_r, plain_w = _pipe()
        verify = bool(ctx.identities)
        cipher_r, cipher_w = _pipe() if verify else (None, None)
        out = partial.open("xb")  # never over another file (free_stamp chose a name no file has)
        partial.chmod(0o600)
        sink = _Sink(out, cipher_w)

        def encrypt() -> None:
            try:
                with plain_r, io.BufferedWriter(sink, buffer_size=1 << 20) as buffered:
                    encrypt_stream(plain_r, buffered, ctx.operator_recipients)
                sink.finish()
                out.flush()
                os.fsync(out.fileno())
            finally:
                sink.finish()
                out.close()
                if cipher_w is not None:
                    cipher_w.close()

        workers = [_Worker("nixmig-encrypt", encrypt)]
        listing: list[Result] = []
        if cipher_r is not None:
            toc_r, toc_w = _pipe()

            def decrypt() -> None:
                with cipher_r, toc_w:
                    decrypt_stream(cipher_r, toc_w, ctx.identities, where=partial)

            def list_toc() -> None:
                with toc_r:
                    listing.append(ctx.t.stream(ctx.runtime.pg_restore_list(), stdin=toc_r, check=False))
                    # pg_restore --list stops after the table of contents: the rest is still
                    # decrypted (every chunk authenticated) and dropped here
                    _drain(toc_r)

            workers += [_Worker("nixmig-decrypt", decrypt), _Worker("nixmig-toc", list_toc)]
        result: Result | None = None
        try:
            with plain_w:
                result = ctx.t.stream(dump_argv(ctx, snapshot), stdout=plain_w, check=False, timeout=6 * 3600)
        except NixmigError:
            if workers[0].failure is None:
                raise
            # the encrypting thread died first and the stream broke on its pipe: say why
        finally:
            for w in workers:
                w.join()
            if result is None or not result.ok or workers[0].failure is not None:
                partial.unlink(missing_ok=True)
        if workers[0].failure is not None:
            raise BackupError(f"encryption failed: {workers[0].failure}", where=partial)
        assert result is not None
        if not result.ok:
            raise BackupError(f"pg_dump failed: {result.tail()}", where=ctx.t.name)
        if not verify:
            ctx.emit("no operator identity given (--identity): backup not test-read")
            return sink, -1
        failure = workers[1].failure or workers[2].failure
        if failure is not None or sink.copy_failed is not None:
            partial.unlink(missing_ok=True)
            why = failure if failure is not None else sink.copy_failed
            raise BackupError(f"cannot decrypt the backup to test it: {why}", where=partial)
        if not listing or not listing[0].ok:
            partial.unlink(missing_ok=True)
            tail = listing[0].tail() if listing else "(not run)"
            if "pg_restore:" in tail:
                raise BackupError(f"pg_restore --list rejects the backup: {tail}", where=partial)
            # pg_restore never said a word: the command around it failed (the engine's exec
            # stream, the SSH channel), not the backup's content
            raise BackupError(
                f"the backup's test-read did not finish (pg_restore --list never judged it): {tail}",
                where=partial,
                hint="nothing was changed on the database; run `nixmig apply` again",
            )
        lines = listing[0].stdout.decode().splitlines()
        return sink, sum(1 for line in lines if line and not line.startswith(";"))

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        # backups are kept for the retention period; a restore test's scratch target is not
        try:
            for name in scratch.remove_leftovers(ctx.t, ctx.runtime, ctx.name):
                ctx.emit(f"removed {name} (restore test of a killed run)")
        except NixmigError as exc:
            ctx.emit(f"could not look for restore-test leftovers: {exc.line()}")


def compare_tables(expected: dict[str, TableContent], restored: dict[str, TableContent]) -> list[str]:
    """What differs between the dump's snapshot and the restored backup, one line per table
    (never a value: a count, or that the content differs)."""
    problems = []
    for name in sorted(expected.keys() | restored.keys()):
        if name not in restored:
            problems.append(
                f"table {name} ({expected[name].rows} rows in the dump's snapshot) is missing from the restore"
            )
        elif name not in expected:
            problems.append(f"table {name} is in the restore but was not in the dump's snapshot")
        elif restored[name].rows != expected[name].rows:
            problems.append(
                f"table {name} has {restored[name].rows} rows in the restore, "
                f"{expected[name].rows} in the dump's snapshot"
            )
        elif restored[name].checksum != expected[name].checksum:
            problems.append(
                f"table {name} has the dump's {expected[name].rows} rows, but their content differs from the "
                "dump's snapshot"
            )
    return problems


def restore_test(ctx: Context, path: Path, expected: dict[str, TableContent], stamp: str) -> dict[str, Any]:
    """Restore the encrypted backup at ``path`` into a scratch target and compare every
    table's row count and content checksum with the dump's snapshot.

    The file is decrypted here with the operator's identity and streamed over the
    transport into pg_restore (plaintext never on a disk but the scratch database's).
    ``expected``: the counts and checksums of the dump's own snapshot (nixmig.db.snapshot).
    The scratch target is removed afterwards, also when anything fails; if this
    process is killed first, the next backup, the cleanup phase or rollback removes it.
    """
    target = scratch.for_backup(ctx.runtime, ctx.name, stamp)
    started = time.monotonic()
    locale = scratch.source_locale(ctx.t, ctx.runtime)
    try:
        target.create(ctx.t, locale)
        result, failure = _restore(ctx, path, target.runtime.pg_restore(target.database))
        if failure is not None:
            raise BackupError(f"restore test: cannot decrypt the backup: {failure}", where=path)
        if not result.ok:
            raise BackupError(
                f"restore test: pg_restore into {target.describe()} failed: {result.tail()}",
                where=path,
                hint="this backup does not restore; nothing on the target was changed; the file is kept",
            )
        restored = ops.content(ctx.t, target.runtime)
    except BaseException:
        try:
            target.remove(ctx.t)
        except NixmigError as exc:
            ctx.emit(f"could not remove {target.describe()}: {exc.line()} (the cleanup phase retries)")
        raise
    target.remove(ctx.t)
    secs = time.monotonic() - started
    problems = compare_tables(expected, restored)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BackupError(
            f"restore test: {problems[0]}{more}",
            where=path,
            hint="the backup does not hold what was dumped; nothing on the target was changed; the file is kept",
        )
    ctx.emit(
        f"restore test in {target.describe()} ({secs:.1f}s): "
        "every table's row count and content equal the dump's snapshot"
    )
    rows = {name: t.rows for name, t in restored.items()}  # counts only: checksums are never journaled
    width = max([len(n) for n in rows] + [5])
    ctx.emit(f"  {'table':{width}}  {'rows':>10}")
    for name in sorted(rows)[:TABLE_ROWS_SHOWN]:
        ctx.emit(f"  {name:{width}}  {rows[name]:>10}")
    if len(rows) > TABLE_ROWS_SHOWN:
        ctx.emit(f"  … {len(rows) - TABLE_ROWS_SHOWN} more tables (all in the journal)")
    return {"target": target.describe(), "seconds": round(secs, 2), "tables": rows}


def _restore(ctx: Context, path: Path, argv: list[str]) -> tuple[Result, BaseException | None]:
    """Decrypt ``path`` here into a pipe that the transport streams into ``argv``."""
    reader, writer = _pipe()

    def decrypt() -> None:
        with writer, path.open("rb") as src:
            decrypt_stream(src, writer, ctx.identities, where=path)

    worker = _Worker("nixmig-restore-decrypt", decrypt)
    with reader:
        result = ctx.t.stream(argv, stdin=reader, check=False, timeout=6 * 3600)
        _drain(reader)  # pg_restore may stop early (an error): let the decrypting thread end
    worker.join()
    failure = worker.failure
    if isinstance(failure, BrokenPipeError):
        failure = None  # the pipe closed under it: pg_restore's error says why
    return result, failure
