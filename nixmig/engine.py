"""Runs a migration's phases against its journal: lock, resume, rollback.

apply:    take the locks (the migration's, its database's; strategy move, which reaches no
          database: the host configuration's) and read the journal under them;
          check the target is the one the journal's run was on (nixmig.target); for each
          phase in order, skip it if the journal says done, else ask the facts (phase.check)
          and journal it done if they already hold, else run it and journal it done. A run
          killed anywhere is resumed by running apply again.
rollback: the same locks and target check, then every undo's preconditions (can_undo), then
          undo the done phases in reverse order (rotate before switch: undo_order), journaling each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, assert_never

from nixmig import lock, target
from nixmig.config import Config, Migration
from nixmig.db import shells
from nixmig.db.runtime import runtime_for
from nixmig.errors import NixmigError, UsageError
from nixmig.journal import Journal
from nixmig.phases.backup import Backup
from nixmig.phases.base import Action, Context, Phase
from nixmig.phases.cleanup import Cleanup
from nixmig.phases.deploy import Stage, Switch
from nixmig.phases.preflight import Preflight
from nixmig.phases.rotate import Rotate
from nixmig.phases.verify import Verify
from nixmig.remote.base import Transport
from nixmig.secrets import recipients as rcp
from nixmig.secrets.age import Identity
from nixmig.sensitive import Secret


def phases_for(strategy: str, migration: Migration | None = None) -> list[Phase]:
    """The strategy's phases; given the migration, its optional ones too (reencrypt after verify)."""
    if migration is not None and migration.reencrypt is not None:
        from nixmig.phases.reencrypt import with_reencrypt

        return with_reencrypt(phases_for(strategy), migration)
    match strategy:
        case "rotate":
            return [Preflight(), Backup(), Stage(), Rotate(), Switch(), Verify(), Cleanup()]
        case "dual-role":
            from nixmig.phases import dualrole

            return dualrole.phases()
        case "rebuild":
            from nixmig.phases import rebuild

            return rebuild.phases()
        case "move":
            from nixmig.phases import move

            return move.phases()
        case _:
            raise UsageError(
                f"strategy {strategy!r} is not implemented yet", hint='use strategy = "rotate" in nixmig.toml'
            )


def pick_migration(cfg: Config, name: str | None) -> str:
    if name is not None:
        if name not in cfg.migrations:
            raise UsageError(
                f"no migration {name!r}", where=cfg.path, hint="defined: " + (", ".join(cfg.migrations) or "(none)")
            )
        return name
    if len(cfg.migrations) != 1:
        raise UsageError(
            "which migration?",
            where=cfg.path,
            hint="pass --migration NAME; defined: " + (", ".join(cfg.migrations) or "(none)"),
        )
    return next(iter(cfg.migrations))


def connector(cfg: Config, host_name: str, *, on_host: bool = False) -> Callable[[], Transport]:
    host = cfg.hosts[host_name]

    def connect() -> Transport:
        if host.transport == "local" or on_host:
            from nixmig.remote.local import LocalTransport

            return LocalTransport()
        from nixmig.remote.ssh import SshTransport

        return SshTransport.connect(host, label=host_name)

    return connect


def single_host(cfg: Config, name: str) -> str:
    """The host of a migration whose service runs on one host; else a usage error."""
    targets = cfg.targets(cfg.migrations[name].service)
    if len(targets) == 1:
        return targets[0]
    raise UsageError(
        f"migration {name!r} runs on {len(targets)} hosts ({', '.join(targets[:6]) or 'none matched'})",
        where=cfg.path,
        hint="pass --hosts a,b or --all" if targets else "check services.<name>.hosts and [hosts] / [inventory]",
    )


