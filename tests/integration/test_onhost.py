"""`nixmig apply --on-host` on a real PostgreSQL cluster: what a NixOS unit `nixmig-<name>`
runs on every activation. The activation is played by `python -m nixmig.demo activate`
(agenix decrypts the secret with the host key); the deploy command is `false`: on-host
nixmig must never run it. State goes to a temp $NIXMIG_STATE_DIR."""

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

import pytest

from nixmig import config, engine
from nixmig.db import ops
from nixmig.demo import OLD_PASSWORD, SECRET, Target, seed, setup, write_config
from nixmig.secrets import store
from nixmig.secrets.generate import generate
from nixmig.sensitive import Secret

FIRST = "first/new+pass=word:%?-long-enough"
SECOND = "second-new-password-also-long-enough"


@dataclass
class Host:
    t: Target
    state: Path

    @property
    def cfg(self) -> Path:
        return self.t.repo / "nixmig.toml"

    @property
    def journal(self) -> Path:
        return self.state / "journal" / "newton" / f"{SECRET}.json"

    def nixmig(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nixmig", *args, "-c", str(self.cfg)],
            capture_output=True,
            text=True,
            env={**os.environ, "NIXMIG_STATE_DIR": str(self.state), **(env or {})},
            timeout=300,
            check=False,
        )

    def activate(self, phase: str = "stage") -> None:
        """What agenix does in the activation: decrypt the secret for the host."""
        subprocess.run(
            [sys.executable, "-m", "nixmig.demo", "activate", "--root", str(self.t.root)],
            env={**os.environ, "NIXMIG_PHASE": phase},
            check=True,
            capture_output=True,
        )

    def set_secret(self, value: str) -> None:
        store.new_secret(self.t.repo / "secrets" / "secrets.nix", SECRET, Secret(value), force=True)

    def role_matches(self, password: str) -> bool:
        ctx = engine.make_context(config.load(self.cfg), SECRET, on_host=True, state_dir=self.state)
        state = ops.role_state(ctx.t, ctx.runtime, "postgres")
        assert state.verifier is not None
        return ops.password_matches(state.verifier, Secret(password))


