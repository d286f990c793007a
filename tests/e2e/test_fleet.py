"""`nixmig apply --all` on four hosts at once, on real parts.

Four sshd instances on different ports stand in for four hosts (alpha, beta, gamma,
delta): nixmig reaches each over SSH with strict known_hosts, as root, and runs the
native runtime there against that host's own PostgreSQL cluster (initdb'd for the
test, the worked example's data, the hardcoded password `postgres`). Each host has
an app stand-in writing all along. The deploy command (run per host, `{host}` in
it) plays that host's activation: agenix decrypts the secret with the host's key;
switch renders the app's env file and restarts it. gamma's activation fails at the
switch in the first run: the three others finish, gamma's journal says where it
stopped, and `apply --all` again touches only gamma.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nixmig.db.writer import Writer, count_found
from nixmig.demo import OLD_PASSWORD, SECRET, Target, seed, setup
from nixmig.secrets import store
from nixmig.secrets.generate import generate
from nixmig.sensitive import Secret
from tests.harness import free_port
from tests.harness.sshd import SshServer, StartSshd, write_known_hosts

HOSTS = ["alpha", "beta", "gamma", "delta"]
PHASES = ["preflight", "backup", "stage", "rotate", "switch", "verify", "cleanup"]

DEPLOY_PY = r'''
"""Plays one host's NixOS activation for the fleet e2e (see tests/e2e/test_fleet.py)."""
import json, os, subprocess, sys
from pathlib import Path
from urllib.parse import quote

host, phase = sys.argv[1], os.environ["NIXMIG_PHASE"]
assert os.environ["NIXMIG_HOST"] == host
spec = json.loads(Path(sys.argv[2]).read_text())[host]
print(f"activating {host} ({phase})", flush=True)
fail = Path(spec["fail"])
if fail.exists() and fail.read_text().strip() == phase:
    print(f"error: activation of {host} failed", flush=True)
    sys.exit(1)

def write(path, data):
    tmp = Path(str(path) + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)

secret = Path(spec["agenix"]) / "twenty-db-password"
env = Path(spec["env"])
if phase in ("stage", "switch"):
    pw = subprocess.run(["age", "-d", "-i", spec["key"], "secrets/twenty-db-password.age"],
                        capture_output=True, check=True).stdout
    write(secret, pw)
    print(f"agenix: {secret} (0400)", flush=True)
if phase == "switch":
    url = f"postgres://postgres:{quote(pw.decode(), safe='')}@127.0.0.1:{spec['port']}/default"
    write(env, f"PG_DATABASE_URL={url}\n".encode())
    print("app restarted onto the secret", flush=True)
if phase == "rollback":
    env.unlink(missing_ok=True)
    secret.unlink(missing_ok=True)
    print("previous generation", flush=True)
