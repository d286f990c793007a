"""stage and switch: the two deploys.

stage deploys the config that only adds the agenix secret, so /run/agenix/NAME
exists while the services still use the old password; switch deploys the
patched config, so the services read the secret.
"""

from __future__ import annotations

from typing import Any

from nixmig.deploy import run_deploy
from nixmig.errors import NixmigError
from nixmig.phases.base import Action, Context


class StageError(NixmigError):
    """After the stage deploy, the secret is not on the host."""


def _deploy(ctx: Context, phase: str) -> None:
    if not ctx.migration.deploy:
        raise StageError(
            "no deploy command", where=f"migrations.{ctx.name}.deploy", hint='e.g. deploy = "deploy .#newton"'
        )
    run_deploy(ctx.migration.deploy, repo=ctx.cfg.repo, phase=phase, migration=ctx.name, emit=ctx.emit)


class Stage:
    name = "stage"
    title = "deploy 1: stage the agenix secret"

    def describe(self, ctx: Context) -> list[Action]:
        return [
            Action("deploy", f"NIXMIG_PHASE=stage {ctx.migration.deploy}"),
            Action("check", f"{ctx.secret_on_host} exists on {ctx.host_name} (0400)"),
        ]

    def check(self, ctx: Context) -> bool:
        return ctx.t.run(["test", "-s", ctx.secret_on_host], check=False).ok

    def do(self, ctx: Context) -> dict[str, Any]:
        _deploy(ctx, "stage")
        if not self.check(ctx):
            raise StageError(
                f"{ctx.secret_on_host} is missing after the deploy",
                where=ctx.t.name,
                hint="check that age.secrets includes it and that agenix could decrypt it (journalctl -u agenix)",
            )
        return {}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        _deploy(ctx, "rollback")


class Switch:
    name = "switch"
    title = "deploy 2: services read the secret"

    def describe(self, ctx: Context) -> list[Action]:
        return [Action("deploy", f"NIXMIG_PHASE=switch {ctx.migration.deploy}")]

    def check(self, ctx: Context) -> bool:
        return False  # a deploy is idempotent: re-running it is harmless

    def do(self, ctx: Context) -> dict[str, Any]:
        mark = ctx.runtime.log_mark(ctx.t)  # verify reads the server log from here
        _deploy(ctx, "switch")
        return {"log_mark": mark}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        _deploy(ctx, "rollback")
