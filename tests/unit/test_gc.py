"""gc's verdicts from files and journals alone: backups by retention and by whether their
migration is finished, partial files, `retain` entries, and the local removal."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Mapping
from pathlib import Path

from nixmig import config, gc
from nixmig.journal import Journal

NOW = time.time()
DAY = 86400.0

TOML = """\
[operator]
recipients = []
[hosts.newton]
address = "newton.example.org"
[hosts.pascal]
address = "pascal.example.org"
[services.db]
host = "newton"
container = "db-1"
[services.db2]
host = "pascal"
container = "db-2"
[migrations.db-password]
service = "db"
secret = "db-password"
retention_days = 3
[migrations.other]
service = "db2"
secret = "other"
"""


def stamp(days_ago: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(NOW - days_ago * DAY))


def iso(days_from_now: float) -> str:
    return dt.datetime.fromtimestamp(NOW + days_from_now * DAY, dt.UTC).isoformat()


def setup(tmp_path: Path) -> tuple[config.Config, Path]:
    (tmp_path / "nixmig.toml").write_text(TOML)
    return config.load(tmp_path / "nixmig.toml"), tmp_path / ".nixmig"


def backup(state: Path, host: str, name: str) -> Path:
    d = state / "backups" / host
    d.mkdir(parents=True, exist_ok=True)
    f = d / name
    f.write_bytes(b"age-encryption.org/v1\n...")
    return f


def journal(state: Path, host: str, migration: str, *, done: bool, rolled_back: bool = False, **data: object) -> None:
    j = Journal.open(state / "journal", host, migration)
    j.begin("preflight")
    j.finish("preflight", dict(data))
    j.begin("backup")
    if done:
        j.finish("backup")
        j.complete()
    else:
        j.fail("backup", "pg_dump failed")
    if rolled_back:
        j.rolled_back, j.completed = True, None
        j.save()


def verdicts(items: list[gc.Item]) -> dict[str, tuple[str, str]]:
    return {Path(i.name).name if i.kind in ("backup", "partial") else i.name: (i.action, i.reason) for i in items}


def test_backups_by_retention_and_journal(tmp_path: Path) -> None:
    cfg, state = setup(tmp_path)
    journal(state, "newton", "db-password", done=True)
    journal(state, "pascal", "other", done=False)
    old = backup(state, "newton", f"db-password-{stamp(5)}.dump.age")
    fresh = backup(state, "newton", f"db-password-{stamp(1)}.dump.age")
    kept_old = backup(state, "pascal", f"other-{stamp(30)}.dump.age")  # its migration is not finished
    gone_mig = backup(state, "pascal", f"renamed-{stamp(8)}.dump.age")  # no journal, default 7 days
    backup(state, "pascal", "notes.txt")  # not ours: never listed
    partial_dead = backup(state, "newton", f"db-password-{stamp(2)}.dump.partial")
    os.utime(partial_dead, (NOW - 7200, NOW - 7200))
    partial_live = backup(state, "newton", f"db-password-{stamp(0)}.dump.partial")
    items = gc.backups(cfg, state, gc.read_journals(state), now=NOW)
    v = verdicts(items)
    assert v[old.name] == ("remove", "5 days old, kept 3 (finished)")
    assert v[fresh.name][0] == "keep" and "kept 3 days" in v[fresh.name][1]
    assert v[kept_old.name] == (
        "keep",
        "migration other on pascal is not finished: a rollback or a restore may need it",
    )
    assert v[gone_mig.name] == ("remove", "8 days old, kept 7 (no journal)")
    assert "notes.txt" not in v
    assert v[partial_dead.name][0] == "remove" and "half-written" in v[partial_dead.name][1]
    assert v[partial_live.name][0] == "keep"
    only = gc.backups(cfg, state, gc.read_journals(state), now=NOW, migrations=["other"])
    assert {Path(i.name).name for i in only} == {kept_old.name}

    errors = gc.remove_local(items)
    assert not errors
    assert not old.exists() and not gone_mig.exists() and not partial_dead.exists()
    assert fresh.exists() and kept_old.exists() and partial_live.exists()


def test_a_rolled_back_migration_keeps_backups_for_retention_only(tmp_path: Path) -> None:
    cfg, state = setup(tmp_path)
    journal(state, "newton", "db-password", done=False, rolled_back=True)
    old = backup(state, "newton", f"db-password-{stamp(4)}.dump.age")
    (item,) = gc.backups(cfg, state, gc.read_journals(state), now=NOW)
    assert (item.action, item.reason) == ("remove", "4 days old, kept 3 (rolled back)")
    assert Path(item.name) == old


def test_an_unreadable_journal_keeps_its_backups(tmp_path: Path) -> None:
    cfg, state = setup(tmp_path)
    (state / "journal" / "newton").mkdir(parents=True)
    (state / "journal" / "newton" / "db-password.json").write_text("{broken")
    backup(state, "newton", f"db-password-{stamp(40)}.dump.age")
    (item,) = gc.backups(cfg, state, gc.read_journals(state), now=NOW)
    assert item.action == "keep" and "is unreadable" in item.reason


def test_retain_entries(tmp_path: Path) -> None:
    _, state = setup(tmp_path)
    journal(
        state,
        "newton",
        "db-password",
        done=True,
        retain=[
            {"kind": "volume", "name": "db_data", "until": iso(-1)},
            {"kind": "container", "name": "db-old", "until": iso(+2)},
            {"kind": "file", "name": "/var/lib/x.old", "until": "2001-01-01T00:00:00"},  # naive: UTC
            {"kind": "disk", "name": "sda", "until": iso(-1)},
            {"kind": "file", "name": "/x", "until": "yesterday"},
        ],
    )
    journal(state, "pascal", "other", done=False, retain=[{"kind": "volume", "name": "v2", "until": iso(-9)}])
    items, errors = gc.retained(gc.read_journals(state), now=NOW)
    v = verdicts(items)
    assert v["db_data"][0] == "remove" and v["db_data"][1].startswith("retention ended ")
    assert v["db-old"][0] == "keep" and "more days" in v["db-old"][1]
    assert v["/var/lib/x.old"] == ("remove", "retention ended 2001-01-01T00:00:00Z")
    assert v["v2"] == ("keep", "migration other on pascal is not finished: it is the rollback path")
    assert any("kind 'disk' is not volume, container or file" in e for e in errors)
    assert any("'yesterday' is not an ISO 8601 time" in e for e in errors)
    only, _ = gc.retained(gc.read_journals(state), now=NOW, hosts=["pascal"])
    assert [i.name for i in only] == ["v2"]


def test_retain_of_a_rolled_back_or_undone_step_is_kept_or_ignored(tmp_path: Path) -> None:
    _, state = setup(tmp_path)
    journal(
        state,
        "newton",
        "db-password",
        done=False,
        rolled_back=True,
        retain=[{"kind": "volume", "name": "a", "until": iso(-3)}],
    )
    j = Journal.open(state / "journal", "newton", "db-password")
    j.undone("preflight")
    items, _ = gc.retained(gc.read_journals(state), now=NOW)
    assert items == []  # the undo dealt with it
    journal(
        state,
        "pascal",
        "other",
        done=False,
        rolled_back=True,
        retain=[{"kind": "volume", "name": "b", "until": iso(-3)}],
    )
    items, _ = gc.retained(gc.read_journals(state), now=NOW)
    assert [(i.name, i.action, i.reason) for i in items] == [
        ("b", "keep", "migration rolled back: it may be in use again")
    ]


def test_archived_journals_count(tmp_path: Path) -> None:
    """An on-host journal archived by a new run (MIGRATION@STAMP.json) is finished history."""
    _, state = setup(tmp_path)
    journal(state, "newton", "db-password", done=True, retain=[{"kind": "file", "name": "/old", "until": iso(-1)}])
    cur = state / "journal" / "newton" / "db-password.json"
    cur.rename(cur.with_name("db-password@20260101T000000Z.json"))
    journal(state, "newton", "db-password", done=False)
    journals = gc.read_journals(state)
    (js,) = journals.values()
    assert [j.path.name for j in js] == ["db-password.json", "db-password@20260101T000000Z.json"]
    items, _ = gc.retained(journals, now=NOW)
    assert [(i.name, i.action) for i in items] == [("/old", "remove")]


def test_report_json_shape(tmp_path: Path) -> None:
    r = gc.Report([gc.Item("backup", "h", "/x", "remove", "old", "m", 10, removed=True)], ["e"])
    assert r.as_json() == {
        "items": [
            {
                "kind": "backup",
                "host": "h",
                "name": "/x",
                "action": "remove",
                "reason": "old",
                "migration": "m",
                "bytes": 10,
                "removed": True,
                "error": None,
            }
        ],
        "to_remove": 1,
        "removed": 1,
        "kept": 0,
        "errors": ["e"],
    }


def rolled_back(state: Path, host: str, migration: str, *entries: Mapping[str, object], complete: bool = True) -> None:
    """A rebuild rolled back past its switch: the switch step undone, its undo's `retain` entries."""
    j = Journal.open(state / "journal", host, migration)
    j.begin("preflight")
    j.finish("preflight")
    j.begin("switch")
    j.finish("switch", {"retain": [{"kind": "volume", "name": "old_data", "until": iso(+3)}]})
    j.steps["switch"].data["retain"] = [dict(e) for e in entries]  # what the undo writes
    j.undone("switch")
    if complete:
        j.undone("preflight")
        j.rolled_back = True
        j.save()


