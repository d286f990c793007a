"""The stage's and the switch's patches planned ahead (nixmig.phases.deploy._plan_ahead, run by
engine._beside while the backup runs) are only a cache: a deploy phase uses one only for the
very bytes it was planned from, and writes what planning then would have written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nixmig.nixsrc import patch
from nixmig.phases import deploy
from tests.unit.test_host_secret import Site

STAGED = "modules/system/linux/twenty-crm.nix"  # the file the worked example's stage patch writes


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return Site(tmp_path / "ahead")


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts patch.plan's calls (the real one runs)."""
    calls: list[int] = []
    real = patch.plan

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(patch, "plan", counted)
    return calls


def _fresh(tmp_path: Path, name: str) -> tuple[Site, dict[str, bytes]]:
    """What stage then switch write, planned the old way (no plan ahead), in a second copy."""
    other = Site(tmp_path / name)
    ctx = other.ctx()
    deploy._patch_repo(ctx, stage_only=True)
    staged = patch.read_sources(other.repo)
    deploy._patch_repo(ctx, stage_only=False)
    return other, {"stage": staged[STAGED], **{"switch:" + k: v for k, v in patch.read_sources(other.repo).items()}}


def test_planned_ahead_is_used_and_writes_the_same(site: Site, tmp_path: Path, plans: list[int]) -> None:
    ctx = site.ctx()
    deploy._prepare_patch(ctx)  # as engine._beside does, beside the backup
    assert len(plans) == 2  # the stage's, and the switch's from the tree the stage leaves
    assert deploy._patch_repo(ctx, stage_only=True) == [STAGED]
    staged = patch.read_sources(site.repo)[STAGED]
    deploy._patch_repo(ctx, stage_only=False)
    assert len(plans) == 2  # both deploys used what was planned ahead
    other, fresh = _fresh(tmp_path, "fresh")
    # the same bytes, but for each site's own agenix directory (the bind mount's source)
    ours = {"switch:" + k: v for k, v in patch.read_sources(site.repo).items()}
    theirs = {k: v.replace(bytes(other.agenix), bytes(site.agenix)) for k, v in fresh.items()}
    assert staged == theirs.pop("stage")
    assert ours == theirs


def test_a_repo_changed_after_planning_is_planned_again(site: Site, plans: list[int]) -> None:
    """A file edited between the plan ahead and the deploy (the backup takes minutes): the deploy
    plans from the files as they are, never writes the stale plan over the edit."""
    ctx = site.ctx()
    deploy._prepare_patch(ctx)
    path = site.repo / STAGED
    path.write_bytes(path.read_bytes() + b"# edited during the backup\n")
    deploy._patch_repo(ctx, stage_only=True)
    assert len(plans) == 3  # planned again
    assert path.read_bytes().endswith(b"# edited during the backup\n")
    assert b"age.secrets" in path.read_bytes()  # and staged


def test_a_plan_that_cannot_be_made_ahead_leaves_the_error_to_the_deploy(site: Site) -> None:
    """Ahead, a file that does not parse caches nothing and raises nothing; the stage phase meets
    it and says it, with its line."""
    from nixmig.errors import NixmigError

    ctx = site.ctx()
    path = site.repo / STAGED
    path.write_bytes(path.read_bytes() + b"{ broken")
    deploy._prepare_patch(ctx)
    assert ctx.extra[deploy._AHEAD] == []
    with pytest.raises(NixmigError) as exc:
        deploy._patch_repo(ctx, stage_only=True)
    assert STAGED in exc.value.line()
