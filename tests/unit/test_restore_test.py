"""--restore-test, the pure parts: the table comparison, scratch names, and what `plan` shows."""

from __future__ import annotations

import re
from pathlib import Path

from nixmig import config, engine
from nixmig.db import scratch
from nixmig.db.ops import TableContent, parse_content_line
from nixmig.db.runtime import DockerRuntime, NativeRuntime
from nixmig.phases.backup import REBLOCK, compare_tables
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


def tc(rows: int, checksum: str = "") -> TableContent:
    return TableContent(rows, checksum or f"{rows * 31} {rows * 7}")


def test_equal_tables_pass() -> None:
    tables = {"public.note": tc(2000), "public.person": tc(3000), "crm.deal": tc(0)}
    assert compare_tables(tables, dict(tables)) == []


def test_each_difference_names_its_table() -> None:
    expected = {"public.note": tc(2000), "public.person": tc(3000), "public.ghost": tc(7), "public.same": tc(1)}
    restored = {"public.note": tc(1999), "public.person": tc(3000), "public.extra": tc(1), "public.same": tc(1)}
    assert compare_tables(expected, restored) == [
        "table public.extra is in the restore but was not in the dump's snapshot",
        "table public.ghost (7 rows in the dump's snapshot) is missing from the restore",
        "table public.note has 1999 rows in the restore, 2000 in the dump's snapshot",
    ]
    # one row more is as wrong as one row less
    assert compare_tables({"public.t": tc(5)}, {"public.t": tc(6)}) == [
        "table public.t has 6 rows in the restore, 5 in the dump's snapshot"
    ]


def test_same_count_other_content_is_a_difference_and_no_checksum_is_shown() -> None:
    (line,) = compare_tables({"public.t": tc(5, "123 456")}, {"public.t": tc(5, "123 457")})
    assert line == "table public.t has the dump's 5 rows, but their content differs from the dump's snapshot"
    assert "123" not in repr(tc(5, "123 456"))  # a checksum of a small table is a weak hash of its values


def test_content_lines_parse() -> None:
    assert parse_content_line("public.t\t5\t1 2") == ("public.t", TableContent(5, "1 2"))
    assert parse_content_line("odd\tname\t5\t1 2") == ("odd\tname", TableContent(5, "1 2"))
    assert parse_content_line("SET") is None and parse_content_line("a\tb\tc") is None


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
    assert restore[-2:] == ["-d", f"dbname={scratch.SCRATCH_DB}"] and "--exit-on-error" in restore
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
        assert target.runtime.psql()[-4:] == ["-d", f"dbname={target.database}", "-f", "-"]
        assert f"dbname={target.database}" in target.runtime.pg_restore(target.database)
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
        assert f"row count and content checksum of every table in {target}" in text
        assert "== the dump's snapshot's" in text
        assert f"remove {target}" in text
        cleanup = next(s for s in engine.plan(ctx) if s.phase == "cleanup")
        assert any("restore-test scratch targets" in a.text for a in cleanup.actions)
