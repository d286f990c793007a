"""The migration engine end to end on a local target: a real PostgreSQL cluster,
the local transport, the native runtime and a deploy command that plays activation
(the same target `nixmig demo` builds). Kill tests SIGKILL nixmig after every phase."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixmig import config, engine
from nixmig.db import ops
from nixmig.demo import OLD_PASSWORD, SECRET, Target, seed, setup, write_config
from nixmig.secrets import store
from nixmig.secrets.age import load_identities
from nixmig.secrets.generate import generate
from nixmig.sensitive import Secret

PHASES = ["preflight", "backup", "stage", "rotate", "switch", "verify", "cleanup"]


@pytest.fixture
def target() -> Iterator[Target]:
    root = Path(tempfile.mkdtemp(prefix="nixmig-it-"))
    t = setup(root, lambda _m: None)
    try:
        os.environ["PATH"] = f"{t.bindir}:{os.environ['PATH']}"
        seed(t)
        host_pub = " ".join(t.host_key.with_suffix(".pub").read_text().split()[:2])
        admin_pub = " ".join(t.admin_key.with_suffix(".pub").read_text().split()[:2])
        write_config(t, admin_pub, host_pub)
        rules = t.repo / "secrets" / "secrets.nix"
        store.new_secret(rules, "twenty-app-secret", generate(32), force=True)
        store.new_secret(rules, SECRET, Secret("n3w/pa+ss=w@rd:%?-long-enough"), like="twenty-app-secret")
        yield t
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                t.os_user,
                "--",
                str(t.bindir / "pg_ctl"),
                "-D",
                str(t.pg_data),
                "-m",
                "immediate",
                "stop",
            ]
            if os.geteuid() == 0
            else [str(t.bindir / "pg_ctl"), "-D", str(t.pg_data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def nixmig(t: Target, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixmig", *args, "-c", str(t.repo / "nixmig.toml")],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


def role_matches(t: Target, password: str) -> bool:
    ctx = engine.make_context(config.load(t.repo / "nixmig.toml"), SECRET)
    state = ops.role_state(ctx.t, ctx.runtime, "postgres")
    assert state.verifier is not None
    return ops.password_matches(state.verifier, Secret(password))


def journal(t: Target) -> dict[str, object]:
    raw = json.loads((t.repo / ".nixmig/journal/newton" / f"{SECRET}.json").read_text())
    assert isinstance(raw, dict)
    return raw


def test_apply_status_rollback(target: Target) -> None:
    def nix_files() -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in target.repo.rglob("*.nix") if ".nixmig" not in p.parts}

    originals = nix_files()
    plan = nixmig(target, "plan", "--json")
    assert plan.returncode == 0, plan.stderr
    assert [s["phase"] for s in json.loads(plan.stdout)] == PHASES
    assert "n3w/pa+ss" not in plan.stdout

    run = nixmig(target, "apply", "--yes", "-i", str(target.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    assert role_matches(target, "n3w/pa+ss=w@rd:%?-long-enough")
    assert not role_matches(target, OLD_PASSWORD)
    status = json.loads(nixmig(target, "status", "--json").stdout)
    assert [p["state"] for p in status["phases"]] == ["done"] * 7

    # nothing in clear: journal, output, backup
    jtext = (target.repo / ".nixmig/journal/newton" / f"{SECRET}.json").read_text()
    for text in (jtext, run.stdout, run.stderr):
        assert "n3w/pa+ss" not in text and "SCRAM-SHA-256$" not in text
    jfile = target.repo / ".nixmig/journal/newton" / f"{SECRET}.json"
    assert jfile.stat().st_mode & 0o777 == 0o600
    backup = Path(journal(target)["steps"][1]["data"]["path"])  # type: ignore[index]
    assert backup.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert backup.stat().st_mode & 0o777 == 0o600
    restored = subprocess.run(["age", "-d", "-i", str(target.admin_key), str(backup)], capture_output=True, check=True)
    assert restored.stdout.startswith(b"PGDMP")

    # the repo is patched: nixmig patch has nothing left to do, no hardcoded password remains
    check = subprocess.run(
        [sys.executable, "-m", "nixmig", "patch", "--check", "--repo", str(target.repo)],
        capture_output=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    compose = target.repo / "modules/system/linux/twenty/arion-compose.nix"
    assert "postgres:postgres@" not in compose.read_text() and "POSTGRES_PASSWORD_FILE" in compose.read_text()

    # a second apply has nothing to do
    again = nixmig(target, "apply", "--yes")
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 7

    back = nixmig(target, "rollback", "--yes", "-i", str(target.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert role_matches(target, OLD_PASSWORD)
    assert not target.env_file.exists()
    assert nix_files() == originals  # byte for byte
    assert json.loads(nixmig(target, "status", "--json").stdout)["rolled_back"] is True


def test_a_secret_ending_in_a_newline_is_the_password_without_it(target: Target) -> None:
    """`agenix -e` in an editor leaves a newline at the end of the file. The rotation, the app's env
    file (the demo renders it by the renderer's rule) and verify's login read the password without
    it, as the images' *_FILE and the shell's $(< FILE) do: apply passes and the app logs in."""
    rules = target.repo / "secrets" / "secrets.nix"
    store.new_secret(rules, SECRET, Secret("edited-in-vi_42\n"), force=True)
    run = nixmig(target, "apply", "--yes", "-i", str(target.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    assert role_matches(target, "edited-in-vi_42") and not role_matches(target, "edited-in-vi_42\n")
    assert ":edited-in-vi_42@" in target.app_url()


@pytest.mark.parametrize("phase", PHASES[:-1])
def test_sigkill_after_each_phase_then_resume(target: Target, phase: str) -> None:
    killed = nixmig(target, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": phase})
    assert killed.returncode == -9
    states = {s["phase"]: s["state"] for s in journal(target)["steps"]}  # type: ignore[attr-defined]
    assert states[phase] == "done"
    resumed = nixmig(target, "apply", "--yes")  # the lock died with the killed run
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert role_matches(target, "n3w/pa+ss=w@rd:%?-long-enough")
    assert [p["state"] for p in json.loads(nixmig(target, "status", "--json").stdout)["phases"]] == ["done"] * 7


def test_bad_inputs_stop_cleanly(target: Target) -> None:
    cfg = target.repo / "nixmig.toml"
    text = cfg.read_text()
    cfg.write_text(text.replace(f"port = {target.port}", "port = 1"))
    r = nixmig(target, "apply", "--yes")
    assert r.returncode == 1 and "PostgreSQL does not answer" in r.stderr
    assert "Traceback" not in r.stderr
    cfg.write_text(text.replace('deploy = "', 'deploy = "false '))
    r = nixmig(target, "apply", "--yes")
    assert r.returncode == 1 and "deploy (stage) exited 1" in r.stderr and "nixmig rollback" in r.stderr
    assert role_matches(target, OLD_PASSWORD)  # stopped before rotating
    cfg.write_text(text)
    r = nixmig(target, "apply", "--yes", "-i", str(target.admin_key))
    assert r.returncode == 0, r.stdout + r.stderr


def test_concurrent_run_is_refused(target: Target) -> None:
    ctx = engine.make_context(config.load(target.repo / "nixmig.toml"), SECRET)
    from nixmig import lock

    held = lock.acquire(ctx.t, ctx.host.lock_dir, f"newton-{SECRET}")
    try:
        r = nixmig(target, "apply", "--yes")
        assert r.returncode == 1 and "another nixmig run holds the lock" in r.stderr
    finally:
        held.close()


def test_demo_command() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "nixmig", "demo"], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "writes acknowledged" in r.stdout and "FAIL" not in r.stdout
    acked = r.stdout.split("writes acknowledged ")[1].split(",")[0]
    assert int(acked) > 0 and f"found {acked}" in r.stdout


def test_identities_required_for_rollback_of_rotate(target: Target) -> None:
    assert nixmig(target, "apply", "--yes").returncode == 0
    r = nixmig(target, "rollback", "--yes")
    assert r.returncode == 1 and "--identity" in r.stderr
    # refused before undoing anything: not half rolled back
    assert [p["state"] for p in json.loads(nixmig(target, "status", "--json").stdout)["phases"]] == ["done"] * 7
    assert target.env_file.exists()
    stranger = target.root / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    r = nixmig(target, "rollback", "--yes", "-i", str(stranger))
    assert r.returncode == 1 and "is a recipient" in r.stderr
    assert target.env_file.exists() and load_identities([target.admin_key])


def _stale_client_deploy(target: Target, during: str, watch: int = 0) -> None:
    """The deploy command, then at the switch ``during`` (shell) with STALE: a login with the old password."""
    cfg = target.repo / "nixmig.toml"
    text = cfg.read_text()
    deploy = text.split('deploy = "')[1].split('"')[0]
    script = target.root / "deploy-stale-app.sh"
    stale = (
        f"PGPASSWORD={OLD_PASSWORD} PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -p {target.port} -U postgres"
        " -d default -c 'select 1' >/dev/null 2>&1 || true"
    )
    script.write_text(
        f'#!/bin/sh\nset -e\n{deploy}\nif [ "$NIXMIG_PHASE" = switch ]; then\n  {during.replace("STALE", stale)}\nfi\n'
    )
    script.chmod(0o755)
    new = f'deploy = "{script}"' + (f"\nverify_watch = {watch}" if watch else "")
    cfg.write_text(text.replace(f'deploy = "{deploy}"', new))


def test_verify_fails_on_auth_failures_after_the_switch_deploy(target: Target) -> None:
    """A client still on the old password after the switch's deploy (one nixmig did not patch, a worker
    that connects every 0.2 s and goes on after the deploy) shows in the server log while verify watches
    it (verify_watch): verify fails."""
    _stale_client_deploy(
        target, "( i=0; while [ $i -lt 40 ]; do STALE; sleep 0.2; i=$((i+1)); done ) >/dev/null 2>&1 &", watch=3
    )
    r = nixmig(target, "apply", "--yes")
    assert r.returncode == 1
    assert "watching the server log" in r.stdout + r.stderr
    assert (
        "verification failed: no authentication failure in the server log since the switch's deploy finished"
        in r.stderr
    )
    states = {s["phase"]: s["state"] for s in journal(target)["steps"]}  # type: ignore[attr-defined]
    assert states["verify"] == "failed" and states["switch"] == "done"


def test_verify_counts_no_failure_of_the_apps_before_the_deploy_restarted_them(target: Target) -> None:
    """Under rotate the apps are refused from the rotation until the switch's deploy restarts them onto
    the new password (a busy app logs failures then): expected, not a failed verify. Before, verify
    counted from before the deploy and failed here, and again at each resume."""
    _stale_client_deploy(target, "STALE")  # the app's last login on the old password, during the deploy
    r = nixmig(target, "apply", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok  no authentication failure in the server log since the switch's deploy finished" in r.stdout
