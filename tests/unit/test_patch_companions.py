"""Companions `nixmig patch` finds by itself: a container's other credential that holds the database's
value (an app's admin password), or a second MySQL credential (root's beside the user's) under
strategy move. Before, each was a by-hand item naming the also line to add; now patch moves it
like nixmig.toml's ``also`` would (its own secret, value kept) and --write adds that line itself.
The engine's own patch (apply) never does: it still refuses, since the companion's .age must be
made from the line first. The shapes' golden diffs are fixtures in tests/fixtures/shapes
(oci-app-admin-password-same-value, oci-mysql-user-and-root-no-also); here: the engine's refusal,
the naming, nixmig.toml's edit (nixmig/tomledit.py) and the user's path through the real CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from nixmig import config
from nixmig.errors import ConfigError
from nixmig.nixsrc import patch as pt
from nixmig.tomledit import add_also
from tests.helpers import FIXTURES, run_cli, snapshot
from tests.unit.test_foundation import load_text

SHAPES = FIXTURES / "shapes"


def _spec(root: Path) -> tuple[dict[str, bytes], pt.Spec]:
    cfg = config.load(root / "nixmig.toml")
    (migration,) = cfg.migrations
    return pt.read_sources(root), pt.spec_for(cfg, migration)


@pytest.mark.parametrize(
    ("case", "var", "line"),
    [
        ("oci-app-admin-password-same-value", "PHOTOS_ADMIN_PASSWORD", 20),
        ("oci-mysql-user-and-root-no-also", "MYSQL_ROOT_PASSWORD", 9),
    ],
)
def test_the_engine_still_refuses_a_companion_nixmig_toml_does_not_name(case: str, var: str, line: int) -> None:
    """apply patches the repo itself: a companion it found would need its .age (made from the line
    first) and its also entry (for verify): it stays a by-hand item naming both."""
    sources, spec = _spec(SHAPES / case)
    plan = pt.plan(sources, spec)
    assert plan.auto_also == ()
    (m,) = [m for m in plan.manual if m.companion == var]
    assert m.line == line and f"also = {{ {var} = " in m.what and "--from hosts/box/" in m.what


def test_a_found_companion_is_patched_as_if_also_named_it() -> None:
    """The same tree with `also` written by hand (the *-also fixture) gets the same edits."""
    sources, spec = _spec(SHAPES / "oci-app-admin-password-same-value")
    found = pt.plan(sources, spec, find_companions=True)
    assert found.auto_also == (("PHOTOS_ADMIN_PASSWORD", "photos-admin-password"),)
    by_hand_sources, by_hand_spec = _spec(SHAPES / "oci-app-admin-password-same-value-also")
    by_hand = pt.plan(by_hand_sources, by_hand_spec)
    assert found.edits == by_hand.edits and found.manual == by_hand.manual == ()
    assert dict(found.kept)["photos-admin-password"] == ("hosts/box/photos.nix:20",)


def test_a_found_companion_never_takes_a_secret_name_in_use(tmp_path: Path) -> None:
    """Another migration's secret (or its also) named mysql-root-password: root's gets a name of its own."""
    root = SHAPES / "oci-mysql-user-and-root-no-also"
    text = (root / "nixmig.toml").read_text() + (
        '\n[migrations.other]\nservice = "db"\nsecret = "other-pw"\nstrategy = "move"\n'
        'also = { MYSQL_ROOT_PASSWORD = "mysql-root-password" }\n'
    )
    cfg = load_text(tmp_path, text)
    plan = pt.plan(pt.read_sources(root), pt.spec_for(cfg, "shop-db-password"), find_companions=True)
    assert plan.auto_also == (("MYSQL_ROOT_PASSWORD", "shop-db-password-mysql-root-password"),)


def test_the_migrations_own_variable_is_never_a_companion() -> None:
    """A file nixmig cannot give config (its edits all given up): the database's own POSTGRES_PASSWORD
    left there is the migration's, not a companion to move with its value kept."""
    sources, spec = _spec(SHAPES / "oci-function-not-module")
    plan = pt.plan(sources, spec, find_companions=True)
    assert plan.auto_also == () and plan.manual
    left = [m for m in plan.manual if "POSTGRES_PASSWORD" in m.what]
    assert left and all("left as it is: every edit was given up (the first item)" in m.what for m in left), left
    assert not any("no database variable" in m.what for m in plan.manual)  # what it said before: not the reason


