"""strategy rebuild: the database moves to a new docker volume, copied and proven exact under a freeze.

The hand-written plan's "zero-downtime" rebuild, without its data loss (it restored a
dump into a new volume while the service kept writing, then swapped: every write
after the dump was lost). Here the writes stop first, and nothing switches unless
the copy is exact. It is also the path to a new major version (new_image).

1. preflight (+ rebuild's own checks), backup, stage: as strategy rotate (the stage
   deploy puts the new password at /run/agenix/NAME).
2. provision: a new volume and a scratch container on it, of the new image, with no
   network, initialised by the image from POSTGRES_PASSWORD_FILE = the agenix file,
   bind-mounted read-only (the password is in no argv, env value or log).
3. freeze: the app is stopped (app_stop, or docker stop of the compose project's
   other containers), the old server refuses every new connection over TCP (a rule at
   the top of its pg_hba.conf, reloaded and checked: clients that are not the app, a
   cron job, a service outside the compose project, are refused too), then every client
   session left is ended. From here until the switch writes are refused (never
   acknowledged and lost); the rule is removed whenever the app starts again on the old
   database (a failed copy or compare, rollback).
4. copy: roles (pg_dumpall --roles-only), then each database, streamed
   ``pg_dump | pg_restore`` from container to container through a pipe on the host
   (no file), pg_hba.conf / pg_ident.conf and the ALTER SYSTEM settings; the
   migrated role gets the new password (a SCRAM verifier on stdin).
5. compare: exact fingerprints of both clusters (nixmig.db.fingerprint): per-table
   row counts and checksums of the rows, sequences, roles, memberships, objects.
   Any difference, or any failure of copy: the app is started again on the old
   database, nothing is switched, and `apply` starts over from the freeze.
6. switch: the freeze checked again and the copy compared again, then the repo
   patched (the database container's volume and image, the secret), the scratch
   container stopped (one server per data directory), the deploy, the app started.
   The old volume is never written and is kept for the retention period: journal
   key ``retain`` (for `nixmig gc`).
7. verify, cleanup.

Rollback before the switch: the app started again, the scratch container and the
new volume removed (they only hold a copy). After the switch the app may have
written to the new database: rollback freezes it the same way (app stopped, new
connections refused), and if the new database differs from what was switched to (a
digest of its data kept in the journal), it copies it back into the old volume (same
major version; verified exactly, and compared again right before the deploy) before
deploying the old config; across major versions it refuses, unless --force, which
deploys the old config without those writes (they stay on the retained new volume).
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nixmig.db import fingerprint as fp
from nixmig.db import ops, sql
from nixmig.db import rebuild as rb
from nixmig.db.runtime import DockerRuntime
from nixmig.errors import NixmigError
from nixmig.phases import hostsecret
from nixmig.phases.backup import Backup
from nixmig.phases.base import Action, Context, Phase
from nixmig.phases.cleanup import Cleanup
from nixmig.phases.deploy import Stage, _deploy, _patch_repo, _restore_repo
from nixmig.phases.preflight import Preflight, PreflightError
from nixmig.phases.rotate import new_password
from nixmig.phases.verify import Verify, VerifyError
from nixmig.remote.base import render

SECRETS_IN_CONTAINER = "/run/secrets"
T = TypeVar("T")


class CompareError(NixmigError):
    """The copy is not exactly the old database: nothing was switched."""


class SwitchError(NixmigError):
    """The deploy did not move the database container to the new volume."""


class RollbackRefused(NixmigError):
    """Rolling back would drop writes made after the switch."""


def phases() -> list[Phase]:
    return [
        RebuildPreflight(),
        Backup(),
        Stage(),
        Provision(),
        Freeze(),
        Copy(),
        Compare(),
        SwitchVolume(),
        RebuildVerify(),
        RebuildCleanup(),
    ]


# --- names and facts ---------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    old_volume: str
    new_volume: str
    scratch: str  # the container on the new volume until the switch
    back: str  # the container on the old volume during a rollback's copy back
    new_image: str | None  # as configured; None: the old container's image (by ID)


def default_volume(volume: str, now: float | None = None) -> str:
    return f"{volume}-{time.strftime('%Y%m%d', time.gmtime(now))}"


def names(ctx: Context) -> Names:
    svc, mig = ctx.service, ctx.migration
    assert svc.volume is not None and svc.container is not None  # config: rebuild needs both
    fixed = ctx.journal.data("preflight").get("new_volume")
    new = str(fixed) if fixed else mig.new_volume or default_volume(svc.volume)
    return Names(svc.volume, new, f"{svc.container}-nixmig-new", f"{svc.container}-nixmig-old", mig.new_image)


def scratch_rt(ctx: Context) -> DockerRuntime:
    return rb.runtime_of(ctx.service, names(ctx).scratch)


def ensure_scratch(ctx: Context) -> None:
    """The server on the new volume runs (a run killed in switch may have removed it already:
    the volume holds the copy, and the image starts on it without initialising it again)."""
    t, svc, n = ctx.t, ctx.service, names(ctx)
    prov = ctx.journal.data("provision")
    info = rb.inspect_container(t, svc, n.scratch)
    if info is not None and info.labels.get(rb.LABEL_RUN) != prov.get("run"):
        raise rb.RebuildError(f"container {n.scratch} is not this run's", where=t.name)
    if info is None or not info.running:
        # never a second server on one data directory (PostgreSQL cannot tell across containers)
        users = t.run(rb.docker(svc, "ps", "--filter", f"volume={n.new_volume}", "--format", "{{.Names}}"))
        others = [u for u in users.stdout.decode().split() if u != n.scratch]
        if others:
            raise rb.RebuildError(
                f"volume {n.new_volume} is in use by {others[0]}",
                where=t.name,
                hint="a deploy of an earlier run may have switched already: `nixmig status`, then apply again",
            )
    if info is None:
        t.run(Provision()._run_argv(ctx, prov["new_image"], prov["data_dir"], prov.get("env") or {}, prov["run"]))
    elif not info.running:
        t.run(rb.docker(svc, "start", n.scratch))
    rb.wait_ready(t, svc, n.scratch)


def old_rt(ctx: Context) -> DockerRuntime:
    rt = ctx.runtime
    assert isinstance(rt, DockerRuntime)
    return rt


def until(ctx: Context) -> str:
    end = dt.datetime.now(dt.UTC) + dt.timedelta(days=ctx.migration.retention_days)
    return end.replace(microsecond=0).isoformat()


def both(a: Callable[[], T], b: Callable[[], T]) -> tuple[T, T]:
    """Run two reads at once (one per server): each is a separate channel / process."""
    out: dict[str, T] = {}
    err: list[BaseException] = []

    def run(key: str, f: Callable[[], T]) -> None:
        try:
            out[key] = f()
        except BaseException as exc:
            err.append(exc)

    th = threading.Thread(target=run, args=("b", b), daemon=True)
    th.start()
    run("a", a)
    th.join()
    if err:
        raise err[0]
    return out["a"], out["b"]


# --- the app -------------------------------------------------------------------------------


def describe_stop(ctx: Context) -> str:
    mig = ctx.migration
    if mig.app_stop:
        return f"sh -c {render([mig.app_stop])}"
    which = f"services {', '.join(mig.app_services)}" if mig.app_services else "every other service"
    return f"docker stop -t 60 <the running containers of {ctx.service.container}'s compose project: {which}>"


def stop_app(ctx: Context) -> dict[str, Any]:
    t, svc, mig = ctx.t, ctx.service, ctx.migration
    if mig.app_stop:
        r = t.run(["sh", "-c", mig.app_stop], check=False, timeout=600)
        if not r.ok:
            raise rb.RebuildError(f"app_stop exited {r.exit_code}: {r.tail()}", where=t.name)
        return {"app_stop": True}
    assert svc.container is not None
    db = rb.inspect_container(t, svc, svc.container)
    if db is None:
        raise rb.RebuildError(f"container {svc.container!r} not found", where=t.name)
    names_ = rb.app_containers(t, svc, db, mig.app_services)
    if names_:
        t.run(rb.docker(svc, "stop", "-t", "60", *names_), timeout=600)
    return {"containers": names_}


def start_app(ctx: Context, frozen: dict[str, Any]) -> None:
    t, svc, mig = ctx.t, ctx.service, ctx.migration
    if mig.app_start:
        r = t.run(["sh", "-c", mig.app_start], check=False, timeout=600)
        if not r.ok:
            raise rb.RebuildError(f"app_start exited {r.exit_code}: {r.tail()}", where=t.name)
        return
    started = [str(n) for n in frozen.get("containers") or []]
    if started:
        t.run(rb.docker(svc, "start", *started), timeout=600)


def back_to_old(ctx: Context) -> None:
    """A copy that failed or is not exact: the app runs on the old database again, the copy is
    removed (a deploy of the patched config, by hand or for another host of a fleet, then
    finds no volume to start on, rather than a copy nobody verified), and the next `apply`
    provisions and copies again (provision, freeze, copy and compare are marked undone)."""
    unfreeze(ctx)
    start_app(ctx, ctx.journal.data("freeze"))
    drop_copy(ctx)
    for phase in ("provision", "freeze", "copy", "compare"):
        if ctx.journal.state(phase) in ("done", "running"):
            ctx.journal.undone(phase)
    ctx.emit("nothing switched: the app was started again on the old database, the copy removed")


def unfreeze(ctx: Context) -> None:
    """Remove the freeze's rule from the pg_hba.conf of the server the service's container
    runs now (nothing to do if it is not there), before the app starts again on it."""
    t, svc = ctx.t, ctx.service
    assert svc.container is not None
    info = rb.inspect_container(t, svc, svc.container)
    if info is None or not info.running:
        raise rb.RebuildError(
            f"container {svc.container} is not running: its pg_hba.conf may still refuse new connections",
            where=t.name,
            hint=f"start it (docker start {svc.container}), then `nixmig rollback` again",
        )
    if rb.allow_connections(t, old_rt(ctx)):
        ctx.emit(f"{svc.container} accepts new connections again")


def _drop_scratch_keep_volume(ctx: Context, run: str | None) -> bool:
    """Remove this run's scratch container; whether the new volume exists and is this run's."""
    t, svc, n = ctx.t, ctx.service, names(ctx)
    info = rb.inspect_container(t, svc, n.scratch)
    if info is not None and run and info.labels.get(rb.LABEL_RUN) == run:
        t.run(rb.docker(svc, "rm", "-f", n.scratch))
    vol = rb.inspect_volume(t, svc, n.new_volume)
    return vol is not None and bool(run) and (vol.get("Labels") or {}).get(rb.LABEL_RUN) == run


def drop_copy(ctx: Context) -> None:
    """Remove the scratch container and the new volume, if they are this run's and unused."""
    t, svc, n = ctx.t, ctx.service, names(ctx)
    if not _drop_scratch_keep_volume(ctx, ctx.journal.data("provision").get("run")):
        return
    users = t.run(rb.docker(svc, "ps", "-a", "--filter", f"volume={n.new_volume}", "--format", "{{.Names}}"))
    if users.stdout.strip():
        ctx.emit(f"{n.new_volume} kept: {users.stdout.decode().split()[0]} uses it")
        return
    t.run(rb.docker(svc, "volume", "rm", n.new_volume))


