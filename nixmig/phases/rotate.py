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
from dataclasses import dataclass
from typing import Any

from nixmig.db import ops
from nixmig.errors import NixmigError
from nixmig.phases import hostsecret
from nixmig.phases.base import Action, Context
from nixmig.secrets.age import decrypt, encrypt
from nixmig.sensitive import Secret


class RotateError(NixmigError):
    """The password could not be rotated or restored."""


def secret_value(raw: bytes) -> bytes:
    """A secret's value from its file's bytes: less the final line breaks, as every reader of it
    takes it (the shell's $(< FILE), the images' *_FILE, psql's backquote, nixmig's renderers:
    nixmig.nixsrc's percent-encode.sh.j2); `agenix -e` in an editor leaves a newline at the end."""
    return raw.rstrip(b"\n")


def new_password(ctx: Context) -> Secret:
    raw = secret_value(ctx.t.get(ctx.secret_on_host))
    if not raw:
        raise RotateError(f"{ctx.secret_on_host} is empty (or only line breaks)", where=ctx.t.name)
    return Secret(raw)


_READ = 'if [ ! -e "$1" ]; then exit 3; fi; exec cat -- "$1"'  # exit 3: no such file
_FACTS = "rotate_facts"  # Context.extra: what check() read, for do() right after it


@dataclass(frozen=True)
class _Facts:
    """What rotate reads before it changes anything, one round trip each: the host's
    secret (None: missing or empty) and its comparison with the repo's value (digests, the
    host's made here from the value read: rotate reads it anyway; None on-host), the role."""

    password: Secret | None
    checked: hostsecret.HostSecret | None
    role: ops.RoleState | None  # None: not read, the host's secret is known to differ


def _facts(ctx: Context) -> _Facts:
    path = ctx.secret_on_host
    r = ctx.t.run(["sh", "-c", _READ, "sh", path], check=False)
    if not r.ok and r.exit_code != 3:  # stderr only: stdout may hold the secret
        why = " | ".join(r.stderr.decode("utf-8", "replace").split("\n")[-3:]).strip() or f"exit {r.exit_code}"
        raise RotateError(f"cannot read {path}: {why}", where=ctx.t.name)
    checked = None if ctx.on_host else hostsecret.compare(ctx, Secret(r.stdout if r.ok else b""))  # the file's bytes
    value = secret_value(r.stdout) if r.ok else b""
    password = Secret(value) if value else None
    if checked is not None and checked.differs:
        return _Facts(password, checked, None)  # do() refuses: the database is not asked
    return _Facts(password, checked, ops.role_state(ctx.t, ctx.runtime, ctx.service.role))


class Rotate:
    name = "rotate"
    title = "rotate the role's password"
    keeps_target = True  # no container re-created, no cluster moved: engine._observe skipped

    def describe(self, ctx: Context) -> list[Action]:
        return [
            *hostsecret.describe(ctx),
            Action("run", f"read {ctx.secret_on_host} (over the transport, never argv)"),
            Action("sql", f"ALTER ROLE \"{ctx.service.role}\" PASSWORD 'SCRAM-SHA-256$4096:********'  (stdin)"),
            Action("file", "old verifier kept in the journal, age-encrypted to the operator"),
        ]

    def check(self, ctx: Context) -> bool:
        facts = _facts(ctx)
        if facts.checked is not None and facts.checked.differs:
            ctx.extra[_FACTS] = facts
            return False  # do() refuses
        verifier = facts.role.verifier if facts.role is not None else None
        done = verifier is not None and facts.password is not None and ops.password_matches(verifier, facts.password)
        if not done:
            ctx.extra[_FACTS] = facts  # do() runs next (engine.apply): the same facts, not read twice
        return done

    def do(self, ctx: Context) -> dict[str, Any]:
        facts = ctx.extra.pop(_FACTS, None)
        if not ctx.operator_recipients:
            raise RotateError("no operator recipients for the rollback material", where=ctx.cfg.path)
        if not isinstance(facts, _Facts):
            facts = _facts(ctx)
        hostsecret.require_repo_value(ctx, self.name, RotateError, checked=facts.checked)
        if facts.password is None:
            raise RotateError(f"{ctx.secret_on_host} is missing or empty", where=ctx.t.name)
        role = facts.role or ops.role_state(ctx.t, ctx.runtime, ctx.service.role)
        old = role.verifier or Secret("")
        sealed = base64.b64encode(encrypt(old, ctx.operator_recipients)).decode()
        # Journal the sealed old verifier before changing anything: a crash right after
        # ALTER ROLE must still be able to roll back.
        ctx.journal.steps[self.name].data = {"old_verifier_age": sealed}
        ctx.journal.save()
        ops.set_password(ctx.t, ctx.runtime, ctx.service.role, facts.password)
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
