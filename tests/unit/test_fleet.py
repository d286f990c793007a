"""Several hosts: the config forms, the deploy tool's node list (evaluated by the real nix),
host selection, and the runner's barrier and failure isolation (real threads)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from nixmig import config, fleet, inventory
from nixmig.errors import ConfigError, NixEvalError, NixmigError, UsageError
from nixmig.journal import Journal

FLEET_TOML = """\
[operator]
recipients = []

[hosts.web1]
address = "10.0.0.1"
[hosts.web2]
address = "10.0.0.2"
[hosts.db9]
address = "10.0.0.9"
port = 2222

[services.app-db]
hosts = ["web*", "db9"]
runtime = "native"
port = 5432
[services.app-db.per_host.db9]
port = 5433
socket_dir = "/run/pg9"

[migrations.app-db-password]
service = "app-db"
secret = "app-db-password"
deploy = "deploy --skip-checks .#{host}"
"""


def load(tmp_path: Path, text: str) -> config.Config:
    (tmp_path / "nixmig.toml").write_text(text)
    return config.load(tmp_path / "nixmig.toml")


def test_hosts_patterns_and_per_host(tmp_path: Path) -> None:
    cfg = load(tmp_path, FLEET_TOML)
    assert cfg.targets("app-db") == ["web1", "web2", "db9"]
    assert cfg.service_for("app-db", "db9").port == 5433
    assert cfg.service_for("app-db", "db9").socket_dir == "/run/pg9"
    assert cfg.service_for("app-db", "web1").port == 5432
    assert cfg.service_for("app-db", "db9").host == "db9"
    assert fleet.select(cfg, "app-db-password", None, True) == ["web1", "web2", "db9"]
    assert fleet.select(cfg, "app-db-password", "db9,web*", False) == ["db9", "web1", "web2"]
    with pytest.raises(UsageError, match="'mail' is not one of migration app-db-password's hosts"):
        fleet.select(cfg, "app-db-password", "mail", False)
    with pytest.raises(UsageError, match="--hosts and --all together"):
        fleet.select(cfg, "app-db-password", "web1", True)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('hosts = ["web*", "db9"]', 'hosts = ["web*"]\nhost = "db9"'), "services.app-db: both host and hosts"),
        (('hosts = ["web*", "db9"]', ""), "services.app-db: no host"),
        (('"db9"]', '"db8"]'), "services.app-db.hosts[1]: unknown host 'db8'"),
        (('"db9"]', '"db 9"]'), "services.app-db.hosts[1]: 'db 9' is not a host name"),
        (("per_host.db9]", "per_host.mail]"), "services.app-db.per_host.mail: 'mail' is not one of"),
        (("port = 5433", 'port = "x"'), "services.app-db.per_host.db9.port: expected an integer, got 'x'"),
        (("port = 5433", 'hosts = ["a"]'), "services.app-db.per_host.db9.hosts: cannot be set per host"),
        (("port = 5433", "colour = 1"), "services.app-db.per_host.db9.colour: unknown key"),
        (
            ('secret = "app-db-password"', 'secret = "app-db-password"\nstrategy = "rebuild"'),
            "migrations.app-db-password.new_volume: required for a rebuild on several hosts",
        ),
        (
            (".#{host}", ".#web1"),
            "migrations.app-db-password.deploy: service 'app-db' runs on several hosts, the deploy command "
            "does not say which one",
        ),
    ],
)
def test_fleet_config_errors(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, FLEET_TOML.replace(*edit))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_deploy_may_read_the_host_from_the_environment(tmp_path: Path) -> None:
    cfg = load(tmp_path, FLEET_TOML.replace(".#{host}", '.#\\"$NIXMIG_HOST\\"'))
    assert "NIXMIG_HOST" in (cfg.migrations["app-db-password"].deploy or "")


def test_inventory_table_lets_names_be_unknown_until_resolved(tmp_path: Path) -> None:
    text = FLEET_TOML.replace('"db9"]', '"db9", "mail"]') + '\n[inventory]\nsource = "deploy-rs"\nuser = "ops"\n'
    cfg = load(tmp_path, text)
    assert cfg.inventory is not None and cfg.inventory.user == "ops"
    assert inventory.needed(cfg, "app-db")
    nodes = {"mail": inventory.Node("mail", "mail.example.org", None, 2200), "web1": inventory.Node("web1", "x")}
    resolved = inventory.resolve(cfg, nodes)
    assert resolved.hosts["mail"].address == "mail.example.org"
    assert resolved.hosts["mail"].user == "ops" and resolved.hosts["mail"].port == 2200
    assert resolved.hosts["web1"].address == "10.0.0.1"  # the [hosts.web1] table wins
    assert resolved.targets("app-db") == ["web1", "web2", "db9", "mail"]
    with pytest.raises(ConfigError, match=r"inventory\.source: expected one of 'deploy-rs', 'colmena'"):
        load(tmp_path, FLEET_TOML + '\n[inventory]\nsource = "nixops"\n')


# --- the deploy tool's nodes, evaluated by the real nix on flakes that need no nixpkgs ---

STUB = """{
  deploy = {
    sshUser = "deployer";
    sshOpts = [ "-p" "2222" ];
    nodes.alpha = {
      hostname = "10.0.0.1";
      profiles.system = { sshUser = "root"; path = throw "a profile was evaluated"; };
    };
    nodes.beta = {
      hostname = "beta.example.org";
      sshOpts = [ "-oPort=2200" "-i /keys/beta" ];
      profiles.system.path = throw "a profile was evaluated";
    };
  };
  colmena = {
    meta.nixpkgs = throw "nixpkgs was evaluated";
    defaults = { pkgs, ... }: { };
    web1 = { deployment = { targetHost = "10.1.0.1"; targetUser = "ops"; targetPort = 2022; }; };
    web2 = { name, nodes, pkgs, ... }: { deployment.targetHost = "not reachable without nixpkgs"; };
  };
}
"""


def nix_eval(expr: str, attr: str, tmp_path: Path) -> object:
    (tmp_path / "stub.nix").write_text(STUB)
    nix = shutil.which("nix-instantiate")
    assert nix, "nix-instantiate is missing: apt-get install nix-bin"
    out = subprocess.run(
        [nix, "--eval", "--strict", "--json", "-E", f"({expr}) (import {tmp_path}/stub.nix).{attr}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_deploy_rs_nodes_from_nix_without_evaluating_profiles(tmp_path: Path) -> None:
    nodes = inventory.parse_nodes(nix_eval(inventory.NODES_DEPLOY_RS, "deploy", tmp_path), where="stub")
    assert nodes["alpha"] == inventory.Node("alpha", "10.0.0.1", "root", 2222, None)
    assert nodes["beta"] == inventory.Node("beta", "beta.example.org", "deployer", 2200, "/keys/beta")


def test_colmena_hive_nodes_from_nix(tmp_path: Path) -> None:
    nodes = inventory.parse_nodes(nix_eval(inventory.NODES_COLMENA, "colmena", tmp_path), where="stub")
    assert nodes["web1"] == inventory.Node("web1", "10.1.0.1", "ops", 2022, None)
    assert nodes["web2"] == inventory.Node("web2", "web2", None, None, None)  # colmena's default: the name
    assert set(nodes) == {"web1", "web2"}


def test_read_nodes_from_a_real_flake(tmp_path: Path) -> None:
    """`nix eval --json FLAKE#deploy --apply …` on a flake with no inputs (nixpkgs cannot be fetched here)."""
    (tmp_path / "stub.nix").write_text(STUB)
    (tmp_path / "flake.nix").write_text(
        "{ outputs = { self }: let s = import ./stub.nix; in { deploy = s.deploy; colmena = s.colmena; }; }\n"
    )
    (tmp_path / "nixmig.toml").write_text(
        FLEET_TOML.replace('"db9"]', '"db9", "alpha", "beta"]') + '\n[inventory]\nsource = "deploy-rs"\n'
    )
    cfg = config.load(tmp_path / "nixmig.toml")
    nodes = inventory.read_nodes(cfg)
    assert nodes["beta"].port == 2200 and nodes["alpha"].user == "root"
    resolved = inventory.resolve(cfg, nodes)
    assert resolved.targets("app-db")[-2:] == ["alpha", "beta"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "flake.nix").write_text("{ outputs = { self }: { deploy.nodes.x = { }; }; }\n")
    (broken / "nixmig.toml").write_text((tmp_path / "nixmig.toml").read_text())
    with pytest.raises(NixEvalError, match="node 'x' has no hostname"):
        inventory.read_nodes(config.load(broken / "nixmig.toml"))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "expected an attribute set of nodes"),
        ({"a": {"hostname": ""}}, "node 'a' has no hostname"),
        ({"a": {"hostname": "h", "sshOpts": "-p 22"}}, "sshOpts is not a list"),
        ({"a": {"hostname": "h", "port": "22"}}, "port '22' is not an integer"),
    ],
)
def test_parse_nodes_rejects_bad_shapes(raw: object, message: str) -> None:
    with pytest.raises(NixEvalError, match=message):
        inventory.parse_nodes(raw, where="x")


def test_ssh_opts_forms() -> None:
    parse = inventory._from_ssh_opts
    assert parse(["-p", "22"]) == (22, None)
    assert parse(["-p 2201", "-i", "/k"]) == (2201, "/k")
    assert parse(["-p2202"]) == (2202, None)
    assert parse(["-o", "Port=2203"]) == (2203, None)
    assert parse(["-o Port 2204", "-o StrictHostKeyChecking=no"]) == (2204, None)
    assert parse(["-oPort=2205", "-i/k2"]) == (2205, "/k2")


# --- the runner: real threads ---


def test_barrier_keeps_two_waves_even_with_one_slot() -> None:
    """parallel=1 and 3 hosts: a host waiting at the barrier gives its slot away (no deadlock),
    and no host runs a phase after the barrier before every host reached it."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(host: str, gate: fleet.Gate | None) -> list[str]:
        assert gate is not None
        for i, phase in enumerate(["a", "b", "switch", "c"]):
            gate.reach(host, i, barrier=phase == "switch")
            with lock:
                events.append((host, phase))
            time.sleep(0.01)
        return ["a", "b", "switch", "c"]

    results = fleet.run(["h1", "h2", "h3"], work, parallel=1, barrier=True)
    assert [r.outcome for r in results] == ["done"] * 3
    first_switch = next(i for i, (_, p) in enumerate(events) if p == "switch")
    assert all(p in ("a", "b") for _, p in events[:first_switch])
    assert sorted(h for h, p in events[:first_switch]) == sorted(["h1", "h2", "h3"] * 2)