# --- phases ---------------------------------------------------------------------------------


class RebuildPreflight(Preflight):
    """rotate's preflight, and what the rebuild needs on top; fixes the new volume's name."""

    def describe(self, ctx: Context) -> list[Action]:
        n = names(ctx)
        return [
            *super().describe(ctx),
            Action("check", f"volume {n.new_volume} and container {n.scratch} do not exist yet"),
            Action("check", f"image {n.new_image} is on the host" if n.new_image else "new image: the old container's"),
            Action("check", "template1 holds no user objects (a copy carries the databases, not template1)"),
            Action("check", "the docker data root has room for a second copy of the database"),
            Action("check", f"the app can be stopped: {describe_stop(ctx)}"),
        ]

    def do(self, ctx: Context) -> dict[str, Any]:
        if ctx.on_host:
            raise PreflightError(
                "strategy rebuild cannot run on-host: the switch is a deploy of a config that names the "
                "new volume, made after the copy, and the activation running nixmig is already a deploy",
                where=ctx.host_name,
                hint="run `nixmig apply` from the machine holding the repo (it deploys between the phases)",
            )
        data = super().do(ctx)
        t, svc, n = ctx.t, ctx.service, names(ctx)
        assert svc.container is not None
        for kind, name in (("volume", n.new_volume), ("container", n.scratch), ("container", n.back)):
            found = rb.inspect_volume(t, svc, name) if kind == "volume" else rb.inspect_container(t, svc, name)
            if found is not None:
                raise PreflightError(
                    f"{kind} {name} exists already",
                    where=t.name,
                    hint=f"an earlier run's? remove it (docker {kind} rm {name}) if nothing needs it, "
                    "or set new_volume for this migration in nixmig.toml",
                )
        if n.new_image and not rb.image_exists(t, svc, n.new_image):
            raise PreflightError(
                f"image {n.new_image} is not on the host",
                where=t.name,
                hint=f"docker pull {n.new_image} there (or load it), then `nixmig apply`",
            )
        objects = ops.psql(
            t,
            ctx.runtime,
            f"SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {fp.USER_SCHEMAS};",  # noqa: S608
            database="template1",
        ).strip()
        if objects not in ("", "0"):
            raise PreflightError(
                f"template1 holds {objects} user objects, which a rebuild does not copy",
                where=t.name,
                hint="move them into a database, or use strategy rotate",
            )
        root = t.run(rb.docker(svc, "info", "--format", "{{.DockerRootDir}}")).stdout.decode().strip()
        df = t.run(["df", "--output=avail", "-B1", root], check=False)
        avail = df.stdout.decode().split()[-1] if df.ok else ""
        size = int(data.get("db_bytes", 0))
        if avail.isdigit() and int(avail) < size * 1.2:
            raise PreflightError(
                f"{int(avail) // 2**20} MiB free in {root}, the copy needs about {size * 12 // 10 // 2**20} MiB",
                where=t.name,
                hint="free some space on the host",
            )
        if not ctx.migration.app_stop:
            db = rb.inspect_container(t, svc, svc.container)
            assert db is not None  # super().do checked it
            data["app_containers"] = rb.app_containers(t, svc, db, ctx.migration.app_services)
        if ctx.migration.patch_repo and not ctx.on_host:
            self._patch_possible(ctx, n)
        data["new_volume"] = n.new_volume
        ctx.emit(f"new volume: {n.new_volume}")
        return data

    def _patch_possible(self, ctx: Context, n: Names) -> None:
        from nixmig.nixsrc import patch

        sources = patch.read_sources(ctx.cfg.repo)
        plan = patch.plan(
            sources,
            patch.spec_for(ctx.cfg, ctx.name, new_volume=n.new_volume),
            texts=patch.read_texts(ctx.cfg.repo, sources),
        )
        if plan.manual:
            m = plan.manual[0]
            raise PreflightError(
                f"a change nixmig cannot make by itself: {m.what}",
                where=m.where,
                hint="see `nixmig patch --explain`; apply it by hand, or set patch_repo = false and do the edits",
            )


