"""Where PostgreSQL runs on the target, and the argv that reach it.

docker: inside the container, over its local socket (the official image trusts
it), via `docker exec`. native: a NixOS services.postgresql host, psql as the
postgres system user over the unix socket. Either way SQL travels on stdin.
"""

from __future__ import annotations

import getpass
import json
import re
from dataclasses import dataclass
from typing import Protocol

from nixmig.config import Service
from nixmig.db.sql import dbname
from nixmig.errors import NixmigError
from nixmig.remote.base import Transport

PSQL_FLAGS = ["-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1"]
# a restore test: objects owned by the restoring superuser, no grants (the roles of the
# source may not exist there), and the first error stops it
RESTORE_FLAGS = ["--no-owner", "--no-acl", "--exit-on-error"]


class RuntimeError_(NixmigError):
    """The database runtime is not in the expected shape (container missing, server down)."""


class Runtime(Protocol):
    @property
    def service(self) -> Service: ...

    def psql(self, database: str | None = None) -> list[str]:
        """argv of a superuser psql reading SQL from stdin."""
        ...

    def pg_dump(self, snapshot: str | None = None) -> list[str]:
        """argv of pg_dump -Fc to stdout; ``snapshot``: an exported snapshot to dump (--snapshot)."""
        ...

    def pg_restore_list(self) -> list[str]: ...

    def pg_restore(self, database: str) -> list[str]:
        """argv of pg_restore reading an archive on stdin into ``database`` (no owners, no grants)."""
        ...

    def check(self, t: Transport) -> str | None:
        """Raise RuntimeError_ with advice when the runtime is not there; docker: return the
        container's ID (read by the same inspect: nixmig.target records it), native: None."""
        ...

    def endpoint(self, t: Transport) -> tuple[str, int]:
        """Host and port to reach the server over TCP from the target."""
        ...

    def describe(self) -> str: ...

    def log_mark(self, t: Transport) -> str:
        """A position in the server's log (a time, or a file offset) to read from later."""
        ...

    def log_since(self, t: Transport, mark: str) -> str | None:
        """The server's log since a mark, or None when nixmig cannot read it."""
        ...


@dataclass(frozen=True)
class DockerRuntime:
    service: Service

    @property
    def container(self) -> str:
        assert self.service.container is not None
        return self.service.container

    def _docker(self, *argv: str) -> list[str]:
        host = ["-H", self.service.docker_host] if self.service.docker_host else []
        return ["docker", *host, *argv]

    def _exec(self, *argv: str, stdin: bool = True) -> list[str]:
        return self._docker("exec", *(["-i"] if stdin else []), "-u", "postgres", self.container, *argv)

    def exec_words(self) -> list[str]:
        """``docker exec -i -u postgres``: a container's name or ID, then a command, follow."""
        return self._docker("exec", "-i", "-u", "postgres")

    def exec_in(self, container: str) -> list[str]:
        return [*self.exec_words(), container]

    def psql_inside(self, database: str | None = None) -> list[str]:
        """psql's own argv, as it runs inside the container (``psql`` is exec_in + this)."""
        db = database or self.service.database
        return ["psql", *PSQL_FLAGS, "-U", self.service.admin_role, "-d", dbname(db), "-f", "-"]

    def psql(self, database: str | None = None) -> list[str]:
        return self.exec_in(self.container) + self.psql_inside(database)

    def pg_dump(self, snapshot: str | None = None) -> list[str]:
        snap = [f"--snapshot={snapshot}"] if snapshot else []
        return self._exec(
            "pg_dump", "-Fc", *snap, "-U", self.service.admin_role, "-d", dbname(self.service.database), stdin=False
        )

    def pg_restore_list(self) -> list[str]:
        return self._exec("pg_restore", "--list")

    def pg_restore(self, database: str) -> list[str]:
        return self._exec("pg_restore", *RESTORE_FLAGS, "-U", self.service.admin_role, "-d", dbname(database))

    def check(self, t: Transport) -> str | None:
        r = t.run(self._docker("inspect", "--type", "container", self.container), check=False)
        if not r.ok:
            raise RuntimeError_(
                f"container {self.container!r} not found",
                where=t.name,
                hint="check services.<name>.container (docker ps -a shows the names)",
            )
        info = json.loads(r.stdout)[0]
        if not info.get("State", {}).get("Running"):
            raise RuntimeError_(f"container {self.container!r} is not running", where=t.name)
        vol = self.service.volume
        if vol and not any(m.get("Name") == vol for m in info.get("Mounts", [])):
            raise RuntimeError_(
                f"container {self.container!r} does not mount volume {vol!r}",
                where=t.name,
                hint="check services.<name>.volume (docker inspect shows the mounts)",
            )
        return str(info.get("Id") or "") or None

    def endpoint(self, t: Transport) -> tuple[str, int]:
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        r = t.run(self._docker("inspect", "-f", fmt, self.container))
        ips = r.stdout.decode().split()
        if not ips:
            raise RuntimeError_(f"container {self.container!r} has no IP address", where=t.name)
        return ips[0], 5432

    def describe(self) -> str:
        return f"docker container {self.container}"

    def log_mark(self, t: Transport) -> str:
        return _host_time(t)

    def log_since(self, t: Transport, mark: str) -> str | None:
        r = t.run(self._docker("logs", "--since", mark, self.container), check=False)
        return (r.stdout + r.stderr).decode("utf-8", "replace") if r.ok else None