def test_a_failing_host_leaves_the_barrier_and_the_others_finish(tmp_path: Path) -> None:
    def work(host: str, gate: fleet.Gate | None) -> list[str]:
        assert gate is not None
        j = Journal.open(tmp_path, host, "m")
        for i, phase in enumerate(["preflight", "stage", "switch"]):
            gate.reach(host, i, barrier=phase == "switch")
            j.begin(phase)
            if host == "bad" and phase == "stage":
                j.fail(phase, "deploy (stage) exited 1")
                raise NixmigError("deploy (stage) exited 1", where="migrations.m.deploy")
            j.finish(phase)
        return ["preflight", "stage", "switch"]

    def unreachable(host: str, gate: fleet.Gate | None) -> list[str]:
        if host == "gone":
            raise NixmigError("cannot connect: Connection refused", where="gone (root@10.0.0.4:22)")
        return work(host, gate)

    results = fleet.run(
        ["ok1", "bad", "ok2", "gone"],
        unreachable,
        parallel=4,
        barrier=True,
        journal=lambda h: Journal.open(tmp_path, h, "m"),
    )
    by = {r.host: r for r in results}
    assert by["ok1"].outcome == by["ok2"].outcome == "done"
    assert by["bad"].outcome == "failed" and by["bad"].phase == "stage"
    assert by["gone"].outcome == "untouched" and "Connection refused" in (by["gone"].error or "")
    lines = fleet.summary_lines(results)
    assert lines[0] == "done (2): ok1, ok2"
    assert "failed (1): bad" in lines and "  bad at stage: migrations.m.deploy: deploy (stage) exited 1" in lines
    assert "untouched (1): gone" in lines