@pytest.fixture
def host() -> Iterator[Host]:
    root = Path(tempfile.mkdtemp(prefix="nixmig-onhost-"))
    t = setup(root, lambda _m: None)
    try:
        os.environ["PATH"] = f"{t.bindir}:{os.environ['PATH']}"
        seed(t)
        host_pub = " ".join(t.host_key.with_suffix(".pub").read_text().split()[:2])
        admin_pub = " ".join(t.admin_key.with_suffix(".pub").read_text().split()[:2])
        cfg = write_config(t, admin_pub, host_pub)
        text = cfg.read_text()
        deploy = text.split('deploy = "')[1].split('"')[0]
        cfg.write_text(text.replace(f'deploy = "{deploy}"', 'deploy = "false"'))  # on-host never deploys
        rules = t.repo / "secrets" / "secrets.nix"
        store.new_secret(rules, "twenty-app-secret", generate(32), force=True)
        store.new_secret(rules, SECRET, Secret(FIRST), like="twenty-app-secret")
        yield Host(t, root / "state")
    finally:
        subprocess.run(
            (["runuser", "-u", t.os_user, "--"] if os.geteuid() == 0 else [])
            + [str(t.bindir / "pg_ctl"), "-D", str(t.pg_data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_on_host_apply_is_idempotent_and_follows_the_secret(host: Host) -> None:
    host.activate()
    run = host.nixmig("apply", "--on-host")  # no --yes: implied
    assert run.returncode == 0, run.stdout + run.stderr
    assert host.role_matches(FIRST) and not host.role_matches(OLD_PASSWORD)
    # (the deploy command is `false`: it did not run, or apply would have failed)

    # the state: journal and backup in the state dir (0700), nothing in the repo, no secret in clear
    assert not (host.t.repo / ".nixmig").exists()
    assert host.state.stat().st_mode & 0o777 == 0o700
    j = json.loads(host.journal.read_text())
    assert j["completed"] and [s["state"] for s in j["steps"]] == ["done"] * 7
    assert j["meta"]["secret"].startswith("pbkdf2-sha256$4096$")
    for text in (host.journal.read_text(), run.stdout, run.stderr):
        assert FIRST not in text and "SCRAM-SHA-256$" not in text
    (backup,) = (host.state / "backups" / "newton").glob(f"{SECRET}-*.dump.age")
    assert backup.stat().st_mode & 0o777 == 0o600
    plain = subprocess.run(["age", "-d", "-i", str(host.t.admin_key), str(backup)], capture_output=True, check=True)
    assert plain.stdout.startswith(b"PGDMP")
    assert "health check" not in run.stdout  # none configured: no note

    # every later activation: the fast path, no connection, one line
    again = host.nixmig("apply", "--on-host", "--yes")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"nixmig: {SECRET} on newton: done, nothing to do (journal {host.journal})\n"
    assert json.loads(host.journal.read_text()) == j  # untouched

    # a new password deployed: the next activation rotates again, with a fresh backup first
    host.set_secret(SECOND)
    host.activate()
    second = host.nixmig("apply", "--on-host")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "the secret differs from the one applied" in second.stdout
    assert host.role_matches(SECOND)
    (archived,) = host.journal.parent.glob(f"{SECRET}@*.json")
    assert json.loads(archived.read_text())["meta"] == j["meta"]
    assert len(list((host.state / "backups" / "newton").glob("*.dump.age"))) == 2
    gc = host.nixmig("gc", "--on-host", "--yes", "--json")  # both within retention: kept
    assert gc.returncode == 0, gc.stderr
    items = json.loads(gc.stdout)["items"]
    assert [(i["kind"], i["action"]) for i in items] == [("backup", "keep"), ("backup", "keep")]
    assert all(i["name"].startswith(str(host.state / "backups" / "newton")) for i in items)
    assert host.nixmig("apply", "--on-host").stdout.endswith("done, nothing to do (journal " + f"{host.journal})\n")

    status = json.loads(host.nixmig("status", "--on-host", "--json").stdout)
    assert status["host"] == "newton" and status["journal"] == str(host.journal)
    assert [p["state"] for p in status["phases"]] == ["done"] * 7

    # rollback on the host: needs the operator identity and --yes; back to the previous password
    refused = host.nixmig("rollback", "--on-host", "--yes")
    assert refused.returncode == 1 and "--identity" in refused.stderr
    back = host.nixmig("rollback", "--on-host", "--yes", "-i", str(host.t.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert "activate the previous generation" in back.stdout
    assert host.role_matches(FIRST)
    # the next activation that still runs the unit starts over (as apply does off-host)
    redo = host.nixmig("apply", "--on-host")
    assert redo.returncode == 0, redo.stdout + redo.stderr
    assert host.role_matches(SECOND)


def test_on_host_without_the_secret_stops_before_any_change(host: Host) -> None:
    r = host.nixmig("apply", "--on-host")
    assert r.returncode == 1
    assert f"{host.t.agenix_dir}/{SECRET} is missing in this activation" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert host.role_matches(OLD_PASSWORD)
    states = {s["phase"]: s["state"] for s in json.loads(host.journal.read_text())["steps"]}
    assert states == {"preflight": "done", "backup": "done", "stage": "failed"}


@pytest.mark.parametrize("phase", ["backup", "rotate", "verify"])
def test_on_host_killed_then_next_activation_finishes(host: Host, phase: str) -> None:
    host.activate()
    killed = host.nixmig("apply", "--on-host", env={"NIXMIG_TEST_SIGKILL_AFTER": phase})
    assert killed.returncode == -9
    fast = host.nixmig("apply", "--on-host")  # not done: the fast path declines, the run resumes
    assert fast.returncode == 0, fast.stdout + fast.stderr
    assert "done before, skipped" in fast.stdout
    assert host.role_matches(FIRST)
    assert json.loads(host.journal.read_text())["completed"]


def test_on_host_plan_shows_no_deploy(host: Host) -> None:
    r = host.nixmig("plan", "--on-host", "--json")
    assert r.returncode == 0, r.stderr
    text = json.dumps(json.loads(r.stdout))
    assert "NIXMIG_PHASE" not in text and "false" not in text
    assert "agenix wrote it in this activation" in text and "secrets.nix" not in text


def test_on_host_picks_its_host_and_refuses_fleet_flags(host: Host) -> None:
    r = host.nixmig("apply", "--on-host", "--all")
    assert r.returncode == 2 and "--on-host runs on one host" in r.stderr
    r = host.nixmig("status", "--on-host", "--host", "nowhere")
    assert r.returncode == 2 and "unknown host 'nowhere'" in r.stderr
    r = host.nixmig("status", "--host", "newton")
    assert r.returncode == 2 and "--host and --state-dir go with --on-host" in r.stderr
