"""The journal and the locks are tied to the target database (real PostgreSQL clusters, the
local transport, the native runtime: the target `nixmig demo` builds).

- a journal whose run was on one cluster refuses to resume or roll back on another
  (another system_identifier), and nothing changes on either;
- two runs on one database cannot work at once, whatever the migration's name or the
  host's name in the config: the second gets one line naming the holder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nixmig import config, engine
from nixmig import target as identity
from nixmig.db import ops
from nixmig.demo import SECRET, Target, seed, setup
from tests.integration.test_migrate_local import journal, nixmig
from tests.integration.test_migrate_local import target as target

SCRATCH_DB = "nixmig_restore_test_twenty_db_password_20200101t000000z"


@pytest.fixture
def other_cluster() -> Iterator[Target]:
    """A second demo target: another cluster (initdb: another system_identifier), same data."""
    root = Path(tempfile.mkdtemp(prefix="nixmig-it-other-"))
    t = setup(root, lambda _m: None)
    try:
        seed(t)
        yield t
    finally:
        subprocess.run(
            (["runuser", "-u", t.os_user, "--"] if os.geteuid() == 0 else [])
            + [str(t.bindir / "pg_ctl"), "-D", str(t.pg_data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def _config_text(t: Target) -> str:
    return (t.repo / "nixmig.toml").read_text()


def _point_at(t: Target, cluster: Target) -> None:
    """nixmig.toml of ``t`` names ``cluster``'s server (port, socket, log) instead of its own."""
    text = _config_text(t)
    for old, new in (
        (f"port = {t.port}", f"port = {cluster.port}"),
        (f'socket_dir = "{t.socket_dir}"', f'socket_dir = "{cluster.socket_dir}"'),
        (f'log_file = "{t.pg_data.parent / "log"}"', f'log_file = "{cluster.pg_data.parent / "log"}"'),
    ):
        assert old in text
        text = text.replace(old, new)
    (t.repo / "nixmig.toml").write_text(text)


def _verifier(cfg_path: Path) -> str:
    ctx = engine.make_context(config.load(cfg_path), SECRET)
    state = ops.role_state(ctx.t, ctx.runtime, "postgres")
    assert state.verifier is not None
    return state.verifier.reveal().decode()


def _sysid(cfg_path: Path) -> str:
    ctx = engine.make_context(config.load(cfg_path), SECRET)
    cluster = identity.take(ctx.t, ctx.runtime).cluster
    assert cluster is not None  # take reads it with psql (None only for take_host)
    return cluster


