"""stage and switch: the two deploys.

stage deploys the config that only adds the agenix secret, so /run/agenix/NAME
exists while the services still use the old password; switch deploys the
patched config, so the services read the secret.

On-host (ctx.on_host) the activation that runs nixmig is the deploy: agenix has
already written the secret, the app unit starts after nixmig's, and the repo is
not on the host. stage only checks the secret is there; switch marks the server
log; neither deploys nor patches.

Several hosts share one repo: its patch is written under a process-wide lock, the
full patch only once every host of the run has rotated (Switch.fleet_barrier), and
the originals are restored only when the last host using the patch is rolled back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nixmig.deploy import run_deploy
from nixmig.errors import NixmigError
from nixmig.patchstate import PatchState
from nixmig.phases import hostsecret
from nixmig.phases.base import Action, Context
from nixmig.remote.base import traced

if TYPE_CHECKING:
    from nixmig.nixsrc.patch import Plan


class StageError(NixmigError):
    """After the stage deploy, the secret is not on the host."""


def _patch_repo(ctx: Context, *, stage_only: bool, **volume: str | None) -> list[str]:
    """Write the stage config (age.secrets only) or the full patch into the repo.

    The originals are saved once under .nixmig/patch/MIGRATION/ for rollback. The plan
    is recomputed from the files as they are, so a half-patched tree converges.
    ``volume``: new_volume / new_image, strategy rebuild's switch of the data volume.
    """
    if not ctx.migration.patch_repo or ctx.on_host:
        return []
    with _REPO_LOCK:
        return _patch_repo_locked(ctx, stage_only=stage_only, **volume)


_REPO_LOCK = threading.Lock()  # hosts of one run patch the same files


def _patch_repo_locked(ctx: Context, *, stage_only: bool, **volume: str | None) -> list[str]:
    from nixmig.nixsrc import patch, validate

    repo = ctx.cfg.repo
    sources = patch.read_sources(repo)
    if stage_only:
        rewound = _stage_from_originals(ctx, sources)
        if rewound:
            return rewound
    texts = patch.read_texts(repo, sources)
    ahead = None if volume else _planned_ahead(ctx, sources, texts, stage_only=stage_only)
    if ahead is not None:
        plan, results, checked = ahead.plan, ahead.results, ahead.checked
    else:
        plan = patch.plan(sources, patch.spec_for(ctx.cfg, ctx.name, **volume), texts=texts)
        results, checked = plan.results(sources, stage_only=stage_only), None
    if plan.manual:
        m = plan.manual[0]
        raise StageError(
            f"a change nixmig cannot make by itself: {m.what}",
            where=m.where,
            hint=f"see `nixmig patch --explain` ({len(plan.manual)} items), apply by hand, then `nixmig apply` again",
        )
    if not results:
        return []
    state = _state(ctx)  # originals saved atomically with their digests, what is written recorded first
    for name in results:
        state.keep_original(name, sources[name])
    state.will_write(results)
    validate.write_all(repo, results, checked=checked)
    ctx.emit(f"patched {', '.join(sorted(results))} ({'stage: age.secrets only' if stage_only else 'full'})")
    return sorted(results)


def _stage_from_originals(ctx: Context, sources: dict[str, bytes]) -> list[str]:
    """A host still to stage while the repo already holds the full patch (another host of
    the fleet switched in an earlier run): deploying the tree as it is would restart this
    host's services onto the secret before its role has it. Write the stage config again,
    derived from the saved originals; the switch phase writes the full patch back."""
    state = _state(ctx)
    if not state.exists():
        return []
    from nixmig.nixsrc import patch, validate

    originals = state.originals()  # checked against their digests: a damaged one is never used
    base = {**sources, **originals}
    plan = patch.plan(base, patch.spec_for(ctx.cfg, ctx.name))
    full = plan.results(base)
    if not full or any(sources.get(name) != data for name, data in full.items()):
        return []  # not at the full patch: the normal path (recomputed from the files) applies
    staged = plan.results(base, stage_only=True)
    back = {name: staged.get(name, originals.get(name, b"")) for name in full}
    state.will_write(back)
    validate.write_all(ctx.cfg.repo, back)
    ctx.emit(f"repo was at the full patch (other hosts switched): stage config again in {', '.join(sorted(back))}")
    return sorted(back)


def _prepare_patch(ctx: Context) -> None:
    """What _patch_repo uses, loaded ahead (engine._prepare): the patcher, the Nix parser and
    the templates (tree-sitter-nix and jinja2); then the stage's and the switch's patches
    themselves, planned and parsed ahead (:func:`_plan_ahead`)."""
    if not ctx.migration.patch_repo or ctx.on_host:
        return
    from nixmig.nixsrc import parse, patch, render, validate  # noqa: F401 - loaded for _patch_repo_locked

    parse.parse(b"{ }")  # tree-sitter-nix's parser (made once, cached)
    render.environment()  # the Jinja2 environment (made once, cached)
    if _AHEAD not in ctx.extra:
        _plan_ahead(ctx)


@dataclass(frozen=True)
class _Ahead:
    """A patch planned ahead, for the tree it was planned from (exactly those bytes)."""

    sources: Mapping[str, bytes]
    texts: Mapping[str, bytes]
    stage_only: bool
    plan: Plan
    results: dict[str, bytes]
    checked: str | None  # what parsed ``results`` (validate.check_all); None: they did not parse


_AHEAD = "patch_ahead"  # Context.extra: list[_Ahead]


def _plan_ahead(ctx: Context) -> None:
    """Plan the stage patch from the repo as it is and the full patch from the tree the stage
    patch will leave, and parse what each writes (nix-instantiate --parse), from engine._beside
    while the backup runs: ~0.3 s of CPU and subprocesses off the path between the phases.
    Only a cache: each deploy phase reads the repo again and uses a plan only when the files
    (and the SQL files they name) are byte for byte the ones it was planned from; anything that
    fails here is left for the phase to meet and say (nothing is cached then)."""
    from nixmig.nixsrc import patch, validate

    ctx.extra[_AHEAD] = made = []
    repo = ctx.cfg.repo
    try:
        spec = patch.spec_for(ctx.cfg, ctx.name)
        sources = patch.read_sources(repo)
        for stage_only in (True, False):
            texts = patch.read_texts(repo, sources)
            plan = patch.plan(sources, spec, texts=texts)
            if plan.manual:
                return
            results = plan.results(sources, stage_only=stage_only)
            try:
                checked: str | None = validate.check_all(results) if results else ""
            except validate.WouldNotParse:
                checked = None
            made.append(_Ahead(dict(sources), dict(texts), stage_only, plan, results, checked))
            sources = {**sources, **results}  # the tree after the stage deploy's write
    except NixmigError:
        return


def _planned_ahead(
    ctx: Context, sources: Mapping[str, bytes], texts: Mapping[str, bytes], *, stage_only: bool
) -> _Ahead | None:
    """The patch planned ahead for exactly this tree, if any (and its results parsed)."""
    made: list[_Ahead] = ctx.extra.get(_AHEAD, [])
    for a in made:
        if a.stage_only == stage_only and a.checked is not None and a.sources == sources and a.texts == texts:
            return a
    return None


def _state(ctx: Context) -> PatchState:
    return PatchState(ctx.state_dir / "patch" / ctx.name)


def others_on_patch(ctx: Context) -> list[str]:
    """Other hosts of this migration whose journal says the repo's patch is deployed there
    (stage or switch done, not rolled back): restoring the originals would undo them too."""
    if ctx.on_host or not ctx.migration.patch_repo:
        return []
    from nixmig.journal import Journal, JournalError

    rolling = set(ctx.extra.get("rollback_hosts", ())) | {ctx.host_name}
    out = []
    for h in ctx.cfg.targets(ctx.migration.service):
        if h in rolling:
            continue
        try:
            j = Journal.open(ctx.journal.path.parent.parent, h, ctx.name)
        except JournalError:
            out.append(h)
            continue
        if not j.rolled_back and any(j.state(p) in ("done", "running", "failed") for p in ("stage", "switch")):
            out.append(h)
    return out


def _restore_repo(ctx: Context) -> None:
    """The originals back into the files that hold what nixmig wrote (nixmig.patchstate):
    a file edited since stops it (RepoChanged, before anything is written) unless --force."""
    state = _state(ctx)
    if ctx.on_host or not state.exists():
        return
    with _REPO_LOCK:
        restored = state.restore(ctx.cfg.repo, force=bool(ctx.extra.get("force")), emit=ctx.emit)
    if restored:
        ctx.emit(f"restored {', '.join(restored)} to their state before the migration")


def _check_repo(ctx: Context) -> None:
    """Before any undo: the repo can be restored (no file edited since nixmig wrote it, no
    damaged original), or stop here with a diff of each and the choices."""
    state = _state(ctx)
    if ctx.on_host or not state.exists():
        return
    with _REPO_LOCK:
        state.check(ctx.cfg.repo, force=bool(ctx.extra.get("force")), emit=ctx.emit)


def _check_shared_patch(ctx: Context) -> None:
    others = others_on_patch(ctx)
    if others:
        raise StageError(
            f"the repo's patch for {ctx.name} is deployed on {len(others)} other host(s) too: {', '.join(others[:6])}; "
            f"restoring it for {ctx.host_name} alone would undo them at their next deploy",
            where=ctx.cfg.path,
            hint="roll them back together (--hosts with all of them, or --all), "
            "or set patch_repo = false and manage each host's config yourself",
        )


def _deploy(ctx: Context, phase: str) -> None:
    if ctx.on_host:
        # the activation running nixmig is the deploy: stage's secret is there, the app unit starts after us
        if phase == "rollback":
            ctx.emit("on-host: the configuration stays; activate the previous generation to go back (services read it)")
        return
    if not ctx.migration.deploy:
        raise StageError(
            "no deploy command", where=f"migrations.{ctx.name}.deploy", hint='e.g. deploy = "deploy .#newton"'
        )
    with traced("deploy", f"NIXMIG_PHASE={phase} (the deploy command)"):
        run_deploy(
            ctx.migration.deploy,
            repo=ctx.cfg.repo,
            phase=phase,
            migration=ctx.name,
            emit=ctx.emit,
            host=ctx.host_name,
            drop_env=ctx.cfg.secret_env(),  # nixmig's own secrets stay with nixmig
            keep_env=ctx.migration.deploy_env,
        )


class Stage:
    name = "stage"
    title = "deploy 1: stage the agenix secret"

    def describe(self, ctx: Context) -> list[Action]:
        if ctx.on_host:
            return [Action("check", f"{ctx.secret_on_host} exists (agenix wrote it in this activation)")]
        return [
            Action(
                "check",
                f"sha256 of {ctx.secret_on_host} on {ctx.host_name} = sha256 of {ctx.migration.secret}.age decrypted "
                "here (-i): then in effect, nothing to deploy (digests only: the secret stays where it is)",
            ),
            *(
                [Action("file", "write the stage config: only age.secrets." + ctx.migration.secret)]
                if ctx.migration.patch_repo
                else []
            ),
            Action("deploy", f"NIXMIG_PHASE=stage {_shown(ctx)}"),
            Action("check", f"{ctx.secret_on_host} exists on {ctx.host_name} (0400) and holds that value"),
        ]

    def prepare(self, ctx: Context) -> None:
        _prepare_patch(ctx)

    def check(self, ctx: Context) -> bool:
        """In effect only when the host's file holds the value of the repo's NAME.age (an
        older value there is not the stage deploy: it must run). Digests compared."""
        if ctx.on_host:
            return ctx.t.run(["test", "-s", ctx.secret_on_host], check=False).ok
        hs = hostsecret.compare(ctx)
        if hs.present and not hs.same:
            why = (
                f"cannot tell whether it holds the value of {hostsecret.shown(ctx, hs.age_file)} ({hs.unknown})"
                if hs.repo is None
                else f"holds another value than {hostsecret.shown(ctx, hs.age_file)}"
            )
            ctx.emit(f"stage: {hs.path} on {ctx.host_name} {why}: deploying")
        return hs.same

    def do(self, ctx: Context) -> dict[str, Any]:
        patched = _patch_repo(ctx, stage_only=True)
        _deploy(ctx, "stage")
        where = "in this activation" if ctx.on_host else "after the deploy"
        if ctx.on_host:
            present, differs = self.check(ctx), False
        else:
            hs = hostsecret.compare(ctx)
            present, differs = hs.present, hs.differs
        if not present:
            raise StageError(
                f"{ctx.secret_on_host} is missing {where}",
                where=ctx.t.name,
                hint="check that age.secrets includes it and that agenix could decrypt it (journalctl -u agenix)",
            )
        if differs:
            raise StageError(
                f"{ctx.secret_on_host} does not hold the value of {hostsecret.shown(ctx, hostsecret.age_file(ctx))} "
                f"{where} (their sha256 differ)",
                where=ctx.t.name,
                hint="the deploy must build this repo's config (agenix decrypts the .age at activation): "
                "check the deploy command and that the .age it builds from is this one (committed, pushed)",
            )
        return {"patched": patched}

    def can_undo(self, ctx: Context, data: dict[str, Any]) -> None:
        _check_shared_patch(ctx)
        _check_repo(ctx)

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        _restore_repo(ctx)
        _deploy(ctx, "rollback")


def _shown(ctx: Context) -> str:
    """The deploy command as it runs for this host ({host} filled in)."""
    return (ctx.migration.deploy or "").replace("{host}", ctx.host_name)


class Switch:
    name = "switch"
    title = "deploy 2: services read the secret"
    fleet_barrier = True  # the full patch reaches the shared repo once every host of the run has rotated

    def describe(self, ctx: Context) -> list[Action]:
        if ctx.on_host:
            return [Action("check", "mark the server log; the app unit starts after this one, onto the secret")]
        return [
            *([Action("file", "write the full patch (see `nixmig patch`)")] if ctx.migration.patch_repo else []),
            Action("deploy", f"NIXMIG_PHASE=switch {_shown(ctx)}"),
        ]

    def prepare(self, ctx: Context) -> None:
        _prepare_patch(ctx)

    def check(self, ctx: Context) -> bool:
        return False  # a deploy is idempotent: re-running it is harmless

    def do(self, ctx: Context) -> dict[str, Any]:
        patched = _patch_repo(ctx, stage_only=False)
        mark = ctx.runtime.log_mark(ctx.t)  # dual-role's verify reads the server log from here
        _deploy(ctx, "switch")
        # rotate's verify from here: until the deploy restarts them, the apps log in with the old
        # password (refused since rotate, as expected); a failure after it is a client nixmig missed
        deployed = ctx.runtime.log_mark(ctx.t)
        return {"log_mark": mark, "deployed_mark": deployed, "deployed_at": time.time(), "patched": patched}

    def can_undo(self, ctx: Context, data: dict[str, Any]) -> None:
        _check_shared_patch(ctx)
        _check_repo(ctx)

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        _restore_repo(ctx)
        _deploy(ctx, "rollback")
