"""An exported snapshot with the exact row count and content checksum of every table in it.

A backup is checked against counts taken in the very snapshot it dumps. pg_dump
reads the database in one REPEATABLE READ transaction, so while the services keep
writing, its archive is the database as of one instant, and any count taken at
another instant (preflight's, the live one after the dump) differs from it by
whatever was written in between, in either direction (inserts, deletes). So:

1. a psql session opens ``REPEATABLE READ, READ ONLY`` and runs
   ``pg_export_snapshot()`` as its first statement: the exported snapshot is the
   transaction's snapshot;
2. pg_dump starts with ``--snapshot=<id>``: it dumps exactly that snapshot;
3. the same session counts every table and checksums its rows (nixmig.db.ops.CONTENT_SQL)
   in the same transaction, while pg_dump runs: they are of exactly the rows in the dump;
4. the session stays open until pg_dump is done (an exported snapshot can only be
   imported while its transaction lives), then its stdin is closed and it ends.

The session holds ACCESS SHARE locks on the tables it counted, as pg_dump does,
so a TRUNCATE cannot slip between the two (TRUNCATE is not MVCC-safe). If nixmig
dies, the session's stdin closes (pipe or SSH channel) and psql ends with it.
"""

from __future__ import annotations

import os
import threading
from typing import BinaryIO

from nixmig.db.ops import CONTENT_SETTINGS, CONTENT_SQL, TableContent, parse_content_line
from nixmig.db.runtime import Runtime
from nixmig.errors import NixmigError
from nixmig.remote.base import Result, Transport

_BEGIN = (
    CONTENT_SETTINGS
    + """SET lock_timeout = '60s';
SET idle_in_transaction_session_timeout = 0;
BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
SELECT 'nixmig-snapshot', pg_export_snapshot();
"""
)
_COUNTED = "SELECT 'nixmig-counted';\n"  # table names are "schema.table": no clash with the markers


class SnapshotError(NixmigError):
    """The exported-snapshot session failed."""


class ExportedSnapshot:
    """A live psql session holding an exported snapshot; use as a context manager."""

    def __init__(self, t: Transport, rt: Runtime, *, timeout: float = 6 * 3600) -> None:
        self._where = f"{t.name}: {rt.describe()}"
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        # unbuffered: each statement reaches psql as soon as it is written
        self._stdin: BinaryIO = os.fdopen(in_w, "wb", buffering=0)
        self._stdout: BinaryIO = os.fdopen(out_r, "rb")
        feed: BinaryIO = os.fdopen(in_r, "rb", buffering=0)
        sink: BinaryIO = os.fdopen(out_w, "wb", buffering=0)
        self._result: Result | None = None
        self._failure: BaseException | None = None
        self._content: dict[str, TableContent] | None = None

        def session() -> None:
            try:
                with feed, sink:
                    self._result = t.stream(rt.psql(), stdin=feed, stdout=sink, check=False, timeout=timeout)
            except BaseException as exc:  # reported by the reading side
                self._failure = exc

        self._thread = threading.Thread(target=session, name="nixmig-snapshot", daemon=True)
        self._thread.start()
        try:
            self._stdin.write((_BEGIN + CONTENT_SQL + _COUNTED).encode())
            line = self._stdout.readline().decode().rstrip("\n")
            if not line.startswith("nixmig-snapshot\t"):
                raise self._error("cannot export a snapshot", line)
            self.id = line.split("\t", 1)[1]
        except BaseException:
            self.close()
            raise

    def content(self) -> dict[str, TableContent]:
        """Row count and content checksum of every table in the exported snapshot (waits for
        them: the session reads every row once, beside pg_dump)."""
        if self._content is None:
            tables: dict[str, TableContent] = {}
            while True:
                line = self._stdout.readline().decode().rstrip("\n")
                if line == "nixmig-counted":
                    break
                parsed = parse_content_line(line)
                if parsed is None:
                    raise self._error("the row count in the dump's snapshot failed", line)
                tables[parsed[0]] = parsed[1]
            self._content = tables
        return dict(self._content)

    def _error(self, what: str, line: str) -> SnapshotError:
        if not line:  # the session ended: say why
            self._thread.join(timeout=30)
        if self._failure is not None:
            why = str(self._failure)
        elif self._result is not None:
            why = self._result.tail()
        else:
            why = f"unexpected output {line[:80]!r}"
        return SnapshotError(f"{what}: {why}", where=self._where)

    def close(self) -> None:
        """End the transaction (psql reads EOF and disconnects) and wait for the session."""
        if not self._stdin.closed:
            self._stdin.close()
        while self._stdout.read(1 << 16):  # whatever is left, so the session never blocks on us
            pass
        self._thread.join(timeout=60)
        self._stdout.close()

    def __enter__(self) -> ExportedSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
