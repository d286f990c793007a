"""--restore-test, the pure parts: the count comparison, scratch names, and what `plan` shows."""

from __future__ import annotations

import re
from pathlib import Path

from nixmig import config, engine
from nixmig.db import scratch
from nixmig.db.runtime import DockerRuntime, NativeRuntime
from nixmig.phases.backup import REBLOCK, compare_counts
from nixmig.remote.base import Transport
from tests.helpers import ADMIN_PUB, NEWTON_PUB, copy_example


def write_cfg(repo: Path, service: str) -> config.Config:
    (repo / "nixmig.toml").write_text(
        f"""[operator]
recipients = ["{ADMIN_PUB}"]
[hosts.newton]
address = "newton.example.org"
age_recipient = "{NEWTON_PUB}"
[services.twenty-db]
host = "newton"
database = "default"
{service}
[migrations.twenty-db-password]
service = "twenty-db"
secret = "twenty-db-password"
deploy = "deploy --skip-checks .#newton"
"""
    )
    return config.load(repo / "nixmig.toml")


DOCKER = 'container = "twenty-db-1"\nvolume = "twenty_db-data"'
NATIVE = 'runtime = "native"'


def no_connect() -> Transport:
    raise AssertionError("plan must not connect")


def test_equal_counts_pass() -> None:
    counts = {"public.note": 2000, "public.person": 3000, "crm.deal": 0}
    assert compare_counts(counts, dict(counts)) == []


def test_each_difference_names_its_table() -> None:
    expected = {"public.note": 2000, "public.person": 3000, "public.ghost": 7, "public.same": 1}
    restored = {"public.note": 1999, "public.person": 3000, "public.extra": 1, "public.same": 1}
    assert compare_counts(expected, restored) == [
        "table public.extra is in the restore but was not in the dump's snapshot",
        "table public.ghost (7 rows in the dump's snapshot) is missing from the restore",
        "table public.note has 1999 rows in the restore, 2000 in the dump's snapshot",
    ]
    # one row more is as wrong as one row less
    assert compare_counts({"public.t": 5}, {"public.t": 6}) == [
        "table public.t has 6 rows in the restore, 5 in the dump's snapshot"
    ]


def test_scratch_names_docker(tmp_path: Path) -> None:
    cfg = write_cfg(copy_example(tmp_path), DOCKER)
    rt = DockerRuntime(cfg.services["twenty-db"])
    target = scratch.for_backup(rt, "Twenty DB/password", "20261123T100341Z")
    assert isinstance(target, scratch.DockerScratch)
    assert target.name == "nixmig-restore-test-twenty-db-password-20261123t100341z"
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", target.name)  # what docker accepts as a name
    assert target.label == "twenty-db-password"
    # psql and pg_restore go to the scratch container, never to the service's
    assert "twenty-db-1" not in target.runtime.psql() and target.name in target.runtime.psql()
    restore = target.runtime.pg_restore(target.database)
    assert restore[:6] == ["docker", "exec", "-i", "-u", "postgres", target.name]
    assert restore[-2:] == ["-d", scratch.SCRATCH_DB] and "--exit-on-error" in restore
    run = target.plan()[0]
    assert "--network none" in run and "--label nixmig.restore-test=twenty-db-password" in run
    assert "POSTGRES_PASSWORD" not in run  # no password at all: the container has no network


def test_scratch_names_native_fit_and_match_only_their_migration(tmp_path: Path) -> None:
    cfg = write_cfg(copy_example(tmp_path), NATIVE)
    rt = NativeRuntime(cfg.services["twenty-db"])
    long = "a-very-long-migration-name-that-goes-on-and-on-and-on-forever"
    for name in ("twenty-db-password", long, "a", "a_b"):
        target = scratch.for_backup(rt, name, "20261123T100341Z")
        assert isinstance(target, scratch.NativeScratch)
        assert len(target.database.encode()) <= 63, target.database
        assert target.database.endswith("_20261123t100341z")
        assert target.runtime.psql()[-4:] == ["-d", target.database, "-f", "-"]
        assert target.database in target.runtime.pg_restore(target.database)
        assert target.runtime.service.database == target.database
        assert rt.service.database == "default"  # the source is untouched
    # the leftover pattern of migration "a" does not match the scratch of migration "a_b"
    a = scratch.for_backup(rt, "a", "20261123T100341Z").database
    ab = scratch.for_backup(rt, "a_b", "20261123T100341Z").database
    pattern = f"^{scratch._database_head('a')}_[0-9]{{8}}t[0-9]{{6}}z$"
    assert re.fullmatch(pattern, a) and not re.fullmatch(pattern, ab)


def test_plan_shows_the_restore_test_only_when_asked(tmp_path: Path) -> None:
    for service, target in ((DOCKER, "scratch container nixmig-restore-test-"), (NATIVE, "scratch database ")):
        cfg = write_cfg(copy_example(tmp_path / target.split()[1]), service)
        ctx = engine.make_context(cfg, "twenty-db-password", connect=no_connect)
        backup = next(s for s in engine.plan(ctx) if s.phase == "backup")
        text = "\n".join(a.text for a in backup.actions)
        assert "restore test: off" in text and "--snapshot" not in text and target not in text
        assert REBLOCK in text and "pg_dump -Fc" in text

        ctx.restore_test = True
        backup = next(s for s in engine.plan(ctx) if s.phase == "backup")
        text = "\n".join(a.text for a in backup.actions)
        assert "pg_export_snapshot()" in text and "pg_dump -Fc --snapshot=<exported snapshot>" in text
        assert "TEMPLATE template0" in text and "pg_restore --no-owner --no-acl --exit-on-error" in text
        assert f"row count of every table in {target}" in text and "== its count in the dump's snapshot" in text
        assert f"remove {target}" in text
        cleanup = next(s for s in engine.plan(ctx) if s.phase == "cleanup")
        assert any("restore-test scratch targets" in a.text for a in cleanup.actions)
