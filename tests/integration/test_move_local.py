"""strategy move end to end on a local target: the worked example hardcoding a value nixmig
is told not to rotate, `nixmig secret new --from FILE:LINE`, then apply / status / rollback / gc
with the local transport and the deploy command that plays NixOS activation (nixmig.demo
activate: agenix decrypts the repo's .age with the host key into a 0400 file, the app's env
file is rendered from it at the switch).

No database runs: the service points at a PostgreSQL that does not exist (port 1, a missing
socket directory), so any query, dump or ALTER would fail the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from nixmig.demo import SECRET
from tests.helpers import ADMIN_PUB, NEWTON_PUB, copy_example, private_key

VALUE = "Sh0p-m0ved-Valu3"  # what the Nix file hardcodes: the value move keeps
OLDER = "an-0lder-value-from-an-earlier-attempt"
COMPOSE = "modules/system/linux/twenty/arion-compose.nix"
PHASES = ["preflight", "stage", "switch", "verify"]


@dataclass
class Move:
    root: Path
    repo: Path
    agenix: Path
    env_file: Path
    admin_key: Path

    @property
    def config(self) -> Path:
        return self.repo / "nixmig.toml"


def write_config(m: Move, *, health: str, deploy: str | None = None, service: str | None = None) -> None:
    deploy = deploy or f"{sys.executable} -m nixmig.demo activate --root {m.root}"
    if service is None:
        service = f'runtime = "native"\nport = 1\nsocket_dir = "{m.root / "no-such-server"}"'
    m.config.write_text(f"""[operator]
recipients = ["{ADMIN_PUB}"]

[hosts.newton]
address = "localhost"
transport = "local"
age_recipient = "{NEWTON_PUB}"
agenix_dir = "{m.agenix}"
lock_dir = "{m.root / "run" / "lock"}"

[services.twenty-db]
host = "newton"
{service}

[migrations.{SECRET}]
service = "twenty-db"
secret = "{SECRET}"
strategy = "move"
deploy = "{deploy}"
health_checks = [{health}]
""")


@pytest.fixture
def move() -> Iterator[Move]:
    root = Path(tempfile.mkdtemp(prefix="nixmig-move-"))
    try:
        root.chmod(0o755)
        repo = copy_example(root)  # root/newton-dotfiles, where nixmig.demo activate looks
        compose = repo / COMPOSE
        text = compose.read_text().replace('"postgres://postgres:postgres@', f'"postgres://postgres:{VALUE}@')
        compose.write_text(text.replace('POSTGRES_PASSWORD = "postgres"', f'POSTGRES_PASSWORD = "{VALUE}"'))
        keys = root / "keys"
        keys.mkdir(mode=0o700)
        private_key(keys, "newton_host_ed25519")
        admin = private_key(keys, "admin_ed25519")
        run = root / "run"
        for d in (run, run / "agenix", run / "twenty"):
            d.mkdir(mode=0o700)
        m = Move(root, repo, run / "agenix", run / "twenty" / "env", admin)
        write_config(m, health=f'{{ type = "command", command = "test -s {m.env_file}", retries = 1 }}')
        new = nixmig(m, "secret", "new", SECRET, "--from", f"{COMPOSE}:44", "--repo", str(repo))
        assert new.returncode == 0, new.stdout + new.stderr
        assert VALUE not in new.stdout + new.stderr and "public" in new.stderr
        yield m
    finally:
        shutil.rmtree(root, ignore_errors=True)


def nixmig(m: Move, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixmig", *args, "-c", str(m.config)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=300,
        check=False,
    )


def journal(m: Move) -> dict[str, object]:
    raw = json.loads((m.repo / ".nixmig/journal/newton" / f"{SECRET}.json").read_text())
    assert isinstance(raw, dict)
    return raw


def states(m: Move) -> dict[str, str]:
    return {s["phase"]: s["state"] for s in journal(m)["steps"]}  # type: ignore[attr-defined]


def nix_files(m: Move) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in m.repo.rglob("*.nix") if ".nixmig" not in p.parts}


def plant(m: Move, value: str) -> None:
    """The host's agenix file holds ``value`` (0400), as an earlier activation left it."""
    f = m.agenix / SECRET
    f.unlink(missing_ok=True)
    f.write_text(value)
    f.chmod(0o400)


