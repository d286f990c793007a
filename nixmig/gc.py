"""`nixmig gc`: what is past retention, listed, and removed with --yes.

What it looks at:
- encrypted backups in STATE/backups/HOST/ (STATE: the repo's .nixmig/, on-host
  /var/lib/nixmig), named MIGRATION-YYYYmmddTHHMMSSZ.*.age; kept for the
  migration's retention_days (default 7) from the time in the name;
- `.partial` files there: a backup a killed run left half-written (untouched for an hour);
- what journals ask to keep for a while: any step's data may carry
  `retain = [{"kind": "volume"|"container"|"file", "name": ..., "until": ISO-8601}]`
  (the rebuild strategy keeps the old data volume this way), on the journal's host;
  an entry with `"after": "rollback"`, written by a rollback, names what the rollback took
  out of service (the rebuild's new volume, after the service went back to the old one):
  it is collected after its time like the others, once the rollback is complete;
- scratch targets a killed run left behind on the hosts: containers labelled
  `nixmig.restore-test` or `nixmig.scratch` or named `nixmig-restore-test-*` (docker
  services), databases `nixmig_restore_test_<migration>_<stamp>` (native services).

What it never removes (and says so):
- anything of a migration whose journal is not finished (started, not completed,
  not rolled back): its backups and the journal itself, which holds the sealed old
  password a rollback needs; gc never edits or deletes a journal;
- what a rolled-back migration retained before the rollback (it may be in use again);
  what the rollback itself retired while that migration runs again;
- a volume a container still mounts, a retained container that runs;
- anything on a host where a nixmig run holds a lock, its migration's or its database's
  (checked, and held while removing);
- a file path that is not absolute.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nixmig.backupname import NAME as _BACKUP_NAME  # the backup phase's names, shared with cleanup
from nixmig.config import Config
from nixmig.db.runtime import Runtime
from nixmig.errors import NixmigError
from nixmig.journal import Journal, JournalError
from nixmig.remote.base import Held, Transport

Kind = Literal["backup", "partial", "volume", "container", "file", "scratch-container", "scratch-database"]
DEFAULT_RETENTION_DAYS = 7
PARTIAL_STALE_SECONDS = 3600
# scratch containers: the restore test's (nixmig.db.scratch) and any other labelled nixmig.scratch
SCRATCH_LABELS = ("nixmig.restore-test", "nixmig.scratch")
SCRATCH_PREFIX = "nixmig-restore-test-"


@dataclass
class Item:
    kind: Kind
    host: str
    name: str  # a path for backups and files; the docker name otherwise
    action: Literal["remove", "keep"]
    reason: str
    migration: str | None = None
    bytes: int | None = None
    removed: bool = False
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Report:
    items: list[Item] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def to_remove(self) -> list[Item]:
        return [i for i in self.items if i.action == "remove"]

    @property
    def kept(self) -> list[Item]:
        return [i for i in self.items if i.action == "keep"]

    def as_json(self) -> dict[str, Any]:
        return {
            "items": [i.as_json() for i in self.items],
            "to_remove": len(self.to_remove),
            "removed": sum(i.removed for i in self.items),
            "kept": len(self.kept),
            "errors": self.errors,
        }


@dataclass(frozen=True)
class JournalState:
    """What gc needs to know of a journal."""

    journal: Journal

    @property
    def finished(self) -> bool:
        return self.journal.completed is not None and not self.journal.rolled_back

    @property
    def in_progress(self) -> bool:
        return self.journal.started and self.journal.completed is None and not self.journal.rolled_back

    @property
    def label(self) -> str:
        if self.journal.rolled_back:
            return "rolled back"
        if self.journal.completed is not None:
            return "finished"
        return "not finished" if self.journal.started else "not started"


def read_journals(state_dir: Path) -> dict[tuple[str, str], list[Journal]]:
    """(host, migration) -> its journals: the current one first, then archived ones (MIGRATION@STAMP.json)."""
    out: dict[tuple[str, str], list[Journal]] = {}
    root = state_dir / "journal"
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*/*.json")):
        host = path.parent.name
        try:
            raw = json.loads(path.read_text())
            migration = str(raw["migration"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an unreadable journal is reported by status; its backups stay (see _backups)
        try:
            j = Journal.open(root, host, migration) if path.name == f"{migration}.json" else Journal.read(path)
        except JournalError:
            continue
        key = (host, migration)
        if path.name == f"{migration}.json":
            out.setdefault(key, []).insert(0, j)
        else:
            out.setdefault(key, []).append(j)
    return out


def _retention(cfg: Config, migration: str) -> int:
    mig = cfg.migrations.get(migration)
    return mig.retention_days if mig is not None else DEFAULT_RETENTION_DAYS


def _stamp_time(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp()


def backups(
    cfg: Config,
    state_dir: Path,
    journals: dict[tuple[str, str], list[Journal]],
    *,
    now: float,
    migrations: Sequence[str] | None = None,
    hosts: Sequence[str] | None = None,
) -> list[Item]:
    """The backups and partial files under STATE/backups/, each with its verdict (no I/O but stat)."""
    items: list[Item] = []
    root = state_dir / "backups"
    if not root.is_dir():
        return items
    unreadable = _unreadable_journals(state_dir)
    for host_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        host = host_dir.name
        if hosts is not None and host not in hosts:
            continue
        for f in sorted(host_dir.iterdir()):
            if not f.is_file():
                continue
            st = f.stat()
            if f.name.endswith(".partial"):
                m = _BACKUP_NAME.match(f.name.removesuffix(".partial") + ".age")
                mig = m.group("migration") if m else None
                if migrations is not None and mig not in migrations:
                    continue
                idle = now - st.st_mtime
                if idle > PARTIAL_STALE_SECONDS:
                    items.append(
                        Item("partial", host, str(f), "remove", f"half-written, untouched for {idle / 3600:.1f} h", mig)
                    )
                else:
                    items.append(Item("partial", host, str(f), "keep", "being written (changed in the last hour)", mig))
                items[-1].bytes = st.st_size
                continue
            m = _BACKUP_NAME.match(f.name)
            if m is None:
                continue  # not ours
            mig = m.group("migration")
            if migrations is not None and mig not in migrations:
                continue
            days = _retention(cfg, mig)
            age = (now - _stamp_time(m.group("stamp"))) / 86400
            current = journals.get((host, mig), [])
            state = JournalState(current[0]) if current and current[0].path.name == f"{mig}.json" else None
            if (host, mig) in unreadable:
                item = Item("backup", host, str(f), "keep", f"its journal {unreadable[(host, mig)]} is unreadable", mig)
            elif state is not None and state.in_progress:
                item = Item(
                    "backup",
                    host,
                    str(f),
                    "keep",
                    f"migration {mig} on {host} is not finished: a rollback or a restore may need it",
                    mig,
                )
            elif age > days:
                why = state.label if state is not None else "no journal"
                item = Item("backup", host, str(f), "remove", f"{age:.0f} days old, kept {days} ({why})", mig)
            else:
                item = Item("backup", host, str(f), "keep", f"{age:.1f} days old, kept {days} days", mig)
            item.bytes = st.st_size
            items.append(item)
    return items


def _unreadable_journals(state_dir: Path) -> dict[tuple[str, str], str]:
    out = {}
    for path in (state_dir / "journal").glob("*/*.json"):
        try:
            json.loads(path.read_text())["steps"]  # readable?
        except (OSError, ValueError, KeyError, TypeError):
            out[(path.parent.name, path.name.split("@")[0].removesuffix(".json"))] = str(path)
    return out


def retained(
    journals: dict[tuple[str, str], list[Journal]],
    *,
    now: float,
    migrations: Sequence[str] | None = None,
    hosts: Sequence[str] | None = None,
) -> tuple[list[Item], list[str]]:
    """Every `retain` entry of every journal with its verdict from the journal alone (pure).
    The host facts (in use, running, gone) are checked later, on the host."""
    items: list[Item] = []
    errors: list[str] = []
    # what any rollback entry says holds writes, whichever step or journal says it
    holding = {
        (host, entry.get("kind"), entry.get("name"))
        for (host, _), js in journals.items()
        for j in js
        for step in j.steps.values()
        for entry in step.data.get("retain") or []
        if isinstance(entry, dict) and entry.get("after") == "rollback" and entry.get("holds_writes")
    }
    for (host, mig), js in sorted(journals.items()):
        if (migrations is not None and mig not in migrations) or (hosts is not None and host not in hosts):
            continue
        for j in js:
            state = JournalState(j)
            running = any(JournalState(o).in_progress for o in js if o is not j)  # a new run since
            for step in j.steps.values():
                for entry in step.data.get("retain") or []:
                    by_rollback = isinstance(entry, dict) and entry.get("after") == "rollback"
                    if (step.state == "undone") is not by_rollback:
                        continue  # what an undone step kept going forward: its undo dealt with it
                    parsed = _parse_retain(entry)
                    if isinstance(parsed, str):
                        errors.append(f"{j.path}: {step.phase}.retain: {parsed}")
                        continue
                    kind, name, until = parsed
                    if by_rollback and (host, kind, name) in holding:
                        why = (
                            "holds the writes a forced rollback left behind: see what they are, "
                            f"then remove it by hand (docker {kind} rm {name})"
                        )
                        items.append(Item(kind, host, name, "keep", why, mig))
                    elif by_rollback and (running or not j.rolled_back):
                        why = (
                            f"the rollback of {mig} on {host} is not finished"
                            if not j.rolled_back
                            else f"migration {mig} on {host} runs again: it may use {name}"
                        )
                        items.append(Item(kind, host, name, "keep", why, mig))
                    elif by_rollback:
                        if until > now:
                            left = (until - now) / 86400
                            items.append(
                                Item(
                                    kind,
                                    host,
                                    name,
                                    "keep",
                                    f"retired by the rollback, retained {left:.1f} more days",
                                    mig,
                                )
                            )
                        else:
                            why = f"retired by the rollback; retention ended {_iso(until)}"
                            items.append(Item(kind, host, name, "remove", why, mig))
                    elif not state.finished:
                        why = (
                            "migration rolled back: it may be in use again"
                            if j.rolled_back
                            else f"migration {mig} on {host} is not finished: it is the rollback path"
                        )
                        items.append(Item(kind, host, name, "keep", why, mig))
                    elif until > now:
                        left = (until - now) / 86400
                        items.append(Item(kind, host, name, "keep", f"retained {left:.1f} more days", mig))
                    else:
                        items.append(Item(kind, host, name, "remove", f"retention ended {_iso(until)}", mig))
    return _one_per_thing(items), errors


def _one_per_thing(items: list[Item]) -> list[Item]:
    """One item per (host, kind, name), kept if any journal entry keeps it (several steps or
    journals may retain the same volume)."""
    out: dict[tuple[str, str, str], Item] = {}
    for item in items:
        key = (item.host, item.kind, item.name)
        seen = out.get(key)
        if seen is None or (seen.action == "remove" and item.action == "keep"):
            out[key] = item
    return list(out.values())


def _parse_retain(entry: Any) -> tuple[Kind, str, float] | str:
    if not isinstance(entry, dict):
        return f"not a table: {entry!r}"
    kind, name, until = entry.get("kind"), entry.get("name"), entry.get("until")
    if kind not in ("volume", "container", "file"):
        return f"kind {kind!r} is not volume, container or file"
    if not isinstance(name, str) or not name:
        return "no name"
    try:
        when = dt.datetime.fromisoformat(str(until))
    except ValueError:
        return f"until {until!r} is not an ISO 8601 time"
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    k: Kind = kind
    return k, name, when.timestamp()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- on the hosts -----------------------------------------------------------------


@dataclass
class HostSide:
    """How gc reaches one host: its transport, docker argv prefix and the lock names to hold."""

    host: str
    connect: Callable[[], Transport]
    docker: list[str]  # for retained volumes and containers
    lock_dir: str
    locks: list[str]
    # (migration, runtime) of the services on this host: where scratch targets are looked for
    runtimes: list[tuple[str, Runtime]] = field(default_factory=list)


def check_on_host(side: HostSide, items: list[Item], *, remove: bool, local: Sequence[Item] = ()) -> list[str]:
    """Confirm each item's verdict against the host's facts, find scratch containers, and
    (remove=True) remove what is still to go while holding the host's nixmig locks; ``local``:
    this host's backups here, removed under those locks too (kept when they cannot be taken)."""
    from nixmig import lock

    errors: list[str] = []
    try:
        t = side.connect()
    except NixmigError as exc:
        for i in [*items, *local]:
            if i.action == "remove":
                i.action, i.reason = "keep", f"host unreachable: {exc.what}"
        return [exc.line()]
    held: list[Held] = []
    try:
        busy = None
        who = lock.holder("nixmig gc")
        try:
            names = _lock_names(t, side)
        except NixmigError as exc:  # cannot name a database's lock: cannot tell no run holds it
            names, busy = [], f"cannot take the database locks: {exc.what}"
            errors.append(f"{side.host}: {busy}")
        for name in names:
            try:
                held.append(lock.acquire(t, side.lock_dir, name, holder_text=who))
            except lock.LockedError:
                busy = f"a nixmig run holds {side.lock_dir}/{name}.lock on {side.host}"
                break
        if busy is not None:
            for i in [*items, *local]:
                if i.action == "remove":
                    i.action, i.reason = "keep", busy
        if not remove:  # listing: do not hold them
            for h in held:
                h.close()
            held = []
        items += _scratch(t, side, busy)
        for i in items:
            try:
                _confirm(t, side, i)
            except NixmigError as exc:  # cannot tell: keep it
                i.action, i.reason = "keep", f"cannot check it: {exc.what}"
                errors.append(f"{side.host}: {i.kind} {i.name}: {exc.what}")
        if remove and busy is None:
            for i in items:
                if i.action == "remove":
                    try:
                        _remove(t, side, i)
                    except NixmigError as exc:
                        i.error = exc.what
                    if i.error:
                        errors.append(f"{side.host}: {i.kind} {i.name}: {i.error}")
            errors += remove_local(local)
    finally:
        for h in held:
            h.close()
        t.close()
    return errors


