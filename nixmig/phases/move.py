"""strategy move: the service moves onto the agenix secret with its current value.

For a secret nixmig cannot rotate (a MySQL/MariaDB password today) or that is no database
password at all (an API token, a redis password, a k3s token): `nixmig secret new NAME
--from FILE:LINE` has put the value the Nix file hardcodes into NAME.age, and the phases are
the deploys and the checks only, with NO database change (no query, no backup, no ALTER):

- preflight: secrets.nix lists NAME.age, encrypted to the host's key, and an identity here
  decrypts it (verify compares digests); nothing on the host;
- stage (nixmig.phases.deploy.Stage): deploys the config that declares age.secrets.NAME; in
  effect only when the host's /run/agenix/NAME holds the repo's value (digests compared);
- switch: refuses, changing nothing, when the host's file is not the repo's value (stage is
  reopened: apply again deploys it first); else deploys the patched config (the services read
  the secret); no server log mark;
- verify: the host's file holds the repo's value (digests, never the value) and the
  migration's health checks pass.

Rollback: the repo's original files back and a deploy (switch's and stage's undo).

The value has been public in the repository's history: the plan and the end of apply say
so, and how to rotate it (``ROTATE_LATER``).
"""

from __future__ import annotations

import time
from typing import Any

from nixmig.phases import hostsecret
from nixmig.phases.base import Action, Context, Phase
from nixmig.phases.deploy import Stage, StageError, Switch, _deploy, _patch_repo
from nixmig.phases.preflight import Preflight, PreflightError, also_actions
from nixmig.phases.verify import conclude, health_actions, health_rows


def rotate_later(ctx: Context) -> str:
    """The warning a move ends with: the value is public, and how to replace it."""
    secret = ctx.migration.secret
    return (
        f"the value of {secret} has been public in the repository's history (it was hardcoded in a Nix file): "
        "rotate it: issue a new value where it is checked (the database's ALTER USER, the token's issuer), "
        f"then `nixmig secret new {secret} --force --stdin` with it and deploy"
    )


class MovePreflight:
    name = "preflight"
    title = "preflight checks (no database)"

    def describe(self, ctx: Context) -> list[Action]:
        acts = [Action("check", "strategy move: no database is queried, backed up or changed; the value stays")]
        if not ctx.on_host:
            acts.append(Action("check", f"secrets.nix lists {ctx.migration.secret}.age for this host's key"))
            acts.append(Action("check", f"{ctx.migration.secret}.age decrypts here (-i): verify compares digests"))
        return [*acts, *also_actions(ctx)]

    def check(self, ctx: Context) -> bool:
        return False  # facts are re-read on every run

    def do(self, ctx: Context) -> dict[str, Any]:
        if ctx.on_host:  # the repo is not on the host; agenix's file is checked by stage
            return {}
        Preflight()._secret_listed(ctx)
        digest, why = hostsecret.repo_digest(ctx)
        if digest is None:
            raise PreflightError(
                f"cannot decrypt {hostsecret.shown(ctx, hostsecret.age_file(ctx))} here ({why}): "
                "nothing could confirm the host gets its value",
                where=ctx.cfg.path,
                hint="pass -i with a key listed for it in secrets.nix",
            )
        return {}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        return None


class MoveSwitch(Switch):
    """deploy 2 without the database server's log mark (move reads no server log)."""

    def describe(self, ctx: Context) -> list[Action]:
        return [*hostsecret.describe(ctx), *super().describe(ctx)]

    def do(self, ctx: Context) -> dict[str, Any]:
        hostsecret.require_repo_value(
            ctx,
            "switch",
            StageError,
            consequence="the services would get another value than the one they use today",
            unknown_refuses=True,
        )
        patched = _patch_repo(ctx, stage_only=False)
        _deploy(ctx, "switch")
        return {"patched": patched}


class MoveVerify:
    name = "verify"
    title = "verify (the host's secret, the health checks)"

    def describe(self, ctx: Context) -> list[Action]:
        acts: list[Action] = []
        if ctx.on_host:
            acts.append(Action("check", f"{ctx.secret_on_host} exists and is not empty"))
        else:
            acts.append(
                Action(
                    "check",
                    f"sha256 of {ctx.secret_on_host} on {ctx.host_name} = sha256 of {ctx.migration.secret}.age "
                    "decrypted here (needs an identity that decrypts it: -i)",
                )
            )
        acts += health_actions(ctx)
        if not ctx.migration.health_checks:
            acts.append(Action("check", "no health checks in nixmig.toml: the service itself is not checked"))
        acts.append(Action("note", rotate_later(ctx)))
        return acts

    def check(self, ctx: Context) -> bool:
        return False

    def do(self, ctx: Context) -> dict[str, Any]:
        rows = [hostsecret.host_file_row(ctx), *health_rows(ctx)]
        conclude(
            ctx, rows, hint="no database was changed; `nixmig rollback` restores the repo's files and deploys them"
        )
        ctx.emit("note: " + rotate_later(ctx))
        return {"checks": rows, "at": time.time()}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        return None


def phases() -> list[Phase]:
    return [MovePreflight(), Stage(), MoveSwitch(), MoveVerify()]