def make_context(
    cfg: Config,
    name: str,
    *,
    host: str | None = None,
    on_host: bool = False,
    state_dir: Path | None = None,
    identities: Sequence[Identity] = (),
    emit: Callable[[str], None] = print,
    old_password: Secret | None = None,
    connect: Callable[[], Transport] | None = None,
) -> Context:
    """One migration on one host. `host` defaults to the service's only host; `state_dir`
    (journal, backups) to the repo's .nixmig/; `on_host` runs it with the local transport."""
    mig = cfg.migrations[name]
    host_name = host or single_host(cfg, name)
    if host_name not in cfg.hosts:
        raise UsageError(
            f"unknown host {host_name!r}",
            where=cfg.path,
            hint=f"migration {name} runs on: {', '.join(cfg.targets(mig.service)) or '(none)'}",
        )
    svc = cfg.service_for(mig.service, host_name)
    root = state_dir if state_dir is not None else cfg.repo / ".nixmig"
    journal = Journal.open(root / "journal", host_name, name)
    return Context(
        cfg=cfg,
        name=name,
        migration=mig,
        service=svc,
        host_name=host_name,
        host=cfg.hosts[host_name],
        runtime=runtime_for(svc),
        journal=journal,
        connect=connect or connector(cfg, host_name, on_host=on_host),
        operator_recipients=[rcp.parse(r, where=f"{cfg.path}: operator.recipients") for r in cfg.operator.recipients],
        identities=list(identities),
        emit=emit,
        old_password=old_password,
        on_host=on_host,
        state_root=state_dir,
    )


@dataclass(frozen=True)
class PlanStep:
    phase: str
    title: str
    state: str
    actions: list[Action]


def plan(ctx: Context) -> list[PlanStep]:
    """What apply would do, from the journal alone (no connection)."""
    return [
        PlanStep(p.name, p.title, ctx.journal.state(p.name) or "pending", p.describe(ctx))
        for p in phases_for(ctx.migration.strategy, ctx.migration)
    ]


class PhaseFailed(NixmigError):
    """A phase failed; the journal records where to resume."""


class Gate(Protocol):
    """Several hosts of one run (nixmig.fleet.Gate): a phase with `fleet_barrier = True`
    (the one deploying the final config from the shared repo) starts on a host only once
    every other host of the run has reached it too, or has stopped."""

    def reach(self, host: str, index: int, *, barrier: bool) -> None: ...


def apply(
    ctx: Context,
    *,
    on_phase: Callable[[str, str, float | None], None] | None = None,
    gate: Gate | None = None,
) -> None:
    phases = phases_for(ctx.migration.strategy, ctx.migration)
    loading = _prepare(ctx, phases)
    try:
        _apply(ctx, phases, on_phase, gate, loading)
    finally:
        loading.join()  # never left running past the run (a failure before the phases)
        for later in ctx.extra.pop(_LATER, ()):
            later.join()
        if ctx._transport is not None:
            shells.close(ctx._transport)  # the container's shell ends with the run


def _apply(
    ctx: Context,
    phases: Sequence[Phase],
    on_phase: Callable[[str, str, float | None], None] | None,
    gate: Gate | None,
    loading: _Loading,
) -> None:
    with locked(ctx):
        ctx.journal.start_over()  # a rolled-back migration starts over (a copy kept for gc)
        check_target(ctx, record=True)
        loading.wait()  # what the phases need is loaded before the first of them starts
        for i, p in enumerate(phases):
            done = ctx.journal.state(p.name) == "done"
            if gate is not None:
                gate.reach(ctx.host_name, i, barrier=getattr(p, "fleet_barrier", False) and not done)
            if done:
                _notify(on_phase, p.name, "done", None)
                continue
            if p.name != "preflight":  # preflight only looks; every other step may change the target
                _record(ctx)
            started = time.monotonic()
            _notify(on_phase, p.name, "running", None)
            ctx.journal.begin(p.name)
            # psql through one shell in the database's container while it is not re-created under it
            shells.reuse(ctx.t, ctx.runtime if getattr(p, "keeps_target", False) else None)
            later = _beside(ctx, phases, i)
            try:
                if p.check(ctx):
                    ctx.emit(f"{p.name}: already in effect on the target")
                    data = ctx.journal.data(p.name)
                else:
                    data = p.do(ctx)
            except NixmigError as exc:
                ctx.journal.fail(p.name, exc.line())
                _notify(on_phase, p.name, "failed", time.monotonic() - started)
                raise
            except Exception as exc:
                ctx.journal.fail(p.name, f"{type(exc).__name__}: {exc}")
                raise
            ctx.journal.finish(p.name, data)
            if later is not None:
                later.wait()  # the phase is done (its journal says so); a failure here is the loading's
            if not getattr(p, "keeps_target", False):  # a deploy may re-create the container, rebuild switches
                _observe(ctx)
            _notify(on_phase, p.name, "done", time.monotonic() - started)
            _crash_point(p.name)
        if ctx.journal.completed is None:
            ctx.journal.complete()


