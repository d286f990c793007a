"""Hosts from the deploy tool's own node list ([inventory] in nixmig.toml).

A fleet already has an inventory: deploy-rs's `deploy.nodes` or colmena's hive.
nixmig reads node names and how to reach them from the flake with

    nix eval --json FLAKE#deploy --apply NODES_DEPLOY_RS      (deploy-rs)
    colmena eval -E COLMENA_EVAL                              (colmena, when installed)
    nix eval --json FLAKE#colmena --apply NODES_COLMENA       (colmena's hive, without colmena)

The --apply functions touch only the addressing attributes, never a profile or a
system closure, so evaluating them builds nothing. deploy-rs settings merge like
deploy-rs merges them (deploy < node < the `system` profile); `sshOpts` is read
for `-p PORT` / `-oPort=PORT` and `-i FILE`. Without colmena, a hive node that is
a function (the usual `{ name, nodes, pkgs, ... }: { ... }`) cannot be evaluated
without nixpkgs: its host is its name, which is colmena's own default targetHost.

A [hosts.NAME] table in nixmig.toml wins over the node of the same name.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixmig.config import Config, Host, Inventory
from nixmig.errors import NixEvalError, ToolMissingError

# deploy.nodes -> { NAME = { hostname; sshUser; sshOpts; }; }
NODES_DEPLOY_RS = """d:
let
  pick = s: { sshUser = s.sshUser or null; sshOpts = s.sshOpts or null; };
  top = pick d;
  profile = n: if n ? profiles && n.profiles ? system then pick n.profiles.system else { };
  first = xs: let ys = builtins.filter (x: x != null) xs; in if ys == [ ] then null else builtins.head ys;
in builtins.mapAttrs (name: n:
  let node = pick n; p = profile n; in {
    hostname = n.hostname or null;
    sshUser = first [ (p.sshUser or null) node.sshUser top.sshUser ];
    sshOpts = (if top.sshOpts == null then [ ] else top.sshOpts)
      ++ (if node.sshOpts == null then [ ] else node.sshOpts)
      ++ (if (p.sshOpts or null) == null then [ ] else p.sshOpts);
  }) (d.nodes or { })
"""

# a colmena hive -> { NAME = { hostname; sshUser; port; }; } (attrset nodes only, see the docstring)
NODES_COLMENA = """hive:
let
  names = builtins.filter (n: n != "meta" && n != "defaults") (builtins.attrNames hive);
  dep = v: if builtins.isAttrs v && v ? deployment then v.deployment else { };
in builtins.listToAttrs (map (name: let d = dep hive.${name}; in {
  inherit name;
  value = { hostname = d.targetHost or name; sshUser = d.targetUser or null; port = d.targetPort or null; };
}) names)
"""

COLMENA_EVAL = """{ nodes, ... }: builtins.mapAttrs (name: n: {
  hostname = n.config.deployment.targetHost;
  sshUser = n.config.deployment.targetUser;
  port = n.config.deployment.targetPort;
}) nodes"""


@dataclass(frozen=True)
class Node:
    name: str
    hostname: str
    user: str | None = None
    port: int | None = None
    identity: str | None = None


def parse_nodes(raw: Any, *, where: str) -> dict[str, Node]:
    """The JSON one of the expressions above prints -> nodes (pure; errors name `where`)."""
    if not isinstance(raw, dict):
        raise NixEvalError(f"expected an attribute set of nodes, got {type(raw).__name__}", where=where)
    nodes = {}
    for name, v in raw.items():
        if not isinstance(v, dict):
            raise NixEvalError(f"node {name!r}: expected an attribute set", where=where)
        hostname = v.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            raise NixEvalError(
                f"node {name!r} has no hostname",
                where=where,
                hint="set deploy.nodes.<name>.hostname (deploy-rs) or deployment.targetHost (colmena)",
            )
        user = v.get("sshUser")
        port = v.get("port")
        opts = v.get("sshOpts") or []
        if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
            raise NixEvalError(f"node {name!r}: sshOpts is not a list of strings", where=where)
        ssh_port, identity = _from_ssh_opts(opts)
        if port is not None and not isinstance(port, int):
            raise NixEvalError(f"node {name!r}: port {port!r} is not an integer", where=where)
        nodes[name] = Node(
            name=name,
            hostname=hostname,
            user=user if isinstance(user, str) and user else None,
            port=port if port is not None else ssh_port,
            identity=identity,
        )
    return nodes


def _from_ssh_opts(opts: list[str]) -> tuple[int | None, str | None]:
    """`-p 2222`, `-p2222`, `-oPort=2222`, `-o Port 2222`, `-i key`: what ssh would use."""
    words: list[str] = []
    for o in opts:
        words += o.split()  # deploy-rs users write both ["-p" "22"] and ["-p 22"]
    port: int | None = None
    identity: str | None = None
    i = 0
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w == "-p" and nxt is not None:
            port, i = _int(nxt, port), i + 1
        elif w.startswith("-p") and w[2:].isdigit():
            port = int(w[2:])
        elif w == "-i" and nxt is not None:
            identity, i = nxt, i + 1
        elif w.startswith("-i") and len(w) > 2:
            identity = w[2:]
        elif w in ("-o",) and nxt is not None:
            opt = nxt
            i += 1
            if opt.lower() == "port" and i + 1 < len(words):
                port, i = _int(words[i + 1], port), i + 1
            elif opt.lower().startswith("port="):
                port = _int(opt.split("=", 1)[1], port)
        elif w.lower().startswith("-oport="):
            port = _int(w.split("=", 1)[1], port)
        i += 1
    return port, identity


def _int(text: str, default: int | None) -> int | None:
    return int(text) if text.isdigit() else default


def _flake_ref(cfg: Config, inv: Inventory) -> str:
    ref = inv.flake
    if ref == "." or ref.startswith(("./", "../")):
        return str((cfg.repo / ref).resolve())
    return ref


def nodes_eval_argv(flake: str, attr: str) -> list[str]:
    """`nix eval` of the deploy tool's nodes (``attr`` "deploy" or "colmena"); a read never writes
    the user's flake.lock."""
    expr = NODES_DEPLOY_RS if attr == "deploy" else NODES_COLMENA
    return [
        "nix",
        "--extra-experimental-features",
        "nix-command flakes",
        "eval",
        "--json",
        "--no-write-lock-file",
        f"{flake}#{attr}",
        "--apply",
        expr,
    ]


