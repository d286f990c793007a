"""Rollback restores only what nixmig changed in the repo (real PostgreSQL, local transport,
the demo's target): a Nix file edited after the switch stops the rollback before anything is
undone, with a diff (secrets masked) and the choices; `--force` restores anyway and keeps the
edited version; a damaged saved original is never written into the repo."""

from __future__ import annotations

import json
from pathlib import Path

from nixmig.demo import OLD_PASSWORD, SECRET, Target
from tests.integration.test_migrate_local import nixmig, role_matches
from tests.integration.test_migrate_local import target as target

NEW = "n3w/pa+ss=w@rd:%?-long-enough"
COMPOSE = "modules/system/linux/twenty/arion-compose.nix"
PLANTED = "hunter2-planted-by-hand-0123456789"  # a password someone hardcodes again after the switch


def _nix(t: Target) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in t.repo.rglob("*.nix") if ".nixmig" not in p.parts}


def _states(t: Target) -> list[str]:
    return [p["state"] for p in json.loads(nixmig(t, "status", "--json").stdout)["phases"]]


def _edit_after_switch(t: Target) -> tuple[bytes, bytes]:
    path = t.repo / COMPOSE
    written = path.read_bytes()
    assert b"POSTGRES_PASSWORD_FILE" in written
    lines = written.decode().splitlines(keepends=True)
    at = next(i for i, ln in enumerate(lines) if "POSTGRES_PASSWORD_FILE" in ln)
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    lines.insert(at + 1, f'{indent}POSTGRES_ROOT_PASSWORD = "{PLANTED}";\n')
    edited = "".join(lines).encode()
    path.write_bytes(edited)
    return written, edited


def test_rollback_stops_on_a_file_edited_after_the_switch(target: Target) -> None:
    originals = _nix(target)
    assert nixmig(target, "apply", "--yes", "-i", str(target.admin_key)).returncode == 0
    written, _edited = _edit_after_switch(target)
    patched = _nix(target)

    r = nixmig(target, "rollback", "--yes", "-i", str(target.admin_key))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"nixmig patched changed since, or have no trustworthy original: {COMPOSE}" in lines[0]
    assert "nothing was rolled back" in lines[0] and "rollback --force" in lines[0]
    # the diff: what nixmig wrote -> now, the planted password masked
    assert f"{COMPOSE}: changed since nixmig wrote it" in r.stdout
    assert f"--- {COMPOSE} (as nixmig wrote it)" in r.stdout and f"+++ {COMPOSE} (now)" in r.stdout
    assert '+          POSTGRES_ROOT_PASSWORD = "********";' in r.stdout.replace("    +", "+")
    for text in (r.stdout, r.stderr):
        assert PLANTED not in text and NEW not in text
    # refused before anything was undone: the database keeps the new password, the files as they are
    assert role_matches(target, NEW) and _states(target) == ["done"] * 7
    assert _nix(target) == patched and target.env_file.exists()

    # edited back by hand to what nixmig wrote: the rollback goes through, the originals back
    (target.repo / COMPOSE).write_bytes(written)
    r = nixmig(target, "rollback", "--yes", "-i", str(target.admin_key))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _nix(target) == originals and role_matches(target, OLD_PASSWORD)


def test_rollback_force_restores_and_keeps_the_edited_version(target: Target) -> None:
    originals = _nix(target)
    assert nixmig(target, "apply", "--yes", "-i", str(target.admin_key)).returncode == 0
    _, edited = _edit_after_switch(target)
    r = nixmig(target, "rollback", "--yes", "--force", "-i", str(target.admin_key))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _nix(target) == originals and role_matches(target, OLD_PASSWORD)
    kept = list((target.repo / ".nixmig/patch" / SECRET / "edited").rglob("arion-compose.nix.*"))
    assert len(kept) == 1 and kept[0].read_bytes() == edited and kept[0].stat().st_mode & 0o777 == 0o600
    assert str(kept[0]) in r.stdout and PLANTED not in r.stdout


def test_a_damaged_original_is_never_used(target: Target) -> None:
    originals = _nix(target)
    assert nixmig(target, "apply", "--yes", "-i", str(target.admin_key)).returncode == 0
    saved = target.repo / ".nixmig/patch" / SECRET / "originals" / f"{COMPOSE}.orig"
    assert saved.read_bytes() == originals[target.repo / COMPOSE] and saved.stat().st_mode & 0o777 == 0o600
    saved.write_bytes(saved.read_bytes()[:100])  # truncated (a disk, a hand, a tool)
    patched = _nix(target)

    r = nixmig(target, "rollback", "--yes", "-i", str(target.admin_key))
    assert r.returncode == 1 and f"{COMPOSE}: the saved original is missing or does not match its digest" in r.stdout
    assert role_matches(target, NEW) and _states(target) == ["done"] * 7 and _nix(target) == patched

    # --force goes back without it: that file is left as it is (never the truncated bytes), the others restored
    r = nixmig(target, "rollback", "--yes", "--force", "-i", str(target.admin_key))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{COMPOSE}: left as it is (--force): its saved original is damaged, never used" in r.stdout
    now = _nix(target)
    assert now[target.repo / COMPOSE] == patched[target.repo / COMPOSE]
    assert {p: b for p, b in now.items() if p != target.repo / COMPOSE} == {
        p: b for p, b in originals.items() if p != target.repo / COMPOSE
    }
    assert role_matches(target, OLD_PASSWORD)
