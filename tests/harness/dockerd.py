"""A real Docker engine and a locally built PostgreSQL image for the e2e tier.

Engine: ``DOCKER_HOST`` if set, else /var/run/docker.sock if it answers, else a
dockerd this harness runs itself (vfs storage, its own bridge, data-root under
/var/tmp/nixmig-test-docker reused between runs so the image stays cached). A
harness-run dockerd is stopped at session end unless another test session is
still using it (shared flock on users.lock).

Image: ``nixmig-test/postgres:15`` imported from a root filesystem assembled
from the host's PostgreSQL binaries (see tests/harness/pgimage), rebuilt only
when its build inputs change (label ``nixmig.test.build-inputs``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import docker  # noqa: TID251  (test harness, not product code)
import docker.errors  # noqa: TID251
import psycopg  # noqa: TID251
import pytest
from docker.models.containers import Container  # noqa: TID251

from . import HarnessError, pgimage, require_binary, tail
from .postgres import conninfo

SYSTEM_SOCKET = Path("/var/run/docker.sock")
MANAGED_ROOT = Path(os.environ.get("NIXMIG_TEST_DOCKER_ROOT", "/var/tmp/nixmig-test-docker"))
BRIDGE = os.environ.get("NIXMIG_TEST_DOCKER_BRIDGE", "nixmig0")
BRIDGE_CIDR = os.environ.get("NIXMIG_TEST_DOCKER_BRIDGE_CIDR", "10.213.77.1/24")
TEST_LABEL = "nixmig.test"  # on every container and volume the harness creates
CONTAINER_PASSWORD_FILE = "/run/secrets/postgres-password"


@dataclass(frozen=True)
class DockerEngine:
    """A Docker engine API endpoint; ``managed`` if this harness runs the daemon."""

    base_url: str
    managed: bool
    version: str


def client_for(engine: DockerEngine | str, timeout: int = 300) -> docker.DockerClient:
    base_url = engine if isinstance(engine, str) else engine.base_url
    return docker.DockerClient(base_url=base_url, version="auto", timeout=timeout)


def _ping(base_url: str) -> str | None:
    """Engine version if ``base_url`` answers, else None."""
    try:
        with contextlib.closing(docker.APIClient(base_url=base_url, version="auto", timeout=5)) as c:
            version: str = c.version()["Version"]
            return version
    except Exception:
        return None


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[IO[bytes]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        fcntl.flock(fh, mode)
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- the harness-run dockerd ---------------------------------------------------------


class ManagedDockerd:
    """dockerd with vfs storage and its own bridge, rooted at MANAGED_ROOT."""

    def __init__(self, root: Path = MANAGED_ROOT) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.base_url = f"unix://{self.socket}"
        self.pidfile = root / "docker.pid"
        self.log = root / "dockerd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _check_prerequisites(self) -> str:
        if os.geteuid() != 0:
            pytest.fail(
                "no Docker engine answers (DOCKER_HOST unset, /var/run/docker.sock silent) and "
                "starting one needs root: run the e2e tier as root or set DOCKER_HOST",
                pytrace=False,
            )
        dockerd = require_binary("dockerd", "docker.io")
        require_binary("containerd", "containerd")
        require_binary("runc", "runc")
        require_binary("iptables", "iptables")
        require_binary("ip", "iproute2")
        return dockerd

    def _ensure_bridge(self) -> None:
        iface = ipaddress.ip_interface(BRIDGE_CIDR)
        show = subprocess.run(["ip", "-j", "addr", "show", "dev", BRIDGE], capture_output=True, text=True, check=False)
        if show.returncode == 0:
            addrs = {
                f"{a['local']}/{a['prefixlen']}" for link in json.loads(show.stdout) for a in link.get("addr_info", [])
            }
            if str(iface) not in addrs:
                raise HarnessError(
                    f"bridge {BRIDGE} exists without address {iface}; delete it "
                    f"(`ip link del {BRIDGE}`) or set NIXMIG_TEST_DOCKER_BRIDGE_CIDR"
                )
        else:
            routes = subprocess.run(["ip", "-j", "route", "show"], capture_output=True, text=True, check=True)
            for r in json.loads(routes.stdout):
                dst = r.get("dst", "")
                if dst not in ("", "default") and ipaddress.ip_network(dst, strict=False).overlaps(iface.network):
                    raise HarnessError(
                        f"{iface.network} overlaps the host route {dst} via {r.get('dev')}: "
                        "set NIXMIG_TEST_DOCKER_BRIDGE_CIDR to a free subnet"
                    )
            for cmd in (
                ["ip", "link", "add", BRIDGE, "type", "bridge"],
                ["ip", "addr", "add", str(iface), "dev", BRIDGE],
            ):
                subprocess.run(cmd, capture_output=True, text=True, check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], capture_output=True, check=True)

    def start(self) -> str:
        """Start dockerd unless it already answers; return the engine version."""
        version = _ping(self.base_url)
        if version is not None:
            return version
        dockerd = self._check_prerequisites()
        self._ensure_bridge()
        self.root.mkdir(parents=True, exist_ok=True)
        self._kill_stale()
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    dockerd,
                    "--storage-driver=vfs",
                    f"--data-root={self.root / 'data'}",
                    f"--exec-root={self.root / 'exec'}",
                    f"--host={self.base_url}",
                    f"--pidfile={self.pidfile}",
                    f"--bridge={BRIDGE}",
                    "--shutdown-timeout=5",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on pytest must not kill it mid-teardown
                cwd="/",
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise HarnessError(
                    f"dockerd exited with {self._proc.returncode}\n--- {self.log} ---\n" + tail(self.log)
                )
            version = _ping(self.base_url)
            if version is not None:
                return version
            time.sleep(0.2)
        raise HarnessError(f"dockerd did not answer within 90s\n--- {self.log} ---\n{tail(self.log)}")

    def _pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # only ever signal the dockerd that uses our data-root
        return pid if b"dockerd" in cmdline and str(self.root).encode() in cmdline else None

    def _kill_stale(self) -> None:
        """A dockerd of ours that holds the pidfile but does not answer: stop it."""
        pid = self._pid()
        if pid is not None:
            self._terminate(pid)

    def _terminate(self, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            if self._proc is not None and self._proc.pid == pid and self._proc.poll() is not None:
                return
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
        if self._proc is not None and self._proc.pid == pid:
            self._proc.wait(timeout=30)

    def stop(self) -> None:
        pid = self._pid()
        if pid is not None:
            self._terminate(pid)


@contextlib.contextmanager
def docker_engine_context() -> Iterator[DockerEngine]:
    """The engine for this session; a harness-run dockerd is stopped by its last user."""
    env = os.environ.get("DOCKER_HOST")
    if env:
        version = _ping(env)
        if version is None:
            raise HarnessError(f"DOCKER_HOST={env} does not answer")
        yield DockerEngine(base_url=env, managed=False, version=version)
        return
    system = f"unix://{SYSTEM_SOCKET}"
    if SYSTEM_SOCKET.exists():
        version = _ping(system)
        if version is not None:
            yield DockerEngine(base_url=system, managed=False, version=version)
            return
    daemon = ManagedDockerd()
    daemon.root.mkdir(parents=True, exist_ok=True)
    users = (daemon.root / "users.lock").open("ab")
    try:
        with _flock(daemon.root / "start.lock", fcntl.LOCK_EX):
            version = daemon.start()
            fcntl.flock(users, fcntl.LOCK_SH)
        yield DockerEngine(base_url=daemon.base_url, managed=True, version=version)
    finally:
        with _flock(daemon.root / "start.lock", fcntl.LOCK_EX):
            fcntl.flock(users, fcntl.LOCK_UN)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another session still uses it; the last one out stops it
            else:
                daemon.stop()
        users.close()


def prune_leftovers(client: docker.DockerClient) -> None:
    """Remove stopped containers and unused volumes that earlier sessions left behind."""
    for c in client.containers.list(all=True, filters={"label": TEST_LABEL, "status": "exited"}):
        with contextlib.suppress(docker.errors.APIError):
            c.remove(v=True, force=True)
    for c in client.containers.list(all=True, filters={"label": TEST_LABEL, "status": "created"}):
        with contextlib.suppress(docker.errors.APIError):
            c.remove(v=True, force=True)
    for v in client.volumes.list(filters={"label": TEST_LABEL, "dangling": "true"}):
        with contextlib.suppress(docker.errors.APIError):
            v.remove()


# --- the PostgreSQL image --------------------------------------------------------------


def ensure_pg_image(client: docker.DockerClient) -> str:
    """Build ``nixmig-test/postgres:15`` unless an image with the same inputs hash exists."""
    lock = Path(tempfile.gettempdir()) / "nixmig-test-pgimage.lock"
    with _flock(lock, fcntl.LOCK_EX):
        try:
            fs = pgimage.assemble()
        except pgimage.MissingInput as e:
            pytest.fail(f"cannot assemble the test PostgreSQL image: {e}", pytrace=False)
        inputs = pgimage.build_inputs_hash(fs)
        old_id = None
        try:
            old = client.images.get(pgimage.IMAGE_TAG)
            if old.labels.get(pgimage.INPUTS_LABEL) == inputs:
                return pgimage.IMAGE_TAG
            old_id = old.id
        except docker.errors.ImageNotFound:
            pass
        with tempfile.TemporaryDirectory(prefix="nixmig-pgimage-", dir="/var/tmp") as tmp:
            tar = Path(tmp) / "rootfs.tar"
            pgimage.write_rootfs(fs, tar)
            with tar.open("rb") as fh:
                client.api.import_image(
                    src=fh,
                    repository=pgimage.IMAGE_REPOSITORY,
                    tag=pgimage.PG_MAJOR,
                    changes=[*pgimage.DOCKER_CHANGES, f"LABEL {pgimage.INPUTS_LABEL}={inputs}"],
                )
        built = client.images.get(pgimage.IMAGE_TAG)
        if built.labels.get(pgimage.INPUTS_LABEL) != inputs:
            raise HarnessError(f"docker import did not produce {pgimage.IMAGE_TAG} with our label")
        if old_id is not None and old_id != built.id:
            # only an image no tag names any more: the one replaced may be another major's under a second tag
            # (a test's stand-in), which removing would take from under the tests that use it
            with contextlib.suppress(docker.errors.APIError):
                if not client.images.get(old_id).tags:
                    client.images.remove(old_id)
        return pgimage.IMAGE_TAG


# --- PostgreSQL containers -------------------------------------------------------------


@dataclass(frozen=True)
class PgContainer:
    """A running container of the test image. ``host`` is its bridge IP (port 5432);
    ``host_port`` is the same server published on 127.0.0.1."""

    id: str
    name: str
    volume: str
    host: str
    port: int
    host_port: int
    user: str
    password: str
    dbname: str
    dsn: str


def container_address(container: Container) -> tuple[str, int]:
    """(bridge IP, published 127.0.0.1 port) of a running container."""
    container.reload()
    net = container.attrs["NetworkSettings"]
    ip = net.get("IPAddress") or next(
        (n["IPAddress"] for n in net.get("Networks", {}).values() if n.get("IPAddress")), ""
    )
    bindings = (net.get("Ports") or {}).get("5432/tcp") or []
    host_port = int(bindings[0]["HostPort"]) if bindings else 0
    if not ip:
        raise HarnessError(f"container {container.name} has no IP address")
    return ip, host_port


def wait_for_postgres(container: Container, dsn: str, timeout: float = 90) -> None:
    """Until ``dsn`` accepts a login (the entrypoint's temporary init server does not
    listen on TCP, so a TCP login means the real server is up)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        container.reload()
        if container.status not in ("created", "running", "restarting"):
            logs = container.logs(tail=40).decode(errors="replace")
            raise HarnessError(f"container {container.name} is {container.status}:\n{logs}")
        try:
            with psycopg.connect(dsn, connect_timeout=3):
                return
        except psycopg.OperationalError as e:
            last = str(e)
            if "password authentication failed" in last:
                raise HarnessError(f"{container.name}: {last}") from None
        time.sleep(0.2)
    logs = container.logs(tail=40).decode(errors="replace")
    raise HarnessError(f"{container.name} not ready after {timeout}s: {last}\n{logs}")


