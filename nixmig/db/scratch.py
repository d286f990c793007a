"""Scratch targets for a restore test: somewhere to restore a backup and count its rows.

docker: a container from the same image as the service's database container,
named ``nixmig-restore-test-<migration>-<stamp>`` and labelled
``nixmig.restore-test=<migration>``, with no network at all (it is reached only by
``docker exec``, so its superuser needs no password: POSTGRES_HOST_AUTH_METHOD=trust
touches nothing but the container's own loopback), fsync off (it is thrown away),
its data in an anonymous volume removed with it.

native: a database ``nixmig_restore_test_<migration>_<stamp>`` on the same cluster,
created from template0 with the source database's encoding and locale, dropped
afterwards (WITH (FORCE), so a pg_restore left behind by a killed run cannot keep it).

Both are removed in a ``finally``; a run killed in between leaves one behind, and
:func:`leftovers` finds it by name or label for the next backup, the cleanup phase
and rollback to remove.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass

from nixmig.db import ops, sql
from nixmig.db.runtime import DockerRuntime, NativeRuntime, Runtime
from nixmig.errors import NixmigError
from nixmig.remote.base import Transport

LABEL = "nixmig.restore-test"
CONTAINER_PREFIX = "nixmig-restore-test-"
DATABASE_PREFIX = "nixmig_restore_test_"
SCRATCH_DB = "nixmig_restore_test"  # inside a scratch container, the database restored into


class ScratchError(NixmigError):
    """The scratch target for a restore test could not be made or removed."""


def _slug(name: str, allowed: str) -> str:
    return re.sub(f"[^{allowed}]+", "_" if "_" in allowed else "-", name.lower()).strip("_-")


@dataclass(frozen=True)
class DockerScratch:
    source: DockerRuntime
    name: str  # the container
    label: str  # the value of its LABEL: the migration's name, made safe
    database: str = SCRATCH_DB

    @property
    def runtime(self) -> DockerRuntime:
        svc = dataclasses.replace(self.source.service, container=self.name, volume=None, database=self.database)
        return DockerRuntime(svc)

    def describe(self) -> str:
        return f"scratch container {self.name}"

    def plan(self) -> list[str]:
        return [
            " ".join(self._run(f"<image of {self.source.container}>")),
            f"CREATE DATABASE {self.database} TEMPLATE template0 (source's encoding and locale)",
        ]

    def _run(self, image: str) -> list[str]:
        return self.source._docker(
            "run", "-d", "--name", self.name, "--label", f"{LABEL}={self.label}",
            "--network", "none",
            "-e", f"POSTGRES_USER={self.source.service.admin_role}",
            "-e", "POSTGRES_HOST_AUTH_METHOD=trust",
            "-e", "POSTGRES_INITDB_ARGS=--no-sync",
            image,
            "postgres", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        )  # fmt: skip

    def create(self, t: Transport, locale: str) -> None:
        src = self.source
        r = t.run(src._docker("inspect", "--type", "container", "-f", "{{.Image}}", src.container), check=False)
        if not r.ok:
            raise ScratchError(f"cannot read the image of {src.container}: {r.tail()}", where=t.name)
        r = t.run(self._run(r.stdout.decode().strip()), check=False, timeout=300)
        if not r.ok:
            raise ScratchError(f"cannot start {self.name}: {r.tail()}", where=t.name)
        # ready only once it listens on TCP: the image's init server listens on the socket only
        ready = src._docker(
            "exec", "-u", "postgres", self.name, "pg_isready", "-q", "-h", "127.0.0.1", "-U", src.service.admin_role
        )
        deadline = time.monotonic() + 180
        while not t.run(ready, check=False).ok:
            state = t.run(src._docker("inspect", "-f", "{{.State.Running}}", self.name), check=False)
            if state.stdout.decode().strip() != "true":
                logs = t.run(src._docker("logs", "--tail", "5", self.name), check=False)
                raise ScratchError(f"{self.name} stopped while starting: {logs.tail()}", where=t.name)
            if time.monotonic() > deadline:
                raise ScratchError(f"{self.name} did not accept connections in 180s", where=t.name)
            time.sleep(0.3)
        ops.psql(t, self.runtime, _create_database(self.database, locale), database="postgres")

    def remove(self, t: Transport) -> None:
        _remove_containers(t, self.source, [self.name])


@dataclass(frozen=True)
class NativeScratch:
    source: NativeRuntime
    database: str

    @property
    def runtime(self) -> NativeRuntime:
        return NativeRuntime(dataclasses.replace(self.source.service, database=self.database))

    def describe(self) -> str:
        return f"scratch database {self.database}"

    def plan(self) -> list[str]:
        return [f"CREATE DATABASE {self.database} TEMPLATE template0 (source's encoding and locale)"]

    def create(self, t: Transport, locale: str) -> None:
        ops.psql(t, self.source, _create_database(self.database, locale))

    def remove(self, t: Transport) -> None:
        _drop_databases(t, self.source, [self.database])


Scratch = DockerScratch | NativeScratch


def for_backup(rt: Runtime, migration: str, stamp: str) -> Scratch:
    """The scratch target of the backup taken at ``stamp`` (``20261123T100341Z``)."""
    suffix = stamp.lower() if re.fullmatch(r"[0-9]{8}T[0-9]{6}Z", stamp) else stamp  # else a placeholder
    if isinstance(rt, DockerRuntime):
        label = _container_label(migration)
        return DockerScratch(rt, f"{CONTAINER_PREFIX}{label}-{suffix}", label)
    if isinstance(rt, NativeRuntime):
        return NativeScratch(rt, f"{_database_head(migration)}_{suffix}")
    raise ScratchError(f"no restore test for {rt.describe()}")


def _container_label(migration: str) -> str:
    return _slug(migration, "a-z0-9.-") or "migration"


def _database_head(migration: str) -> str:
    """nixmig_restore_test_<migration>, shortened so that "_<stamp>" (16 chars) fits in 63 bytes."""
    return f"{DATABASE_PREFIX}{_slug(migration, 'a-z0-9_')}"[:46]


def source_locale(t: Transport, rt: Runtime) -> str:
    """The source database's encoding, collation and ctype, as CREATE DATABASE options."""
    out = ops.psql(
        t,
        rt,
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
        "WHERE datname = current_database();",
    ).strip()
    encoding, collate, ctype = out.split("\t")
    return f"ENCODING {sql.literal(encoding)} LC_COLLATE {sql.literal(collate)} LC_CTYPE {sql.literal(ctype)}"