def test_apply_status_gc_rollback(move: Move) -> None:
    originals = nix_files(move)
    plan = nixmig(move, "plan")
    assert plan.returncode == 0, plan.stderr
    assert "public in the repository's history" in plan.stdout and "rotate it" in plan.stdout

    run = nixmig(move, "apply", "--yes", "-i", str(move.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    # the service moved onto the secret with the same value; the app got it from the env file
    assert (move.agenix / SECRET).read_text() == VALUE
    assert (move.agenix / SECRET).stat().st_mode & 0o777 == 0o400
    assert f"postgres://postgres:{quote(VALUE, safe='')}@" in move.env_file.read_text()
    compose = (move.repo / COMPOSE).read_text()
    assert VALUE not in compose and "POSTGRES_PASSWORD_FILE" in compose
    assert f"ok  {move.agenix / SECRET} holds the value of {SECRET}.age" in run.stdout
    assert "ok  health test -s" in run.stdout
    assert "public in the repository's history" in run.stdout
    for text in (run.stdout, run.stderr, json.dumps(journal(move))):
        assert VALUE not in text
    # no database step: no backup, the target is the host alone
    assert not (move.repo / ".nixmig" / "backups").exists()
    target = journal(move)["meta"]["target"]  # type: ignore[index]
    assert target["clusters"] == [] and str(target["host"]).startswith("machine-id ")

    status = json.loads(nixmig(move, "status", "--json").stdout)
    assert [p["phase"] for p in status["phases"]] == PHASES
    assert [p["state"] for p in status["phases"]] == ["done"] * 4 and status["completed"] is not None
    again = nixmig(move, "apply", "--yes")
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 4

    gc = nixmig(move, "gc")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert "error" not in gc.stdout + gc.stderr

    back = nixmig(move, "rollback", "--yes")  # no identity needed: nothing sealed
    assert back.returncode == 0, back.stdout + back.stderr
    assert "rolled back: verify, switch, stage, preflight" in back.stdout
    assert nix_files(move) == originals  # byte for byte
    assert not move.env_file.exists()
    assert json.loads(nixmig(move, "status", "--json").stdout)["rolled_back"] is True


def test_a_failing_health_check_fails_apply_and_the_journal_says_so(move: Move) -> None:
    missing = move.root / "not-healthy"
    write_config(move, health=f'{{ type = "command", command = "test -e {missing}", retries = 1 }}')
    run = nixmig(move, "apply", "--yes", "-i", str(move.admin_key))
    assert run.returncode == 1
    err = run.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"verification failed: health test -e {missing}" in err and "nixmig rollback" in err
    assert states(move) == {"preflight": "done", "stage": "done", "switch": "done", "verify": "failed"}
    status = json.loads(nixmig(move, "status", "--json").stdout)
    verify = status["phases"][-1]
    assert verify["state"] == "failed" and f"health test -e {missing}" in verify["error"]
    assert status["completed"] is None

    missing.touch()  # the service is fixed: apply again finishes
    again = nixmig(move, "apply", "--yes", "-i", str(move.admin_key))
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(states(move).values()) == {"done"}


def test_switch_refuses_when_the_host_file_differs_then_apply_again_finishes(move: Move) -> None:
    killed = nixmig(move, "apply", "--yes", "-i", str(move.admin_key), env={"NIXMIG_TEST_SIGKILL_AFTER": "stage"})
    assert killed.returncode == -9
    assert (move.agenix / SECRET).read_text() == VALUE
    staged = nix_files(move)
    plant(move, OLDER)  # e.g. an older generation activated in between

    refused = nixmig(move, "apply", "--yes", "-i", str(move.admin_key))
    assert refused.returncode == 1
    assert f"does not hold the value of secrets/{SECRET}.age" in refused.stderr
    assert "switch refused before changing anything" in refused.stderr and "nixmig apply" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert states(move)["stage"] == "failed" and states(move)["switch"] == "failed"
    assert nix_files(move) == staged and not move.env_file.exists()  # switch wrote and deployed nothing
    for text in (refused.stdout, refused.stderr, json.dumps(journal(move))):
        assert OLDER not in text and VALUE not in text

    again = nixmig(move, "apply", "--yes", "-i", str(move.admin_key))
    assert again.returncode == 0, again.stdout + again.stderr
    assert (move.agenix / SECRET).read_text() == VALUE
    assert set(states(move).values()) == {"done"}


def test_a_deploy_that_leaves_another_value_is_refused_at_stage(move: Move) -> None:
    plant(move, OLDER)
    write_config(move, health=f'{{ type = "command", command = "test -s {move.env_file}" }}', deploy="true")
    run = nixmig(move, "apply", "--yes", "-i", str(move.admin_key))
    assert run.returncode == 1
    assert f"does not hold the value of secrets/{SECRET}.age after the deploy" in run.stderr
    assert states(move)["stage"] == "failed" and "switch" not in states(move)
    assert not move.env_file.exists()


def test_without_an_identity_preflight_refuses_before_any_deploy(move: Move) -> None:
    originals = nix_files(move)
    run = nixmig(move, "apply", "--yes", env={"HOME": str(move.root)})  # no -i, no default key
    assert run.returncode == 1
    assert f"cannot decrypt secrets/{SECRET}.age here" in run.stderr and "-i" in run.stderr
    assert states(move) == {"preflight": "failed"}
    assert nix_files(move) == originals and not (move.agenix / SECRET).exists()


def test_a_service_with_no_database_keys_applies_and_gc_passes(move: Move) -> None:
    """Only the host (a token, a redis password): no container, no socket; gc reads the
    move journal and takes no database lock (it had none to name: docker without a container)."""
    write_config(move, health=f'{{ type = "command", command = "test -s {move.env_file}" }}', service="")
    run = nixmig(move, "apply", "--yes", "-i", str(move.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "strategy move" in nixmig(move, "plan").stdout
    gc = nixmig(move, "gc", "--yes")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert "Traceback" not in gc.stderr and "error" not in gc.stdout + gc.stderr
    back = nixmig(move, "rollback", "--yes")
    assert back.returncode == 0, back.stdout + back.stderr


def test_on_host_the_activation_is_the_deploy(move: Move) -> None:
    """--on-host (deploy-rs activate.custom, the NixOS unit): agenix has written the file in
    this activation; nixmig deploys nothing, patches nothing, and needs no identity."""
    state = move.root / "state"
    originals = nix_files(move)
    args = ("apply", "--on-host", "--host", "newton", "--state-dir", str(state))
    missing = nixmig(move, *args)
    assert missing.returncode == 1 and f"{move.agenix / SECRET} is missing in this activation" in missing.stderr
    plant(move, VALUE)
    run = nixmig(move, *args)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "public in the repository's history" in run.stdout
    raw = json.loads((state / "journal" / "newton" / f"{SECRET}.json").read_text())
    assert {s["phase"]: s["state"] for s in raw["steps"]} == dict.fromkeys(PHASES, "done")
    assert nix_files(move) == originals and not move.env_file.exists()  # no patch, no deploy
    again = nixmig(move, *args)
    assert again.returncode == 0 and "done, nothing to do" in again.stdout
