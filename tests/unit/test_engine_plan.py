"""Pure parts of the engine: plan from the journal alone, journal atomicity and modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixmig import config, engine
from nixmig.errors import UsageError
from nixmig.journal import Journal
from nixmig.remote.base import Transport
from tests.helpers import ADMIN_PUB, NEWTON_PUB, copy_example


def write_cfg(repo: Path, extra: str = "") -> config.Config:
    (repo / "nixmig.toml").write_text(
        f"""[operator]
recipients = ["{ADMIN_PUB}"]
[hosts.newton]
address = "newton.example.org"
age_recipient = "{NEWTON_PUB}"
[services.twenty-db]
host = "newton"
container = "twenty-db-1"
volume = "twenty_db-data"
database = "default"
[migrations.twenty-db-password]
service = "twenty-db"
secret = "twenty-db-password"
deploy = "deploy --skip-checks .#newton"
{extra}"""
    )
    return config.load(repo / "nixmig.toml")


def no_connect() -> Transport:
    raise AssertionError("plan must not connect")


def test_plan_needs_no_connection_and_masks(tmp_path: Path) -> None:
    cfg = write_cfg(copy_example(tmp_path))
    ctx = engine.make_context(cfg, "twenty-db-password", connect=no_connect)
    steps = engine.plan(ctx)
    assert [s.phase for s in steps] == ["preflight", "backup", "stage", "rotate", "switch", "verify", "cleanup"]
    assert all(s.state == "pending" for s in steps)
    text = "\n".join(a.text for s in steps for a in s.actions)
    assert "docker exec -u postgres twenty-db-1 pg_dump -Fc -U postgres -d dbname=default" in text
    assert "NIXMIG_PHASE=stage deploy --skip-checks .#newton" in text
    assert "PASSWORD 'SCRAM-SHA-256$4096:********'" in text


def test_unknown_strategy_and_migration(tmp_path: Path) -> None:
    cfg = write_cfg(copy_example(tmp_path))
    with pytest.raises(UsageError, match="no migration 'x'"):
        engine.pick_migration(cfg, "x")
    assert engine.pick_migration(cfg, None) == "twenty-db-password"
    with pytest.raises(UsageError, match="not implemented yet"):
        engine.phases_for("blue-green")


def test_journal_roundtrip_is_0600_and_atomic(tmp_path: Path) -> None:
    j = Journal.open(tmp_path, "newton", "m")
    j.begin("backup")
    j.finish("backup", {"path": "/x", "sha256": "ab"})
    j.begin("stage")
    j.fail("stage", "deploy (stage) exited 1")
    f = tmp_path / "newton" / "m.json"
    assert f.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "newton").stat().st_mode & 0o777 == 0o700
    again = Journal.open(tmp_path, "newton", "m")
    assert again.state("backup") == "done" and again.data("backup")["sha256"] == "ab"
    assert again.steps["stage"].error == "deploy (stage) exited 1"
    assert not list((tmp_path / "newton").glob(".*tmp"))  # no temp files left behind
    f.write_text("{not json")
    with pytest.raises(Exception, match="unreadable journal"):
        Journal.open(tmp_path, "newton", "m")