def _ahead_index(ctx: Context, phases: Sequence[Phase]) -> int | None:
    """The first phase still to run that takes seconds and waits on the target most of them
    (``loads_ahead``: the backup, whose main thread waits on pg_dump): what the phases after it
    prepare is loaded beside it, not before the first phase."""
    for i, p in enumerate(phases):
        if getattr(p, "loads_ahead", False) and ctx.journal.state(p.name) != "done":
            return i
    return None


_LATER = "engine_later_loading"  # Context.extra: the loading started beside a phase, joined at the end


def _beside(ctx: Context, phases: Sequence[Phase], i: int) -> _Loading | None:
    """Start loading what the phases after ``phases[i]`` prepare, beside it, when it is the
    ``loads_ahead`` phase (_ahead_index); its caller waits for it when the phase is done."""
    if i != _ahead_index(ctx, phases):
        return None
    todo = _prepares(ctx, phases[i + 1 :])
    if not todo:
        return None
    later = _Loading(lambda: [prepare(ctx) for prepare in todo])
    ctx.extra.setdefault(_LATER, []).append(later)
    return later


def _prepares(ctx: Context, phases: Sequence[Phase]) -> list[Callable[[Context], None]]:
    return [
        prepare
        for p in phases
        if (prepare := getattr(p, "prepare", None)) is not None and ctx.journal.state(p.name) != "done"
    ]


def _prepare(ctx: Context, phases: Sequence[Phase]) -> _Loading:
    """Connect, then load what the phases still to run will need in this process (a phase's
    optional ``prepare``: tree-sitter and jinja2 for the repo's patch, psycopg for verify's
    login; ~0.1-0.15 s of CPU) from a thread, while this one takes the locks and checks the
    target: those wait on the target (sshd's start of the connection's command shell,
    nixmig.remote.ssh.start_runner; the lock's name; the held lock's session), so the loading
    and the waits overlap instead of adding up. The first phase starts once it is done
    (_apply: ``loading.wait()``). Nothing on the target is read or changed by it; the journal
    read before the locks only says which phases to load for (a done one loads nothing), it
    decides nothing.

    With a ``loads_ahead`` phase still to run (the backup), only the phases up to it are
    loaded here; the later ones' (stage's patch planned ahead, verify's psycopg: ~0.4 s of CPU
    on a 2-core machine) load beside it (:func:`_beside`), while its main thread waits on
    pg_dump, and the next phase starts once that is done too. Those only read (the repo,
    modules: nothing on the target) and keep what they made in the Context for their phase."""
    ctx.t  # noqa: B018 - the connection, now: its runner's start is what the loading overlaps
    ahead = _ahead_index(ctx, phases)
    todo = _prepares(ctx, phases if ahead is None else phases[: ahead + 1])
    return _Loading(lambda: [prepare(ctx) for prepare in todo])