def test_an_internal_error_on_one_host_is_contained() -> None:
    def work(host: str, gate: fleet.Gate | None) -> list[str]:
        if host == "b":
            raise KeyError("boom")
        return []

    results = fleet.run(["a", "b"], work, parallel=2, barrier=False)
    assert results[0].outcome == "done"
    assert results[1].outcome == "failed" and results[1].error == "internal error: KeyError: 'boom'"


def test_fleet_view_plain_lines_and_live_table(capsys: pytest.CaptureFixture[str]) -> None:
    from nixmig.cli.fleetview import FleetView

    view = FleetView(["alpha", "gamma"], 7)
    assert not view.tty  # pytest's stdout is not a terminal: plain lines
    with view:
        view.on_phase("alpha", "preflight", "running", None)
        view.emitter("gamma")("| activating gamma (stage)")
        view.on_phase("gamma", "preflight", "done", None)
        view.on_result(fleet.HostResult("gamma", "failed", "switch", "deploy (switch) exited 1", 1.25))
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "alpha  [1/7] preflight: running",
        "gamma    | activating gamma (stage)",
        "gamma  [1/7] preflight: done before, skipped",
        "gamma  FAILED after 1.2s: deploy (switch) exited 1",
    ]
    live = FleetView(["alpha", "gamma"], 7)
    live.tty = True  # the rich table a terminal gets, rendered to the captured stdout
    with live:
        live.on_phase("alpha", "backup", "running", None)
        live.on_result(fleet.HostResult("gamma", "done", seconds=2.0))
    text = capsys.readouterr().out
    assert "alpha" in text and "backup" in text and "running" in text and "done" in text
    quiet = FleetView(["alpha"], 7, quiet=True)
    with quiet:
        quiet.on_phase("alpha", "backup", "running", None)
    assert capsys.readouterr().out == ""