@dataclass(frozen=True)
class NativeRuntime:
    service: Service

    def _as_os_user(self, *argv: str) -> list[str]:
        if getpass.getuser() == self.service.os_user:
            return list(argv)
        return ["runuser", "-u", self.service.os_user, "--", *argv]

    def _conn(self) -> list[str]:
        return ["-h", self.service.socket_dir, "-p", str(self.service.port)]

    def psql(self, database: str | None = None) -> list[str]:
        db = database or self.service.database
        return self._as_os_user(
            "psql", *PSQL_FLAGS, *self._conn(), "-U", self.service.admin_role, "-d", dbname(db), "-f", "-"
        )

    def pg_dump(self, snapshot: str | None = None) -> list[str]:
        snap = [f"--snapshot={snapshot}"] if snapshot else []
        return self._as_os_user(
            "pg_dump", "-Fc", *snap, *self._conn(), "-U", self.service.admin_role, "-d", dbname(self.service.database)
        )

    def pg_restore_list(self) -> list[str]:
        return ["pg_restore", "--list"]

    def pg_restore(self, database: str) -> list[str]:
        return self._as_os_user(
            "pg_restore", *RESTORE_FLAGS, *self._conn(), "-U", self.service.admin_role, "-d", dbname(database)
        )

    def check(self, t: Transport) -> str | None:
        r = t.run(self._as_os_user("pg_isready", *self._conn()), check=False)
        if not r.ok:
            raise RuntimeError_(
                f"PostgreSQL does not answer on {self.service.socket_dir} port {self.service.port}: {r.tail(1)}",
                where=t.name,
                hint="check services.<name>.socket_dir / port, and that postgresql.service runs",
            )
        return None

    def endpoint(self, t: Transport) -> tuple[str, int]:
        return "127.0.0.1", self.service.port

    def describe(self) -> str:
        return f"native PostgreSQL on port {self.service.port}"

    def log_mark(self, t: Transport) -> str:
        if self.service.log_file:
            r = t.run(["stat", "-c", "%s", "--", self.service.log_file], check=False)
            return r.stdout.decode().strip() if r.ok else "0"
        return _host_time(t)

    def log_since(self, t: Transport, mark: str) -> str | None:
        if self.service.log_file:  # what was appended since the mark (a byte offset)
            r = t.run(["tail", "-c", f"+{int(mark) + 1}", "--", self.service.log_file], check=False)
        else:
            argv = ["journalctl", "-q", "-o", "cat", "-u", "postgresql.service", "--since", f"@{mark}"]
            r = t.run(argv, check=False)
        return r.stdout.decode("utf-8", "replace") if r.ok else None


def _host_time(t: Transport) -> str:
    """The host's clock as seconds.nanoseconds, which `docker logs --since` and `journalctl --since @`
    both read. Whole seconds were too coarse: a client's failed login in the same second just before
    the mark (between rotate and the switch, expected) counted as one after it. A `date` without %N
    (busybox) gives whole seconds."""
    r = t.run(["date", "+%s.%N"], check=False)
    out = r.stdout.decode().strip() if r.ok else ""
    if re.fullmatch(r"\d+\.\d{9}", out):
        return out
    whole = out.split(".", 1)[0]
    return whole if whole.isdigit() else "0"


def runtime_for(service: Service) -> Runtime:
    match service.runtime:
        case "docker":
            return DockerRuntime(service)
        case "native":
            return NativeRuntime(service)