class _Loading:
    """A thread running ``load``; its exception is raised by :meth:`wait`."""

    def __init__(self, load: Callable[[], object]) -> None:
        self._failure: BaseException | None = None

        def run() -> None:
            try:
                load()
            except BaseException as exc:
                self._failure = exc

        self._thread = threading.Thread(target=run, name="nixmig-prepare", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def wait(self) -> None:
        self._thread.join()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure


def rollback(ctx: Context, *, on_phase: Callable[[str, str, float | None], None] | None = None) -> list[str]:
    phases = phases_for(ctx.migration.strategy, ctx.migration)
    undone: list[str] = []
    with locked(ctx):
        todo = [p for p in undo_order(phases) if ctx.journal.state(p.name) in ("done", "failed", "running")]
        if todo:
            check_target(ctx, record=False)
        for p in todo:  # everything an undo needs is checked before the first undo
            check = getattr(p, "can_undo", None)
            if check is not None:
                check(ctx, ctx.journal.data(p.name))
        for p in todo:
            started = time.monotonic()
            _notify(on_phase, p.name, "undoing", None)
            p.undo(ctx, ctx.journal.data(p.name))
            ctx.journal.undone(p.name)
            _observe(ctx)
            undone.append(p.name)
            _notify(on_phase, p.name, "undone", time.monotonic() - started)
        ctx.journal.rolled_back = True
        ctx.journal.completed = None
        ctx.journal.save()
    return undone


_LOCKED = "_locks_held"


@contextlib.contextmanager
def locked(ctx: Context) -> Iterator[None]:
    """Hold the migration's lock and its database's (nixmig.lock, nixmig.target.lock_name)
    on the target, the journal read again once they are held: every read of the journal
    that decides something, and every write, happens under them. Re-entrant per context."""
    if ctx.extra.get(_LOCKED):
        yield
        return
    who = lock.holder(f"migration {ctx.name} on {ctx.host_name}")
    mig_lock = f"{ctx.host_name}-{ctx.name}"
    name, what = _lock_name(ctx)  # a read of the target: no lock needed
    # both in one process on the target (one session): taken in this order, all or none
    held = lock.acquire_all(
        ctx.t, ctx.host.lock_dir, [(mig_lock, f"migration {ctx.name}"), (name, what)], holder_text=who
    )
    try:
        ctx.journal = ctx.journal.reload()
        ctx.extra[_LOCKED] = True
        yield
    finally:
        ctx.extra.pop(_LOCKED, None)
        held.close()


# strategy move reaches no database: its second lock is the host's configuration (the lock
# directory is on the host, so one name is one lock per host, however the config names it)
MOVE_LOCK = "host-config"


def _lock_name(ctx: Context) -> tuple[str, str]:
    """The lock beside the migration's: the database's, or for move the host's configuration
    (two moves on one host never deploy at once)."""
    strategy = ctx.migration.strategy
    match strategy:
        case "move":
            return MOVE_LOCK, f"the configuration of {ctx.host_name} (strategy move)"
        case "rotate" | "dual-role" | "rebuild":
            return target.lock_name(ctx.t, ctx.runtime)
        case _:
            assert_never(strategy)


def _take(ctx: Context) -> target.Identity:
    """The target's identity now: the database's, or for move the host's alone (no psql)."""
    strategy = ctx.migration.strategy
    match strategy:
        case "move":
            return target.take_host(ctx.t)
        case "rotate" | "dual-role" | "rebuild":
            return target.take(ctx.t, ctx.runtime)
        case _:
            assert_never(strategy)


def check_target(ctx: Context, *, record: bool) -> None:
    """The journal's run was on the database the config reaches now, or stop before anything
    is done (nixmig.target). ``record``: apply keeps the identity when the journal has none
    (its first run: for a database, the identity preflight read in this run, recorded before
    the first step after preflight, which says what is wrong when the target does not
    answer; strategy move: the host's, at once); rollback, with no identity kept (an older
    nixmig's journal), carries on.
    ``ctx.extra["accept_target"]`` (--accept-target): an operator's word that it is the same
    database; the new identity is recorded."""
    rec = ctx.journal.meta.get("target")
    accept = bool(ctx.extra.get("accept_target"))
    if not isinstance(rec, dict) and (not record or ctx.migration.strategy != "move"):
        # a first run on a database: nothing done yet; preflight checks the runtime and reads
        # the identity (target.SEEN), _record keeps it before the first step that may change it
        return
    try:
        now = _take(ctx)
    except NixmigError as exc:
        if not isinstance(rec, dict):
            return  # a first run: nothing done yet; preflight says what is wrong (_record before any change)
        if not accept:
            raise target.TargetUnknown(
                f"cannot check that this is the database of the journal's run: {exc.what}",
                where=exc.where,
                hint="check that the database server runs, and the service's container / socket_dir / port in "
                "nixmig.toml; or --accept-target to go on without that check",
            ) from None
        ctx.emit(f"--accept-target: not checked ({exc.what})")
        return
    if not isinstance(rec, dict):
        ctx.journal.meta["target"] = now.record()
        ctx.journal.save()
        return
    refusal, note = target.compare(rec, now)
    if refusal is not None and not accept:
        thing = "host" if ctx.migration.strategy == "move" else "database"
        raise target.TargetChanged(
            f"the journal of {ctx.name} belongs to another target: {refusal}; nothing was done",
            where=ctx.journal.path,
            hint=f"point nixmig.toml back at the {thing} of the first apply; if this is that {thing} "
            "(moved, restored), run again with --accept-target to record it",
        )
    if refusal is not None:
        ctx.emit(f"--accept-target: {refusal}; recorded as this migration's target")
        rec.update(host=now.host, container=now.container)
    elif note is not None:
        ctx.emit(note)
    if target.learn(rec, now) or refusal is not None:
        ctx.journal.save()


def _record(ctx: Context) -> None:
    """The target's identity in the journal before the first step that may change it: the
    one preflight read in this run (target.SEEN), else read now."""
    seen = ctx.extra.pop(target.SEEN, None)  # what this run's preflight read: no second look
    if not isinstance(ctx.journal.meta.get("target"), dict):
        now = seen if isinstance(seen, target.Identity) else _take(ctx)
        ctx.journal.meta["target"] = now.record()
        ctx.journal.save()


def _observe(ctx: Context) -> None:
    """After a step: what nixmig's own step changed (a deploy re-created the container,
    rebuild switched clusters) is still this migration's target. Best effort. Apply skips
    it after a phase that says ``keeps_target = True`` (it never re-creates the container
    nor moves the cluster: preflight, backup, rotate, verify, cleanup): a psql and a docker
    inspect that could learn nothing. After the others, a docker container the journal
    already has, by ID (not re-created by the deploy), is the whole look: its cluster cannot
    have changed (target.container_kept: a docker inspect, not a psql). That look also tells
    the container's shell (nixmig.db.shells), if one is open in that ID, that it is still the
    database's: its next psql needs no inspect of its own."""
    rec = ctx.journal.meta.get("target")
    if not isinstance(rec, dict):
        return
    try:
        if ctx.migration.strategy != "move":
            kept = target.container_kept(ctx.t, ctx.runtime, rec)
            if kept is not None:
                shells.seen(ctx.t, ctx.runtime, kept)
                return
        now = _take(ctx)
    except NixmigError:
        return
    if target.learn(rec, now):
        ctx.journal.save()


def undo_order(phases: Sequence[Phase]) -> list[Phase]:
    """Reverse order, except that rotate is undone before switch. Apply changes the
    password while the services run (their open connections survive ALTER ROLE) and
    only then restarts them onto it; rollback must mirror that: the old password back
    first, then the old config, or the restarted services log in with a password the
    role does not have until the next undo."""
    order = list(reversed(phases))
    at = {p.name: i for i, p in enumerate(order)}
    if "switch" in at and "rotate" in at and at["switch"] < at["rotate"]:
        i, j = at["switch"], at["rotate"]
        order[i], order[j] = order[j], order[i]
    return order


def _crash_point(phase: str) -> None:
    """Fault injection for the kill tests: NIXMIG_TEST_SIGKILL_AFTER=<phase> SIGKILLs this
    process right after that phase is journaled, as a power cut would."""
    if os.environ.get("NIXMIG_TEST_SIGKILL_AFTER") == phase:
        os.kill(os.getpid(), signal.SIGKILL)


def _notify(cb: Callable[[str, str, float | None], None] | None, phase: str, state: str, secs: float | None) -> None:
    if cb is not None:
        cb(phase, state, secs)


def journal_path(cfg: Config, host: str, name: str) -> Path:
    return cfg.repo / ".nixmig" / "journal" / host / f"{name}.json"