def test_summary_of_a_rollback_names_the_hosts_with_nothing_to_undo() -> None:
    results = [fleet.HostResult("a", "done"), fleet.HostResult("b", "skipped")]
    lines = fleet.summary_lines(results, verb="rolled back", skipped="nothing to undo, not contacted")
    assert lines == ["rolled back (1): a", "nothing to undo, not contacted (1): b"]


@pytest.mark.parametrize("force", [False, True])
def test_fleet_rollback_passes_force_to_every_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool
) -> None:
    """`rollback --all --force` reaches each host's context as it does for one host (rebuild
    reads it). The engine's rollback is replaced by a recorder: this is the CLI's plumbing."""
    from typer.testing import CliRunner

    from nixmig import engine
    from nixmig.cli import app

    cfg = load(tmp_path, FLEET_TOML)
    for host in ("web1", "web2", "db9"):
        j = fleet.journal_for(cfg, "app-db-password", host)
        j.begin("preflight")
        j.finish("preflight")
    seen: dict[str, object] = {}

    def recorder(ctx: object, on_phase: object = None) -> list[str]:
        seen[ctx.host_name] = ctx.extra.get("force")  # type: ignore[attr-defined]
        return ["preflight"]

    monkeypatch.setattr(engine, "rollback", recorder)
    argv = ["rollback", "--all", "--yes", "-c", str(tmp_path / "nixmig.toml"), "--json"]
    result = CliRunner().invoke(app, argv + (["--force"] if force else []))
    assert result.exit_code == 0, result.output
    assert seen == {"web1": force, "web2": force, "db9": force}
