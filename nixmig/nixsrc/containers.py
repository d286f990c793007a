"""Containers in Nix source: where each kind keeps its environment, volumes and env files, and
which variable an image reads a secret file from.

Kinds (one row of :data:`KINDS` each; the builder asks this table instead of branching):

- ``arion``: ``services.NAME.service`` of a compose file (also inside
  ``virtualisation.arion.projects.P.settings``): ``environment``, ``volumes``, ``env_file``;
- ``oci``: ``virtualisation.oci-containers.containers.NAME``: ``environment``, ``volumes``,
  ``environmentFiles``; unit ``docker-NAME`` / ``podman-NAME``;
- ``quadlet`` (quadlet-nix, SEIAROTg/quadlet-nix container.nix):
  ``virtualisation.quadlet.containers.NAME.containerConfig`` holds ``environments``, ``volumes``,
  ``environmentFiles``, ``user`` and ``image``; the unit is ``NAME.service``, configured through the
  container's own ``serviceConfig`` / ``unitConfig`` (not ``systemd.services``).

Image families: an image that reads ``VAR`` from a file does it its own way. The official images
(postgres, mysql, mariadb, and most that copied their entrypoint) read ``VAR_FILE``. linuxserver.io
images (``lscr.io/linuxserver/*``, ``linuxserver/*``, ``ghcr.io/linuxserver/*``) read any variable
from a file through the ``FILE__VAR=/path`` prefix, handled by their s6-overlay init as root, and
ignore ``VAR_FILE`` (linuxserver/docker-mariadb PR #36, adding MYSQL_ROOT_PASSWORD_FILE, was closed
unmerged; issue #104 "MYSQL_ROOT_PASSWORD_FILE not working").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from nixmig.nixsrc.model import NixPath


@dataclass(frozen=True)
class Kind:
    """Where a container of one kind keeps its settings, relative to the container's attrset."""

    name: str
    env: NixPath
    volumes: NixPath
    env_files: NixPath
    user: NixPath
    image: NixPath
    template: str


KINDS: Final[dict[str, Kind]] = {
    "arion": Kind(
        "arion", ("environment",), ("volumes",), ("env_file",), ("user",), ("image",), "arion-service.nix.j2"
    ),
    "oci": Kind(
        "oci", ("environment",), ("volumes",), ("environmentFiles",), ("user",), ("image",), "oci-containers.nix.j2"
    ),
    "quadlet": Kind(
        "quadlet",
        ("containerConfig", "environments"),
        ("containerConfig", "volumes"),
        ("containerConfig", "environmentFiles"),
        ("containerConfig", "user"),
        ("containerConfig", "image"),
        "oci-containers.nix.j2",
    ),
}

ENV_FILE_ATTRS: Final = frozenset(k.env_files[-1] for k in KINDS.values())


def container_shape(prefix: NixPath) -> tuple[str, str, NixPath] | None:
    """("arion"|"oci"|"quadlet", container name, the container's attrset path) for a container's path."""
    n = len(prefix)
    if n >= 3 and prefix[-1] == "service" and prefix[-3] == "services":
        head = prefix[:-3]
        if head == () or (
            len(head) == 5 and head[:3] == ("virtualisation", "arion", "projects") and head[4] == "settings"
        ):
            return "arion", prefix[-2], prefix
    if n == 4 and prefix[:3] == ("virtualisation", "oci-containers", "containers"):
        return "oci", prefix[3], prefix
    if n == 2 and prefix[0] == "docker-containers":
        # the name before NixOS 20.09: nixpkgs maps it onto oci-containers (mkChangedOptionModule, backend
        # docker, each container's attributes as they are but extraDockerOptions): the same options
        return "oci", prefix[1], prefix
    if n == 4 and prefix[:3] == ("virtualisation", "quadlet", "containers"):
        return "quadlet", prefix[3], prefix
    return None


def env_container(path: NixPath) -> tuple[str, str, NixPath] | None:
    """The container whose environment binds ``path`` (``...environment.VAR``, quadlet's
    ``...containerConfig.environments.VAR``), or None."""
    for kind in KINDS.values():
        n = len(kind.env)
        if len(path) > n + 1 and path[-1 - n : -1] == kind.env:
            shape = container_shape(path[: -1 - n])
            if shape is not None and shape[0] == kind.name:
                return shape
    return None


def env_attrset(path: NixPath) -> tuple[str, str, NixPath] | None:
    """The container whose environment attrset is ``path`` itself (``...environment``), or None."""
    return env_container((*path, "X"))


def env_words(name: str) -> set[str]:
    """An environment variable's words, "db"/"pg" split off a word they start:
    FORGEJO__database__PASSWD -> {forgejo, database, passwd}; PAPERLESS_DBPASS -> {paperless, db, pass, dbpass}."""
    parts = {w.lower() for w in re.split(r"[_\W]+", name) if w}
    for p in list(parts):
        for head in ("db", "pg"):
            if p.startswith(head) and len(p) > len(head):
                parts |= {head, p[len(head) :]}
    return parts