class Provision:
    name = "provision"
    title = "new volume and server"

    def describe(self, ctx: Context) -> list[Action]:
        n, svc = names(ctx), ctx.service
        image = n.new_image or "<the old container's image>"
        return [
            *hostsecret.describe(ctx),
            Action("run", render(rb.create_volume_argv(svc, n.new_volume, self._labels(ctx, "<run>")))),
            Action("run", render(self._run_argv(ctx, image, "<data dir of the old volume>", {}, "<run>"))),
            Action("check", f"docker exec {n.scratch} pg_isready -h 127.0.0.1 (the init server is socket-only)"),
            Action("check", "the new server's major version is not older than the old one's"),
        ]

    def _labels(self, ctx: Context, run: str) -> dict[str, str]:
        return {rb.LABEL_MIGRATION: ctx.name, rb.LABEL_RUN: run, rb.LABEL_ROLE: "new"}

    def _run_argv(self, ctx: Context, image: str, data_dir: str, env: dict[str, str], run: str) -> list[str]:
        n, svc, secret = names(ctx), ctx.service, ctx.migration.secret
        return rb.run_container_argv(
            svc,
            name=n.scratch,
            image=image,
            volume=n.new_volume,
            data_dir=data_dir,
            labels=self._labels(ctx, run),
            env={
                **env,
                "POSTGRES_USER": svc.admin_role,
                "POSTGRES_PASSWORD_FILE": f"{SECRETS_IN_CONTAINER}/{secret}",
            },
            binds=[f"{ctx.secret_on_host}:{SECRETS_IN_CONTAINER}/{secret}:ro"],
        )

    def check(self, ctx: Context) -> bool:
        return False  # do() takes over what a killed run made (its run id is journaled first)

    def do(self, ctx: Context) -> dict[str, Any]:
        t, svc, n = ctx.t, ctx.service, names(ctx)
        assert svc.container is not None
        # the new cluster is initialised from that file: it must be the value switch deploys
        hostsecret.require_repo_value(ctx, self.name, rb.RebuildError)
        old = rb.inspect_container(t, svc, svc.container)
        if old is None or not old.mounts(n.old_volume):
            raise rb.RebuildError(f"container {svc.container} does not mount {n.old_volume}", where=t.name)
        step = ctx.journal.steps[self.name]
        run = str(step.data.get("run") or secrets.token_hex(6))
        data: dict[str, Any] = {
            "run": run,
            "new_volume": n.new_volume,
            "scratch": n.scratch,
            "new_image": n.new_image or old.image_id,
            "old_image": old.image,
            "old_image_id": old.image_id,
            "data_dir": old.volumes[n.old_volume],
            "env": {k: v for k, v in old.env.items() if k in ("PGDATA", "POSTGRES_INITDB_ARGS")},
            "old_major": rb.server_major(t, old_rt(ctx)),
        }
        # journaled before anything exists: a run killed in between finds what is its own
        step.data = data
        ctx.journal.save()
        vol = rb.inspect_volume(t, svc, n.new_volume)
        if vol is None:
            t.run(rb.create_volume_argv(svc, n.new_volume, self._labels(ctx, run)))
        elif (vol.get("Labels") or {}).get(rb.LABEL_RUN) != run:
            raise rb.RebuildError(
                f"volume {n.new_volume} exists and is not this run's",
                where=t.name,
                hint=f"remove it (docker volume rm {n.new_volume}) or set new_volume in nixmig.toml",
            )
        info = rb.inspect_container(t, svc, n.scratch)
        if info is None:
            users = t.run(rb.docker(svc, "ps", "-a", "--filter", f"volume={n.new_volume}", "--format", "{{.Names}}"))
            if users.stdout.strip():
                raise rb.RebuildError(
                    f"volume {n.new_volume} is mounted by {users.stdout.decode().split()[0]}", where=t.name
                )
            t.run(self._run_argv(ctx, data["new_image"], data["data_dir"], data["env"], run))
        elif info.labels.get(rb.LABEL_RUN) != run:
            raise rb.RebuildError(f"container {n.scratch} exists and is not this run's", where=t.name)
        elif not info.running:
            t.run(rb.docker(svc, "start", n.scratch))
        rb.wait_ready(t, svc, n.scratch)
        info = rb.inspect_container(t, svc, n.scratch)
        data["new_image_id"] = info.image_id if info is not None else None
        data["new_major"] = rb.server_major(t, scratch_rt(ctx))
        if data["new_major"] < data["old_major"]:
            raise rb.RebuildError(
                f"the new image runs PostgreSQL {data['new_major']}, older than the old server's {data['old_major']}",
                where=t.name,
                hint="set new_image to the same or a newer major version",
            )
        ctx.emit(f"{n.scratch}: PostgreSQL {data['new_major']} on {n.new_volume} (old: {data['old_major']})")
        return data

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        n, run = names(ctx), data.get("run")
        if ctx.journal.state("switch") is None:  # never served: only a copy
            drop_copy(ctx)
            ctx.emit(f"removed {n.scratch} and the volume {n.new_volume} (a copy nothing used)")
            return
        if not _drop_scratch_keep_volume(ctx, run):
            return
        # (if the switch's undo left writes on it, its own entry says so: gc keeps it then)
        retain = {"kind": "volume", "name": n.new_volume, "until": until(ctx), "after": "rollback"}
        data["retain"] = [retain]
        ctx.journal.save()
        ctx.emit(f"kept the volume {n.new_volume} until {retain['until']}: the service ran on it")