'''


@dataclass
class Node:
    name: str
    t: Target
    ssh: SshServer
    writer: Writer | None = None

    def app_url(self) -> str:
        return self.t.app_url()

    def accepted(self) -> int:
        """SSH logins this host's sshd accepted so far."""
        return self.ssh.log.read_text(errors="replace").count("Accepted publickey")


@dataclass
class Fleet:
    root: Path
    repo: Path
    nodes: dict[str, Node]
    admin_key: Path
    password: Secret

    @property
    def cfg(self) -> Path:
        return self.repo / "nixmig.toml"

    def nixmig(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nixmig", *args, "-c", str(self.cfg)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "COLUMNS": "200"},
        )

    def journal(self, host: str) -> dict[str, object]:
        raw = json.loads((self.repo / ".nixmig" / "journal" / host / f"{SECRET}.json").read_text())
        assert isinstance(raw, dict)
        return raw

    def states(self, host: str) -> dict[str, str]:
        steps = self.journal(host)["steps"]
        assert isinstance(steps, list)
        return {s["phase"]: s["state"] for s in steps}

    def login(self, host: str, password: str) -> str | None:
        from nixmig.db.connect import try_login

        return try_login("127.0.0.1", self.nodes[host].t.port, "postgres", Secret(password), "default")


def _stop_cluster(t: Target) -> None:
    subprocess.run(
        (["runuser", "-u", t.os_user, "--"] if os.geteuid() == 0 else [])
        + [str(t.bindir / "pg_ctl"), "-D", str(t.pg_data), "-m", "immediate", "stop"],
        capture_output=True,
        check=False,
    )


def _generation(env: Path) -> Callable[[], object]:
    """The app restarts when its env file changes (the writer reconnects)."""
    return lambda: env.exists() and env.stat().st_mtime


@pytest.fixture
def fleet(sshd_factory: StartSshd) -> Iterator[Fleet]:
    root = Path(tempfile.mkdtemp(prefix="nixmig-fleet-"))
    root.chmod(0o755)
    targets: list[Target] = []
    try:
        for name in HOSTS:
            (root / name).mkdir()
            t = setup(root / name, lambda _m: None)
            targets.append(t)
            seed(t)
        os.environ["PATH"] = f"{targets[0].bindir}:{os.environ['PATH']}"
        nodes = {name: Node(name, t, sshd_factory()) for name, t in zip(HOSTS, targets, strict=True)}
        repo = targets[0].repo  # one repo for the fleet: the first copy of the worked example
        admin_key = targets[0].admin_key
        pub = {n: " ".join(nd.t.host_key.with_suffix(".pub").read_text().split()[:2]) for n, nd in nodes.items()}
        admin_pub = " ".join(admin_key.with_suffix(".pub").read_text().split()[:2])
        rules = repo / "secrets" / "secrets.nix"
        rules.write_text(
            "let\n"
            f'  admin = "{admin_pub}";\n'
            + "".join(f'  {n} = "{k}";\n' for n, k in pub.items())
            + f"  servers = [ {' '.join(HOSTS)} ];\n"
            "in\n{\n"
            '  "twenty-app-secret.age".publicKeys = servers ++ [ admin ];\n'
            "}\n"
        )
        store.new_secret(rules, "twenty-app-secret", generate(32), force=True)
        password = Secret("fleet/pa+ss=w@rd:%?-long-enough")
        store.new_secret(rules, SECRET, password, like="twenty-app-secret")
        known = write_known_hosts(root / "known_hosts", [nd.ssh for nd in nodes.values()])
        spec = {
            n: {
                "agenix": str(nd.t.agenix_dir),
                "env": str(nd.t.env_file),
                "key": str(nd.t.host_key),
                "port": nd.t.port,
                "fail": str(root / f"fail-{n}"),
            }
            for n, nd in nodes.items()
        }
        (root / "spec.json").write_text(json.dumps(spec))
        (root / "deploy.py").write_text(DEPLOY_PY)
        ssh0 = nodes["alpha"].ssh
        toml = [
            f'[operator]\nrecipients = ["{admin_pub}"]\n',
            *(
                f"[hosts.{n}]\n"
                f'address = "127.0.0.1"\nport = {nd.ssh.port}\nuser = "{nd.ssh.user}"\n'
                f'identity = "{nd.ssh.identity}"\nknown_hosts = "{known}"\n'
                f'age_recipient = "{pub[n]}"\n'
                f'agenix_dir = "{nd.t.agenix_dir}"\nlock_dir = "{nd.t.root / "run" / "lock"}"\n'
                for n, nd in nodes.items()
            ),
            "[services.twenty-db]\n"
            f"hosts = {json.dumps(HOSTS)}\n"
            'runtime = "native"\ndatabase = "default"\nrole = "postgres"\n'
            f'os_user = "{targets[0].os_user}"\n',
            *(
                f"[services.twenty-db.per_host.{n}]\n"
                f'port = {nd.t.port}\nsocket_dir = "{nd.t.socket_dir}"\nlog_file = "{nd.t.pg_data.parent / "log"}"\n'
                for n, nd in nodes.items()
            ),
            f"[migrations.{SECRET}]\n"
            'service = "twenty-db"\n'
            f'secret = "{SECRET}"\n'
            f'deploy = "{sys.executable} {root / "deploy.py"} {{host}} {root / "spec.json"}"\n',
        ]
        (repo / "nixmig.toml").write_text("\n".join(toml))
        assert ssh0.user  # every sshd lets the session's client key in as this user
        f = Fleet(root, repo, nodes, admin_key, password)
        for nd in nodes.values():
            nd.writer = Writer(url_source=nd.app_url, generation=_generation(nd.t.env_file))
            nd.writer.start()
        yield f
    finally:
        for t in targets:
            _stop_cluster(t)
        shutil.rmtree(root, ignore_errors=True)


def test_four_hosts_one_failing_mid_run_then_retry_only_it(fleet: Fleet) -> None:
    nix_before = {p: p.read_bytes() for p in fleet.repo.rglob("*.nix")}
    plan = fleet.nixmig("plan", "--all", "--json")
    assert plan.returncode == 0, plan.stderr
    plans = json.loads(plan.stdout)
    assert list(plans) == HOSTS and all([s["phase"] for s in p] == PHASES for p in plans.values())
    assert "deploy.py gamma" in json.dumps(plans["gamma"])  # {host} filled in per host
    assert fleet.nixmig("apply", "--yes").returncode == 2  # several hosts: --hosts or --all is required

    (fleet.root / "fail-gamma").write_text("switch")  # gamma's activation breaks at the switch
    first = fleet.nixmig("apply", "--all", "--yes", "--parallel", "4", "-i", str(fleet.admin_key))
    assert first.returncode == 1, first.stdout + first.stderr
    out = first.stdout
    assert "done (3): alpha, beta, delta" in out, out
    assert "failed (1): gamma" in out
    assert "gamma at switch: migrations.twenty-db-password.deploy: deploy (switch) exited 1" in out
    for n in HOSTS:  # one line per host and event, prefixed with the host
        assert f"{n:5}  [1/7] preflight: running" in out
    for n in ("alpha", "beta", "delta"):
        assert fleet.states(n) == dict.fromkeys(PHASES, "done") and fleet.journal(n)["completed"]
        assert fleet.login(n, fleet.password.reveal_str()) is None
    g = fleet.states("gamma")
    assert g == {"preflight": "done", "backup": "done", "stage": "done", "rotate": "done", "switch": "failed"}
    assert not fleet.journal("gamma")["completed"]

    status = json.loads(fleet.nixmig("status", "--all", "--json").stdout)
    by = {h["host"]: h for h in status["hosts"]}
    assert by["gamma"]["state"] == "stopped at switch" and "exited 1" in by["gamma"]["error"]
    assert by["alpha"]["state"] == "done" and by["alpha"]["done"] == 7

    # the retry: only gamma is contacted, the other journals are not rewritten
    (fleet.root / "fail-gamma").unlink()
    journals = {n: (fleet.repo / ".nixmig/journal" / n / f"{SECRET}.json").read_bytes() for n in HOSTS}
    logins = {n: fleet.nodes[n].accepted() for n in HOSTS}
    second = fleet.nixmig("apply", "--all", "--yes", "-i", str(fleet.admin_key))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "done (1): gamma" in second.stdout
    assert "done before, not contacted (3): alpha, beta, delta" in second.stdout
    for n in ("alpha", "beta", "delta"):
        assert (fleet.repo / ".nixmig/journal" / n / f"{SECRET}.json").read_bytes() == journals[n]
        assert fleet.nodes[n].accepted() == logins[n]
    assert fleet.nodes["gamma"].accepted() > logins["gamma"]
    assert fleet.states("gamma") == dict.fromkeys(PHASES, "done")
    assert fleet.login("gamma", fleet.password.reveal_str()) is None

    # every acknowledged write is there, on every host; no app saw a refused login
    for n, nd in fleet.nodes.items():
        assert nd.writer is not None
        nd.writer.stop()
        acked = nd.writer.acknowledged
        assert len(acked) > 20, n
        assert count_found(nd.app_url(), acked) == len(acked), n
        assert nd.writer.failed_attempts == 0, n
    for n in HOSTS:  # backups: one per host, age-encrypted, 0600
        (b,) = (fleet.repo / ".nixmig" / "backups" / n).glob(f"{SECRET}-*.dump.age")
        assert b.read_bytes().startswith(b"age-encryption.org/v1\n") and b.stat().st_mode & 0o777 == 0o600

    # the shared repo holds the full patch; one host alone cannot be rolled back
    compose = fleet.repo / "modules/system/linux/twenty/arion-compose.nix"
    assert "POSTGRES_PASSWORD_FILE" in compose.read_text()
    alone = fleet.nixmig("rollback", "--hosts", "alpha", "--yes", "-i", str(fleet.admin_key))
    assert alone.returncode == 1
    assert "deployed on 3 other host(s) too: beta, gamma, delta" in alone.stdout
    assert fleet.states("alpha") == dict.fromkeys(PHASES, "done")  # refused before undoing anything
    back = fleet.nixmig("rollback", "--all", "--yes", "-i", str(fleet.admin_key))
    assert back.returncode == 0, back.stdout + back.stderr
    assert "rolled back (4): alpha, beta, gamma, delta" in back.stdout
    for n in HOSTS:
        assert fleet.login(n, OLD_PASSWORD) is None
        assert fleet.journal(n)["rolled_back"] is True
    assert {p: p.read_bytes() for p in fleet.repo.rglob("*.nix")} == nix_before


def test_an_unreachable_host_is_untouched(fleet: Fleet) -> None:
    text = fleet.cfg.read_text()
    port = free_port()  # nothing listens there
    text = text.replace('hosts = ["alpha",', 'hosts = ["epsilon", "alpha",').replace(
        "[services.twenty-db]",
        f'[hosts.epsilon]\naddress = "127.0.0.1"\nport = {port}\nknown_hosts = "{fleet.root / "known_hosts"}"\n\n'
        "[services.twenty-db]",
    )
    fleet.cfg.write_text(text)
    r = fleet.nixmig("apply", "--hosts", "epsilon,alpha", "--yes", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads(r.stdout)
    by = {h["host"]: h for h in report["hosts"]}
    assert by["alpha"]["outcome"] == "done"
    assert by["epsilon"]["outcome"] == "untouched" and "cannot connect" in by["epsilon"]["error"]
    assert (
        not (fleet.repo / ".nixmig/journal/epsilon").exists()
        or not json.loads((fleet.repo / ".nixmig/journal/epsilon" / f"{SECRET}.json").read_text())["steps"]
    )