def test_what_a_rollback_retired_is_collected_after_its_time(tmp_path: Path) -> None:
    _, state = setup(tmp_path)
    rolled_back(
        state, "newton", "db-password", {"kind": "volume", "name": "new_a", "until": iso(-1), "after": "rollback"}
    )
    rolled_back(state, "pascal", "other", {"kind": "volume", "name": "new_b", "until": iso(+2), "after": "rollback"})
    v = verdicts(gc.retained(gc.read_journals(state), now=NOW)[0])
    assert v["new_a"][0] == "remove" and v["new_a"][1].startswith("retired by the rollback; retention ended ")
    assert v["new_b"][0] == "keep" and "more days" in v["new_b"][1]
    assert "old_data" not in v  # the forward entry of the undone step: back in use, never listed


def test_what_a_forced_rollback_left_writes_on_is_never_removed(tmp_path: Path) -> None:
    _, state = setup(tmp_path)
    entry = {"kind": "volume", "name": "new_a", "until": iso(-30), "after": "rollback", "holds_writes": True}
    rolled_back(state, "newton", "db-password", entry)
    (item,) = gc.retained(gc.read_journals(state), now=NOW)[0]
    assert item.action == "keep" and "writes a forced rollback left behind" in item.reason


def test_a_rollback_retirement_is_kept_while_unfinished_or_while_the_migration_runs_again(tmp_path: Path) -> None:
    _, state = setup(tmp_path)
    entry = {"kind": "volume", "name": "new_a", "until": iso(-1), "after": "rollback"}
    rolled_back(state, "newton", "db-password", entry, complete=False)
    (item,) = gc.retained(gc.read_journals(state), now=NOW)[0]
    assert (item.action, item.reason) == ("keep", "the rollback of db-password on newton is not finished")
    cur = state / "journal" / "newton" / "db-password.json"
    cur.unlink()
    rolled_back(state, "newton", "db-password", entry)
    cur.rename(cur.with_name("db-password@20260101T000000Z.json"))
    journal(state, "newton", "db-password", done=False)  # a new run, killed midway
    (item,) = gc.retained(gc.read_journals(state), now=NOW)[0]
    assert (item.action, item.reason) == ("keep", "migration db-password on newton runs again: it may use new_a")