def test_resume_and_rollback_refuse_another_cluster(target: Target, other_cluster: Target) -> None:
    cfg = target.repo / "nixmig.toml"
    own_text = _config_text(target)
    killed = nixmig(target, "apply", "--yes", "-i", str(target.admin_key), env={"NIXMIG_TEST_SIGKILL_AFTER": "rotate"})
    assert killed.returncode == -9
    recorded = journal(target)["meta"]["target"]  # type: ignore[index]
    assert recorded["clusters"] == [_sysid(cfg)] and recorded["host"].startswith("machine-id ")

    mine = _verifier(cfg)  # the new password's verifier: rotate is done
    _point_at(target, other_cluster)
    theirs = _verifier(cfg)
    assert theirs != mine and _sysid(cfg) != recorded["clusters"][0]
    before = (target.repo / ".nixmig/journal/newton" / f"{SECRET}.json").read_bytes()
    nix_before = {p: p.read_bytes() for p in target.repo.rglob("*.nix") if ".nixmig" not in p.parts}

    for args in (("apply", "--yes"), ("rollback", "--yes", "-i", str(target.admin_key))):
        r = nixmig(target, *args)
        assert r.returncode == 1, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "belongs to another target: the cluster's system_identifier is " in lines[0]
        assert f"the journal's run was on {recorded['clusters'][0]}" in lines[0]
        assert "point nixmig.toml back" in lines[0] and "--accept-target" in lines[0]

    # nothing changed on either cluster, nor in the journal or the repo
    assert _verifier(cfg) == theirs
    assert (target.repo / ".nixmig/journal/newton" / f"{SECRET}.json").read_bytes() == before
    assert {p: p.read_bytes() for p in target.repo.rglob("*.nix") if ".nixmig" not in p.parts} == nix_before
    cfg.write_text(own_text)
    assert _verifier(cfg) == mine

    # back on its own cluster, the migration resumes and rolls back
    r = nixmig(target, "apply", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    r = nixmig(target, "rollback", "--yes", "-i", str(target.admin_key))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _verifier(cfg) != mine
    _point_at(target, other_cluster)
    assert _verifier(cfg) == theirs


def test_accept_target_records_the_new_cluster(target: Target, other_cluster: Target) -> None:
    cfg = target.repo / "nixmig.toml"
    assert nixmig(target, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": "backup"}).returncode == -9
    _point_at(target, other_cluster)
    r = nixmig(target, "apply", "--yes", "--accept-target")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--accept-target: the cluster's system_identifier is" in r.stdout
    assert _sysid(cfg) in journal(target)["meta"]["target"]["clusters"]  # type: ignore[index]


def _second_config(t: Target, how: str) -> Path:
    """Another nixmig.toml reaching the same database: the host under another name (and
    address), the socket directory through a symlink; or a second migration in the same file."""
    text = _config_text(t)
    if how == "second-migration":
        text += '\n[migrations.other]\nservice = "twenty-db"\nsecret = "other-secret"\ndeploy = "true"\n'
        path = t.repo / "nixmig.toml"
    else:
        link = t.root / "sock-link"
        link.symlink_to(t.socket_dir)
        text = (
            text.replace("[hosts.newton]", "[hosts.db-box]")
            .replace('host = "newton"', 'host = "db-box"')
            .replace('address = "localhost"', 'address = "127.0.0.1"')
            .replace(f'socket_dir = "{t.socket_dir}"', f'socket_dir = "{link}"')
        )
        path = t.root / "other" / "nixmig.toml"
        path.parent.mkdir()
        shutil.copytree(t.repo / "secrets", path.parent / "secrets")
    path.write_text(text)
    return path


def _run(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixmig", *args, "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("how", ["second-migration", "host-named-differently"])
def test_two_runs_on_one_database_cannot_run_at_once(target: Target, how: str) -> None:
    other = _second_config(target, how)
    migration = "other" if how == "second-migration" else SECRET
    host = "newton" if how == "second-migration" else "db-box"
    ops.psql(*_reach(target.repo / "nixmig.toml"), f'CREATE DATABASE "{SCRATCH_DB}";\n')
    old_backup = other.parent / ".nixmig/backups" / host / f"{migration}-20200101T000000Z.dump.age"
    old_backup.parent.mkdir(parents=True)
    old_backup.write_bytes(b"age-encryption.org/v1\n")  # past retention: gc removes it, under the host's locks
    before = _verifier(target.repo / "nixmig.toml")
    ctx = engine.make_context(config.load(target.repo / "nixmig.toml"), SECRET)
    with engine.locked(ctx):  # a run of the first migration, holding its locks
        r = _run(other, "apply", "--yes", "-m", migration)
        gc = _run(other, "gc", "--yes", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"another nixmig run holds the lock on PostgreSQL at {target.socket_dir.resolve()}" in lines[0]
    assert f"migration {SECRET} on newton, run by " in lines[0] and f"(pid {os.getpid()})" in lines[0]
    assert _verifier(target.repo / "nixmig.toml") == before
    assert not (other.parent / ".nixmig/journal" / host / f"{migration}.json").exists()
    # gc takes the same locks: the scratch database a killed run would have left is kept
    items = {i["name"]: i for i in json.loads(gc.stdout)["items"]}
    assert items[SCRATCH_DB]["action"] == "keep" and not items[SCRATCH_DB]["removed"], items
    held = "/db-" if how == "host-named-differently" else f"/newton-{SECRET}.lock"  # gc takes every migration's too
    for name in (SCRATCH_DB, str(old_backup)):
        assert "a nixmig run holds " in items[name]["reason"] and held in items[name]["reason"], items
    assert old_backup.exists()
    # released with the run: gc removes them now
    gc = _run(other, "gc", "--yes", "--json")
    items = {i["name"]: i for i in json.loads(gc.stdout)["items"]}
    assert items[SCRATCH_DB]["removed"] and items[str(old_backup)]["removed"], items
    assert not old_backup.exists()


def _reach(cfg: Path) -> tuple[Any, Any]:
    ctx = engine.make_context(config.load(cfg), SECRET)
    return ctx.t, ctx.runtime
