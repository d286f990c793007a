"""`nixmig gc` after a real migration on a local cluster (local transport, native runtime):
encrypted backups past retention, a file the journal retains, and a scratch database a
killed restore test left on the cluster; kept while the migration is unfinished."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixmig import config, engine
from nixmig.db import ops
from nixmig.demo import SECRET, Target, seed, setup, write_config
from nixmig.journal import Journal
from nixmig.secrets import store
from nixmig.secrets.generate import generate

SCRATCH_DB = "nixmig_restore_test_twenty_db_password_20200101t000000z"


@pytest.fixture
def target() -> Iterator[Target]:
    root = Path(tempfile.mkdtemp(prefix="nixmig-gc-"))
    t = setup(root, lambda _m: None)
    try:
        os.environ["PATH"] = f"{t.bindir}:{os.environ['PATH']}"
        seed(t)
        host_pub = " ".join(t.host_key.with_suffix(".pub").read_text().split()[:2])
        admin_pub = " ".join(t.admin_key.with_suffix(".pub").read_text().split()[:2])
        write_config(t, admin_pub, host_pub)
        rules = t.repo / "secrets" / "secrets.nix"
        store.new_secret(rules, "twenty-app-secret", generate(32), force=True)
        store.new_secret(rules, SECRET, generate(32), like="twenty-app-secret")
        yield t
    finally:
        subprocess.run(
            (["runuser", "-u", t.os_user, "--"] if os.geteuid() == 0 else [])
            + [str(t.bindir / "pg_ctl"), "-D", str(t.pg_data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def nixmig(t: Target, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixmig", *args, "-c", str(t.repo / "nixmig.toml")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def gc_items(t: Target, *args: str) -> dict[str, dict[str, object]]:
    r = nixmig(t, "gc", "--json", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return {Path(i["name"]).name: i for i in json.loads(r.stdout)["items"]}


def databases(t: Target) -> list[str]:
    ctx = engine.make_context(config.load(t.repo / "nixmig.toml"), SECRET)
    out = ops.psql(ctx.t, ctx.runtime, "SELECT datname FROM pg_database ORDER BY 1;", database="postgres")
    return out.split()


def test_gc_after_a_real_migration(target: Target) -> None:
    t = target
    assert nixmig(t, "apply", "--yes", "-i", str(t.admin_key)).returncode == 0
    backups = t.repo / ".nixmig" / "backups" / "newton"
    (fresh,) = backups.glob(f"{SECRET}-*.dump.age")
    old_name = f"{SECRET}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(time.time() - 9 * 86400))}.dump.age"
    old = backups / old_name
    shutil.copyfile(fresh, old)
    kept_file, old_file = t.root / "keep.me", t.root / "old.data"
    kept_file.write_text("x")
    old_file.write_text("x")
    j = Journal.open(t.repo / ".nixmig" / "journal", "newton", SECRET)
    j.steps["switch"].data["retain"] = [
        {"kind": "file", "name": str(old_file), "until": "2020-01-01T00:00:00Z"},
        {"kind": "file", "name": str(kept_file), "until": "2999-01-01T00:00:00Z"},
    ]
    j.save()
    ctx = engine.make_context(config.load(t.repo / "nixmig.toml"), SECRET)
    ops.psql(ctx.t, ctx.runtime, f'CREATE DATABASE "{SCRATCH_DB}";', database="postgres")

    items = gc_items(t)
    assert items[old_name]["action"] == "remove" and items[old_name]["reason"] == "9 days old, kept 7 (finished)"
    assert items[fresh.name]["action"] == "keep"
    assert items["old.data"]["action"] == "remove" and items["keep.me"]["action"] == "keep"
    assert items[SCRATCH_DB]["kind"] == "scratch-database" and items[SCRATCH_DB]["action"] == "remove"
    assert old.exists() and old_file.exists() and SCRATCH_DB in databases(t)

    text = nixmig(t, "gc")
    assert text.returncode == 0
    assert "3 to remove" in text.stdout and "run again with --yes" in text.stdout

    items = gc_items(t, "--yes")
    assert {n for n, i in items.items() if i["removed"]} == {old_name, "old.data", SCRATCH_DB}
    assert not old.exists() and fresh.exists()
    assert not old_file.exists() and kept_file.exists()
    assert SCRATCH_DB not in databases(t) and "default" in databases(t)
    # the journal is never edited by gc: its rollback material is all there
    assert Journal.open(t.repo / ".nixmig" / "journal", "newton", SECRET).data("rotate")["old_verifier_age"]


def test_an_unfinished_migration_keeps_everything(target: Target) -> None:
    t = target
    cfg = t.repo / "nixmig.toml"
    text = cfg.read_text()
    cfg.write_text(text.replace('deploy = "', 'deploy = "false '))  # stops at stage, after the backup
    assert nixmig(t, "apply", "--yes").returncode == 1
    cfg.write_text(
        text.replace(
            "[migrations.", '[migrations.x]\nservice = "twenty-db"\nsecret = "x"\nretention_days = 0\n\n[migrations.', 1
        )
    )
    backups = t.repo / ".nixmig" / "backups" / "newton"
    (fresh,) = backups.glob(f"{SECRET}-*.dump.age")
    old = backups / f"{SECRET}-20200101T000000Z.dump.age"
    shutil.copyfile(fresh, old)
    items = gc_items(t, "--yes")
    for name in (fresh.name, old.name):
        assert items[name]["action"] == "keep"
        assert items[name]["reason"] == (
            f"migration {SECRET} on newton is not finished: a rollback or a restore may need it"
        )
    assert old.exists() and fresh.exists()
    assert gc_items(t, "--migration", "x") == {}  # filtered: only that migration's things
