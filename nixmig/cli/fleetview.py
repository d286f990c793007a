"""Progress of a run on several hosts: one line per host.

On a terminal, a rich live table with a row per host (phase, n/N, state, time,
last message) redrawn in place; otherwise plain lines as things happen, each
prefixed with its host, so a CI log reads like one log per host interleaved.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import typer


@dataclass
class _Row:
    phase: str = ""
    n: int = 0
    state: str = "waiting"
    message: str = ""
    started: float | None = None
    ended: float | None = None


class FleetView:
    def __init__(self, hosts: Sequence[str], total: int, *, quiet: bool = False) -> None:
        self.total = total
        self.quiet = quiet
        self.rows = {h: _Row() for h in hosts}
        self.width = max((len(h) for h in hosts), default=4)
        self.lock = threading.Lock()
        self.live: Any = None
        self.tty = sys.stdout.isatty() and not quiet

    def __enter__(self) -> FleetView:
        if self.tty and self.rows:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._table(), console=Console(highlight=False), refresh_per_second=8, transient=False)
            self.live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.live is not None:
            with self.lock:
                self.live.update(self._table())
            self.live.stop()

    def emitter(self, host: str) -> Callable[[str], None]:
        def emit(message: str) -> None:
            with self.lock:
                self.rows[host].message = message.strip()
                self._out(host, f"  {message}")

        return emit

    def on_phase(self, host: str, phase: str, state: str, secs: float | None) -> None:
        with self.lock:
            row = self.rows[host]
            if row.started is None:
                row.started = time.monotonic()
            if state in ("running", "undoing") or (state == "done" and secs is None):
                row.n += 1
            row.phase, row.state = phase, state
            if state in ("running", "undoing"):
                self._out(host, f"[{row.n}/{self.total}] {phase}: {state}")
            elif secs is None:
                self._out(host, f"[{row.n}/{self.total}] {phase}: done before, skipped")
            else:
                self._out(host, f"{phase} {state} in {secs:.1f}s")

    def on_result(self, result: Any) -> None:
        with self.lock:
            row = self.rows[result.host]
            row.state, row.ended = result.outcome, time.monotonic()
            if result.error:
                row.message = result.error
            tail = f": {result.error}" if result.error else ""
            self._out(result.host, f"{result.outcome.upper()} after {result.seconds:.1f}s{tail}")

    def _out(self, host: str, text: str) -> None:
        """Caller holds the lock."""
        if self.quiet:
            return
        if self.live is not None:
            self.live.update(self._table())
            return
        typer.echo(f"{host:{self.width}}  {text}")

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(box=None, show_header=True, pad_edge=False)
        for col in ("host", "phase", "", "state", "time", "last"):
            table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=60 if col == "last" else None)
        now = time.monotonic()
        for host, r in self.rows.items():
            secs = "" if r.started is None else f"{(r.ended or now) - r.started:.0f}s"
            table.add_row(host, r.phase, f"{r.n}/{self.total}", r.state, secs, r.message)
        return table