class Freeze:
    name = "freeze"
    title = "freeze writes"

    def describe(self, ctx: Context) -> list[Action]:
        return [
            Action("run", f"stop the app: {describe_stop(ctx)}"),
            Action(
                "file",
                f"pg_hba.conf of {ctx.service.container}: first rule `host all all all reject` (every new "
                "connection over TCP refused, the app's or not), reloaded, checked with a login over TCP",
            ),
            Action("sql", f"{' '.join(rb.TERMINATE_SQL.split())}  (on {ctx.service.container})"),
            Action(
                "note",
                "from here until the switch writes are refused, never acknowledged and lost; the rule goes "
                "whenever the app starts again on this database (a failed copy or compare, rollback)",
            ),
        ]

    def check(self, ctx: Context) -> bool:
        return False

    def do(self, ctx: Context) -> dict[str, Any]:
        data = stop_app(ctx)
        # journaled before the change: what to start again and where the rule is, if killed
        # right here (its undo removes the rule, wherever the run stopped)
        data["refused"] = ctx.service.container
        ctx.journal.steps[self.name].data = data
        ctx.journal.save()
        rb.refuse_connections(ctx.t, old_rt(ctx))
        ended = rb.terminate_clients(ctx.t, old_rt(ctx))
        ctx.emit(f"app stopped, new connections refused, {ended} client sessions ended")
        return {**data, "ended": ended, "at": time.time()}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        unfreeze(ctx)
        start_app(ctx, data)