# ---------------------------------------------------------------- nixmig.toml's edit

BASE = (
    '[hosts.a]\naddress = "a"\n\n[migrations.m]  # the one\nservice = "db"\nsecret = "m-pw"\n\n[migrations.n]\nx = 1\n'
)


@pytest.mark.parametrize(
    ("text", "expected_line"),
    [
        (BASE, 'also = { A = "a-pw" }'),
        (
            BASE.replace('secret = "m-pw"\n', 'secret = "m-pw"\nalso = { B = "b" }  # kept\n'),
            'also = { B = "b", A = "a-pw" }',
        ),
        (BASE.replace('secret = "m-pw"\n', 'secret = "m-pw"\nalso = {}\n'), 'also = { A = "a-pw" }'),
        (BASE.replace("[migrations.m]", '[migrations."m"]'), 'also = { A = "a-pw" }'),
        (BASE.replace("\n\n[migrations.n]", '\n\n[migrations.m.also]\nB = "b"\n\n[migrations.n]'), 'A = "a-pw"'),
    ],
)
def test_also_is_added_to_the_migration_and_nothing_else_changes(text: str, expected_line: str) -> None:
    new = add_also(text, "m", [("A", "a-pw")])
    before, after = tomllib.loads(text), tomllib.loads(new)
    assert after["migrations"]["m"]["also"] == {**before["migrations"]["m"].get("also", {}), "A": "a-pw"}
    after["migrations"]["m"].pop("also")
    before["migrations"]["m"].pop("also", None)
    assert after == before
    assert expected_line in new.splitlines() or any(ln.startswith(expected_line) for ln in new.splitlines())
    kept = [ln for ln in text.splitlines() if not ln.lstrip().startswith("also")]
    assert all(ln in new.splitlines() for ln in kept), "every other line is kept as it was"


