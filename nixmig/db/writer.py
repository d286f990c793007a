"""A stand-in application for the demo and the tests: it keeps inserting rows.

Each insert commits on its own; the id of every committed row is recorded as
"acknowledged". On an authentication failure it re-reads the connection URL
from its env file (as a restarted service would) and reconnects.

It counts ``failed_attempts`` (every attempt that raised: a refused login, a
dropped connection, a failed insert) and, among them, ``failed_connects`` (a new
connection that could not be opened: for a service, a refused login is one).
With ``reconnect_every`` it opens a new connection for the next write once its
connection is that old (seconds), as a pool with a short max lifetime or a
worker that connects per job does: a password change the service has not
picked up yet then shows as failed connects.

``stopped`` plays a service that was stopped (``systemctl stop``, ``docker stop``):
while it returns true the writer holds no connection and attempts nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import unquote, urlsplit

import psycopg


@dataclass
class Writer:
    url_source: Callable[[], str]  # returns postgres://user:pass@host:port/db (from the app's env file)
    interval: float = 0.01
    # when this value changes the writer reconnects, re-reading its URL (a service restart)
    generation: Callable[[], object] = lambda: 0
    acknowledged: list[int] = field(default_factory=list)
    failed_attempts: int = 0
    failed_connects: int = 0
    reconnect_every: float | None = None
    stopped: Callable[[], bool] = lambda: False
    longest_gap: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="writer")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        u = urlsplit(self.url_source())
        return psycopg.connect(
            host=u.hostname,
            port=u.port or 5432,
            user=unquote(u.username or ""),
            password=unquote(u.password or ""),
            dbname=u.path.lstrip("/"),
            autocommit=True,
            connect_timeout=5,
        )

    def _run(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        last_ack = time.monotonic()
        opened = 0.0
        gen = self.generation()
        while not self._stop.is_set():
            if self.stopped():
                if conn is not None:
                    conn.close()
                    conn = None
                time.sleep(self.interval)
                continue
            try:
                if gen != self.generation():
                    gen = self.generation()
                    if conn is not None:
                        conn.close()
                    conn = None
                expired = self.reconnect_every is not None and time.monotonic() - opened >= self.reconnect_every
                if conn is not None and expired:
                    conn.close()
                    conn = None
                if conn is None or conn.closed:
                    try:
                        conn = self._connect()
                    except psycopg.Error:
                        self.failed_connects += 1
                        raise
                    opened = time.monotonic()
                row = conn.execute("INSERT INTO app_writes (at) VALUES (now()) RETURNING id").fetchone()
                assert row is not None
                self.acknowledged.append(int(str(row[0])))
                now = time.monotonic()
                self.longest_gap = max(self.longest_gap, now - last_ack)
                last_ack = now
            except psycopg.Error:
                self.failed_attempts += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
                continue
            time.sleep(self.interval)
        if conn is not None:
            conn.close()


def count_found(dsn_url: str, ids: list[int]) -> int:
    """How many of the acknowledged ids are in the table (of a copy of ``ids`` taken now)."""
    return len(ids := list(ids)) - len(lost(dsn_url, ids))


def lost(dsn_url: str, ids: list[int]) -> list[int]:
    """The acknowledged ids that are not in the table.

    ``ids`` is copied first: a running writer keeps appending to its list, and a count
    compared with a ``len`` taken later would report its newest write as lost."""
    ids = list(ids)
    found = written_at(dsn_url, ids)
    return [i for i in ids if i not in found]


def written_at(dsn_url: str, ids: list[int]) -> dict[int, datetime]:
    """id -> the server's ``at`` of the rows with those ids (a row whose id another writer reused has
    another time)."""
    u = urlsplit(dsn_url)
    with psycopg.connect(
        host=u.hostname,
        port=u.port or 5432,
        user=unquote(u.username or ""),
        password=unquote(u.password or ""),
        dbname=u.path.lstrip("/"),
        connect_timeout=5,
    ) as conn:
        rows = conn.execute("SELECT id, at FROM app_writes WHERE id = ANY(%s)", (list(ids),)).fetchall()
    return {int(str(i)): at for i, at in rows if isinstance(at, datetime)}