class Copy:
    name = "copy"
    title = "stream the databases"

    def describe(self, ctx: Context) -> list[Action]:
        old, new = old_rt(ctx), scratch_rt(ctx)
        return [
            Action("run", " ".join(rb.copy_roles_argv(old, new)[2:])),
            Action("sql", f"ALTER ROLE \"{ctx.service.role}\" PASSWORD 'SCRAM-SHA-256$4096:********'  (stdin)"),
            Action("run", "for each database: " + " ".join(rb.restore_argv(old, new, "<db>")[2:])),
            Action("run", "pg_hba.conf and pg_ident.conf copied; ALTER SYSTEM settings replayed"),
            Action("note", "a pipe on the host: no dump file on any disk"),
            Action("note", "to a newer major version, the dump is made by the new image's pg_dump"),
        ]

    def check(self, ctx: Context) -> bool:
        return False

    def do(self, ctx: Context) -> dict[str, Any]:
        t, svc = ctx.t, ctx.service
        old, new = old_rt(ctx), scratch_rt(ctx)
        started = time.monotonic()
        try:
            ensure_scratch(ctx)
            rb.refuse_connections(t, old)  # a resumed run: still refused,
            rb.terminate_clients(t, old)  # and nobody may have come back
            dbs = fp.databases(t, old)
            prov = ctx.journal.data("provision")
            newer = None  # a newer major: its pg_dump makes the dump (PostgreSQL's advice for upgrades)
            if int(prov.get("new_major") or 0) > int(prov.get("old_major") or 0):
                newer = rb.newer_dump(t, old, str(prov.get("new_image_id") or prov["new_image"]))
            rb.copy_roles(t, old, new)
            for db in dbs:
                rb.copy_database(t, old, new, db, newer)
            ops.set_password(t, new, svc.role, new_password(ctx))  # (psql connects to the service's database)
            settings = rb.copy_config(t, old, new)
        except NixmigError:
            back_to_old(ctx)
            raise
        secs = time.monotonic() - started
        ctx.emit(f"{len(dbs)} databases copied in {secs:.1f}s")
        return {"databases": dbs, "alter_system": settings, "seconds": round(secs, 2)}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        return None  # the copy goes with the scratch container and the new volume


