"""strategy move (keep the value, change no database): config, plan, the engine's lock and target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nixmig import config, engine, target
from nixmig.errors import ConfigError
from nixmig.remote.base import Transport
from nixmig.remote.local import LocalTransport
from tests.helpers import ADMIN_PUB, NEWTON_PUB, copy_example, run_cli

MOVE = ["preflight", "stage", "switch", "verify"]


def write_cfg(repo: Path, *, service: str = "", migration: str = "", host: str = "") -> Path:
    path = repo / "nixmig.toml"
    path.write_text(
        f"""[operator]
recipients = ["{ADMIN_PUB}"]
[hosts.newton]
address = "newton.example.org"
age_recipient = "{NEWTON_PUB}"
{host}
[services.shop-db]
host = "newton"
{service}
[migrations.shop-db-password]
service = "shop-db"
secret = "shop-db-password"
strategy = "move"
deploy = "deploy --skip-checks .#newton"
{migration}"""
    )
    return path


def no_connect() -> Transport:
    raise AssertionError("plan must not connect")


def test_plan_needs_no_connection_touches_no_database_and_says_rotate_it(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    cfg = config.load(
        write_cfg(
            repo,
            service='container = "shop-mariadb"\nrole = "root"',
            migration='health_checks = [{ type = "command", command = "curl -fsS http://127.0.0.1:8080/" }]',
        )
    )
    ctx = engine.make_context(cfg, "shop-db-password", connect=no_connect)
    steps = engine.plan(ctx)
    assert [s.phase for s in steps] == MOVE
    assert all(s.state == "pending" for s in steps)
    acts = [a for s in steps for a in s.actions]
    assert {a.kind for a in acts} == {"check", "file", "deploy", "note"}  # no "sql", no "run"
    text = "\n".join(a.text for a in acts if a.kind != "note")
    for database_step in ("psql", "pg_dump", "ALTER", "backup", "SQL"):
        assert database_step not in text
    assert "NIXMIG_PHASE=stage deploy --skip-checks .#newton" in text
    assert "NIXMIG_PHASE=switch deploy --skip-checks .#newton" in text
    assert "health: curl -fsS http://127.0.0.1:8080/" in text
    note = [a.text for a in steps[-1].actions if a.kind == "note"]
    assert len(note) == 1 and "public in the repository's history" in note[0] and "rotate it" in note[0]
    assert "nixmig secret new shop-db-password --force --stdin" in note[0]


def test_plan_command_prints_the_steps_and_the_warning(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    path = write_cfg(repo, service='container = "shop-mariadb"')
    r = run_cli("plan", "-c", str(path))
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "strategy move (the value stays, no database is changed)" in out
    assert "public in the repository's history" in out
    assert "docker container" not in out  # no database described
    rows = json.loads(run_cli("plan", "-c", str(path), "--json").stdout)
    assert [row["phase"] for row in rows] == MOVE


def test_a_move_needs_only_the_host(tmp_path: Path) -> None:
    """No container, no database keys: a redis password, an API token, a k3s token."""
    repo = copy_example(tmp_path)
    cfg = config.load(write_cfg(repo))
    assert cfg.migrations["shop-db-password"].strategy == "move"
    assert [p.name for p in engine.phases_for("move")] == MOVE
    # the same service for a strategy that reaches the database: its container is required
    text = (repo / "nixmig.toml").read_text().replace('strategy = "move"', 'strategy = "rotate"')
    (repo / "nixmig.toml").write_text(text)
    with pytest.raises(ConfigError, match=r'services\.shop-db\.container: required when runtime = "docker"'):
        config.load(repo / "nixmig.toml")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('reencrypt = { new_key = "env:K", old_key = "env:O" }', r"migrations\.shop-db-password\.reencrypt: strategy"),
        ('app_stop = "systemctl stop shop"', r"migrations\.shop-db-password\.app_stop: strategy \"move\""),
        ('app_start = "systemctl start shop"', r"migrations\.shop-db-password\.app_start: strategy \"move\""),
        ('new_volume = "x"', r"migrations\.shop-db-password\.new_volume: only used with strategy = \"rebuild\""),
        ('new_role = "x_v2"', r"migrations\.shop-db-password\.new_role: only used with strategy = \"dual-role\""),
    ],
)
def test_keys_of_database_steps_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    repo = copy_example(tmp_path)
    with pytest.raises(ConfigError, match=message) as err:
        config.load(write_cfg(repo, migration=extra))
    assert err.value.where == str(repo / "nixmig.toml")
    assert "\n" not in err.value.line()


def test_bad_move_config_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    path = write_cfg(repo, migration='app_stop = "systemctl stop shop"')
    r = run_cli("plan", "-c", str(path))
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and len(err.splitlines()) == 1
    assert str(path) in err and "app_stop" in err and "changes no database" in err


def test_lock_and_target_are_the_host_only_no_psql(tmp_path: Path) -> None:
    """The engine's locks and recorded identity for move: the migration's and the host's
    configuration lock, the host's machine-id, no cluster. The service points at a database
    that does not exist (a native server on port 1 in a missing directory): any psql fails."""
    repo = copy_example(tmp_path)
    lock_dir = tmp_path / "lock"
    cfg = config.load(
        write_cfg(
            repo,
            service=f'runtime = "native"\nport = 1\nsocket_dir = "{tmp_path / "none"}"',
            host=f'transport = "local"\nlock_dir = "{lock_dir}"',
        )
    )
    ctx = engine.make_context(cfg, "shop-db-password", state_dir=tmp_path / "state", connect=LocalTransport)
    with engine.locked(ctx):
        held = sorted(p.name for p in lock_dir.iterdir())
        assert held == ["host-config.lock", "newton-shop-db-password.lock"]
        engine.check_target(ctx, record=True)
    rec = ctx.journal.meta["target"]
    machine_id = Path("/etc/machine-id").read_text().strip()
    assert rec == {"host": f"machine-id {machine_id}", "clusters": [], "container": None, "container_ids": []}
    engine._observe(ctx)  # learns nothing: no cluster, no container
    assert ctx.journal.meta["target"]["clusters"] == []
    # another host's journal is refused, as for the other strategies
    ctx.journal.meta["target"]["host"] = "machine-id another"
    with pytest.raises(target.TargetChanged, match="belongs to another target"):
        engine.check_target(ctx, record=False)
