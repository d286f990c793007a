"""Several hosts at once: one migration applied (or rolled back) on many hosts in parallel.

Each host has its own context, transport, lock and journal (journal/HOST/MIGRATION.json),
so a host that fails stops there and leaves the others alone; its journal says where
it stopped and `apply` again retries only the hosts not done (a host whose journal
says done is skipped without connecting).

At most `parallel` hosts work at once. When the migration patches the repo, the
hosts share that repo, so the run is kept in two waves by a Gate: the phase that
deploys the final config (Switch.fleet_barrier) starts on a host only once every
host of the run has reached it or stopped; a host waiting there gives its slot to
a host still in the first wave. So a deploy never picks up a repo another host
has moved on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nixmig.config import Config
from nixmig.errors import NixmigError, UsageError
from nixmig.journal import Journal, JournalError

Outcome = Literal["done", "failed", "untouched", "skipped"]
_END = 1 << 30


@dataclass
class HostResult:
    host: str
    outcome: Outcome = "untouched"
    phase: str | None = None  # where it stopped (failed), from the journal
    error: str | None = None
    seconds: float = 0.0
    phases_run: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "outcome": self.outcome,
            "phase": self.phase,
            "error": self.error,
            "seconds": round(self.seconds, 2),
            "phases_run": self.phases_run,
        }


class Gate:
    """The fleet barrier (see the module docstring); implements nixmig.engine.Gate."""

    def __init__(self, hosts: Sequence[str], slots: threading.Semaphore) -> None:
        self._pos = dict.fromkeys(hosts, -1)
        self._cv = threading.Condition()
        self._slots = slots

    def reach(self, host: str, index: int, *, barrier: bool) -> None:
        with self._cv:
            self._pos[host] = index
            self._cv.notify_all()
            if not barrier or self._others_at(host, index):
                return
        self._slots.release()  # wait without holding a slot: a host still in wave 1 may need it
        try:
            with self._cv:
                self._cv.wait_for(lambda: self._others_at(host, index))
        finally:
            self._slots.acquire()

    def leave(self, host: str) -> None:
        with self._cv:
            self._pos[host] = _END
            self._cv.notify_all()

    def _others_at(self, host: str, index: int) -> bool:
        return all(p >= index for h, p in self._pos.items() if h != host)


def select(cfg: Config, migration: str, hosts: str | None, all_hosts: bool) -> list[str]:
    """The hosts named by --hosts a,b,web-* (each must be one of the migration's) or --all."""
    targets = cfg.targets(cfg.migrations[migration].service)
    if all_hosts:
        if hosts:
            raise UsageError("--hosts and --all together", hint="pass one of them")
        if not targets:
            raise UsageError(f"migration {migration!r} matches no host", where=cfg.path)
        return targets
    assert hosts is not None
    import fnmatch

    out: list[str] = []
    for word in (w.strip() for w in hosts.split(",")):
        if not word:
            continue
        found = [t for t in targets if fnmatch.fnmatchcase(t, word)]
        if not found:
            raise UsageError(
                f"--hosts: {word!r} is not one of migration {migration}'s hosts",
                where=cfg.path,
                hint="its hosts: " + (", ".join(targets[:10]) or "(none)"),
            )
        out += [h for h in found if h not in out]
    if not out:
        raise UsageError("--hosts: no host named", hint="e.g. --hosts web1,web2 or --all")
    return out


def journal_for(cfg: Config, migration: str, host: str, state_dir: Any = None) -> Journal:
    root = state_dir if state_dir is not None else cfg.repo / ".nixmig"
    return Journal.open(root / "journal", host, migration)


def is_done(journal: Journal, phase_names: Sequence[str]) -> bool:
    return not journal.rolled_back and all(journal.state(p) == "done" for p in phase_names)


def stopped_at(journal: Journal) -> tuple[str | None, str | None]:
    """The phase a journal stopped at (failed, or left running by a kill) and its error."""
    for step in journal.steps.values():
        if step.state in ("failed", "running"):
            return step.phase, step.error or ("interrupted" if step.state == "running" else None)
    return None, None


Work = Callable[[str, Gate | None], list[str]]


def run(
    hosts: Sequence[str],
    work: Work,
    *,
    parallel: int,
    barrier: bool,
    on_result: Callable[[HostResult], None] | None = None,
    journal: Callable[[str], Journal] | None = None,
) -> list[HostResult]:
    """Run `work(host, gate)` for every host, at most `parallel` at once; it returns the
    phases it ran and raises on failure. Never raises itself: each host gets a result."""
    if parallel < 1:
        raise UsageError("--parallel must be at least 1")
    slots = threading.Semaphore(parallel)
    gate = Gate(hosts, slots) if barrier else None
    results = {h: HostResult(h) for h in hosts}

    def one(host: str) -> None:
        res = results[host]
        slots.acquire()
        start = time.monotonic()
        try:
            res.phases_run = work(host, gate)
            res.outcome = "done"
        except NixmigError as exc:
            res.error = exc.line()
            _classify(res, journal)
        except Exception as exc:  # a bug on one host must not take the others down
            res.error = f"internal error: {type(exc).__name__}: {exc}"
            _classify(res, journal)
        finally:
            if gate is not None:
                gate.leave(host)
            slots.release()
            res.seconds = time.monotonic() - start
            if on_result is not None:
                on_result(res)

    threads = [threading.Thread(target=one, args=(h,), name=f"nixmig-{h}", daemon=True) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=0.2)  # short joins: Ctrl-C reaches the main thread
    return [results[h] for h in hosts]


def _classify(res: HostResult, journal: Callable[[str], Journal] | None) -> None:
    """failed: a phase failed (the journal says which); untouched: nothing ran (unreachable, locked)."""
    if journal is None:
        res.outcome = "failed"
        return
    try:
        j = journal(res.host)
    except JournalError:
        res.outcome = "failed"
        return
    phase, _ = stopped_at(j)
    res.phase = phase
    res.outcome = "failed" if phase is not None or res.phases_run else "untouched"


def summary_lines(results: Sequence[HostResult], verb: str = "done", skipped: str | None = None) -> list[str]:
    groups: dict[str, list[HostResult]] = {}
    for r in results:
        groups.setdefault(r.outcome, []).append(r)
    lines = []
    for outcome, label in (
        ("done", verb),
        ("skipped", skipped or f"{verb} before, not contacted"),
        ("failed", "failed"),
        ("untouched", "untouched"),
    ):
        rs = groups.get(outcome, [])
        if not rs:
            continue
        lines.append(f"{label} ({len(rs)}): {', '.join(r.host for r in rs)}")
        if outcome in ("failed", "untouched"):
            for r in rs:
                where = f" at {r.phase}" if r.phase else ""
                lines.append(f"  {r.host}{where}: {r.error}")
    return lines