def compare_now(ctx: Context) -> fp.Fingerprint:
    """Fingerprints of both servers; raise CompareError (after back_to_old) on any difference."""
    t, svc = ctx.t, ctx.service
    old, new = old_rt(ctx), scratch_rt(ctx)
    try:
        ensure_scratch(ctx)
        dbs = fp.databases(t, old)
        a, b = both(lambda: fp.take(t, old, dbs), lambda: fp.take(t, new, dbs))
        diffs = fp.compare(a, b, skip_password=svc.role)
        state = ops.role_state(t, new, svc.role)
        if state.verifier is None or not ops.password_matches(state.verifier, new_password(ctx)):
            diffs.append(f"role {svc.role}: the copy's password is not the new one")
    except NixmigError:
        back_to_old(ctx)
        raise
    if diffs:
        back_to_old(ctx)
        raise CompareError(
            f"the copy is not exact, {len(diffs)} differences: {'; '.join(diffs[:4])}",
            where=t.name,
            hint="nothing was switched, the copy was removed and the app runs on the old database again; "
            "`nixmig apply` copies again",
        )
    return b


class Compare:
    name = "compare"
    title = "verify the copy exactly"

    def describe(self, ctx: Context) -> list[Action]:
        return [
            Action(
                "sql",
                "on both servers: every table's row count and a checksum of its rows (two 64-bit hashes of "
                "each row's text, summed: one pass, whatever the order), every sequence's last value",
            ),
            Action(
                "sql",
                "roles (attributes, passwords, memberships, settings), databases, relations, functions, "
                "constraints, ALTER SYSTEM settings, pg_hba.conf / pg_ident.conf",
            ),
            Action("check", f"role {ctx.service.role}'s password in the copy is the new one"),
            Action(
                "note",
                "any difference: the app is started again on the old database, the copy is removed; nothing switches",
            ),
        ]

    def check(self, ctx: Context) -> bool:
        return False

    def do(self, ctx: Context) -> dict[str, Any]:
        new = compare_now(ctx)
        tables = new.tables()
        ctx.extra["compared"] = True
        ctx.emit(f"exact: {len(tables)} tables, {sum(tables.values())} rows, {len(new.items)} items compared")
        return {"digest": new.digest(), "tables": len(tables), "rows": sum(tables.values()), "at": time.time()}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        return None