# ---------------------------------------------------------------- image families

LINUXSERVER_PREFIXES: Final = (
    "lscr.io/linuxserver/",
    "ghcr.io/linuxserver/",
    "docker.io/linuxserver/",
    "index.docker.io/linuxserver/",
    "linuxserver/",
)
LINUXSERVER_FILE_PREFIX: Final = "FILE__"


# images that read the database's password only when they install the app, then log in with what the
# installer wrote into the app's own config: the official nextcloud image (its config.php's dbuser/dbpassword;
# nextcloud/docker#2117, #2224)
_INSTALL_ONLY = {"nextcloud": ("POSTGRES_PASSWORD", "MYSQL_PASSWORD")}


def install_only(image: str | None, var: str) -> str | None:
    """The app whose ``image`` reads ``var`` only when it installs (``nextcloud``), else None."""
    if image is None:
        return None
    ref = image.strip().lower().split("@", 1)[0]
    name = ref.rsplit("/", 1)[-1].split(":", 1)[0]
    library = ref.count("/") == 0 or ref.startswith(("docker.io/library/", "docker.io/nextcloud", "library/"))
    return name if library and var in _INSTALL_ONLY.get(name, ()) else None


def is_linuxserver(image: str | None) -> bool:
    """A linuxserver.io image (s6-overlay init): reads ``FILE__VAR``, not ``VAR_FILE``."""
    return image is not None and image.strip().lower().startswith(LINUXSERVER_PREFIXES)


# images whose entrypoint reads VAR_FILE (docker-library's file_env): the official postgres, mysql,
# mariadb and percona images, and images built FROM the official postgres one. Any other image (Oracle's
# mysql-server and what is built on it, hardened or vendor builds, a computed image) may ignore VAR_FILE:
# its variable goes into an env file instead (docker-library/mysql#237; docker-hardened-images/catalog#91)
_FILE_ENV_IMAGES = re.compile(
    r"(?:(?:docker\.io|index\.docker\.io|registry-1\.docker\.io)/)?"
    r"(?:(?:library/)?(?:postgres|mysql|mariadb|percona)"
    r"|pgvector/pgvector|postgis/postgis|timescale/timescaledb|tensorchord/pgvecto-rs|ankane/pgvector"
    r"|ghcr\.io/immich-app/postgres|quay\.io/mariadb-foundation/mariadb-devel)"
    r"(?::[A-Za-z0-9_.-]+)?(?:@sha256:[0-9a-f]{64})?"
)


def reads_file_env(image: str | None) -> bool:
    """``image`` reads ``VAR_FILE`` for its database variables (see :data:`_FILE_ENV_IMAGES`)."""
    return image is not None and _FILE_ENV_IMAGES.fullmatch(image.strip().lower()) is not None


def file_variable(var: str, image: str | None) -> str:
    """The variable that makes ``image`` read ``var`` from a file: ``FILE__VAR`` (linuxserver.io) or ``VAR_FILE``."""
    return f"{LINUXSERVER_FILE_PREFIX}{var}" if is_linuxserver(image) else f"{var}_FILE"


def file_variables(var: str) -> tuple[str, str]:
    """Both spellings of ``var`` read from a file (to recognise a tree patched either way)."""
    return f"{var}_FILE", f"{LINUXSERVER_FILE_PREFIX}{var}"


def base_variable(name: str) -> str:
    """``VAR`` for ``VAR_FILE`` or ``FILE__VAR``; ``name`` itself otherwise."""
    if name.startswith(LINUXSERVER_FILE_PREFIX) and len(name) > len(LINUXSERVER_FILE_PREFIX):
        return name.removeprefix(LINUXSERVER_FILE_PREFIX)
    return name.removesuffix("_FILE")


def reads_any_file_variable(image: str | None) -> bool:
    """Every variable of the image can come from a file (linuxserver.io's FILE__ prefix), not only
    the ones its entrypoint lists."""
    return is_linuxserver(image)


# the official mongo image: its entrypoint reads MONGO_INITDB_ROOT_PASSWORD_FILE (file_env) only after
# `gosu mongodb`, as uid 999, so a root-only file stops it: nixmig renders an env file instead
_MONGO_IMAGES = re.compile(
    r"(?:(?:docker\.io|index\.docker\.io|registry-1\.docker\.io)/)?(?:library/)?mongo"
    r"(?::[A-Za-z0-9_.-]+)?(?:@sha256:[0-9a-f]{64})?"
)


def reads_mongo_file_env(image: str | None) -> bool:
    """``image`` is the official mongo image (see :data:`_MONGO_IMAGES`)."""
    return image is not None and _MONGO_IMAGES.fullmatch(image.strip().lower()) is not None
