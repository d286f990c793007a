"""Docker and copy operations of the rebuild strategy, over a Transport.

Every command is the docker CLI on the host (``docker [-H …] …``) or a bash
pipeline between two ``docker exec`` on the host: the data streams from one
container's pg_dump to the other's pg_restore through a pipe on the host, never
through a file and never through nixmig. No argv holds a secret: the new
container reads its password from the agenix file, bind-mounted read-only; role
verifiers travel inside the pipe, with statement logging off on the receiving side.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from nixmig.config import Service
from nixmig.db.ops import DatabaseError, hush_sql, psql
from nixmig.db.runtime import DockerRuntime
from nixmig.db.sql import dbname, ident, literal
from nixmig.errors import NixmigError
from nixmig.remote.base import Result, Transport, render

LABEL_MIGRATION = "nixmig.migration"
LABEL_RUN = "nixmig.run"
LABEL_ROLE = "nixmig.role"  # "new" (the copy) or "rollback" (the old volume, for a reverse copy)
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COPY_TIMEOUT = 24 * 3600.0


class RebuildError(NixmigError):
    """A step of the rebuild strategy failed."""


def docker(svc: Service, *argv: str) -> list[str]:
    return ["docker", *(["-H", svc.docker_host] if svc.docker_host else []), *argv]


def in_container(rt: DockerRuntime, *argv: str, stdin: bool = True) -> list[str]:
    """``docker exec [-i] -u postgres CONTAINER argv…``."""
    return docker(rt.service, "exec", *(["-i"] if stdin else []), "-u", "postgres", rt.container, *argv)


def runtime_of(svc: Service, container: str) -> DockerRuntime:
    """The same service, reached through another container (the copy, the scratch one)."""
    return DockerRuntime(replace(svc, container=container))


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    image_id: str
    image: str  # as it was asked for (Config.Image)
    running: bool
    status: str
    labels: dict[str, str]
    env: dict[str, str]
    volumes: dict[str, str]  # volume name -> mount point

    def mounts(self, volume: str) -> bool:
        return volume in self.volumes


def inspect_container(t: Transport, svc: Service, name: str) -> ContainerInfo | None:
    r = t.run(docker(svc, "container", "inspect", name), check=False)
    if not r.ok:
        return None
    info: dict[str, Any] = json.loads(r.stdout)[0]
    cfg = info.get("Config") or {}
    env = dict(e.split("=", 1) for e in cfg.get("Env") or [] if "=" in e)
    return ContainerInfo(
        name=name,
        image_id=str(info.get("Image", "")),
        image=str(cfg.get("Image", "")),
        running=bool((info.get("State") or {}).get("Running")),
        status=str((info.get("State") or {}).get("Status", "")),
        labels=dict(cfg.get("Labels") or {}),
        env=env,
        volumes={str(m["Name"]): str(m["Destination"]) for m in info.get("Mounts") or [] if m.get("Type") == "volume"},
    )


def inspect_volume(t: Transport, svc: Service, name: str) -> dict[str, Any] | None:
    r = t.run(docker(svc, "volume", "inspect", name), check=False)
    if not r.ok:
        return None
    vol: dict[str, Any] = json.loads(r.stdout)[0]
    return vol


def image_id(t: Transport, svc: Service, image: str) -> str | None:
    r = t.run(docker(svc, "image", "inspect", "--format", "{{.Id}}", image), check=False)
    return r.stdout.decode().strip() if r.ok else None


def image_exists(t: Transport, svc: Service, image: str) -> bool:
    return image_id(t, svc, image) is not None


def create_volume_argv(svc: Service, name: str, labels: dict[str, str]) -> list[str]:
    flags = [x for k, v in sorted(labels.items()) for x in ("--label", f"{k}={v}")]
    return docker(svc, "volume", "create", *flags, name)


def run_container_argv(
    svc: Service,
    *,
    name: str,
    image: str,
    volume: str,
    data_dir: str,
    labels: dict[str, str],
    env: dict[str, str],
    binds: Sequence[str] = (),
) -> list[str]:
    """``docker run -d`` of a PostgreSQL container that nobody but nixmig can reach:
    no network (``docker exec`` over the local socket is how nixmig talks to it)."""
    argv = ["run", "-d", "--name", name, "--network", "none", "--stop-signal", "SIGINT"]
    argv += [x for k, v in sorted(labels.items()) for x in ("--label", f"{k}={v}")]
    argv += [x for k, v in sorted(env.items()) for x in ("-e", f"{k}={v}")]
    argv += [x for b in binds for x in ("-v", b)]
    argv += ["-v", f"{volume}:{data_dir}", image]
    return docker(svc, *argv)


def wait_ready(t: Transport, svc: Service, name: str, *, timeout: float = 300.0) -> None:
    """Until the server in ``name`` answers on 127.0.0.1 inside the container: the image's
    init server listens on the unix socket only, so TCP means the real server is up."""
    deadline = time.monotonic() + timeout
    while True:
        r = t.run(docker(svc, "exec", "-u", "postgres", name, "pg_isready", "-q", "-h", "127.0.0.1"), check=False)
        if r.ok:
            return
        info = inspect_container(t, svc, name)
        if info is None or not info.running or time.monotonic() > deadline:
            logs = t.run(docker(svc, "logs", "--tail", "15", name), check=False)
            why = "did not become ready" if info is not None and info.running else "stopped"
            raise RebuildError(
                f"container {name} {why}: {logs.tail(3)}",
                where=t.name,
                hint=f"docker logs {name}",
            )
        time.sleep(0.5)


def stop_and_remove(t: Transport, svc: Service, name: str) -> bool:
    """Stop (SIGINT: a fast, clean shutdown, then wait) and remove; False if it did not exist."""
    if inspect_container(t, svc, name) is None:
        return False
    t.run(docker(svc, "stop", "-t", "120", name), timeout=180)
    t.run(docker(svc, "rm", name))
    return True


def server_major(t: Transport, rt: DockerRuntime) -> int:
    out = psql(t, rt, "SHOW server_version_num;", database="template1").strip()
    return int(out) // 10000


# --- the copy ----------------------------------------------------------------------------


def pipeline(src: Sequence[str], dst: Sequence[str], *, prefix: str = "") -> list[str]:
    """argv of bash running ``src | dst`` on the host (pipefail), optionally after
    ``prefix`` (a printf of SQL) on the same stdin."""
    head = f"{{ printf '%s\\n' {render([prefix])}; {render(src)}; }}" if prefix else render(src)
    return ["bash", "-c", f"set -o pipefail; {head} | {render(dst)}"]


def first_error(stderr: bytes) -> str:
    """The first error line of pg_dump / pg_restore / psql, without the CONTEXT, DETAIL or
    "Command was" lines that follow it (they may quote the data or a role's verifier)."""
    for line in stderr.decode("utf-8", "replace").splitlines():
        if "error" in line.lower() or "fatal" in line.lower():
            return line.strip()[:300]
    return "(no error message)"


def run_pipeline(t: Transport, argv: list[str], what: str) -> Result:
    r = t.run(argv, timeout=COPY_TIMEOUT, check=False)
    if not r.ok:
        raise RebuildError(f"{what} failed (exit {r.exit_code}): {first_error(r.stderr)}", where=t.name)
    return r


HUSH_SESSION = "\\set ON_ERROR_STOP 1\n" + hush_sql(local=False) + "\\set ON_ERROR_STOP 0"
_ALREADY = re.compile(r'ERROR:\s+role "((?:[^"]|"")+)" already exists')


def copy_roles_argv(old: DockerRuntime, new: DockerRuntime) -> list[str]:
    svc = old.service
    dump = in_container(old, "pg_dumpall", "--roles-only", "-U", svc.admin_role, stdin=False)
    load = in_container(new, "psql", "-X", "-q", "-U", new.service.admin_role, "-d", dbname("postgres"), "-f", "-")
    # the roles' verifiers pass through this pipe: the new server must not log or keep them.
    # psql runs on past errors (see copy_roles), but not past one hushing the session.
    return pipeline(dump, load, prefix=HUSH_SESSION)


def copy_roles(t: Transport, old: DockerRuntime, new: DockerRuntime) -> None:
    """Every role of the old cluster, with its attributes, verifier, memberships and settings.

    psql runs without ON_ERROR_STOP because pg_dumpall's ``CREATE ROLE`` of the roles
    the new cluster already has (its bootstrap superuser) fails; every other error stops
    the copy. Each ``CREATE ROLE`` is followed by an ``ALTER ROLE`` setting everything."""
    existing = {ln for ln in psql(t, new, "SELECT rolname FROM pg_authid;", database="template1").splitlines() if ln}
    r = run_pipeline(t, copy_roles_argv(old, new), "copying the roles")
    for line in r.stderr.decode("utf-8", "replace").splitlines():
        if "ERROR:" not in line:
            continue
        m = _ALREADY.search(line)
        if m is None or m.group(1).replace('""', '"') not in existing:
            raise RebuildError(f"copying the roles failed: {line.strip()}", where=t.name)


@dataclass(frozen=True)
class NewerDump:
    """Dump with the new image's pg_dump, as PostgreSQL recommends for a major upgrade: a
    throwaway container of that image joins the old container's PID namespace (no network)
    and reaches the old server's unix socket as /proc/PID/root/SOCKET_DIR, as the old
    server's own user: the same socket and login as ``docker exec -u postgres``, and the
    freeze's TCP rule stays in force."""

    image: str
    pid: int
    uid: str
    socket_dir: str
    port: str


def newer_dump(t: Transport, old: DockerRuntime, image: str) -> NewerDump:
    out = psql(
        t, old, "SHOW data_directory; SHOW unix_socket_directories; SHOW port;", database="template1"
    ).splitlines()
    datadir, sockets, port = (ln.strip() for ln in out[:3])
    socket_dir = next((d.strip() for d in sockets.split(",") if d.strip().startswith("/")), "")
    if not socket_dir:
        raise RebuildError(
            f"{old.container}'s server has no unix socket directory (unix_socket_directories = {sockets!r})",
            where=t.name,
            hint="the newer pg_dump reaches the old server through its socket",
        )
    pid = int(read_file(t, old, f"{datadir}/postmaster.pid").split()[0])
    uid = t.run(in_container(old, "id", "-u", stdin=False)).stdout.decode().strip()
    return NewerDump(image, pid, uid, socket_dir, port)


def restore_argv(old: DockerRuntime, new: DockerRuntime, database: str, newer: NewerDump | None = None) -> list[str]:
    svc = old.service
    # -Z0: the pipe stays on this host, compressing would only cost CPU during the freeze
    args = ("-Fc", "-Z0", "--create", "-U", svc.admin_role, "-d", dbname(database))
    if newer is None:
        dump = in_container(old, "pg_dump", *args, stdin=False)
    else:
        host = f"/proc/{newer.pid}/root{newer.socket_dir}"
        dump = docker(
            svc, "run", "--rm", "--pid", f"container:{old.container}", "--network", "none", "-u", newer.uid,
            "--entrypoint", "pg_dump", newer.image, "-h", host, "-p", newer.port, *args,
        )  # fmt: skip
    load = in_container(
        new, "pg_restore", "--create", "--exit-on-error", "-U", new.service.admin_role, "-d", dbname("template1")
    )
    return pipeline(dump, load)


def copy_database(
    t: Transport, old: DockerRuntime, new: DockerRuntime, database: str, newer: NewerDump | None = None
) -> None:
    """Drop ``database`` in the new cluster if a previous attempt left it, then stream it over."""
    psql(t, new, f"DROP DATABASE IF EXISTS {ident(database)} WITH (FORCE);", database="template1")
    run_pipeline(t, restore_argv(old, new, database, newer), f"copying database {database!r}")


def read_file(t: Transport, rt: DockerRuntime, path: str) -> bytes:
    r = t.run(in_container(rt, "cat", "--", path, stdin=False), check=False)
    if not r.ok:
        raise RebuildError(f"cannot read {path} in {rt.container}: {r.tail(1)}", where=t.name)
    return r.stdout


def write_file(t: Transport, rt: DockerRuntime, path: str, data: bytes) -> None:
    """Replace ``path`` in the container atomically, keeping its owner and mode."""
    script = 'cp -p -- "$1" "$1.nixmig" && cat > "$1.nixmig" && mv -f -- "$1.nixmig" "$1"'
    r = t.run(in_container(rt, "sh", "-c", script, "sh", path), stdin=data, check=False)
    if not r.ok:
        raise RebuildError(f"cannot write {path} in {rt.container}: {r.tail(1)}", where=t.name)


def copy_config(t: Transport, old: DockerRuntime, new: DockerRuntime) -> list[str]:
    """pg_hba.conf and pg_ident.conf as they are on the old server (without a freeze's block),
    and its ALTER SYSTEM settings (postgresql.auto.conf) replayed; the new server reloads.
    Returns what was set."""
    for setting in ("hba_file", "ident_file"):
        src = psql(t, old, f"SHOW {setting};", database="template1").strip()
        dst = psql(t, new, f"SHOW {setting};", database="template1").strip()
        write_file(t, new, dst, without_freeze(read_file(t, old, src)))
    rows = psql(
        t,
        old,
        "SELECT name, setting FROM pg_file_settings WHERE sourcefile = "
        "current_setting('data_directory') || '/postgresql.auto.conf' AND error IS NULL ORDER BY seqno;",
        database="template1",
    )
    names = []
    stmts = []
    for line in rows.splitlines():
        if "\t" in line:
            name, value = line.split("\t", 1)
            names.append(name)
            stmts.append(f"ALTER SYSTEM SET {ident(name)} = {literal(value)};")
    if stmts:
        try:
            psql(t, new, "\n".join(stmts), database="template1")
        except DatabaseError as exc:
            raise RebuildError(
                f"the old server's ALTER SYSTEM settings ({', '.join(names)}) do not apply to the new one: {exc.what}",
                where=t.name,
                hint="remove or rename the setting on the old server (ALTER SYSTEM RESET …), then `nixmig apply`",
            ) from None
    psql(t, new, "SELECT pg_reload_conf();", database="template1")
    return names


# --- the freeze -----------------------------------------------------------------------------

TERMINATE_SQL = """SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();"""

REMAINING_SQL = """SELECT count(*) FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();"""


# At the top of pg_hba.conf while frozen: every new connection over TCP is refused (the app,
# a cron job, a service outside the compose project, anything on the network), whatever
# its role, superusers included; nixmig's own sessions come over the container's local
# socket (docker exec), which the rules after it still govern. A fixed text: it is found
# and removed exactly, and the fingerprint leaves it out (nixmig.db.fingerprint).
FREEZE_BLOCK = (
    "# BEGIN nixmig freeze: new connections over TCP refused until the switch (nixmig removes this block)\n"
    "host all all all reject\n"
    "# END nixmig freeze\n"
)
RELOAD_TIMEOUT = 30.0


def without_freeze(hba: bytes) -> bytes:
    return hba.replace(FREEZE_BLOCK.encode(), b"")


def hba_file(t: Transport, rt: DockerRuntime) -> str:
    return psql(t, rt, "SHOW hba_file;", database="template1").strip()


def is_frozen(t: Transport, rt: DockerRuntime) -> bool:
    return FREEZE_BLOCK.encode() in read_file(t, rt, hba_file(t, rt))


def _reload(t: Transport, rt: DockerRuntime) -> None:
    """pg_reload_conf(), and wait until the postmaster has read the files again: a session
    started after that (pg_conf_load_time is the postmaster's, inherited) has the new rules."""
    before = psql(t, rt, "SELECT pg_conf_load_time(); SELECT pg_reload_conf();", database="template1").split("\n")[0]
    deadline = time.monotonic() + RELOAD_TIMEOUT
    query = f"SELECT pg_conf_load_time() > {literal(before)}::timestamptz;"
    while psql(t, rt, query, database="template1").strip() != "t":
        if time.monotonic() > deadline:
            raise RebuildError(
                f"{rt.container} did not reload its configuration in {RELOAD_TIMEOUT:.0f}s", where=t.name
            )
        time.sleep(0.1)


def _tcp_probe(t: Transport, rt: DockerRuntime) -> str:
    """stderr of a login over TCP inside the container (no password given: it never gets in)."""
    argv = in_container(
        rt, "psql", "-X", "-w", "-h", "127.0.0.1", "-U", rt.service.admin_role, "-d", dbname("template1"),
        "-c", "SELECT 1", stdin=False,
    )  # fmt: skip
    r = t.run(argv, check=False)
    return (r.stdout + r.stderr).decode("utf-8", "replace")


def refuse_connections(t: Transport, rt: DockerRuntime) -> bool:
    """Put FREEZE_BLOCK at the top of the server's pg_hba.conf and reload; check that a new
    login over TCP is refused now. Returns False if it was in place already (checked again)."""
    path = hba_file(t, rt)
    hba = read_file(t, rt, path)
    added = FREEZE_BLOCK.encode() not in hba
    if added:
        write_file(t, rt, path, FREEZE_BLOCK.encode() + hba)
    _reload(t, rt)
    probe = _tcp_probe(t, rt)
    if "rejects connection" not in probe and "could not connect" not in probe and "Connection refused" not in probe:
        raise RebuildError(
            f"{rt.container} still accepts new connections over TCP after the freeze rule in {path}",
            where=t.name,
            hint="check that pg_hba.conf is the file the server reads (SHOW hba_file); "
            "`nixmig rollback` removes the rule",
        )
    return added


def allow_connections(t: Transport, rt: DockerRuntime) -> bool:
    """Remove FREEZE_BLOCK from the server's pg_hba.conf and reload; False if it was not there."""
    path = hba_file(t, rt)
    hba = read_file(t, rt, path)
    if FREEZE_BLOCK.encode() not in hba:
        return False
    write_file(t, rt, path, without_freeze(hba))
    _reload(t, rt)
    return True


def terminate_clients(t: Transport, rt: DockerRuntime) -> int:
    """End every client session of the server but ours; returns how many there were."""
    n = int(psql(t, rt, TERMINATE_SQL, database="template1").strip() or 0)
    return n


def compose_project(info: ContainerInfo) -> str | None:
    return info.labels.get(COMPOSE_PROJECT)


def app_containers(t: Transport, svc: Service, db: ContainerInfo, services: Sequence[str]) -> list[str]:
    """The running containers of the database container's compose project (arion), but
    the database itself: those of ``services`` if given, else every other service."""
    project = compose_project(db)
    if project is None:
        raise RebuildError(
            f"container {db.name} was not started by docker compose (arion): nixmig cannot tell which "
            "containers are the app",
            where=t.name,
            hint="set app_stop and app_start (commands run on the host) for this migration in nixmig.toml",
        )
    fmt = "{{.Names}}\t{{.Label " + json.dumps(COMPOSE_SERVICE) + "}}"
    r = t.run(docker(svc, "ps", "--filter", f"label={COMPOSE_PROJECT}={project}", "--format", fmt))
    out = []
    for line in r.stdout.decode().splitlines():
        name, _, service = line.partition("\t")
        if name and name != db.name and (not services or service in services):
            out.append(name)
    return sorted(out)
