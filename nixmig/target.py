"""What a migration's journal and locks are tied to: the target database, by identity.

Two questions, two answers:
- which lock file keeps two runs off one database (``lock_name``): a name every run
  reaching that database computes alike, however its config names the host (127.0.0.1,
  localhost, an alias): the file lives on the target itself, keyed by the docker engine's
  ID and the container's name, or by the real path of the server's unix socket;
- whether a journal belongs to the database the config reaches now (``take``, ``compare``):
  the host's SSH key (or /etc/machine-id for the local transport), the cluster's
  ``system_identifier`` (pg_control_system(): set by initdb, kept by every restart and
  container re-creation, new for another cluster) and, for docker, the container's ID.

A migration changes some of these itself (a deploy re-creates the database container;
strategy rebuild moves it to a new cluster), so the journal keeps every cluster and
container ID nixmig saw while it ran; a container re-created on the same cluster is the
same target (said, and recorded), a cluster nixmig never saw is not.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from typing import Any

from nixmig.db.runtime import DockerRuntime, Runtime
from nixmig.errors import NixmigError
from nixmig.remote.base import Transport

SEEN = "target_seen"  # Context.extra: the Identity preflight read in this run (engine._record)


class TargetChanged(NixmigError):
    """The config now reaches another host, cluster or container than the journal's run did."""


class TargetUnknown(NixmigError):
    """The target's identity cannot be read (server down, docker unreachable)."""


@dataclass(frozen=True)
class Identity:
    host: str | None  # "ssh-ed25519 SHA256:…", or "machine-id …" (local transport); None: unknown
    cluster: str | None  # pg_control_system().system_identifier; None: no database (strategy move)
    container: str | None = None  # docker: the container's name ...
    container_id: str | None = None  # ... and its ID

    def record(self) -> dict[str, Any]:
        """What the journal keeps (meta["target"]) at the first apply."""
        return {
            "host": self.host,
            "clusters": [self.cluster] if self.cluster is not None else [],
            "container": self.container,
            "container_ids": [self.container_id] if self.container_id else [],
        }


def take(t: Transport, rt: Runtime) -> Identity:
    """The identity of the database this transport and runtime reach now."""
    query = b"SELECT system_identifier FROM pg_control_system();\n"
    container = container_id = None
    argv = rt.psql()
    if isinstance(rt, DockerRuntime):
        # one round trip, not two: the container's ID (an empty line when inspect fails), then psql
        container = rt.container
        inspect = shlex.join(rt._docker("inspect", "--type", "container", "-f", "{{.Id}}", container))
        script = f"id=$({inspect} </dev/null 2>/dev/null) || id=; printf '%s\\n' \"$id\"; exec {shlex.join(argv)}"
        argv = ["sh", "-c", script]
    try:
        r = t.run(argv, stdin=query, check=False)
    except NixmigError as exc:
        raise TargetUnknown(
            f"cannot read the cluster's system_identifier ({exc.what})",
            where=t.name,
            hint="start the database server and run the command again",
        ) from None
    lines = r.stdout.decode("utf-8", "replace").splitlines()
    if container is not None:
        container_id = (lines.pop(0).strip() if lines else "") or None
    if not r.ok:
        raise TargetUnknown(
            f"cannot read the cluster's system_identifier (psql failed: {r.tail()})",
            where=t.name,
            hint="start the database server and run the command again",
        )
    out = "".join(lines).strip()
    if not out.isdigit():
        raise TargetUnknown(f"unexpected system_identifier {out[:40]!r}", where=t.name)
    return Identity(host_identity(t), out, container, container_id)


def container_kept(t: Transport, rt: Runtime, recorded: dict[str, Any]) -> str | None:
    """docker: the runtime's container is one the journal recorded, by ID: it was not
    re-created since. A container's mounts are fixed when it is created, so its cluster is
    the one it had then, and a look at the cluster (``take``: a psql, ~0.1 s over SSH) would
    learn nothing: ``learn`` only adds what a re-created container or a new cluster brings.
    One docker inspect; its ID when kept. None (look at everything) for a native server,
    another container name, or an ID the record does not have."""
    if not isinstance(rt, DockerRuntime) or recorded.get("container") != rt.container:
        return None
    ids = [str(i) for i in recorded.get("container_ids") or []]
    if not ids:
        return None
    r = t.run(rt._docker("inspect", "--type", "container", "-f", "{{.Id}}", rt.container), check=False)
    now = r.stdout.decode("utf-8", "replace").strip() if r.ok else ""
    return now if now and now in ids else None