@pytest.mark.parametrize(
    "text",
    [
        BASE.replace('secret = "m-pw"\n', 'secret = "m-pw"\nalso.B = "b"\n'),  # a dotted key
        'migrations = { m = { service = "db", secret = "m-pw" } }\n',  # an inline table
    ],
)
def test_a_layout_nixmig_does_not_edit_is_refused_with_the_line_to_add(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        add_also(text, "m", [("A", "a-pw")])
    assert "nothing written" in str(e.value) and "A = 'a-pw'" in (e.value.hint or "")


# ---------------------------------------------------------------- the user's path, real CLI


def test_patch_write_moves_a_found_companion_and_records_it(tmp_path: Path) -> None:
    """patch --write: refused until each kept value has its .age (nothing written, the commands named);
    then the Nix files and nixmig.toml's also are written; a second write and --check find it patched,
    and the config loads with the companion (so preflight and verify check it)."""
    repo = tmp_path / "repo"
    shutil.copytree(SHAPES / "oci-mysql-user-and-root-no-also", repo)
    before = snapshot(repo)
    r = run_cli("patch", "--repo", str(repo), "--write")
    assert r.returncode == 1 and snapshot(repo) == before
    err = r.stderr.decode()
    assert "nixmig secret new shop-db-password --from hosts/box/shop.nix:8" in err
    assert "nixmig secret new mysql-root-password --from hosts/box/shop.nix:9" in err
    for name, line in (("shop-db-password", 8), ("mysql-root-password", 9)):
        made = run_cli("secret", "new", name, "--from", f"hosts/box/shop.nix:{line}", "--repo", str(repo))
        assert made.returncode == 0, made.stderr
    shown = run_cli("patch", "--repo", str(repo), "--json")
    assert json.loads(shown.stdout)["also_added"] == {"MYSQL_ROOT_PASSWORD": "mysql-root-password"}
    r = run_cli("patch", "--repo", str(repo), "--write")
    assert r.returncode == 0, r.stderr
    assert "MYSQL_ROOT_PASSWORD is a credential of its own" in r.stderr.decode()
    assert b'+also = { MYSQL_ROOT_PASSWORD = "mysql-root-password" }' in r.stdout
    cfg = config.load(repo / "nixmig.toml")
    assert cfg.migrations["shop-db-password"].also == {"MYSQL_ROOT_PASSWORD": "mysql-root-password"}
    shop = (repo / "hosts/box/shop.nix").read_bytes()
    assert b"shop-root-52" not in shop and b"shop-pw-51" not in shop
    assert b"MYSQL_ROOT_PASSWORD_FILE" in shop and b"age.secrets.mysql-root-password" in shop
    once = snapshot(repo)
    again = run_cli("patch", "--repo", str(repo), "--write")
    assert again.returncode == 0 and snapshot(repo) == once
    assert b"nothing to change" in again.stderr
    assert run_cli("patch", "--repo", str(repo), "--check").returncode == 0
    for out in (r, again):
        assert b"shop-root-52" not in out.stdout + out.stderr


def test_a_nixmig_toml_patch_cannot_extend_stops_the_write_before_anything(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(SHAPES / "oci-mysql-user-and-root-no-also", repo)
    toml = repo / "nixmig.toml"  # the migration as a dotted-key inline table: no table to add a line to
    text = toml.read_text()
    head, _, _ = text.partition("[migrations.shop-db-password]")
    toml.write_text(
        'migrations.shop-db-password = { service = "db", secret = "shop-db-password", strategy = "move" }\n' + head
    )
    assert config.load(toml).migrations["shop-db-password"].strategy == "move"
    for name, line in (("shop-db-password", 8), ("mysql-root-password", 9)):
        assert (
            run_cli("secret", "new", name, "--from", f"hosts/box/shop.nix:{line}", "--repo", str(repo)).returncode == 0
        )
    before = snapshot(repo)
    r = run_cli("patch", "--repo", str(repo), "--write")
    assert r.returncode == 1 and snapshot(repo) == before
    assert "cannot add the companion credentials to [migrations.shop-db-password]" in r.stderr.decode()
    shown = run_cli("patch", "--repo", str(repo))  # without --write: the diff, and the same line as a note
    assert shown.returncode == 0 and b"+++ b/hosts/box/shop.nix" in shown.stdout
    assert b"nixmig.toml: cannot add the companion credentials" in shown.stderr and snapshot(repo) == before


def test_an_array_of_tables_after_the_migration_ends_its_table() -> None:
    text = BASE.replace(
        "\n\n[migrations.n]", '\n\n[[migrations.m.health_checks]]\ntype = "http"\nalso = { B = "b" }\n\n[migrations.n]'
    )
    with pytest.raises(ConfigError):  # the also found is the health check's, not the migration's: not extended
        add_also(text.replace('secret = "m-pw"\n', 'secret = "m-pw"\nalso.C = "c"\n'), "m", [("A", "a-pw")])
    new = add_also(text, "m", [("A", "a-pw")])
    assert tomllib.loads(new)["migrations"]["m"]["also"] == {"A": "a-pw"}


# ---------------------------------------------------------------- a refusal names what it saw


@pytest.mark.parametrize(
    ("path", "says"),
    [
        (("containers", "cloud", "config", "services", "nextcloud", "config", "adminpassFile"), "declarative NixOS"),
        (("specialisation", "pg", "configuration", "services", "postgresql", "initialScript"), "specialisation.pg"),
        (("services", "couchdb", "adminPass"), "services.couchdb.extraConfigFiles"),
        (("services", "nextcloud", "config", "adminpassFile"), "names a file written into the world-readable Nix"),
        (("immichBase", "environment", "REDIS_PASSWORD"), "REDIS_PASSWORD in immichBase.environment"),
        (("defaultConfig", "database", "password"), "defaultConfig.…"),
        ((), "a string nixmig does not see used"),
    ],
)
def test_no_template_names_what_was_seen(path: tuple[str, ...], says: str) -> None:
    """ "no template for this shape" alone named nothing (issue 12: one line naming its shape)."""
    from nixmig.nixsrc.leftover import unknown_shape

    line = unknown_shape(path)
    assert line.startswith("no template for this shape: ") and says in line and "\n" not in line


def _with_worker(value: str) -> dict[str, bytes]:
    """oci-app-own-admin-password-companion with a second app container (compose2nix copies a project's
    variables into each container) whose ADMIN_PASSWORD is ``value``."""
    sources, _ = _spec(SHAPES / "oci-app-own-admin-password-companion")
    name = "hosts/box/feeds.nix"
    worker = (
        "    feeds-worker = {\n"
        '      image = "ghcr.io/example/feeds:2.1";\n'
        "      environment = {\n"
        '        DATABASE_URL = "postgres://feeds:feeds-db-Qx81@feeds-db/feeds";\n'
        f'        ADMIN_PASSWORD = "{value}";\n'
        "      };\n"
        "    };\n"
    ).encode()
    src = sources[name]
    at = src.rindex(b"  };\n}")
    return {**sources, name: src[:at] + worker + src[at:]}


def test_a_companion_left_empty_in_another_container_is_no_secret_there() -> None:
    """compose2nix gives every container the project's variables, set or not: ADMIN_PASSWORD = "" holds
    nothing to move (before, it was a by-hand item: "" matched no value an env file line can hold)."""
    _, spec = _spec(SHAPES / "oci-app-own-admin-password-companion")
    sources = _with_worker("")
    plan = pt.plan(sources, spec, find_companions=True)
    assert plan.auto_also == (("ADMIN_PASSWORD", "admin-password"),)
    assert plan.manual == ()
    # the second run (--check, or --write again) with also written: nothing to change, nothing said
    # (before, the empty one was "in a container this migration does not patch": --check exit 1)
    after = {**sources, **plan.results(sources)}
    again = pt.plan(after, dataclasses.replace(spec, also=plan.auto_also), find_companions=True)
    assert again.edits == () and again.manual == ()


def test_a_companion_with_another_value_in_another_container_is_not_given_the_first_one() -> None:
    """One secret holds one value: a container whose ADMIN_PASSWORD differs would silently get the
    other's. It stays, said."""
    _, spec = _spec(SHAPES / "oci-app-own-admin-password-companion")
    plan = pt.plan(_with_worker("another-admin-pw-99"), spec, find_companions=True)
    (m,) = plan.manual
    assert "feeds-worker container holds another value" in m.what and m.line > 20


def test_a_plain_variable_with_a_companions_bytes_is_said_not_taken_for_the_database_password() -> None:
    """remnawave's compose2nix file (18C/01): the bot token, a placeholder, moves as a companion; chat ids
    holding the same placeholder were by-hand items saying "this migration's password", whose recipe
    would have written the database's secret into them. Now one note per line, nothing by hand."""
    sources, spec = _spec(SHAPES / "oci-compose2nix-companion-value-in-plain-variable")
    plan = pt.plan(sources, spec, find_companions=True)
    assert plan.auto_also == (("BOT_TOKEN", "bot-token"),) and plan.manual == ()
    (note,) = [n for n in plan.notes if "NOTIFY_CHAT_ID" in n]
    assert note.startswith("hosts/box/crm.nix:33: ") and "holds the same bytes as a credential" in note
    assert "change_me" not in note and "this migration's password" not in note
