"""nixmig.patchstate without a target: what rollback restores, and what it never uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixmig import fsutil
from nixmig.patchstate import OriginalDamaged, PatchState, RepoChanged

ORIG = b'{ config = { password = "postgres-hardcoded-1"; }; }\n'
WROTE = b'{ config = { passwordFile = "/run/agenix/db"; }; }\n'


def _setup(tmp_path: Path) -> tuple[Path, PatchState]:
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    (repo / "m/a.nix").write_bytes(ORIG)
    state = PatchState(repo / ".nixmig/patch/mig")
    state.keep_original("m/a.nix", ORIG)
    state.will_write({"m/a.nix": WROTE})
    (repo / "m/a.nix").write_bytes(WROTE)
    return repo, state


def test_restores_what_nixmig_wrote_and_skips_what_is_already_back(tmp_path: Path) -> None:
    repo, state = _setup(tmp_path)
    keep = state.originals_dir / "m/a.nix.orig"
    assert keep.stat().st_mode & 0o777 == 0o600 and keep.parent.stat().st_mode & 0o777 == 0o700
    assert state.restore(repo, force=False, emit=print) == ["m/a.nix"]
    assert (repo / "m/a.nix").read_bytes() == ORIG
    assert state.restore(repo, force=False, emit=print) == []  # already the original: nothing written


def test_an_edit_after_nixmig_wrote_stops_it_with_a_masked_diff(tmp_path: Path) -> None:
    repo, state = _setup(tmp_path)
    edited = WROTE.replace(b"}; }", b'}; other = { password = "planted-by-hand-987"; }; }')
    (repo / "m/a.nix").write_bytes(edited)
    shown: list[str] = []
    with pytest.raises(RepoChanged) as exc:
        state.restore(repo, force=False, emit=shown.append)
    assert "m/a.nix" in exc.value.line() and "--force" in exc.value.line()
    text = "\n".join(shown)
    assert "planted-by-hand-987" not in text and "postgres-hardcoded-1" not in text
    assert 'password = "********"' in text and "(as nixmig wrote it)" in text
    assert (repo / "m/a.nix").read_bytes() == edited
    # a file that does not parse: none of its lines are shown
    (repo / "m/a.nix").write_bytes(b'{ password = "planted-by-hand-987"; \n')
    shown.clear()
    with pytest.raises(RepoChanged):
        state.restore(repo, force=False, emit=shown.append)
    assert "planted-by-hand-987" not in "\n".join(shown) and "does not parse" in "\n".join(shown)


def test_a_truncated_original_is_never_used(tmp_path: Path) -> None:
    repo, state = _setup(tmp_path)
    keep = state.originals_dir / "m/a.nix.orig"
    keep.write_bytes(ORIG[:10])
    with pytest.raises(OriginalDamaged):
        state.originals()
    with pytest.raises(RepoChanged):
        state.restore(repo, force=False, emit=lambda _m: None)
    assert state.restore(repo, force=True, emit=lambda _m: None) == []
    assert (repo / "m/a.nix").read_bytes() == WROTE


def test_killed_between_the_digest_and_the_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest is recorded first: a run killed before the original is written leaves it
    missing (never used), and the next run writes it, from the file as it still is."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.nix").write_bytes(ORIG)
    state = PatchState(repo / ".nixmig/patch/mig")
    real = fsutil.write_atomic

    def killed(path: Path, data: bytes, mode: int | None = None) -> None:
        if path.suffix == ".orig":
            raise KeyboardInterrupt  # stands for the SIGKILL
        real(path, data, mode)

    monkeypatch.setattr(fsutil, "write_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        state.keep_original("a.nix", ORIG)
    monkeypatch.setattr(fsutil, "write_atomic", real)
    with pytest.raises(OriginalDamaged):
        state.originals()
    state.keep_original("a.nix", ORIG)  # the next apply
    assert state.originals() == {"a.nix": ORIG}
    assert not list((state.originals_dir).glob(".*nixmig-tmp"))