def test_one_verdict_per_thing_and_keep_wins(tmp_path: Path) -> None:
    _, state = setup(tmp_path)
    rolled_back(
        state,
        "newton",
        "db-password",
        {"kind": "volume", "name": "new_a", "until": iso(-1), "after": "rollback"},
        {"kind": "volume", "name": "new_a", "until": iso(+1), "after": "rollback"},
    )
    (item,) = gc.retained(gc.read_journals(state), now=NOW)[0]
    assert item.action == "keep"


def test_holding_writes_wins_over_a_plain_retirement_of_the_same_volume(tmp_path: Path) -> None:
    """As a forced rebuild rollback journals it: the switch's undo says the new volume holds
    writes, the provision's undo retires the same volume again (an older journal may too)."""
    _, state = setup(tmp_path)
    rolled_back(
        state,
        "newton",
        "db-password",
        {"kind": "volume", "name": "new_a", "until": iso(+1), "after": "rollback"},
        {"kind": "volume", "name": "new_a", "until": iso(-1), "after": "rollback", "holds_writes": True},
    )
    (item,) = gc.retained(gc.read_journals(state), now=NOW)[0]
    assert item.action == "keep" and "writes a forced rollback left behind" in item.reason


def test_a_new_run_after_a_rollback_keeps_what_the_rollback_retired_visible(tmp_path: Path) -> None:
    """apply after a rollback starts the journal over; the copy it keeps lets gc keep the
    retired volume while the new run is unfinished, and collect it after its time."""
    _, state = setup(tmp_path)
    entry = {"kind": "volume", "name": "new_a", "until": iso(-1), "after": "rollback"}
    rolled_back(state, "newton", "db-password", entry)
    j = Journal.open(state / "journal", "newton", "db-password")
    copy = j.start_over()
    assert copy is not None and copy.name.startswith("db-password@") and copy.stat().st_mode & 0o777 == 0o600
    assert not j.steps and not j.rolled_back
    assert Journal.open(state / "journal", "newton", "db-password").steps == {}
    assert Journal.read(copy).rolled_back and Journal.read(copy).state("switch") == "undone"
    assert j.start_over() is None  # nothing to keep for a journal that was not rolled back
    j.begin("preflight")  # the new run, killed midway
    (item,) = gc.retained(gc.read_journals(state), now=NOW)[0]
    assert (item.action, item.reason) == ("keep", "migration db-password on newton runs again: it may use new_a")
    j.finish("preflight")
    j.complete()
    (item,) = gc.retained(gc.read_journals(state), now=NOW)[0]
    assert item.action == "remove" and item.reason.startswith("retired by the rollback; retention ended")
