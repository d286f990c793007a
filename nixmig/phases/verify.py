"""verify: the new password works, the old one does not, no row is missing, the app is healthy."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nixmig.db import ops
from nixmig.errors import NixmigError
from nixmig.health import run_check
from nixmig.phases import hostsecret
from nixmig.phases.base import Action, Context
from nixmig.phases.rotate import new_password


class VerifyError(NixmigError):
    """A verification failed."""


class Verify:
    name = "verify"
    title = "verify"
    keeps_target = True  # no container re-created, no cluster moved: engine._observe skipped

    def describe(self, ctx: Context) -> list[Action]:
        acts = [
            Action(
                "check",
                "no 'password authentication failed' in the server log since the switch's deploy finished"
                + (f" (watched {ctx.migration.verify_watch} s)" if ctx.migration.verify_watch else ""),
            ),
            Action("check", f"log in over TCP as {ctx.service.role} with the new password"),
            Action("check", "the old password is refused"),
            Action("sql", "every table counted at the backup is there with at least its row count"),
        ]
        acts += health_actions(ctx)
        return acts

    def prepare(self, ctx: Context) -> None:
        """psycopg, for the login below, loaded ahead (engine._prepare)."""
        from nixmig.db import connect  # noqa: F401

    def check(self, ctx: Context) -> bool:
        return False

    def do(self, ctx: Context) -> dict[str, Any]:
        from nixmig.db.connect import try_login

        t, svc = ctx.t, ctx.service
        # the stored verifier and every table's row count (one psql, which reads every row) beside
        # the log and the logins below: no login of its own, so nothing it does reaches the log
        with ThreadPoolExecutor(1, thread_name_prefix="nixmig-count") as pool:
            reading = pool.submit(ops.role_state_and_snapshot, t, ctx.runtime, svc.role)
            # the server log first: verify's own old-password probe below must not count
            rows: list[dict[str, Any]] = [log_row(ctx, after_deploy=True)]
            host, port = ctx.runtime.endpoint(t)
            pw = new_password(ctx)
            with t.forward(host, port) as (lhost, lport):
                reason = try_login(lhost, lport, svc.role, pw, svc.database)
                rows.append({"check": "new password logs in", "ok": reason is None, "detail": reason or ""})
                if ctx.old_password is not None and ctx.old_password != pw:
                    old = try_login(lhost, lport, svc.role, ctx.old_password, svc.database)
                    rows.append(
                        {"check": "old password refused", "ok": old is not None, "detail": old or "it still works"}
                    )
            state, counts = reading.result()
        rows.append(
            {
                "check": "stored verifier is the new password's",
                "ok": state.verifier is not None and ops.password_matches(state.verifier, pw),
                "detail": "",
            }
        )
        row, after = tables_row(ctx, counts)
        rows += [row, *health_rows(ctx)]
        conclude(ctx, rows)
        return {"checks": rows, "at": time.time(), "rows_now": after}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        return None


def log_row(ctx: Context, *, after_deploy: bool = False) -> dict[str, Any]:
    """No 'password authentication failed' in the server log since the switch's mark, or since its
    deploy finished (``after_deploy``: rotate, whose apps are refused until the deploy restarts them
    onto the new password), after watching it ``verify_watch`` seconds from there."""
    data = ctx.journal.data("switch")
    deployed = data.get("deployed_mark") if after_deploy else None
    watch = ctx.migration.verify_watch - (time.time() - float(data.get("deployed_at", 0)))
    if watch > 0:
        ctx.emit(f"watching the server log {watch:.0f} s for clients still on the old password (verify_watch)")
        time.sleep(watch)
    log = ctx.runtime.log_since(ctx.t, str(deployed or data.get("log_mark", "0")))
    since = "since the switch's deploy finished" if deployed else "since the switch"
    if log is None:
        return {"check": f"server log {since}", "ok": True, "detail": "not readable, not checked"}
    fails = sum("password authentication failed" in line for line in log.splitlines())
    return {
        "check": f"no authentication failure in the server log {since}",
        "ok": fails == 0,
        "detail": f"{fails} failures: a client still on the old password (one nixmig did not patch?)" if fails else "",
    }


def baseline(ctx: Context) -> tuple[dict[str, int], str] | None:
    """Every table's row count before the switch, and when it was read: the backup's (counted
    beside pg_dump, or in the dump's own snapshot with --restore-test), else preflight's (a
    journal an older nixmig wrote); None when neither was counted."""
    for phase, when in (("backup", "at the backup"), ("preflight", "at preflight")):
        counts = ctx.journal.data(phase).get("tables")
        if isinstance(counts, dict):
            return {str(k): int(v) for k, v in counts.items()}, when
    return None


def tables_row(ctx: Context, now: dict[str, int] | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """Every table counted before the switch (:func:`baseline`) is there with at least its row
    count; the counts now (``now``: just read, else read here)."""
    after = now if now is not None else ops.snapshot(ctx.t, ctx.runtime)
    base = baseline(ctx)
    if base is None:
        check = f"{len(after)} tables, {sum(after.values())} rows now"
        return {"check": check, "ok": True, "detail": "no count before the switch in the journal: not compared"}, after
    before, when = base
    missing = [f"{k} ({after.get(k, 'gone')} < {v})" for k, v in before.items() if after.get(k, -1) < v]
    row = {
        "check": f"{len(before)} tables, {sum(before.values())} rows {when}, now {sum(after.values())}",
        "ok": not missing,
        "detail": ", ".join(missing[:5]),
    }
    return row, after


def health_actions(ctx: Context) -> list[Action]:
    """What :func:`health_rows` checks, as the plan says it."""
    acts = [
        Action("check", f"{ctx.host.agenix_dir}/{name} holds the value of {name}.age (also: {var})")
        for var, name in ctx.migration.also.items()
    ]
    return acts + [Action("check", f"health: {h.url or h.command}") for h in ctx.migration.health_checks]


def health_rows(ctx: Context) -> list[dict[str, Any]]:
    """The checks every strategy's verify ends with: each companion secret (also) on the host
    holds its repo value, then the health checks of nixmig.toml."""
    rows = hostsecret.also_rows(ctx)
    for hc in ctx.migration.health_checks:
        why = run_check(hc)
        rows.append({"check": f"health {hc.url or hc.command}", "ok": why is None, "detail": why or ""})
    return rows


ROTATE_HINT = "the backup is in .nixmig/backups; `nixmig rollback` restores the old password and config"


def conclude(ctx: Context, rows: list[dict[str, Any]], *, hint: str = ROTATE_HINT) -> None:
    """Print every row; raise VerifyError naming the failed ones (``hint``: what to do then)."""
    for r in rows:
        ctx.emit(f"{'ok ' if r['ok'] else 'FAIL'} {r['check']}{'  — ' + r['detail'] if r['detail'] else ''}")
    failed = [r["check"] for r in rows if not r["ok"]]
    if failed:
        raise VerifyError(
            "verification failed: " + "; ".join(failed),
            where=ctx.t.name,
            hint=hint,
        )
