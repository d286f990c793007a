"""The twenty stack (tests/e2e/twenty_stack.py) set up for strategy rebuild, for the e2e
tests and bench/strategies.py.

- the deploy command is tests/harness/arion.py: activation (agenix, the env file the
  patched ExecStartPre renders, the app restart) and then arion's ``up`` of the db
  service from the patched compose file, evaluated by nix: a switch to the new volume
  recreates ``twenty-db-1`` on it, a rollback recreates it on the old one;
- the app resolves ``db:5432`` to twenty-db-1's address at each connect, as the
  compose network's DNS would (a recreated container gets a new address);
- the app can be stopped: ``app_stop``/``app_start`` in nixmig.toml touch/remove
  ``APP_DIR/stopped``, which the writer honours (it holds no connection while stopped),
  standing in for ``systemctl stop`` of the app's unit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import docker  # noqa: TID251  (test harness, not product code)
import docker.errors  # noqa: TID251

from nixmig.db.connect import try_login
from nixmig.db.writer import Writer
from nixmig.sensitive import Secret
from tests.e2e import twenty_stack as ts
from tests.harness import arion
from tests.harness.activation import Activation
from tests.harness.sshd import SshServer

COMPOSE = "modules/system/linux/twenty/arion-compose.nix"
PHASES = ["preflight", "backup", "stage", "provision", "freeze", "copy", "compare", "switch", "verify", "cleanup"]
COMPOSE_IMAGE = "postgres:16"  # what the worked example's compose file names
# the test image under a second tag: stands in for a newer image (a repository of its own: the real
# nixmig-test/postgres:16 is tests/harness/pgimage/pg16.py's, whose build replaces what that tag names)
UPGRADE_TAG = "nixmig-test/postgres-retagged:16"


@functools.cache
def _client(base_url: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=base_url, version="auto")


def container_ip(docker_host: str, name: str = ts.CONTAINER) -> str:
    try:
        c = _client(docker_host).containers.get(name)
    except docker.errors.NotFound:
        return "no-such-container.invalid"
    nets = c.attrs["NetworkSettings"].get("Networks") or {}
    return next((n["IPAddress"] for n in nets.values() if n.get("IPAddress")), "no-address.invalid")


def mounted_volumes(docker_host: str, name: str = ts.CONTAINER) -> set[str]:
    c = _client(docker_host).containers.get(name)
    return {m["Name"] for m in c.attrs.get("Mounts", []) if m.get("Type") == "volume"}


@dataclass(frozen=True)
class RebuildActivation(Activation):
    compose: Path = Path()
    docker_host: str = ""
    images: tuple[tuple[str, str], ...] = ()

    def write(self) -> RebuildActivation:
        super().write()
        conf = json.loads(self.conf.read_text())
        conf.update(
            compose=str(self.compose), docker_host=self.docker_host, container=ts.CONTAINER, images=dict(self.images)
        )
        self.conf.write_text(json.dumps(conf))
        return self

    def deploy_command(self, fail: Sequence[str] = ()) -> str:
        return " ".join([sys.executable, str(Path(arion.__file__).resolve()), str(self.conf), *fail])

    def resolve(self, url: str) -> str:
        u = urlsplit(url)
        userinfo, _, hostport = u.netloc.rpartition("@")
        if hostport == "db:5432":
            hostport = f"{container_ip(self.docker_host)}:5432"
        return urlunsplit(u._replace(netloc=f"{userinfo}@{hostport}" if userinfo else hostport))

    def app_url(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            for line in self.env_file.read_text().splitlines():
                if line.startswith("PG_DATABASE_URL="):
                    return self.resolve(line.split("=", 1)[1])
        return self.resolve(f"postgres://{ts.ROLE}:{ts.OLD_PASSWORD}@db:5432/{ts.DATABASE}")

    @property
    def stopped_file(self) -> Path:
        return self.app_dir / "stopped"

    def writer(self, *, reconnect_every: float | None = None) -> Writer:
        return Writer(
            url_source=self.app_url,
            generation=self.generation,
            reconnect_every=reconnect_every,
            stopped=self.stopped_file.exists,
        )


@dataclass(frozen=True)
class RebuildSite:
    site: ts.Site
    act: RebuildActivation

    @property
    def db(self) -> ts.Db:
        return self.site.db

    def ip(self) -> str:
        return container_ip(self.db.docker_host)

    def login(self, password: str) -> str | None:
        return try_login(self.ip(), 5432, ts.ROLE, Secret(password), ts.DATABASE)

    def volumes(self) -> set[str]:
        return mounted_volumes(self.db.docker_host)

    def image(self) -> str:
        c = _client(self.db.docker_host).containers.get(ts.CONTAINER)
        return str(c.attrs["Config"]["Image"])


def rebuild_site(
    root: Path,
    keys: ts.Keys,
    db: ts.Db,
    ssh: SshServer,
    image: str,
    *,
    new_volume: str | None = None,
    new_image: str | None = None,
    fail_phases: tuple[str, ...] = (),
) -> RebuildSite:
    """A repo copy and host dirs (ts.make_site), migrating with strategy rebuild."""
    site = ts.make_site(root, keys, db, ssh)
    act = RebuildActivation(
        conf=root / "activation.json",
        repo=site.repo,
        host_key=site.keys.host_key,
        agenix_dir=site.agenix_dir,
        secret=ts.SECRET,
        app_dir=site.app_dir,
        unit_env_file=f"/run/twenty/{ts.SECRET}.env",
        fallback_url="",
        compose=site.repo / COMPOSE,
        docker_host=db.docker_host,
        images=((COMPOSE_IMAGE, image),),
    ).write()
    text = site.config.read_text()
    deploy = text.split('deploy = "')[1].split('"')[0]
    extra = [
        f'app_stop = "touch {act.stopped_file}"',
        f'app_start = "rm -f {act.stopped_file}"',
        *([f'new_volume = "{new_volume}"'] if new_volume else []),
        *([f'new_image = "{new_image}"'] if new_image else []),
    ]
    text = text.replace('strategy = "rotate"', 'strategy = "rebuild"\n' + "\n".join(extra))
    site.config.write_text(text.replace(deploy, act.deploy_command(fail_phases)))
    return RebuildSite(site, act)


def container_image(docker_host: str, name: str = ts.CONTAINER) -> str:
    """The image twenty-db-1 runs, as it was asked for."""
    return str(_client(docker_host).containers.get(name).attrs["Config"]["Image"])


def remove_copies(client: docker.DockerClient) -> None:
    """The scratch containers and every volume a rebuild made (not one still mounted)."""
    for name in (f"{ts.CONTAINER}-nixmig-new", f"{ts.CONTAINER}-nixmig-old"):
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(name).remove(force=True)
    for v in client.volumes.list(filters={"label": f"nixmig.migration={ts.MIGRATION}"}):
        with contextlib.suppress(docker.errors.APIError):
            v.remove()


def cleanup(client: docker.DockerClient) -> None:
    """twenty-db-1, the scratch containers and every volume a rebuild of it made."""
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(ts.CONTAINER).remove(force=True)
    remove_copies(client)
    with contextlib.suppress(docker.errors.NotFound):
        client.volumes.get(ts.VOLUME).remove(force=True)