class PgContainerFactory:
    """Starts containers of the test image; ``close()`` removes them and their volumes."""

    def __init__(self, client: docker.DockerClient, image: str, workdir: Path) -> None:
        self.client = client
        self.image = image
        self.workdir = workdir
        self.containers: list[Container] = []
        self.volumes: set[str] = set()

    def __call__(
        self,
        *,
        password: str | None = None,
        user: str = "postgres",
        dbname: str | None = None,
        volume: str | None = None,
        password_via_file: bool = True,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        durable: bool = False,
        wait: bool = True,
    ) -> PgContainer:
        """Start a container; ``password=""`` with ``password_via_file=False`` leaves it
        unset. Unless ``durable``, initdb skips its fsyncs and the server runs with
        fsync off (the data still survives container restarts, not host crashes);
        ``args`` are extra ``postgres`` arguments."""
        password = secrets.token_urlsafe(18) if password is None else password
        name = f"nixmig-test-pg-{secrets.token_hex(4)}"
        volume = volume or f"{name}-data"
        try:
            self.client.volumes.get(volume)
        except docker.errors.NotFound:
            self.client.volumes.create(volume, labels={TEST_LABEL: "1"})
        self.volumes.add(volume)
        environment = {"POSTGRES_USER": user, **(env or {})}
        command = ["postgres", *args]
        if not durable:
            environment.setdefault("POSTGRES_INITDB_ARGS", "--no-sync")
            command += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
        if dbname is not None:
            environment["POSTGRES_DB"] = dbname
        mounts: dict[str, dict[str, str]] = {volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"}}
        if password_via_file:
            secret = self.workdir / f"{name}.password"
            secret.write_text(password)
            secret.chmod(0o400)  # like an agenix secret: root-only, read by the entrypoint as root
            mounts[str(secret)] = {"bind": CONTAINER_PASSWORD_FILE, "mode": "ro"}
            environment["POSTGRES_PASSWORD_FILE"] = CONTAINER_PASSWORD_FILE
        elif password:
            environment["POSTGRES_PASSWORD"] = password
        # (host ip, None) publishes on a random free port; the stubs only know (ip, int)
        ports: dict[str, Any] = {"5432/tcp": ("127.0.0.1", None)}
        container = self.client.containers.run(
            self.image,
            command,
            name=name,
            detach=True,
            environment=environment,
            volumes=mounts,
            ports=ports,
            labels={TEST_LABEL: "1"},
            stop_signal="SIGINT",
        )
        self.containers.append(container)
        ip, host_port = container_address(container)
        db = dbname or user
        server = PgContainer(
            id=container.id or "",
            name=name,
            volume=volume,
            host=ip,
            port=5432,
            host_port=host_port,
            user=user,
            password=password,
            dbname=db,
            dsn=conninfo(host=ip, port=5432, user=user, password=password, dbname=db),
        )
        if wait:
            wait_for_postgres(container, server.dsn)
        return server

    def refresh(self, server: PgContainer) -> PgContainer:
        """The same container after a restart (its bridge IP may have changed)."""
        container = self.client.containers.get(server.id)
        ip, host_port = container_address(container)
        dsn = conninfo(host=ip, port=5432, user=server.user, password=server.password, dbname=server.dbname)
        return replace(server, host=ip, host_port=host_port, dsn=dsn)

    def close(self) -> None:
        for c in self.containers:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True, v=True)
        for v in self.volumes:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.volumes.get(v).remove(force=True)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A Docker engine: DOCKER_HOST, the system socket, or a dockerd run by the harness."""
    try:
        with docker_engine_context() as engine:
            yield engine
    except HarnessError as e:
        pytest.fail(f"no usable Docker engine: {e}", pytrace=False)


@pytest.fixture(scope="session")
def docker_client(docker_engine: DockerEngine) -> Iterator[docker.DockerClient]:
    """A docker SDK client for ``docker_engine``."""
    client = client_for(docker_engine)
    prune_leftovers(client)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def pg_image(docker_client: docker.DockerClient) -> str:
    """Tag of the local PostgreSQL 15 image (``nixmig-test/postgres:15``), built if stale."""
    try:
        return ensure_pg_image(docker_client)
    except HarnessError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def pg_container(docker_client: docker.DockerClient, pg_image: str, tmp_path: Path) -> Iterator[PgContainerFactory]:
    """Call it to start a PostgreSQL container (named volume, password file by default);
    everything started is removed, volumes included, when the test ends."""
    factory = PgContainerFactory(docker_client, pg_image, tmp_path)
    try:
        yield factory
    finally:
        factory.close()
