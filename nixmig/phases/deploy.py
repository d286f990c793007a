"""stage and switch: the two deploys.

stage deploys the config that only adds the agenix secret, so /run/agenix/NAME
exists while the services still use the old password; switch deploys the
patched config, so the services read the secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nixmig.deploy import run_deploy
from nixmig.errors import NixmigError
from nixmig.phases.base import Action, Context


class StageError(NixmigError):
    """After the stage deploy, the secret is not on the host."""


def _patch_repo(ctx: Context, *, stage_only: bool) -> list[str]:
    """Write the stage config (age.secrets only) or the full patch into the repo.

    The originals are saved once under .nixmig/patch/MIGRATION/ for rollback. The plan
    is recomputed from the files as they are, so a half-patched tree converges.
    """
    if not ctx.migration.patch_repo:
        return []
    from nixmig.nixsrc import patch, validate

    repo = ctx.cfg.repo
    sources = patch.read_sources(repo)
    plan = patch.plan(sources, patch.spec_for(ctx.cfg, ctx.name))
    if plan.manual:
        m = plan.manual[0]
        raise StageError(
            f"a change nixmig cannot make by itself: {m.what}",
            where=m.where,
            hint=f"see `nixmig patch --explain` ({len(plan.manual)} items), apply by hand, then `nixmig apply` again",
        )
    results = plan.results(sources, stage_only=stage_only)
    if not results:
        return []
    saved = _originals_dir(ctx)
    for name in results:
        keep = saved / f"{name}.orig"  # not *.nix: no tool should take these for sources
        if not keep.exists():
            keep.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            keep.write_bytes(sources[name])
    validate.write_all(repo, results)
    ctx.emit(f"patched {', '.join(sorted(results))} ({'stage: age.secrets only' if stage_only else 'full'})")
    return sorted(results)


def _originals_dir(ctx: Context) -> Path:
    return ctx.state_dir / "patch" / ctx.name / "originals"


def _restore_repo(ctx: Context) -> None:
    saved = _originals_dir(ctx)
    if not saved.is_dir():
        return
    from nixmig.fsutil import write_atomic

    restored = []
    for keep in sorted(saved.rglob("*.orig")):
        name = keep.relative_to(saved).as_posix().removesuffix(".orig")
        write_atomic(ctx.cfg.repo / name, keep.read_bytes())
        restored.append(name)
    ctx.emit(f"restored {', '.join(restored)} to their state before the migration")


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
            *(
                [Action("file", "write the stage config: only age.secrets." + ctx.migration.secret)]
                if ctx.migration.patch_repo
                else []
            ),
            Action("deploy", f"NIXMIG_PHASE=stage {ctx.migration.deploy}"),
            Action("check", f"{ctx.secret_on_host} exists on {ctx.host_name} (0400)"),
        ]

    def check(self, ctx: Context) -> bool:
        return ctx.t.run(["test", "-s", ctx.secret_on_host], check=False).ok

    def do(self, ctx: Context) -> dict[str, Any]:
        patched = _patch_repo(ctx, stage_only=True)
        _deploy(ctx, "stage")
        if not self.check(ctx):
            raise StageError(
                f"{ctx.secret_on_host} is missing after the deploy",
                where=ctx.t.name,
                hint="check that age.secrets includes it and that agenix could decrypt it (journalctl -u agenix)",
            )
        return {"patched": patched}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        _restore_repo(ctx)
        _deploy(ctx, "rollback")


class Switch:
    name = "switch"
    title = "deploy 2: services read the secret"

    def describe(self, ctx: Context) -> list[Action]:
        return [
            *([Action("file", "write the full patch (see `nixmig patch`)")] if ctx.migration.patch_repo else []),
            Action("deploy", f"NIXMIG_PHASE=switch {ctx.migration.deploy}"),
        ]

    def check(self, ctx: Context) -> bool:
        return False  # a deploy is idempotent: re-running it is harmless

    def do(self, ctx: Context) -> dict[str, Any]:
        patched = _patch_repo(ctx, stage_only=False)
        mark = ctx.runtime.log_mark(ctx.t)  # verify reads the server log from here
        _deploy(ctx, "switch")
        return {"log_mark": mark, "patched": patched}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        _restore_repo(ctx)
        _deploy(ctx, "rollback")