def take_host(t: Transport) -> Identity:
    """The host alone, for a migration that reaches no database (strategy move): no psql."""
    return Identity(host_identity(t), None)


def host_identity(t: Transport) -> str | None:
    """The SSH host key the connection verified; for the local transport, /etc/machine-id."""
    client = getattr(t, "_client", None)  # nixmig.remote.ssh.SshTransport's paramiko client
    if client is not None:
        from nixmig.remote.ssh import fingerprint

        transport = client.get_transport()
        return None if transport is None else fingerprint(transport.get_remote_server_key())
    r = t.run(["cat", "/etc/machine-id"], check=False)
    mid = r.stdout.decode().strip() if r.ok else ""
    return f"machine-id {mid}" if mid else None


def compare(recorded: dict[str, Any], now: Identity) -> tuple[str | None, str | None]:
    """(refusal, note): what makes ``now`` another target than the journal's (None: the same),
    and what changed that is still the same target (a container re-created on the cluster)."""
    changed = []
    if recorded.get("host") and now.host and recorded["host"] != now.host:
        changed.append(f"the host's key is {now.host}, the journal's run was on {recorded['host']}")
    clusters = [str(c) for c in recorded.get("clusters") or []]
    if clusters and now.cluster is not None and now.cluster not in clusters:
        changed.append(
            f"the cluster's system_identifier is {now.cluster}, the journal's run was on {' or '.join(clusters)}"
        )
    ids = [str(i) for i in recorded.get("container_ids") or []]
    note = None
    if now.container_id and ids and now.container_id not in ids:
        was = f"{recorded.get('container')} ({', '.join(i[:12] for i in ids)})"
        if recorded.get("container") != now.container or changed:
            changed.append(f"the container is {now.container} ({now.container_id[:12]}), the journal's was {was}")
        else:
            note = (
                f"container {now.container} was re-created since ({now.container_id[:12]}, was "
                f"{', '.join(i[:12] for i in ids)}) on the same cluster ({now.cluster}): same target"
            )
    return ("; ".join(changed) or None), note


def learn(recorded: dict[str, Any], now: Identity) -> bool:
    """Add a cluster / container ID nixmig's own run produced (a deploy re-created the
    container, rebuild switched clusters) to the record; True when it changed."""
    if recorded.get("host") and now.host and recorded["host"] != now.host:
        return False  # never learn another host
    if recorded.get("container") != now.container:
        return False
    changed = False
    clusters = recorded.setdefault("clusters", [])
    if now.cluster is not None and now.cluster not in clusters:
        clusters.append(now.cluster)
        changed = True
    ids = recorded.setdefault("container_ids", [])
    if now.container_id and now.container_id not in ids:
        ids.append(now.container_id)
        changed = True
    return changed


def lock_name(t: Transport, rt: Runtime) -> tuple[str, str]:
    """(lock file name, what it guards): one name per database on this host, however the
    config names the host. docker: the engine's ID and the container's name (a re-created
    container keeps its name, another engine has another ID); native: the real path of the
    server's unix socket (socket_dir through symlinks, and the port)."""
    if isinstance(rt, DockerRuntime):
        r = t.run(rt._docker("info", "-f", "{{.ID}}"), check=False)
        engine = r.stdout.decode().strip() if r.ok else ""
        if not engine:
            raise TargetUnknown(
                f"cannot read the docker engine's ID: {r.tail(1)}",
                where=t.name,
                hint="check that dockerd runs (and services.<name>.docker_host)",
            )
        key, what = f"docker\0{engine}\0{rt.container}", f"docker container {rt.container}"
    else:
        svc = rt.service
        r = t.run(["realpath", "-m", "--", svc.socket_dir], check=False)
        sock = r.stdout.decode().strip() if r.ok and r.stdout.strip() else svc.socket_dir
        key, what = f"native\0{sock}\0{svc.port}", f"PostgreSQL at {sock}/.s.PGSQL.{svc.port}"
    return "db-" + hashlib.sha256(key.encode()).hexdigest()[:20], what