class SwitchVolume:
    name = "switch"
    title = "deploy: the service on the new volume"
    fleet_barrier = True  # several hosts: the shared repo moves to the new volume once all have compared

    def describe(self, ctx: Context) -> list[Action]:
        n, svc = names(ctx), ctx.service
        image = f", image {n.new_image}" if n.new_image else ""
        return [
            *(
                [
                    Action(
                        "file",
                        f"write the full patch: {svc.container} on volume {n.new_volume}{image} (external), "
                        "the password from agenix (see `nixmig patch`)",
                    )
                ]
                if ctx.migration.patch_repo
                else [Action("note", f"patch_repo = false: your config must mount {n.new_volume} now")]
            ),
            Action(
                "check",
                f"{svc.container} still refuses new connections; the copy compared again (as in compare)",
            ),
            Action("run", render(rb.docker(svc, "stop", "-t", "120", n.scratch)) + " && docker rm " + n.scratch),
            Action("deploy", f"NIXMIG_PHASE=switch {ctx.migration.deploy}"),
            Action("check", f"{svc.container} mounts {n.new_volume}; the app is started again"),
            Action(
                "file",
                f"journal: retain volume {n.old_volume} for {ctx.migration.retention_days} days "
                "(untouched: the way back)",
            ),
            Action(
                "note",
                "rollback after this point: the app stopped and new connections refused again, writes made since "
                f"the switch are copied back into {n.old_volume} first (same major version), compared again right "
                "before the deploy, never dropped without --force",
            ),
        ]

    def check(self, ctx: Context) -> bool:
        return False  # do() finds what is done (patched, switched) and carries on from there

    def do(self, ctx: Context) -> dict[str, Any]:
        t, svc, n = ctx.t, ctx.service, names(ctx)
        assert svc.container is not None
        cur = rb.inspect_container(t, svc, svc.container)
        if cur is None or not cur.mounts(n.new_volume):
            # right before the switch: still refused, nobody connected, and the old database
            # still exactly what was copied (a client the refusal does not reach, on the
            # container's own socket, would show here)
            rb.refuse_connections(t, old_rt(ctx))
            rb.terminate_clients(t, old_rt(ctx))
            compare_now(ctx)
            patched = _patch_repo(ctx, stage_only=False, new_volume=n.new_volume, new_image=n.new_image)
            if rb.stop_and_remove(t, svc, n.scratch):
                ctx.emit(f"{n.scratch} stopped and removed: {n.new_volume} is free for the service")
        else:
            patched = []
        mark = ctx.runtime.log_mark(t)
        _deploy(ctx, "switch")
        cur = rb.inspect_container(t, svc, svc.container)
        if cur is None or not cur.mounts(n.new_volume):
            raise SwitchError(
                f"after the deploy, {svc.container} does not mount {n.new_volume}",
                where=t.name,
                hint="does the deploy apply the patched config? `nixmig rollback` goes back to the old volume",
            )
        rb.wait_ready(t, svc, svc.container)
        start_app(ctx, ctx.journal.data("freeze"))
        retain = [{"kind": "volume", "name": n.old_volume, "until": until(ctx)}]
        ctx.emit(f"{svc.container} runs on {n.new_volume}; {n.old_volume} kept, untouched, until {retain[0]['until']}")
        return {
            "log_mark": mark,
            "patched": patched,
            "new_volume": n.new_volume,
            "digest": ctx.journal.data("compare").get("digest"),
            "retain": retain,
            "at": time.time(),
        }

    def can_undo(self, ctx: Context, data: dict[str, Any]) -> None:
        t, svc, n = ctx.t, ctx.service, names(ctx)
        assert svc.container is not None
        cur = rb.inspect_container(t, svc, svc.container)
        prov = ctx.journal.data("provision")
        if cur is None or not cur.mounts(n.new_volume) or ctx.extra.get("force"):
            return
        if prov.get("old_major") == prov.get("new_major"):
            return  # writes since the switch can be copied back
        if fp.take(t, ctx.runtime).digest() == data.get("digest"):
            return
        raise RollbackRefused(
            f"the database on {n.new_volume} (PostgreSQL {prov.get('new_major')}) has changed since the switch, "
            f"and cannot be copied back into PostgreSQL {prov.get('old_major')}: rolling back would drop those writes",
            where=t.name,
            hint=f"stay on the new volume; or `nixmig rollback --force` to go back without them (they stay on "
            f"{n.new_volume}, retained)",
        )

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        t, svc, n = ctx.t, ctx.service, names(ctx)
        assert svc.container is not None
        cur = rb.inspect_container(t, svc, svc.container)
        frozen = ctx.journal.data("freeze")
        if cur is not None and cur.mounts(n.new_volume):
            frozen = stop_app(ctx)
            data["refused"] = svc.container  # journaled first: a rollback run again removes the rule
            ctx.journal.save()
            rb.refuse_connections(t, old_rt(ctx))
            rb.terminate_clients(t, old_rt(ctx))
            now = fp.take(t, ctx.runtime)
            prov = ctx.journal.data("provision")
            if now.digest() == data.get("digest"):
                ctx.emit(f"no write since the switch: {n.old_volume} is as it was")
            elif prov.get("old_major") != prov.get("new_major"):
                if not ctx.extra.get("force"):
                    unfreeze(ctx)
                    start_app(ctx, frozen)
                    raise RollbackRefused(
                        f"the database on {n.new_volume} has changed since the switch and cannot be copied back "
                        "into the old major version",
                        where=t.name,
                        hint="stay on the new volume, or `nixmig rollback --force` (those writes stay on "
                        f"{n.new_volume} only)",
                    )
                ctx.emit(f"--force: the writes since the switch stay on {n.new_volume} only, not on {n.old_volume}")
                data["left_writes"] = True  # journaled now: a re-run of this undo no longer sees them
                ctx.journal.save()
            else:
                copy_back(ctx, now, frozen)
                # right before the deploy: nothing written since the copy back began
                if fp.take(t, ctx.runtime).digest() != now.digest():
                    unfreeze(ctx)
                    start_app(ctx, frozen)
                    raise CompareError(
                        f"the database on {n.new_volume} changed during the copy back, though new connections "
                        "were refused (a client on the container's own socket?)",
                        where=t.name,
                        hint=f"the service still runs on {n.new_volume}, nothing is lost; find that client, "
                        "then `nixmig rollback` again",
                    )
        _restore_repo(ctx)
        _deploy(ctx, "rollback")
        cur = rb.inspect_container(t, svc, svc.container)
        if cur is None or not cur.mounts(n.old_volume):
            raise SwitchError(
                f"after the rollback deploy, {svc.container} does not mount {n.old_volume}",
                where=t.name,
                hint="check the deploy; `nixmig rollback` again carries on",
            )
        rb.wait_ready(t, svc, svc.container)
        unfreeze(ctx)  # the old volume's pg_hba.conf has the rule of the forward freeze
        start_app(ctx, frozen)
        kept: dict[str, Any] = {"kind": "volume", "name": n.new_volume, "until": until(ctx), "after": "rollback"}
        if data.get("left_writes"):  # --force across major versions left writes on the new volume
            kept["holds_writes"] = True  # gc never removes it: only a person decides about those writes
        data["retain"] = [kept]
        ctx.journal.save()
        ctx.emit(
            f"{svc.container} runs on {n.old_volume} again; {n.new_volume} kept until {data['retain'][0]['until']}"
        )


