"""strategy dual-role: move the services to a second login role, then retire the old password.

The "alternating users" rotation of managed secret stores, so that no login ever
fails: at every moment, the credentials each service holds work.

1. add-role: a second role (migrations.NAME.new_role, default ROLE_v2) gets the new
   password from /run/agenix/NAME, membership in the old role and ``SET role`` to it
   (so what the services create keeps the old owner), and the old role's attributes
   and settings (nixmig.db.roles). The old password still works.
2. switch: the patched config makes the services connect as the new role (the env
   file's URLs, the module's ``database.user``), deployed.
3. verify: the new role logs in with the new password and acts as the old one, no
   client is still logged in as the old role over TCP, no authentication failure
   since the switch, every table has at least its row count, health checks.
4. retire: ``ALTER ROLE old PASSWORD NULL`` (its verifier sealed to the operator
   first). The old role stays, as the owner of the objects.

Rollback, in reverse: the old password back, the old config deployed (the services
connect as the old role again), then the new role dropped once nothing is logged in
as it (what it owns reassigned to the old role).
"""

from __future__ import annotations

import base64
import time
from typing import Any

from nixmig.config import new_role_for
from nixmig.db import ops, roles
from nixmig.errors import NixmigError
from nixmig.phases import hostsecret
from nixmig.phases.backup import Backup
from nixmig.phases.base import Action, Context, Phase
from nixmig.phases.cleanup import Cleanup
from nixmig.phases.deploy import Stage, Switch
from nixmig.phases.preflight import Preflight, PreflightError
from nixmig.phases.rotate import new_password
from nixmig.phases.verify import conclude, health_actions, health_rows, log_row, tables_row
from nixmig.secrets.age import decrypt, encrypt
from nixmig.sensitive import Secret

# how long verify waits for the services' old sessions to end after the switch, and
# rollback for the new role's sessions to end after the services moved back
OLD_SESSIONS_WAIT = 15.0
NEW_SESSIONS_WAIT = 30.0


class DualRoleError(NixmigError):
    """The second role could not be made, used, or removed."""


def phases() -> list[Phase]:
    return [DualPreflight(), Backup(), Stage(), AddRole(), Switch(), DualVerify(), Retire(), Cleanup()]


def _new(ctx: Context) -> str:
    return new_role_for(ctx.migration, ctx.service)


def _mark(ctx: Context) -> str:
    return roles.mark(ctx.service.role, ctx.name)


