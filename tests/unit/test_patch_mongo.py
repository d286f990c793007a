"""patch on the official mongo image's root password (realcfg28/04 and 28/05, refused before as "another
database's"): moved under strategy move only, when the migration's role is the user MONGO_INITDB_ROOT_USERNAME
names (or root); into an env file, never MONGO_INITDB_ROOT_PASSWORD_FILE (the image reads that as uid 999)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixmig.nixsrc import patch as pt
from tests.unit.test_patch_realcfg26 import _plan

pytestmark = pytest.mark.unit

OCI = "oci-mongo-root-move-app-url"
NOTES = "hosts/cloud/notes.nix"
# the app's token moves as a companion (the fixture's auto_also), added as `--write` adds it
ALSO = ("nixmig.toml", 'strategy = "move"', 'strategy = "move"\nalso = { SESSION_SECRET = "session-secret" }')


def _added(plan: pt.Plan) -> bytes:
    return b"".join(e.replacement for e in plan.edits)


def test_the_root_password_goes_into_an_env_file_not_the_file_variable(tmp_path: Path) -> None:
    plan = _plan(tmp_path, OCI, [ALSO], "notes-db-password")
    assert not plan.manual, [m.what for m in plan.manual]
    added = _added(plan)
    assert b"MONGO_INITDB_ROOT_PASSWORD_FILE" not in added
    assert b"printf '%s=%s%s%s\\n' MONGO_INITDB_ROOT_PASSWORD" in added
    assert b'environmentFiles = [ "/run/notes-db/notes-db-password.env" ]' in added
    (note,) = [n for n in plan.notes if n.startswith("notes-db: MONGO_INITDB_ROOT_PASSWORD")]
    assert "uid 999" in note


def test_the_apps_mongodb_url_reads_the_secret_too(tmp_path: Path) -> None:
    plan = _plan(tmp_path, OCI, [ALSO], "notes-db-password")
    added = _added(plan)
    assert b"mongodb://notes:" in added and b"Tr4il-notes-55" not in added


@pytest.mark.parametrize("scheme", ["mongodb+srv"])
def test_an_srv_url_is_read_as_mongodb(tmp_path: Path, scheme: str) -> None:
    edit = [(NOTES, '"mongodb://notes:', f'"{scheme}://notes:'), ALSO]
    plan = _plan(tmp_path, OCI, edit, "notes-db-password")
    assert not plan.manual, [m.what for m in plan.manual]
    assert f"{scheme}://notes:".encode() in _added(plan)


def test_another_users_root_password_is_not_this_migrations(tmp_path: Path) -> None:
    edit = [("nixmig.toml", 'role = "notes"', 'role = "reader"')]
    plan = _plan(tmp_path, OCI, edit, "notes-db-password")
    assert plan.manual
    assert not any(b"notes-db-password.env" in e.replacement for e in plan.edits if e.file == NOTES)


def test_a_rotation_is_refused_naming_strategy_move(tmp_path: Path) -> None:
    edit = [("nixmig.toml", 'strategy = "move"', 'strategy = "rotate"')]
    plan = _plan(tmp_path, OCI, edit, "notes-db-password")
    hit = [m.what for m in plan.manual if m.line == 10]
    assert hit, [(m.line, m.what) for m in plan.manual]
    assert "mongo's root password" in hit[0] and 'strategy "move"' in hit[0]


def test_an_image_of_another_family_keeps_its_variable_in_an_env_file(tmp_path: Path) -> None:
    # not the official image: nixmig does not know it reads MONGO_INITDB_ROOT_PASSWORD_FILE; the variable, as
    # the repo sets it, goes into the env file (the container sees the same environment)
    edit = [(NOTES, 'image = "mongo:7.0";', 'image = "registry.example.org/ops/mongo:7.0";'), ALSO]
    plan = _plan(tmp_path, OCI, edit, "notes-db-password")
    assert not plan.manual, [m.what for m in plan.manual]
    assert b"printf '%s=%s%s%s\\n' MONGO_INITDB_ROOT_PASSWORD" in _added(plan)
    (note,) = [n for n in plan.notes if n.startswith("notes-db: MONGO_INITDB_ROOT_PASSWORD")]
    assert "is not one known to read MONGO_INITDB_ROOT_PASSWORD_FILE" in note