def copy_back(ctx: Context, new_fp: fp.Fingerprint, frozen: dict[str, Any]) -> None:
    """The writes made since the switch, back into the old volume: it gets the new database's
    content (the migrated role keeps its old password there), verified exactly, before the
    old config is deployed. On any failure the service stays on the new volume."""
    t, svc, n = ctx.t, ctx.service, names(ctx)
    prov = ctx.journal.data("provision")
    ctx.emit(f"the database changed since the switch: copying it back into {n.old_volume}")
    users = t.run(rb.docker(svc, "ps", "--filter", f"volume={n.old_volume}", "--format", "{{.Names}}"))
    if users.stdout.strip() and rb.inspect_container(t, svc, n.back) is None:
        unfreeze(ctx)
        start_app(ctx, frozen)
        raise rb.RebuildError(f"volume {n.old_volume} is in use by {users.stdout.decode().split()[0]}", where=t.name)
    back = rb.runtime_of(svc, n.back)
    try:
        if rb.inspect_container(t, svc, n.back) is None:
            t.run(
                rb.run_container_argv(
                    svc,
                    name=n.back,
                    image=str(prov.get("old_image_id") or prov.get("old_image")),
                    volume=n.old_volume,
                    data_dir=str(prov.get("data_dir") or "/var/lib/postgresql/data"),
                    labels={rb.LABEL_MIGRATION: ctx.name, rb.LABEL_ROLE: "rollback"},
                    env=dict(prov.get("env") or {}),
                )
            )
        rb.wait_ready(t, svc, n.back)
        old_verifier = ops.role_state(t, back, svc.role).verifier
        cur = old_rt(ctx)
        rb.copy_roles(t, cur, back)
        if old_verifier is not None:
            ops.set_verifier(t, back, svc.role, old_verifier)  # the old config logs in with the old password
        dbs = fp.databases(t, cur)
        for gone in sorted(set(fp.databases(t, back)) - set(dbs)):
            ops.psql(t, back, f"DROP DATABASE {sql.ident(gone)} WITH (FORCE);", database="template1")
        for db in dbs:
            rb.copy_database(t, cur, back, db)
        rb.copy_config(t, cur, back)
        diffs = fp.compare(new_fp, fp.take(t, back, dbs), skip_password=svc.role)
        if diffs:
            raise CompareError(
                f"the copy back into {n.old_volume} is not exact, {len(diffs)} differences: {'; '.join(diffs[:4])}",
                where=t.name,
                hint=f"the service still runs on {n.new_volume}, nothing is lost; `nixmig rollback` tries again",
            )
    except NixmigError:
        rb.stop_and_remove(t, svc, n.back)
        unfreeze(ctx)
        start_app(ctx, frozen)
        raise
    rb.stop_and_remove(t, svc, n.back)
    tables = new_fp.tables()
    ctx.emit(f"copied back and verified: {len(tables)} tables, {sum(tables.values())} rows")


class RebuildVerify(Verify):
    def describe(self, ctx: Context) -> list[Action]:
        n = names(ctx)
        return [Action("check", f"{ctx.service.container} runs on {n.new_volume}"), *super().describe(ctx)]

    def do(self, ctx: Context) -> dict[str, Any]:
        n, svc = names(ctx), ctx.service
        assert svc.container is not None
        cur = rb.inspect_container(ctx.t, svc, svc.container)
        if cur is None or not cur.mounts(n.new_volume) or cur.mounts(n.old_volume):
            raise VerifyError(f"{svc.container} does not run on {n.new_volume} alone", where=ctx.t.name)
        prov = ctx.journal.data("provision")
        want = prov.get("new_image_id")
        if want and cur.image_id != want:
            raise VerifyError(
                f"{svc.container} runs {cur.image} ({cur.image_id[:19]}), not {prov.get('new_image')} ({want[:19]})",
                where=ctx.t.name,
            )
        ctx.emit(f"ok   {svc.container} runs on {n.new_volume} ({cur.image})")
        return super().do(ctx)


class RebuildCleanup(Cleanup):
    def describe(self, ctx: Context) -> list[Action]:
        n = names(ctx)
        return [
            *super().describe(ctx),
            Action(
                "note",
                f"the old volume {n.old_volume} stays until `nixmig gc` after {ctx.migration.retention_days} days",
            ),
        ]