def _lock_names(t: Transport, side: HostSide) -> list[str]:
    """The locks a run takes (nixmig.engine.locked): each migration's on this host, then each
    of its databases' (nixmig.target.lock_name), the same files whatever name a config gives the host."""
    from nixmig import target

    names = list(side.locks)
    for _, rt in side.runtimes:
        name, _what = target.lock_name(t, rt)
        if name not in names:
            names.append(name)
    return names


def _scratch(t: Transport, side: HostSide, busy: str | None) -> list[Item]:
    from nixmig.db import scratch
    from nixmig.db.runtime import DockerRuntime

    found: dict[tuple[str, str], tuple[str, str | None]] = {}  # (kind, name) -> (what, migration)
    engines = {tuple(rt._docker()) for _, rt in side.runtimes if isinstance(rt, DockerRuntime)}
    fmt = "{{.Names}}\t{{.State}}\t" + "".join('{{.Label "' + lb + '"}}' for lb in SCRATCH_LABELS)
    for docker in sorted(engines):
        for flt in (*(f"label={lb}" for lb in SCRATCH_LABELS), f"name={SCRATCH_PREFIX}"):
            r = t.run([*docker, "ps", "-a", "--filter", flt, "--format", fmt], check=False)
            if not r.ok:
                break  # no docker engine there: nothing to find
            for line in r.stdout.decode().splitlines():
                name, _, rest = line.partition("\t")
                state, _, label = rest.partition("\t")
                if name and (label or name.startswith(SCRATCH_PREFIX)):
                    found[("scratch-container", name)] = (f"scratch container ({state})", label or None)
    for migration, rt in side.runtimes:
        if not isinstance(rt, DockerRuntime):
            try:
                for name in scratch.leftovers(t, rt, migration):
                    found[("scratch-database", name)] = ("scratch database of a restore test", migration)
            except NixmigError:
                continue  # the server is down: nothing removable there now
    out = []
    for (kind, name), (what, mig) in sorted(found.items()):
        item_kind: Kind = "scratch-database" if kind == "scratch-database" else "scratch-container"
        if busy is not None:
            out.append(Item(item_kind, side.host, name, "keep", busy, mig))
        else:
            out.append(Item(item_kind, side.host, name, "remove", f"{what} left by a killed run", mig))
    return out