class DualPreflight(Preflight):
    """preflight, plus: the new role is free (or nixmig's own from an earlier run), the admin can make it."""

    def describe(self, ctx: Context) -> list[Action]:
        return [
            *super().describe(ctx),
            Action("check", f"role {_new(ctx)!r} does not exist (or is the one nixmig made for this migration)"),
            Action("check", f"{ctx.service.admin_role!r} is a superuser (it creates the role and grants it)"),
        ]

    def do(self, ctx: Context) -> dict[str, Any]:
        data = super().do(ctx)
        t, rt, new = ctx.t, ctx.runtime, _new(ctx)
        existing = roles.info(t, rt, new)
        if existing.exists and existing.comment != _mark(ctx):
            raise PreflightError(
                f"role {new!r} already exists and nixmig did not create it",
                where=f"{t.name}: {rt.describe()}",
                hint=f"set migrations.{ctx.name}.new_role in nixmig.toml to a name that is free",
            )
        if ops.psql(t, rt, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user;").strip() != "t":
            raise PreflightError(
                f"{ctx.service.admin_role!r} is not a superuser: it cannot make a role acting as {ctx.service.role!r}",
                where=f"{t.name}: {rt.describe()}",
                hint="set services.<name>.admin_role to a superuser",
            )
        return {**data, "new_role": new}


class AddRole:
    name = "add-role"
    title = "second login role with the new password"

    def describe(self, ctx: Context) -> list[Action]:
        new, old = _new(ctx), ctx.service.role
        attrs = "/".join(roles.ATTRIBUTES)
        return [
            *hostsecret.describe(ctx),
            Action("run", f"read {ctx.secret_on_host} (over the transport, never argv)"),
            Action(
                "sql",
                f'CREATE ROLE "{new}" LOGIN; ALTER ROLE "{new}" WITH LOGIN INHERIT <{attrs}, CONNECTION LIMIT '
                f"as \"{old}\" has them> PASSWORD '{roles.MASKED_VERIFIER}'  (stdin, one transaction)",
            ),
            Action("sql", f'GRANT "{old}" TO "{new}"; ALTER ROLE "{new}" SET role = \'{old}\'  (new objects: "{old}")'),
            Action("sql", f'copy the settings of "{old}" (ALTER ROLE … [IN DATABASE …] SET …) to "{new}"'),
            Action("check", f'log in over TCP as "{new}" with the new password; the session acts as "{old}"'),
        ]

    def check(self, ctx: Context) -> bool:
        if hostsecret.differs(ctx):
            return False  # do() refuses
        info = roles.info(ctx.t, ctx.runtime, _new(ctx))
        return (
            info.exists
            and info.comment == _mark(ctx)
            and ctx.service.role in info.member_of
            and info.session_role == ctx.service.role
            and info.verifier is not None
            and ops.password_matches(info.verifier, new_password(ctx))
        )

    def do(self, ctx: Context) -> dict[str, Any]:
        from nixmig.db.connect import login_roles

        hostsecret.require_repo_value(ctx, self.name, DualRoleError)  # before any change
        t, rt, svc, new = ctx.t, ctx.runtime, ctx.service, _new(ctx)
        old = roles.info(t, rt, svc.role)
        if not old.exists:
            raise DualRoleError(f"role {svc.role!r} does not exist", where=f"{t.name}: {rt.describe()}")
        cur = roles.info(t, rt, new)
        if cur.exists and cur.comment != _mark(ctx):
            raise DualRoleError(
                f"role {new!r} already exists and nixmig did not create it",
                where=f"{t.name}: {rt.describe()}",
                hint=f"set migrations.{ctx.name}.new_role to a free name",
            )
        password = new_password(ctx)
        roles.create(t, rt, old, new, password, _mark(ctx), exists=cur.exists)
        # prove it over TCP, as the services will log in, before any of them is moved to it
        host, port = rt.endpoint(t)
        with t.forward(host, port) as (lhost, lport):
            reason, current = login_roles(lhost, lport, new, password, svc.database)
        if reason is not None:
            raise DualRoleError(
                f"role {new!r} cannot log in over TCP with the new password: {reason}",
                where=f"{t.name}: {rt.describe()}",
                hint=f"pg_hba.conf must let {new!r} in as it lets {svc.role!r}; fix it and apply again, or roll back",
            )
        if current != svc.role:
            raise DualRoleError(
                f"a session of {new!r} acts as {current!r}, not {svc.role!r}",
                where=f"{t.name}: {rt.describe()}",
                hint=f"check `ALTER ROLE {new} SET role` and the membership; then apply again, or roll back",
            )
        has = ", ".join(old.attributes) or "no special attributes"
        ctx.emit(f"role {new} logs in with the new password and acts as {svc.role} ({has})")
        return {"role": new, "created": not cur.exists, "attributes": list(old.attributes)}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        t, rt, old, new = ctx.t, ctx.runtime, ctx.service.role, _new(ctx)
        info = roles.info(t, rt, new)
        if not info.exists:
            return
        if info.comment != _mark(ctx):
            ctx.emit(f"role {new} was not created by nixmig for this migration: left as it is")
            return
        left = roles.wait_no_sessions(t, rt, new, timeout=NEW_SESSIONS_WAIT)
        if left:
            raise DualRoleError(
                f"{len(left)} sessions are still logged in as {new!r} (from {', '.join(sorted(set(left)))}): "
                "dropping it would cut them off",
                where=f"{t.name}: {rt.describe()}",
                hint=f"the rollback deploy should have moved them back to {old!r}; stop them, then rollback again",
            )
        dbs = roles.drop(t, rt, new, old)
        ctx.emit(f"dropped role {new}" + (f" (what it owned in {', '.join(dbs)} now belongs to {old})" if dbs else ""))


class DualVerify:
    name = "verify"
    title = "verify"

    def describe(self, ctx: Context) -> list[Action]:
        new, old = _new(ctx), ctx.service.role
        return [
            Action("check", "no 'password authentication failed' in the server log since the switch"),
            Action("check", f'log in over TCP as "{new}" with the new password; the session acts as "{old}"'),
            Action("check", f'no client is logged in as "{old}" over TCP any more (waits {OLD_SESSIONS_WAIT:.0f}s)'),
            Action("sql", "every table counted at the backup is there with at least its row count"),
            *health_actions(ctx),
        ]

    def check(self, ctx: Context) -> bool:
        return False

    def do(self, ctx: Context) -> dict[str, Any]:
        from nixmig.db.connect import login_roles

        t, rt, svc, new = ctx.t, ctx.runtime, ctx.service, _new(ctx)
        rows: list[dict[str, Any]] = [log_row(ctx)]
        pw = new_password(ctx)
        host, port = rt.endpoint(t)
        with t.forward(host, port) as (lhost, lport):
            reason, current = login_roles(lhost, lport, new, pw, svc.database)
        rows.append({"check": f"{new} logs in with the new password", "ok": reason is None, "detail": reason or ""})
        rows.append(
            {
                "check": f"{new}'s sessions act as {svc.role} (objects they create are owned by {svc.role})",
                "ok": current == svc.role,
                "detail": "" if current == svc.role or reason else f"current_user is {current!r}",
            }
        )
        info = roles.info(t, rt, new)
        rows.append(
            {
                "check": f"stored verifier of {new} is the new password's",
                "ok": info.verifier is not None and ops.password_matches(info.verifier, pw),
                "detail": "",
            }
        )
        left = roles.wait_no_sessions(t, rt, svc.role, timeout=OLD_SESSIONS_WAIT, tcp_only=True)
        rows.append(
            {
                "check": f"no client logged in as {svc.role} over TCP any more",
                "ok": not left,
                "detail": f"{len(left)} from {', '.join(sorted(set(left)))}: they would fail to log in once its "
                "password is retired"
                if left
                else "",
            }
        )
        row, after = tables_row(ctx)
        rows += [row, *health_rows(ctx)]
        conclude(ctx, rows)
        return {"checks": rows, "at": time.time(), "rows_now": after}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        return None


class Retire:
    name = "retire"
    title = "disable the old role's password"

    def describe(self, ctx: Context) -> list[Action]:
        old = ctx.service.role
        return [
            Action("file", f'the verifier of "{old}" kept in the journal, age-encrypted to the operator'),
            Action("sql", f'ALTER ROLE "{old}" PASSWORD NULL  (it keeps its objects; socket logins are unchanged)'),
            Action("check", f'"{old}" has no password any more'),
        ]

    def check(self, ctx: Context) -> bool:
        return ops.role_state(ctx.t, ctx.runtime, ctx.service.role).verifier is None

    def do(self, ctx: Context) -> dict[str, Any]:
        if not ctx.operator_recipients:
            raise DualRoleError("no operator recipients for the rollback material", where=ctx.cfg.path)
        t, rt, old = ctx.t, ctx.runtime, ctx.service.role
        state = ops.role_state(t, rt, old)
        sealed = base64.b64encode(encrypt(state.verifier or Secret(""), ctx.operator_recipients)).decode()
        # journaled before the change: a run killed right after it can still roll back
        ctx.journal.steps[self.name].data = {"old_verifier_age": sealed}
        ctx.journal.save()
        roles.disable_password(t, rt, old)
        if not self.check(ctx):
            raise DualRoleError(f"role {old!r} still has a password after ALTER ROLE", where=t.name)
        if ctx.old_password is not None:
            from nixmig.db.connect import try_login

            host, port = rt.endpoint(t)
            with t.forward(host, port) as (lhost, lport):
                refused = try_login(lhost, lport, old, ctx.old_password, ctx.service.database)
            if refused is None:
                raise DualRoleError(
                    f"the old password of {old!r} still logs in after PASSWORD NULL",
                    where=f"{t.name}: {rt.describe()}",
                    hint="pg_hba.conf lets it in without a password (trust) over TCP: fix that",
                )
        ctx.emit(f"{old}: password disabled (the role stays, as the owner of its objects)")
        return {"old_verifier_age": sealed}

    def can_undo(self, ctx: Context, data: dict[str, Any]) -> None:
        if not data.get("old_verifier_age"):
            return
        if not ctx.identities:
            raise DualRoleError(
                f"the old password of {ctx.service.role!r} is sealed to the operator: pass --identity to roll back",
                where=ctx.journal.path,
            )
        decrypt(base64.b64decode(data["old_verifier_age"]), ctx.identities, where=ctx.journal.path)

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        sealed = data.get("old_verifier_age")
        if not sealed:
            return
        self.can_undo(ctx, data)
        old = decrypt(base64.b64decode(sealed), ctx.identities, where=ctx.journal.path)
        if len(old) == 0:
            ctx.emit(f"{ctx.service.role}: had no password before the migration; left without one")
            return
        ops.set_verifier(ctx.t, ctx.runtime, ctx.service.role, old)