def read_nodes(cfg: Config, *, timeout: float = 300) -> dict[str, Node]:
    """Evaluate the flake for its nodes (runs nix or colmena)."""
    inv = cfg.inventory
    assert inv is not None
    flake = _flake_ref(cfg, inv)
    where = f"{cfg.path}: inventory ({inv.source}, {flake})"
    if inv.source == "colmena" and shutil.which("colmena"):
        argv = ["colmena", "eval", "-E", COLMENA_EVAL]
        cwd: Path | None = Path(flake) if Path(flake).is_dir() else None
    else:
        if not shutil.which("nix"):
            raise ToolMissingError(
                "reading the deploy tool's nodes needs nix (nix eval)",
                where=where,
                hint="install nix, or list the hosts in nixmig.toml as [hosts.NAME] tables",
            )
        argv = nodes_eval_argv(flake, "deploy" if inv.source == "deploy-rs" else "colmena")
        cwd = None
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NixEvalError(f"{argv[0]} eval took longer than {timeout:.0f}s", where=where) from None
    if proc.returncode != 0:
        err = " | ".join(proc.stderr.strip().splitlines()[-2:]) or f"exit {proc.returncode}"
        raise NixEvalError(
            f"cannot read the nodes: {err}", where=where, hint="check [inventory] flake/source, or run the command"
        )
    try:
        raw = json.loads(proc.stdout)
    except ValueError:
        raise NixEvalError("the evaluation did not print JSON", where=where) from None
    return parse_nodes(raw, where=where)


def hosts_from(nodes: dict[str, Node], inv: Inventory) -> dict[str, Host]:
    return {
        n.name: Host(
            address=n.hostname,
            port=n.port or inv.port,
            user=n.user or inv.user,
            identity=n.identity or inv.identity,
            known_hosts=inv.known_hosts,
            agenix_dir=inv.agenix_dir,
            lock_dir=inv.lock_dir,
        )
        for n in nodes.values()
    }


def needed(cfg: Config, service: str) -> bool:
    """Whether the service's hosts cannot be resolved from [hosts] alone."""
    if cfg.inventory is None:
        return False
    return any(any(c in p for c in "*?[") or p not in cfg.hosts for p in cfg.services[service].patterns)


def resolve(cfg: Config, nodes: dict[str, Node] | None = None) -> Config:
    """The config with the deploy tool's nodes added to [hosts] (tables in nixmig.toml win)."""
    if cfg.inventory is None:
        return cfg
    found = hosts_from(nodes if nodes is not None else read_nodes(cfg), cfg.inventory)
    return dataclasses.replace(cfg, hosts={**found, **cfg.hosts})