def _confirm(t: Transport, side: HostSide, item: Item) -> None:
    """Downgrade a removal the host's facts forbid; mark retained things that are gone."""
    if item.kind == "volume":
        r = t.run([*side.docker, "volume", "inspect", item.name], check=False)
        if not r.ok:
            item.action, item.reason = "keep", "gone already"
            return
        users = t.run([*side.docker, "ps", "-a", "--filter", f"volume={item.name}", "--format", "{{.Names}}"])
        names = users.stdout.decode().split()
        if names and item.action == "remove":
            item.action, item.reason = "keep", f"still mounted by {', '.join(names)}"
    elif item.kind == "container":
        r = t.run([*side.docker, "inspect", "--type", "container", "-f", "{{.State.Running}}", item.name], check=False)
        if not r.ok:
            item.action, item.reason = "keep", "gone already"
        elif r.stdout.decode().strip() == "true" and item.action == "remove":
            item.action, item.reason = "keep", "running"
    elif item.kind == "file":
        if not item.name.startswith("/"):
            item.action, item.reason = "keep", "not an absolute path: never removed"
        elif not t.run(["test", "-e", item.name], check=False).ok:
            item.action, item.reason = "keep", "gone already"


def _remove(t: Transport, side: HostSide, item: Item) -> None:
    match item.kind:
        case "volume":
            argv = [*side.docker, "volume", "rm", item.name]
        case "container":
            argv = [*side.docker, "rm", item.name]  # not -f: a container that runs is refused
        case "scratch-container":
            argv = [*side.docker, "rm", "-f", "-v", item.name]
        case "scratch-database":
            _drop_scratch_db(t, side, item)
            return
        case "file":
            argv = ["rm", "-f", "--", item.name]
        case _:
            return
    r = t.run(argv, check=False)
    if r.ok:
        item.removed = True
    else:
        item.error = r.tail(1)


