"""rotate: ALTER ROLE to the password agenix put on the host.

The password is read from /run/agenix/NAME over the transport (never argv), a
SCRAM verifier is computed here, and only the verifier reaches psql, on stdin.
The old verifier is kept for rollback, age-encrypted to the operator.

First, that file must hold the value of the repo's NAME.age, the one switch gives the
services (nixmig.phases.hostsecret, digests compared): else rotate refuses before any
ALTER ROLE, and reopens stage so that `nixmig apply` again deploys it.
"""

from __future__ import annotations

import base64
from typing import Any

from nixmig.db import ops
from nixmig.errors import NixmigError
from nixmig.phases import hostsecret
from nixmig.phases.base import Action, Context
from nixmig.secrets.age import decrypt, encrypt
from nixmig.sensitive import Secret


class RotateError(NixmigError):
    """The password could not be rotated or restored."""


def new_password(ctx: Context) -> Secret:
    raw = ctx.t.get(ctx.secret_on_host)
    if not raw:
        raise RotateError(f"{ctx.secret_on_host} is empty", where=ctx.t.name)
    return Secret(raw)


class Rotate:
    name = "rotate"
    title = "rotate the role's password"

    def describe(self, ctx: Context) -> list[Action]:
        return [
            *hostsecret.describe(ctx),
            Action("run", f"read {ctx.secret_on_host} (over the transport, never argv)"),
            Action("sql", f"ALTER ROLE \"{ctx.service.role}\" PASSWORD 'SCRAM-SHA-256$4096:********'  (stdin)"),
            Action("file", "old verifier kept in the journal, age-encrypted to the operator"),
        ]

    def check(self, ctx: Context) -> bool:
        if hostsecret.differs(ctx):
            return False  # do() refuses
        state = ops.role_state(ctx.t, ctx.runtime, ctx.service.role)
        return state.verifier is not None and ops.password_matches(state.verifier, new_password(ctx))

    def do(self, ctx: Context) -> dict[str, Any]:
        if not ctx.operator_recipients:
            raise RotateError("no operator recipients for the rollback material", where=ctx.cfg.path)
        hostsecret.require_repo_value(ctx, self.name, RotateError)
        state = ops.role_state(ctx.t, ctx.runtime, ctx.service.role)
        old = state.verifier or Secret("")
        sealed = base64.b64encode(encrypt(old, ctx.operator_recipients)).decode()
        # Journal the sealed old verifier before changing anything: a crash right after
        # ALTER ROLE must still be able to roll back.
        ctx.journal.steps[self.name].data = {"old_verifier_age": sealed}
        ctx.journal.save()
        ops.set_password(ctx.t, ctx.runtime, ctx.service.role, new_password(ctx))
        return {"old_verifier_age": sealed}

    def can_undo(self, ctx: Context, data: dict[str, Any]) -> None:
        sealed = data.get("old_verifier_age")
        if not sealed:
            return
        if not ctx.identities:
            raise RotateError(
                "the old password is sealed to the operator: pass --identity to roll back", where=ctx.journal.path
            )
        decrypt(base64.b64decode(sealed), ctx.identities, where=ctx.journal.path)

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        sealed = data.get("old_verifier_age")
        if not sealed:
            return
        self.can_undo(ctx, data)
        old = decrypt(base64.b64decode(sealed), ctx.identities, where=ctx.journal.path)
        if len(old) == 0:
            raise RotateError(f"role {ctx.service.role!r} had no password before; restore by hand", where=ctx.t.name)
        ops.set_verifier(ctx.t, ctx.runtime, ctx.service.role, old)