def _create_database(name: str, locale: str) -> str:
    return f"CREATE DATABASE {sql.ident(name)} TEMPLATE template0 {locale};"


def leftovers(t: Transport, rt: Runtime, migration: str) -> list[str]:
    """Scratch containers / databases of this migration that a killed run left behind."""
    if isinstance(rt, DockerRuntime):
        r = t.run(
            rt._docker(
                "ps", "-a", "--filter", f"label={LABEL}={_container_label(migration)}", "--format", "{{json .Names}}"
            ),
            check=False,
        )
        if not r.ok:
            raise ScratchError(f"cannot list scratch containers: {r.tail()}", where=t.name)
        return sorted(json.loads(line) for line in r.stdout.decode().splitlines() if line.strip())
    if isinstance(rt, NativeRuntime):
        # exactly this migration's: "a" must not match the scratch of a migration "a_b"
        pattern = f"^{_database_head(migration)}_[0-9]{{8}}t[0-9]{{6}}z$"
        query = f"SELECT datname FROM pg_database WHERE datname ~ {sql.literal(pattern)} ORDER BY 1;"  # noqa: S608 - literal() quotes it
        out = ops.psql(t, rt, query)
        return [line for line in out.splitlines() if line]
    return []


def remove_leftovers(t: Transport, rt: Runtime, migration: str) -> list[str]:
    names = leftovers(t, rt, migration)
    if names and isinstance(rt, DockerRuntime):
        _remove_containers(t, rt, names)
    elif names and isinstance(rt, NativeRuntime):
        _drop_databases(t, rt, names)
    return names


def _remove_containers(t: Transport, rt: DockerRuntime, names: list[str]) -> None:
    r = t.run(rt._docker("rm", "-f", "-v", *names), check=False, timeout=300)
    if not r.ok and "No such container" not in r.tail():
        raise ScratchError(f"cannot remove {', '.join(names)}: {r.tail()}", where=t.name)


def _drop_databases(t: Transport, rt: NativeRuntime, names: list[str]) -> None:
    ops.psql(t, rt, "".join(f"DROP DATABASE IF EXISTS {sql.ident(n)} WITH (FORCE);\n" for n in names))