def _drop_scratch_db(t: Transport, side: HostSide, item: Item) -> None:
    from nixmig.db import ops, sql

    rt = next((rt for m, rt in side.runtimes if m == item.migration), None)
    if rt is None or not item.name.startswith("nixmig_restore_test_"):
        item.error = "no runtime for it"
        return
    try:
        ops.psql(t, rt, f"DROP DATABASE IF EXISTS {sql.ident(item.name)} WITH (FORCE);", database="postgres")
        item.removed = True
    except NixmigError as exc:
        item.error = exc.what


def remove_local(items: Iterable[Item]) -> list[str]:
    """Remove the backups and partial files marked for removal (on this machine)."""
    errors = []
    for i in items:
        if i.kind in ("backup", "partial") and i.action == "remove":
            try:
                Path(i.name).unlink()
                i.removed = True
            except FileNotFoundError:
                i.removed = True
            except OSError as exc:
                i.error = exc.strerror
                errors.append(f"{i.name}: {exc.strerror}")
    return errors


def collect(
    cfg: Config,
    state_dir: Path,
    *,
    sides: Callable[[set[str]], dict[str, HostSide]],
    remove: bool,
    migrations: Sequence[str] | None = None,
    hosts: Sequence[str] | None = None,
    now: float | None = None,
) -> Report:
    """The whole gc: backups here, retained things and scratch containers on the hosts."""
    now = time.time() if now is None else now
    journals = read_journals(state_dir)
    report = Report()
    report.items += backups(cfg, state_dir, journals, now=now, migrations=migrations, hosts=hosts)
    remote, errors = retained(journals, now=now, migrations=migrations, hosts=hosts)
    report.errors += errors
    by_host: dict[str, list[Item]] = {}
    for i in remote:
        by_host.setdefault(i.host, []).append(i)
    local: dict[str, list[Item]] = {}
    for i in report.items:
        local.setdefault(i.host, []).append(i)
    reach = sides(set(by_host) | set(local))
    unlocked = [i for h, its in local.items() if h not in reach for i in its]  # a host no longer configured
    for host in sorted(set(by_host) | set(reach)):
        items = by_host.get(host, [])
        side = reach.get(host)
        if side is None:
            for i in items:
                if i.action == "remove":
                    i.action, i.reason = "keep", f"host {host} is not in nixmig.toml"
            report.items += items
            continue
        # this host's backups here are removed under its locks, as a run holds them (engine.locked)
        report.errors += check_on_host(side, items, remove=remove, local=local.get(host, []))
        report.items += items
    if remove:
        report.errors += remove_local(unlocked)
    return report
