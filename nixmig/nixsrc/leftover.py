"""patch's verdict: the hardcoded credentials a plan would leave behind, found by scanning.

Pure: models, the plan's edits and what it recognised in, leftovers out. "Nothing to change"
is an observation (STYLE 14): after the builder has decided its edits, every file of the
repo is scanned (:func:`nixmig.nixsrc.scan.scan_source`) and each finding that no edit
replaces is a leftover when

- it holds a value the plan recognised as this migration's password (in any file), or
- it is a database credential (a PostgreSQL / MySQL / database-named attribute, a database
  URL, SQL, a name of this migration's containers) in a file of the migration's scope: the
  files the plan edits, the files nixmig.toml names (module, compose, host_file), the files
  that use the agenix secret, and the files that name the service's container, db_service,
  app_services or unit; when the plan recognised nothing and nothing uses the secret yet,
  every credential of every file is a leftover (any of them may be the one nixmig missed).

Each leftover says where it is, the attribute, and why nixmig has no edit for it. When there is
no leftover, no edit, and nothing uses the secret, that is said too: a tree where nixmig found
neither the hardcoded password nor the secret in use is not "patched".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from nixmig.config import also_name
from nixmig.nixsrc.containers import base_variable, env_container, env_words
from nixmig.nixsrc.edits import Edit
from nixmig.nixsrc.lets import LetLiteral, let_binding_at, let_literals
from nixmig.nixsrc.model import Bind, FileModel, _apply_parts, decode_string, unparen
from nixmig.nixsrc.quote import nix_attr
from nixmig.nixsrc.scan import DESCRIPTION, Finding, Kind, classify_name, credential_file_name, scan_source, words

if TYPE_CHECKING:
    from tree_sitter import Node

DB_WORDS = frozenset(
    {"postgres", "postgresql", "pg", "psql", "db", "database", "databases", "mysql", "mariadb", "sql", "dsn"}
)
DB_SCHEMES = frozenset({"postgres", "postgresql", "mysql", "mariadb", "mysql2", "jdbc", "pgsql"})
_MYSQL = frozenset({"mysql", "mariadb"})
_SCHEME_BEFORE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://[^\s\"'@]*$")


@dataclass(frozen=True)
class Leftover:
    """A hardcoded credential the plan leaves in place (line/col 1-based, in the original file)."""

    file: str
    line: int
    col: int
    attribute: str
    what: str
    start: int  # byte span of the value (to mask it in a diff)
    end: int
    # the container variable, when this is a second credential of a container this migration can move
    # onto its own secret with its value kept (nixmig.toml's also): patch offers that by itself
    companion: str = ""
    # a password inside SQL text: the generic by-hand recipe (an env file rendered for a unit) does not
    # fit; the line says what to do instead
    in_sql: bool = False
    # it holds this migration's password (its value), not merely another hardcoded secret
    ours: bool = False
    # the password in a URL: the generic recipe's bare VAR=password line would break what reads the URL
    # (realcfg29/02); the line says what to do
    in_url: bool = False


def digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def uses_secret(models: Mapping[str, FileModel], secret: str, secret_on_host: str) -> set[str]:
    """The files that read the agenix secret (``config.age.secrets.NAME.path`` or its path on the host)."""
    refs = [f"age.secrets.{nix_attr(secret)}.path".encode(), secret_on_host.encode()]
    return {name for name, fm in models.items() if any(r in fm.source for r in refs)}


def declares_secret(models: Mapping[str, FileModel], secret: str) -> bool:
    """age.secrets.SECRET says where its .age file is (``file``, agenix-rekey's ``rekeyFile``, or an
    entry computed as a whole). An entry with only ``owner``/``mode`` is not a declaration: agenix
    has no default for ``file``, the evaluation fails."""
    return any(declares_file(b, secret) for fm in models.values() for b in fm.binds)


def declares_file(b: Bind, secret: str) -> bool:
    if not b.exact or b.path[:3] != ("age", "secrets", secret):
        return False
    if b.path[3:] in (("file",), ("rekeyFile",)):
        return True
    return len(b.path) == 3 and unparen(b.value).type not in ("attrset_expression", "rec_attrset_expression")


def naming(models: Mapping[str, FileModel], names: Iterable[str]) -> set[str]:
    """The files whose text names any of ``names`` as a whole word (container, service, unit names)."""
    pats = [re.compile(rb"(?<![\w-])" + re.escape(n.encode()) + rb"(?![\w-])") for n in names if n]
    return {name for name, fm in models.items() if any(p.search(fm.source) for p in pats)}


def _scheme(source: bytes, start: int) -> str:
    line_start = source.rfind(b"\n", 0, start) + 1
    m = _SCHEME_BEFORE.search(source[line_start:start])
    return m.group(1).decode().lower().split("+")[0] if m else ""


# the variables PostgreSQL's and MySQL's clients read their password from
_CLIENT_VARS = frozenset({"PGPASSWORD", "MYSQL_PWD"})
_ASSIGNED = re.compile(rb"([A-Za-z_]\w*)[\"']?[ \t]*[=:][ \t]*[\"']?$")


def names_database(attr_path: str) -> bool:
    """An attribute path whose words name a database (DB_WORDS), or one of whose words starts with ``db``
    (nextcloud's ``dbpass``, ``dbpassFile``: one word to :func:`words`)."""
    ws = {w.lower() for w in words(attr_path)}
    return bool(ws & DB_WORDS) or any(w.startswith("db") for w in ws)


def _related(f: Finding, source: bytes, idents: Collection[str]) -> bool:
    """A database credential (by its attribute's words, its URL scheme, SQL) or one of this migration's names."""
    ws = set(words(f.attr_path)) if f.attr_path else set()
    if ws & DB_WORDS or f.rule in ("sql", "dsn"):
        return True
    if f.kind is Kind.URL_CREDENTIAL and f.start >= 0 and _scheme(source, f.start) in DB_SCHEMES:
        return True
    if f.rule == "assignment" and f.start >= 0:  # PGPASSWORD=... in a script: a database client's
        m = _ASSIGNED.search(source[max(0, f.start - 80) : f.start])
        name = m.group(1).decode() if m is not None else ""
        if name.upper() in _CLIENT_VARS or {w.lower() for w in words(name)} & DB_WORDS:
            return True
    segments = [seg.strip('"') for seg in f.attr_path.split(".")]
    return any(i and i in segments for i in idents)


_SERVER_SERVICES = frozenset({"postgresql", "mysql", "mongodb", "influxdb", "influxdb2", "redis", "couchdb"})


def _other_service(f: Finding, idents: Collection[str], role: str) -> bool:
    """An option of another nixpkgs service than this migration's (``services.roundcube.database.password``
    while the migration is nextcloud's), holding another value than the one the plan recognised: that
    service's credential, a note, not a to-do of this migration (realcfg38/04 held nextcloud's write back)."""
    segs = [seg.strip('"') for seg in f.attr_path.split(".")] if f.attr_path else []
    segs = segs[1:] if segs[:1] == ["config"] else segs
    if len(segs) < 3 or segs[0] != "services":
        return False
    service = segs[1]
    if service in _SERVER_SERVICES:
        return False  # the database server's own options and scripts: every role's password is in scope
    names = {n for n in (*idents, role) if n}
    mine = {w.lower() for n in names for w in words(n)} - {"db", "database", "password", "pw", "pass"}
    return service not in names and not ({w.lower() for w in words(service)} & mine)


_COMMAND_LINES = frozenset(
    {"ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost", "ExecCondition"}
)


def string_shape(path: Sequence[str]) -> str | None:
    """The shape of a string nixmig has no edit for, named by where it is bound (None: not one of these)."""
    segs = [seg.strip('"') for seg in path]
    if "activationScripts" in segs:
        return (
            "a password written by an activation script (system.activationScripts: the script is in the "
            "world-readable Nix store): nixmig has no edit for it; render that file from "
            "config.age.secrets.NAME.path in an ExecStartPre of the unit that reads it instead"
        )
    if segs[:2] == ["environment", "etc"] and len(segs) >= 4 and segs[-1] == "text":
        name = ".".join(segs[2:-1])  # a dotted path split as a string: "app/secrets.env"
        return (
            f"a password in the text of /etc/{name} (environment.etc: a link into the world-readable Nix store): "
            "nixmig moves it when the file is the password alone, read by an option nixmig knows, or a line of an "
            "env file whose every reader is a container's env file list (environmentFiles, env_file) in the same "
            "file; else point what reads it at config.age.secrets.NAME.path, or at a file rendered from it at start"
        )
    if segs[:1] == ["environment"] and len(segs) == 3 and segs[1] in ("variables", "sessionVariables"):
        return (
            f"a password in environment.{segs[1]}.{segs[2]}: every login shell of the host gets it (and its text is "
            "in the world-readable Nix store, /etc/set-environment): nixmig does not move a host-wide variable; "
            "delete it where the services have their own (patch gives them the agenix secret), and read the "
            "agenix file in the shell that needs it"
        )
    if any(seg in _COMMAND_LINES for seg in segs):
        return (
            f"a password in a command line ({segs[-1] if segs[-1] in _COMMAND_LINES else 'ExecStart'}: in the "
            "world-readable Nix store and in `ps`): nixmig has no edit for it; pass it from a file rendered at "
            "start (podman/docker run --env-file, a tool's password-file flag)"
        )
    return None


_IF_NOT_EXISTS = re.compile(rb"(?is)\bCREATE\s+(?:USER|ROLE)\s+IF\s+NOT\s+EXISTS\b[^;]*$")


def _mysql_if_not_exists(source: bytes, at: int) -> bool:
    """The SQL statement holding byte ``at`` is ``CREATE USER|ROLE IF NOT EXISTS ...`` (not PostgreSQL)."""
    start = max(source.rfind(b";", 0, at), source.rfind(b"''", 0, at), source.rfind(b"\n\n", 0, at)) + 1
    return _IF_NOT_EXISTS.search(source[start:at]) is not None


def read_as_option(models: Mapping[str, FileModel], attr: str) -> str:
    """Where ``config.<attr>`` is read (a custom module's option the tree sets), as " (read as ...)"; also
    where an attrset holding it is read whole through a let of the module (``environment = cfg.environment;``
    with ``cfg = config.selfhosted.postgres``: realcfg27/03), naming the option that reading sets."""
    attr = attr.removeprefix("config.")  # set inside the module's own `config = { ... }`
    if not attr or "." not in attr or attr.startswith("<let>"):
        return ""
    word = re.compile(rb"(?<![\w.'-])config\." + re.escape(attr.encode()) + rb"(?![\w'-])")
    for name, fm in sorted(models.items()):
        m = word.search(fm.source)
        if m is not None:
            line = fm.source.count(b"\n", 0, m.start()) + 1
            return (
                f"; it is read as config.{attr} at {name}:{line}: an option of the repo's own module, which nixmig "
                "does not follow into what reads it (it follows let bindings): move the value there by hand"
            )
    segs = attr.split(".")
    for name, fm in sorted(models.items()):
        for cut in range(len(segs) - 1, 1, -1):  # the module's let: cfg = config.<segs[:k]>
            for k in range(1, cut):
                prefix = re.escape(".".join(segs[:k]).encode())
                let = re.search(rb"(?<![\w'-])([A-Za-z_][\w'-]*)\s*=\s*config\." + prefix + rb"\s*;", fm.source)
                if let is None:
                    continue
                read = let.group(1).decode() + "." + ".".join(segs[k:cut])
                whole = next((b for b in fm.binds if b.exact and fm.text(unparen(b.value)).strip() == read), None)
                if whole is not None:
                    return (
                        f"; {'.'.join(segs[:cut])} is the repo's own option, which {name}:"
                        f"{fm.line_col(whole.value.start_byte)[0]} copies whole into {'.'.join(whole.path)} "
                        f"({read}, {let.group(1).decode()} = config.{'.'.join(segs[:k])}): nixmig edits "
                        f"{'.'.join(whole.path)} where it is written, not an option a module copies into it; by "
                        "hand, in that module: the agenix file for the container (a *_FILE variable and a read-only "
                        "volume, or an env file rendered at start), and the variable taken out of the option here"
                    )
    return ""


def _private_users(source: bytes, container: str) -> bool:
    """The file sets ``containers.CONTAINER.privateUsers`` (the container's root is not the host's)."""
    return re.search(rb"\bprivateUsers\s*=", source) is not None and container.encode() in source


def nixos_container(path: Sequence[str]) -> str | None:
    """The declarative NixOS container whose own system ``path`` is set in (``containers.NAME.config...``)."""
    segs = [seg.strip('"') for seg in path]
    segs = segs[1:] if segs[:1] == ["config"] else segs
    return segs[1] if len(segs) >= 4 and segs[0] == "containers" and segs[2] == "config" else None


_ENV_ATTRS = ("environment", "environments", "env")
# the words of another database's variables (MONGO_INITDB_ROOT_PASSWORD, REDIS_PASSWORD): no shape of nixmig's
_OTHER_DATABASES = frozenset(
    {"mongo", "mongodb", "redis", "valkey", "rabbitmq", "minio", "clickhouse", "elastic", "influx", "influxdb"}
    | {"couchdb"}
)


def wrapper_container(path: Sequence[str]) -> tuple[str, str] | None:
    """A container's variable under the repo's own container option, a wrapper that mirrors
    oci-containers (``nixfiles.oci-containers.containers.NAME.environment.VAR``, realcfg20/19): the
    option's path up to ``containers`` and the container's name; None for oci-containers itself."""
    segs = [seg.strip('"') for seg in path]
    segs = segs[1:] if segs[:1] == ["config"] else segs
    k = len(segs) - 4
    if k < 1 or segs[k] != "containers" or segs[k + 2] not in _ENV_ATTRS:
        return None
    if segs[:k] == ["virtualisation", "oci-containers"]:
        return None
    if segs[0] in ("containers", "<let>") or segs[:2] == ["services", "podman"]:
        return None  # a declarative NixOS container's system; a let; home-manager's podman: said elsewhere
    return ".".join(segs[: k + 1]), segs[k + 1]


def env_substituted(path: Sequence[str]) -> bool:
    """``path`` is a setting of a service that substitutes environment variables into its config
    (shapes/env_subst.py: dendrite's settings, telegraf's extraConfig)."""
    from nixmig.nixsrc.shapes.env_subst import handles

    segs = tuple(seg.strip('"') for seg in path)
    return handles(segs[1:] if segs[:1] == ("config",) else segs)


# options of nixpkgs modules with no file variant, and the module's own way to keep the value out of the store
# (checked in nixpkgs' modules)
_BY_HAND_ROUTES: dict[tuple[str, ...], str] = {
    # couchdb.nix: adminPass goes into couchdb.ini in the store; extraConfigFiles "overrides any other
    # configuration. You can use this to setup the Admin user without putting the password in your nix store"
    ("services", "couchdb", "adminPass"): (
        "remove it and list a file in services.couchdb.extraConfigFiles holding `[admins]` and `ADMINUSER = "
        "PASSWORD` (ADMINUSER: services.couchdb.adminUser), rendered at start from the agenix secret by an "
        "ExecStartPre of the couchdb unit (which runs as couchdb: it must be able to read the file)"
    ),
    # roundcube.nix: passwordFile is a .pgpass line, read only when database.host is not "localhost" (localDB:
    # the module connects as the roundcube user by the socket and creates the role with ensureUsers)
    ("services", "roundcube", "database", "password"): (
        'with database.host "localhost" (the default) nixpkgs\' roundcube module connects by the local socket as '
        "the roundcube user and reads no password at all: then delete the line. For another host, its "
        "database.passwordFile takes a .pgpass line (host:port:database:user:password), not the bare password: "
        "an agenix secret holding that line, owned by the user roundcube's php-fpm pool runs as"
    ),
}


HOME_MANAGER_PODMAN = (
    "a container of home-manager's services.podman (rootless, in a user's session, started by the user's "
    "systemd): nixmig patches NixOS-level containers (virtualisation.oci-containers); by hand: its "
    "environmentFile from a file only that user can read (agenix for home-manager, owner that user)"
)


def home_manager_podman(path: Sequence[str]) -> bool:
    """``services.podman.containers.X...``: home-manager's rootless containers (NixOS has no such option)."""
    segs = [seg.strip('"') for seg in path]
    segs = segs[1:] if segs[:1] == ["config"] else segs
    return segs[:3] == ["services", "podman", "containers"]


def unknown_shape(path: Sequence[str]) -> str:
    """Why nixmig has no edit for a literal at ``path`` that no rule took: what was seen, by where it is
    bound (never just "no template"), and what nixmig would need."""
    segs = [seg.strip('"') for seg in path]
    segs = segs[1:] if segs[:1] == ["config"] else segs
    what = ".".join(segs)
    if home_manager_podman(segs):
        return f"no template for this shape: {HOME_MANAGER_PODMAN}"
    if env_substituted(segs):
        return (
            f"no template for this shape: {what} is a setting services.{segs[1]} substitutes environment variables "
            f"into at start; nixmig writes a variable there for the migration's own password or URL (its role's), "
            f"and this is not it: by hand, the same way (a $VAR there, set in an EnvironmentFile of the "
            f"{segs[1]} unit rendered from its own agenix secret)"
        )
    serialised = next((k for k in range(len(segs) - 1, 1, -1) if env_container(tuple(segs[:k])) is not None), None)
    if serialised is not None:  # INVIDIOUS_CONFIG = builtins.toJSON { db.password = "..."; } (realcfg34/05)
        shape = env_container(tuple(segs[:serialised]))
        assert shape is not None
        var, name = segs[serialised - 1], shape[1].strip('"')
        return (
            f"no template for this shape: {var} of the {name} container is a serialised value (builtins.toJSON, a "
            f"text) holding the password at {'.'.join(segs[serialised:])}: all of it lands in the Nix store, and "
            f"nixmig has no edit for a password inside it. By hand: give the app its password in a variable of its "
            f"own if it reads one, or build {var} at start from the agenix file (a script that writes the "
            f"container's env file)"
        )
    if len(segs) >= 3 and segs[0] == "containers" and segs[2] == "config":
        c = segs[1]
        return (
            f"no template for this shape: inside the declarative NixOS container {c} (containers.{c}.config, a "
            f"system of its own: no agenix there), {'.'.join(segs[3:])} has no edit nixmig knows. By hand: declare "
            f"age.secrets.NAME in the host's module; bind-mount it read-only (containers.{c}.bindMounts."
            '"/run/agenix-host/NAME" = { hostPath = config.age.secrets.NAME.path; isReadOnly = true; }); make it '
            "readable by the user that reads it inside: without privateUsers the container shares the host's uids, "
            "so age.secrets.NAME.owner may be that user's uid as a number only when the container fixes it "
            "(users.users.USER.uid); else copy it inside, as root, to a file that user owns (a oneshot before its "
            "units); with privateUsers the host's file must belong to the shifted uid (the container's base + uid)"
        )
    if len(segs) >= 4 and segs[0] == "services" and segs[2] == "nixos" and segs[3] in ("configuration", "useSystemd"):
        c = segs[1]
        return (
            f"no template for this shape: inside the NixOS configuration arion builds and runs in the container {c} "
            f"(services.{c}.nixos.configuration, a system of its own whose files are in the image's Nix store: no "
            f"agenix there), {'.'.join(segs[4:])} has no edit nixmig knows. By hand: bind-mount the host's agenix "
            f"file read-only into {c} (services.{c}.service.volumes) and have its unit read it from there"
        )
    if len(segs) >= 3 and segs[0] == "specialisation":
        return (
            f"no template for this shape: inside specialisation.{segs[1]} (a configuration of its own): nixmig "
            "edits only a host's top-level configuration; move the setting out of the specialisation, or by hand"
        )
    if segs[:2] == ["environment", "etc"] and len(segs) >= 3:
        return (
            f"no template for this shape: /etc/{segs[2]} (environment.etc, a link into the world-readable Nix "
            "store) holds it, and nixmig did not tie that file to this migration's database (another "
            "credential? give it its own secret, `nixmig secret new NAME --from FILE:LINE`, and point what reads "
            "it at config.age.secrets.NAME.path)"
        )
    from nixmig.nixsrc.patch import database_option, nixpkgs_file_sibling

    sibling = nixpkgs_file_sibling(tuple(segs))
    if sibling is not None and not database_option(tuple(segs)):
        return (
            f"{what} is no database's password (its file option is {sibling[-1]}): a rotation would give it the "
            "new database password while what reads it keeps the old one; nixmig moves it with its value kept: "
            'a strategy "move" migration of its own (`nixmig init` drafts one when the repo has no database '
            'password), or also = { "' + ".".join(sibling) + '" = "NAME" } beside the database\'s'
        )
    if len(segs) >= 3 and segs[0] == "services" and segs[-1].endswith("File"):
        return (
            f"no template for this shape: {what} names a file written into the world-readable Nix store "
            "(pkgs.writeText ...) that nixmig did not tie to this migration's database (another credential?): "
            "give it its own secret (`nixmig secret new NAME --from FILE:LINE` keeps the value) and point the "
            "option at config.age.secrets.NAME.path, owned by the service's user"
        )
    if len(segs) >= 4 and segs[0] == "services" and "settings" in segs[2:-1]:
        return (
            f"no template for this shape: {what} is a key of services.{segs[1]}'s settings (a config file "
            "nixpkgs writes into the world-readable Nix store, with no file twin for a key): nixmig has no edit "
            f"for it; if services.{segs[1]} has a file option for it (a database.passwordFile, an environmentFile, "
            "a secrets file merged at start), set it by hand, readable by the user the service runs as"
        )
    route = _BY_HAND_ROUTES.get(tuple(segs))
    if route is not None:
        return (
            f"no template for this shape: {what} has no file variant in nixpkgs that takes the bare value; "
            f"by hand: {route}"
        )
    if len(segs) >= 3 and segs[0] in ("services", "programs"):
        return (
            f"no template for this shape: {what} is an option of {segs[0]}.{segs[1]} with no file variant nixmig "
            f"knows (no {segs[-1]}File, no environmentFile that reads it; nixmig's are checked in nixpkgs' modules "
            f"one by one, and a module that never declared this option is possible too: check that "
            f"{segs[0]}.{segs[1]} has it): nixmig cannot keep it out of the Nix store; set it from a file by hand "
            "(a *File option, an environmentFile the unit reads, a command that reads the file such as msmtp's "
            "passwordeval), if the module allows"
        )
    shape = env_container(tuple(segs))
    other_db = next((w for w in words(segs[-1]) if w.lower() in _OTHER_DATABASES), None) if shape else None
    init_user = {
        "MONGO_INITDB_ROOT_PASSWORD": ("mongo's root password", "MONGO_INITDB_ROOT_USERNAME"),
        "DOCKER_INFLUXDB_INIT_PASSWORD": ("influxdb's first user's password", "DOCKER_INFLUXDB_INIT_USERNAME"),
    }.get(segs[-1] if segs else "")
    if shape is not None and init_user is not None:
        return (
            f"{segs[-1]} of the {shape[1]} container, {init_user[0]}: nixmig moves it (value kept, into an "
            'env file its unit renders) under strategy "move" only, when the migration\'s role is the user '
            f"{init_user[1]} names (or root): set both in nixmig.toml, or a migration of its own "
            "(`nixmig init` drafts one)"
        )
    if shape is not None and other_db is not None:  # realcfg28/04: "not this migration's" was unfounded
        return (
            f"no template for this shape: {segs[-1]} of the {shape[1]} container, a {other_db.lower()} credential: "
            "nixmig moves the password variables of PostgreSQL images (and, under strategy move, MySQL's, "
            "MariaDB's and mongo's root password), not this one; by hand: an env file rendered at start from "
            "the agenix secret (the container's environmentFiles), or a *_FILE variable the image reads, with "
            "the file readable by the user the image reads it as"
        )
    if shape is not None:  # a container's own environment, of a container this migration does not patch
        return (
            f"{segs[-1]} of the {shape[1]} container holds a password that is not this migration's (another "
            "database's, or another account's): a migration of its own moves it (`nixmig init` drafts one per "
            "database it can tie; strategy move keeps the value), or by hand"
        )
    wrapped = wrapper_container(segs)
    if wrapped is not None:
        option, name = wrapped
        return (
            f"no template for this shape: {segs[-1]} of the container {name} in {option}, the repo's own "
            "container option (a wrapper that makes virtualisation.oci-containers or docker/podman units of it): "
            "nixmig patches virtualisation.oci-containers, arion and quadlet-nix themselves, not what a wrapper "
            f"makes of them. By hand, through the wrapper: give {name} an env file rendered from the agenix "
            "secret, by the wrapper's own option for one if it passes it on to the engine (oci-containers' "
            "environmentFiles); a systemd EnvironmentFile= on its unit reaches only the `docker/podman run` "
            "process, never the container. Or, for an image that reads one, a *_FILE variable "
            "(POSTGRES_PASSWORD_FILE) naming the agenix file mounted read-only into the container"
        )
    if len(segs) >= 2 and segs[-2] in _ENV_ATTRS:
        return (
            f"no template for this shape: {segs[-1]} in {'.'.join(segs[:-1])}, an environment attrset nixmig "
            "does not see used by a container or a unit it can edit (a let binding, a custom option, a "
            "function's argument): move the variable into the container's own environment, or by hand"
        )
    if len(segs) >= 3 and segs[0] == "options" and segs[-1] == "default":
        option = ".".join(segs[1:-1])
        return (
            f"no template for this shape: the default of the module's own option {option} (mkOption): nixmig "
            "follows a default into its reads (config.…, cfg.… with cfg a let of config.…) when no module sets "
            "the option, and edits each read it has a template for; none of this one's reads was such. By hand: "
            "give the option a file instead (a "
            f"{segs[-2]}File option, default null, or config.age.secrets.NAME.path) and have each reader take the "
            "file (a *File option, LoadCredential, an env file rendered at start), or bind the password in a let "
            "the readers interpolate: nixmig follows a let-bound password into units, containers and SQL"
        )
    if len(segs) >= 2:
        return (
            f"no template for this shape: {what} is an attribute nixmig does not see read by a service it "
            f"can edit (an option of a custom module, an attrset read elsewhere as {segs[0]}.…): by hand"
        )
    return "no template for this shape: a string nixmig does not see used by a service it can edit: by hand"


def companion_fix(migration: str, var: str, file: str, line: int) -> str:
    """What moves a second credential of a container onto its own secret, value kept (nixmig.toml's also)."""
    name = also_name(var)
    return (
        f"run `nixmig secret new {name} --from {file}:{line}` (keeps its value), then add "
        f'also = {{ {var} = "{name}" }} to [migrations.{migration or "NAME"}]'
    )


ENSURE_USERS = (
    "nixpkgs' ensureUsers entries (services.mysql, services.postgresql) have no password option and no "
    "passwordFile (a module of its own, or one nixpkgs rejects): nixmig has no edit for it; set the user's "
    "password from the agenix file in a oneshot after the server starts (SQL read from the file, not the store)"
)


# password options nixpkgs removed (mkRemovedOptionModule): a configuration setting one does not evaluate
REMOVED_OPTIONS: dict[tuple[str, ...], str] = {
    ("services", "mysql", "rootPassword"): (
        'nixpkgs removed this option ("Use socket authentication or set the password outside of the nix '
        "store\"): a configuration that sets it does not evaluate with today's nixpkgs, and it has no file "
        "twin; delete the line (root logs in over the socket as the system's root), or set root's password from "
        "the agenix file in a oneshot after mysql.service starts (SQL read from the file, not the store)"
    ),
}


def removed_option(path: Sequence[str]) -> str | None:
    """Why ``path`` is an option nixpkgs removed (a configuration setting it does not evaluate today), or None."""
    plain = tuple(seg.strip('"') for seg in path)
    if plain[:2] == ("services", "httpd") and "extraSubservices" in plain:
        return (
            "services.httpd's extraSubservices were removed from nixpkgs (a configuration that sets them does not "
            "evaluate with today's nixpkgs); today's services.wordpress.sites.NAME.database.passwordFile (and "
            "the other web apps' own modules) take the password from a file: move the site to that module, then "
            "patch again"
        )
    return REMOVED_OPTIONS.get(plain[-3:])


def login_password(path: Sequence[str]) -> bool:
    """users.users.NAME.password / initialPassword: an OS account's login password, no database's."""
    plain = tuple(seg.strip('"') for seg in path)
    return (
        len(plain) == 4
        and plain[0] == "users"
        and plain[1] in ("users", "extraUsers")
        and plain[3]
        in (
            "password",
            "initialPassword",
        )
    )


LOGIN_ACCOUNT_WHY = (
    "an OS account's login password (in the world-readable Nix store), no database's: nixmig migrates database "
    "credentials; by hand, if it matters: users.users.NAME.hashedPasswordFile pointing at a file agenix decrypts "
    "(a crypt hash: `mkpasswd -m sha-512`)"
)


def server_option(path: Sequence[str]) -> bool:
    """An option of the database server's own module (services.postgresql.*, services.mysql.*): the server
    reads no env file for a role's password, so no env-file recipe fits it."""
    plain = tuple(seg.strip('"') for seg in path)
    return plain[:1] == ("services",) and len(plain) > 2 and plain[1] in ("postgresql", "mysql")


def _why(
    f: Finding,
    source: bytes,
    role: str,
    file: str = "",
    migration: str | None = None,
    same: bool = False,
    strategy: str = "rotate",
) -> str:
    ws = set(words(f.attr_path)) if f.attr_path else set()
    scheme = _scheme(source, f.start) if f.kind is Kind.URL_CREDENTIAL and f.start >= 0 else ""
    path = _attr_path(f.attr_path) if f.attr_path else ()
    if "ensureUsers" in path and server_option(path):
        return ENSURE_USERS
    if login_password(path):
        return LOGIN_ACCOUNT_WHY
    removed = removed_option(path)
    if removed is not None:
        return removed
    if home_manager_podman(path):
        return HOME_MANAGER_PODMAN
    if f.rule == "dsn":
        return (
            "no template for this shape: a Go MySQL DSN (user:password@tcp(host)/db, go-sql-driver/mysql) "
            "holds it: nixmig has no edit for a DSN yet; by hand: move the variable to an env file rendered "
            "from the agenix secret (a container's environmentFiles), or a *_FILE variable if the app reads one"
        )
    held = module_as_value(path)
    rest = [seg.strip('"') for seg in path][len(held.split(".")) :] if held else []
    if held and len(rest) >= 3 and rest[0] == "services" and rest[2] in ("environment", "service", "image"):
        return (
            f"inside {held}, the author's own option (a wrapper that builds containers or a compose project from "
            f"services.{rest[1]}.{rest[2]}, or a module held as a value): nixmig patches "
            "virtualisation.oci-containers, arion and quadlet-nix themselves, not what a wrapper turns into them; "
            "by hand: give the wrapper's container an env file rendered from the agenix secret, if it takes one"
        )
    if held:
        return (
            f"inside {held}, a NixOS module held as a value (flake-parts' flake.modules.nixos, a module registry, "
            "a flake's inline modules list): nixmig edits the modules that are a host's configuration files; "
            "move that module into a file of its own that the host imports, or by hand"
        )
    inside = nixos_container(path)
    sql_script = [seg.strip('"') for seg in path][-3:] in (
        ["services", "postgresql", "initialScript"],
        ["services", "mysql", "initialScript"],
    )  # a script nixmig moves inside a container (strategy move, no privateUsers)
    if inside is not None and f.rule == "sql" and sql_script and not _private_users(source, inside):
        return (
            f"a password inside SQL text in the declarative NixOS container {inside} (containers.{inside}.config, a "
            "system of its own): nixmig's database phases run on the host and cannot reach the container's server, "
            'so nixmig cannot rotate it; with strategy = "move" it moves it (the value kept: the clause goes, the '
            "host's agenix file is bind-mounted read-only into the container, and a oneshot there sets the "
            f"password from it): `nixmig secret new NAME --from {file}:{f.line}`, then patch again"
        )
    if inside is not None and f.rule == "sql":
        return (
            f"a password inside SQL text in the declarative NixOS container {inside} (containers.{inside}.config, a "
            "system of its own: no agenix there, and nixmig's database phases run on the host, not in it): "
            + (
                f"containers.{inside}.privateUsers is set, so the container's root is not the host's and cannot read "
                "the host's root-only agenix file through a bind mount (nixmig moves such a password only without "
                "it); by hand: give the host's file the container's shifted uid (its base + the uid inside), "
                if sql_script
                else "nixmig has no edit for this script there; by hand: "
            )
            + "bind-mount the host's agenix file read-only into the "
            f"container (containers.{inside}.bindMounts), drop the clause, and set the password at run time from "
            "the mount, inside (PostgreSQL: psql's \\set pw `cat FILE` and ALTER ROLE ... PASSWORD :'pw'; MySQL: "
            "ALTER USER ... IDENTIFIED BY, the value read by the shell)"
        )
    if ws & _MYSQL or scheme in _MYSQL or scheme == "mysql2":
        if migration is not None and env_container(path) is not None and base_variable(path[-1]) == path[-1]:
            return (
                "a second MySQL/MariaDB credential of this container (nixmig cannot rotate it, and this "
                f"migration moves one value): {companion_fix(migration, path[-1], file, f.line)}"
            )
        if path[-3:] == ("services", "mysql", "initialScript") and _mysql_account(source, f.start) not in (None, role):
            return (
                "the password of a MySQL/MariaDB account in the script that no migration moves (a migration moves "
                "the account its service's role names): give this account a migration of its own (strategy = "
                f'"move", role = its user; `nixmig secret new NAME --from {file}:{f.line}` keeps the value), '
                "or take the clause out by hand"
            )
        segs = [seg.strip('"') for seg in path]
        if f.rule == "name" and segs[:2] == ["services", "mysql"] and segs[2:3] != ["initialScript"]:
            # an option of nixpkgs' mysql module (replication.masterPassword): moving the value needs a file
            # variant, whatever the strategy
            return unknown_shape(path)
        in_unit = "systemd" in segs and bool({"script", "preStart", "postStart"} & set(segs))
        if f.rule == "sql" and in_unit and _mysql_account(source, f.start) in (role, "root"):
            # the account this migration moves, its SQL in a unit's script (realcfg37/01: postStart's IDENTIFIED BY)
            return (
                'a MySQL/MariaDB password inside SQL text in a script (nixmig cannot rotate it: strategy = "move" '
                "keeps it): nixmig has no edit for this statement (it takes "
                "IDENTIFIED BY out of services.mysql.initialScript, and sets the password from the agenix file in a "
                "oneshot after mysql starts); by hand: drop the clause (or the statement, if the account exists "
                "already), then set the password at run time from config.age.secrets.NAME.path (ALTER USER ... "
                "IDENTIFIED BY, the value read by the shell from the file, never written into the script)"
            )
        if strategy == "move":  # the route "use move" is taken already (realcfg37/01, 38/05)
            return (
                "a MySQL/MariaDB credential this migration (strategy move) finds no edit for where it is: nixmig "
                "moves a MySQL password out of a container's environment (MYSQL_PASSWORD, an app's variable or "
                "URL), services.mysql.initialScript and the options with a file twin; by hand: have what reads it "
                "take it from the agenix file (a *File option, an env file rendered at start), then remove it"
            )
        return (
            'a MySQL/MariaDB credential: nixmig cannot rotate it; a migration with strategy = "move" moves one '
            "such value (the service's role names whose: the MySQL user, or root; `nixmig secret new NAME --from "
            "FILE:LINE` keeps the value)"
        )
    if f.rule == "sql" and _mysql_if_not_exists(source, f.start):
        return (
            "a password inside SQL text, in CREATE USER/ROLE IF NOT EXISTS: MySQL's syntax, which PostgreSQL "
            "rejects (psql reports the error and goes on), so the statement never created the role nor set this "
            "password: fix the SQL first (CREATE ROLE name LOGIN; PostgreSQL has no IF NOT EXISTS here), then "
            "patch again, and nixmig moves the password out of it"
        )
    if f.rule == "sql":
        return (
            "a password inside SQL text (an initialScript or a script): nixmig has no edit for this statement (it "
            "takes the PASSWORD clause out of a CREATE/ALTER ROLE of the migration's role in "
            "services.postgresql.initialScript, and sets the password from the agenix file in a oneshot after the "
            "server is up); by hand: drop the clause, then set the password at run time from "
            "config.age.secrets.NAME.path (psql's \\set pw `cat FILE` and ALTER ROLE ... PASSWORD :'pw')"
        )
    named = string_shape(f.attr_path.split(".")) if f.attr_path else None
    if named is not None:
        return named
    if f.rule in ("assignment", "flag", "config-line"):
        return "a password inside a longer string (a script, an env or config text): nixmig has no edit for it"
    if f.kind is Kind.URL_CREDENTIAL and not env_substituted(path):
        return (
            f"a {scheme or 'URL'}:// credential that nixmig did not match to role {role!r} in a shape it can "
            f"edit (a container's environment or a unit's Environment)"
        )
    if not f.attr_path:
        return "a string not bound to an attribute (a let binding used elsewhere, an interpolation)"
    if same and migration is not None and env_container(path) is not None and base_variable(path[-1]) == path[-1]:
        return (
            f"{path[-1]} is no database variable nixmig knows: if it is another credential that holds the "
            f"database's value (a rotation must not change it), {companion_fix(migration, path[-1], file, f.line)}"
        )
    readers = rec_readers(source, f.start) if f.start >= 0 else []
    if readers:
        shown = ".".join(path)
        return (
            f"no template for this shape: {shown} is read by {', '.join(readers)} of the same rec attrset (an "
            f"interpolation of {path[-1]}), which nixmig does not follow into what reads {readers[0]}: by hand, or "
            'bind the password in a let of its own (`let pw = "...";`) and build the URL from it where it is '
            "used: nixmig follows a let-bound password into a unit's script or command line"
        )
    return unknown_shape(path)


def rec_readers(source: bytes, offset: int) -> list[str]:
    """The attributes of the ``rec { ... }`` holding the binding at ``offset`` that interpolate its name
    (``rec { password = "..."; url = "postgres://u:${password}@h/db"; }``: url, realcfg20/23)."""
    from nixmig.nixsrc.parse import descendants, parse, text

    node = parse(source).root_node.descendant_for_byte_range(offset, offset + 1)
    while node is not None and node.type != "binding":
        node = node.parent
    if node is None or node.parent is None or node.parent.parent is None:
        return []
    if node.parent.parent.type != "rec_attrset_expression":
        return []
    path = node.child_by_field_name("attrpath")
    if path is None or len(path.named_children) != 1:
        return []
    name = text(path)
    out = []
    for sibling in node.parent.named_children:
        if sibling is node or sibling.type != "binding":
            continue
        value, attr = sibling.child_by_field_name("expression"), sibling.child_by_field_name("attrpath")
        if value is None or attr is None:
            continue
        if any(
            n.type == "interpolation"
            and any(c.type == "variable_expression" and text(c) == name for c in n.named_children)
            for n in descendants(value)
        ):
            out.append(text(attr))
    return out


_PASSWORD_SUFFIX = re.compile(r"(?i)(PASSWORD|PASSWD|PASS|PWD)$")
_USER_SUFFIXES = ("USERNAME", "USER", "USER_NAME", "LOGIN", "NAME")


def paired_user(fm: FileModel, path: Sequence[str]) -> tuple[str, str] | None:
    """(variable, user) of the user variable beside a container's password variable that shares its stem
    (ZITADEL_DATABASE_POSTGRES_USER_PASSWORD -> ..._USER_USERNAME, ADMIN_PASSWORD -> ADMIN_USERNAME,
    POSTGRES_PASSWORD -> POSTGRES_USER, DB_PASS -> DB_USER), its value a literal; None otherwise."""
    var = path[-1] if path else ""
    stem = _PASSWORD_SUFFIX.sub("", var)
    if stem == var or env_container(tuple(path)) is None:
        return None
    names = {stem + suffix for suffix in _USER_SUFFIXES} | {stem + suffix.lower() for suffix in _USER_SUFFIXES}
    for b in fm.binds:
        if tuple(seg.strip('"') for seg in b.path[:-1]) == tuple(path[:-1]) and b.path and b.path[-1] in names:
            user = decode_string(unparen(b.value))
            if user:
                return b.path[-1], user
    return None


def _role_hint(fm: FileModel, f: Finding, role: str) -> str:
    """A container's database password beside a database user variable (``DB_USER``,
    ``PHOTOPRISM_DATABASE_USER``) naming another user than the migration's role: the role may be the
    default one, left unset."""
    path = _attr_path(f.attr_path) if f.attr_path else ()
    if not path or env_container(path) is None or not env_words(path[-1]) & DB_WORDS:
        return ""
    pairs = [paired_user(fm, path)]
    for b in fm.binds:  # else a database user variable beside it (DB_USER beside DATABASE_PASSWORD)
        if tuple(seg.strip('"') for seg in b.path[:-1]) != path[:-1] or not b.path:
            continue
        named = env_words(b.path[-1])
        last = re.split(r"[_\W]+", b.path[-1])[-1].lower()  # USER_SSL_MODE names no user (realcfg32/02)
        if named & DB_WORDS and last in ("user", "username"):
            user = decode_string(unparen(b.value))
            pairs.append((b.path[-1], user) if user else None)
    for pair in pairs:
        if pair is not None and pair[1] != role:
            var, user = pair
            # the user's name, unless it is the password too (a value never printed)
            said = var if user.encode() == f.value.reveal() else f"{var} = {user!r}"
            return (
                f" (this migration's role is {role!r}, nixmig.toml's (postgres when its service sets none): if "
                f"this is the password of the user the container logs in as, {said}, set that user as the "
                "service's role in nixmig.toml)"
            )
    return ""


def in_module_value(fm: FileModel, f: Finding) -> Finding:
    """``f`` with its attribute path from the root of the NixOS module held as a value that holds it
    (model.Embedded: ``services.x.password``, not ``flake.modules.nixos.x.services.x.password``), so
    that the rules read it as in a module file; ``f`` itself elsewhere."""
    path = fm.path_in_module_value(f.start, f.end) if fm.modules and f.start >= 0 else None
    if path is None:
        return f
    return replace(f, attr_path=".".join(f'"{seg}"' if "." in seg else seg for seg in path))


_CONDITIONAL = frozenset({"optionalAttrs", "optional", "optionals", "optionalString"})


def under_condition(fm: FileModel, byte: int) -> str:
    """The lib function (optionalAttrs, optional, ...) whose value argument holds ``byte``, or ""."""
    if byte < 0:
        return ""
    node: Node | None = fm.root.descendant_for_byte_range(byte, byte)
    while node is not None and node.parent is not None:
        parent = node.parent
        if parent.type == "apply_expression" and parent.child_by_field_name("argument") == node:
            name, args = _apply_parts(parent)
            if name in _CONDITIONAL and args and args[-1] == node:
                return name
        node = parent
    return ""


_OPTION_ROOTS = frozenset(
    {"virtualisation", "services", "systemd", "environment", "containers", "age", "users", "docker-containers"}
)


def module_as_value(path: Sequence[str]) -> str:
    """The prefix before a NixOS option path that does not start the attribute path (``flake.modules.nixos.
    "services.mariadb".virtualisation.oci-containers...``, ``moduleRegistry.nixos.postgresql.config.services...``,
    ``outputs.nixosConfigurations.x.modules.services...``): a module held as a value; "" otherwise."""
    segs = [seg.strip('"') for seg in path]
    if not segs or segs[0] in _OPTION_ROOTS or segs[0] in ("<let>", "<module>", "specialisation", "options"):
        return ""  # (`options.services.x.password.default`: a module's own declaration, realcfg30/01, 31/03)
    for i in range(1, len(segs) - 2):
        rest = segs[i + 1 :] if segs[i] == "config" else segs[i:]
        if rest[:2] in (["virtualisation", "oci-containers"], ["virtualisation", "arion"]) or (
            rest[:1] == ["services"] and len(rest) >= 3
        ):
            return ".".join(segs[:i])
    return ""


def _companion_var(f: Finding, source: bytes, migration: str | None, same: bool, other_user: bool = False) -> str:
    """The variable of a container's environment that _why tells to move as a companion (also), or "".
    ``other_user``: the variable's own user variable names another user than the migration's role
    (zitadel's USER_PASSWORD beside USER_USERNAME, the role being its ADMIN's): its database password is
    that user's, a companion too (realcfg32/01)."""
    if migration is None or not f.attr_path or "ensureUsers" in f.attr_path:
        return ""
    path = _attr_path(f.attr_path)
    if env_container(path) is None or base_variable(path[-1]) != path[-1]:
        return ""
    ws = set(words(f.attr_path))
    named = {w.lower() for w in words(path[-1])}
    if ws & _MYSQL:  # _why: "a second MySQL/MariaDB credential of this container": root's (the user's is
        return path[-1] if "root" in named and f.kind is not Kind.URL_CREDENTIAL else ""  # the migration's)
    if f.rule in ("sql", "assignment", "flag", "config-line") or f.kind is Kind.URL_CREDENTIAL:
        return ""
    if named & DB_WORDS and not other_user:
        return ""  # a database's variable (an app's DB_PASSWORD, another database's): not a companion
    # the database's value under another name, or another token/secret of a container this migration
    # patches (compose2nix gives every container of a project the same environment)
    return "" if string_shape(f.attr_path.split(".")) is not None else path[-1]


def _in_container(f: Finding, file: str, containers: Collection[tuple[str, ...]]) -> bool:
    """The finding binds a variable of the environment of one of ``containers`` ((file, *prefix))."""
    if not f.attr_path or not containers:
        return False
    shape = env_container(_attr_path(f.attr_path))
    return shape is not None and (file, *shape[2]) in containers


_MYSQL_USER_BEFORE = re.compile(
    rb"(?is)(?:CREATE|ALTER)\s+USER(?:\s+IF\s+(?:NOT\s+)?EXISTS)?\s+['`\"]?([A-Za-z0-9_.%-]+)|GRANT\s.*?\sTO\s+['`\"]?([A-Za-z0-9_.%-]+)"
)


def _mysql_account(source: bytes, start: int) -> str | None:
    """The user of the MySQL statement whose IDENTIFIED BY holds the byte at ``start`` (None: not found)."""
    head = source[max(0, start - 400) : start]
    head = head[head.rfind(b";") + 1 :]
    found = list(_MYSQL_USER_BEFORE.finditer(head))
    if not found:
        return None
    m = found[-1]
    return (m.group(1) or m.group(2)).decode("utf-8", "replace")


def _other_project(f: Finding, file: str, containers: Collection[tuple[str, ...]]) -> bool:
    """The finding is in an arion project of ``file`` none of whose containers this plan patches, while it
    patches another project's there (``projects.wikijs`` beside ``projects.pterodactyl``): another app's
    database and credentials, not this migration's (a note says it is left, other_secrets)."""
    if not f.attr_path:
        return False
    path = _attr_path(f.attr_path)
    arion = ("virtualisation", "arion", "projects")
    if path[:3] != arion or len(path) < 4:
        return False
    ours = {c[4] for c in containers if c[0] == file and tuple(c[1:4]) == arion and len(c) > 4}
    return bool(ours) and path[3] not in ours


def _other_container(f: Finding, containers: Collection[tuple[str, ...]]) -> bool:
    """The finding binds a variable of a container's environment none of whose variables this plan patches,
    while it patches others (realcfg29/03: one file with immich's, miniflux's and nextcloud's stacks): another
    stack's database and credentials, not this migration's (a note says it is left, other_secrets). Only for a
    value that is not this migration's (the caller's check): a client of this database holding its password
    stays one. Once the tree is patched (the value gone from the store, nothing known), the containers the plan
    recognises as its own are still those (the database's `_FILE`, the apps' env files): the others' stay
    another migration's."""
    if not f.attr_path or not containers:
        return False
    return env_container(_attr_path(f.attr_path)) is not None


def _attr_path(attr_path: str) -> tuple[str, ...]:
    path = tuple(seg.strip('"') for seg in attr_path.split("."))
    return path[1:] if path[:1] == ("config",) else path  # a module's `config = { ... }` block


def _written_back(source: bytes, f: Finding, e: Edit) -> bool:
    """The edit's text holds the finding's value where it was, with the bytes around it (an edit that wraps
    what it covers); not merely the same bytes elsewhere (a short password inside a new file path)."""
    around = source[max(e.start, f.start - 12) : min(e.end, f.end + 12)]
    return around in e.replacement


def _uncovered(fm: FileModel, name: str, edits: Sequence[Edit]) -> Iterator[Finding]:
    """scan's credential findings in ``fm`` (no hashes) that no edit replaces: an edit covering one that
    does not write the value back (an edit that wraps a binding, the renderer put before a unit's own
    ExecStartPre, keeps the text it covers: the value too) takes it out."""
    for f in scan_source(fm.source, name).findings:
        f = in_module_value(fm, f)
        if f.kind is Kind.HASH:
            continue
        kept = [e for e in edits if e.file == name and e.start <= f.start and f.end <= e.end]
        if f.start >= 0 and kept and not any(_written_back(fm.source, f, e) for e in kept):
            continue
        yield f


def other_secrets(
    models: Mapping[str, FileModel],
    edits: Sequence[Edit],
    *,
    known: Collection[bytes],
    said: Collection[tuple[str, int]],
    owners: Mapping[str, str] | None = None,
) -> list[str]:
    """Notes for the credentials left in the files the edits touch that are not this migration's (another
    value: an admin password, an API token): patch leaves them, and says so rather than stay silent about
    a file it called done. Never the value: where, what, and how to move it. ``owners``: container name ->
    the other migration of nixmig.toml whose service runs in it (the note names that migration)."""
    out: list[str] = []
    for name in sorted({e.file for e in edits}):
        fm = models[name]
        for f in _uncovered(fm, name, edits):
            if (name, f.line) in said or digest(f.value.reveal()) in known:
                continue
            path = _attr_path(f.attr_path) if f.attr_path else ()
            shape = env_container(path) if path else None
            owner = (owners or {}).get(shape[1].strip('"')) if shape is not None else None
            out.append(
                f"{name}:{f.line}: {f.attr_path or 'a string'} holds another {DESCRIPTION[f.kind]} (not "
                "this migration's value): left as it is; "
                + (
                    f"migration {owner} of nixmig.toml moves it (`nixmig patch -m {owner}`, or `nixmig patch` for "
                    "every migration)"
                    if owner is not None
                    else LOGIN_ACCOUNT_WHY
                    if login_password(path)
                    else "`nixmig scan` lists it; it is part of a longer text (a script, a config or env text), where "
                    "nixmig has no edit for it: take it out of the Nix store by hand"
                    if f.rule not in ("sql", "url", "name") and _inside_longer_string(fm, f)
                    else "`nixmig scan` lists it, a migration of its own (strategy move keeps the value) takes it out "
                    "of the Nix store"
                )
            )
    return out


def _inside_longer_string(fm: FileModel, f: Finding) -> bool:
    """The finding is a part of its string, not all of it (``pwd:"..."`` inside a JS initialScript)."""
    if f.start < 0:
        return False
    node: Node | None = fm.root.descendant_for_byte_range(f.start, max(f.start, f.end - 1))
    while node is not None and node.type not in ("string_expression", "indented_string_expression"):
        node = node.parent
    if node is None:
        return False
    quote = 2 if node.type == "indented_string_expression" else 1
    body = fm.source[node.start_byte + quote : node.end_byte - quote].strip()
    return body != fm.source[f.start : f.end].strip()


def _unread_let(fm: FileModel, lets: Mapping[str, LetLiteral], f: Finding) -> bool:
    """The finding is a let binding's literal (``lets``: the file's) whose name is no other word of the file
    (no variable, no ``inherit``, no ``rec`` field reads it: a dead binding, 15V/05)."""
    for let in lets.values():
        if let.literal.start_byte <= f.start < let.literal.end_byte and let.name == f.attr_path:
            word = re.compile(rb"(?<![\w'-])" + re.escape(let.name.encode()) + rb"(?![\w'-])")
            outside = fm.source[: let.binding.start_byte] + fm.source[let.binding.end_byte :]
            return word.search(outside) is None
    return False


def _let_read_again(fm: FileModel, f: Finding) -> tuple[str, int] | None:
    """(name, reads) of the let binding whose value holds the finding, when the file reads it more than once."""
    from nixmig.nixsrc.parse import descendants

    found = let_binding_at(fm.root, f.start)
    if found is None:
        return None
    name = found[0]
    reads = sum(
        1
        for n in descendants(fm.root)
        if (n.type == "variable_expression" and fm.text(n) == name)
        or (n.type == "inherit" and name in fm.text(n).replace(";", " ").split())
    )
    return (name, reads) if reads > 1 else None


def leftovers(
    models: Mapping[str, FileModel],
    edits: Sequence[Edit],
    *,
    known: Collection[bytes],
    scope: Collection[str] | None,
    idents: Collection[str],
    role: str,
    also_known: Collection[bytes] = (),
    skip: Collection[tuple[str, int]] = (),
    migration: str | None = None,
    containers: Collection[tuple[str, ...]] = (),
    strategy: str = "rotate",
) -> list[Leftover]:
    """Every credential finding that no edit replaces and that is this migration's (see the module doc).

    ``scope`` None: every file. ``skip``: (file, line) already reported as a by-hand item. ``migration``:
    its name when the plan found its own password, so that a second MySQL credential of a container is
    told how to move too (nixmig.toml's also); None: the migration's own may be that one.
    ``containers``: (file, *prefix) of the containers the plan patches: every credential of their
    environment is a leftover (a companion to move), not only a database's. ``also_known``: the values of
    the companions the plan moves (kept): a credential left with one is said; a plain variable holding the
    same bytes is not (a chat id equal to a placeholder bot token is no copy of the database's password).
    """
    spans: dict[str, list[tuple[int, int]]] = {}
    for e in edits:
        spans.setdefault(e.file, []).append((e.start, e.end))
    out: list[Leftover] = []
    for name, fm in sorted(models.items()):
        nixos_test = _nixos_test(fm)
        file_lets = let_literals(fm.root)
        for f in _uncovered(fm, name, edits):
            if (name, f.line) in skip:
                continue
            exact = digest(f.value.reveal()) in known
            kept = not exact and digest(f.value.reveal()) in also_known  # a companion's value, kept in the store
            same = exact or kept
            # nothing recognised (scope None): any credential may be this migration's, all are said
            if not same and (
                not (
                    scope is None
                    or (name in scope and _related(f, fm.source, idents))
                    or _in_container(f, name, containers)
                )
                or _other_project(f, name, containers)
                or (not _in_container(f, name, containers) and _other_container(f, containers))
                or (scope is not None and _other_service(f, idents, role))
            ):
                continue
            head = f"{f.attr_path or 'a string'} still holds " + (
                "this migration's password"
                if exact
                else "the value of a credential this migration moves onto its own secret (kept)"
                if kept
                else "a " + DESCRIPTION[f.kind]
            )
            cond = under_condition(fm, f.start)
            if nixos_test:
                why = (
                    "this file is a NixOS test (nodes and a testScript): its password is the test's own fixture, in "
                    "VMs only the test runs; nixmig migrates hosts' configurations, not tests: leave it, or give the "
                    "test a value of its own"
                )
                out.append(Leftover(name, f.line, f.col, f.attr_path, f"{head}: {why}", f.start, f.end, ""))
                continue
            stray = _attr_path(f.attr_path)[:1] if f.attr_path else ()
            if stray and stray[0] in fm.stray_keys:
                why = (
                    f"NixOS rejects this module as written: it has a top-level `config` (or `options`) and sets "
                    f"{', '.join('`' + k + '`' for k in fm.stray_keys)} beside it (the module system's \"unsupported "
                    'attribute" error), so nixmig does not read those as options: move them into `config`, or '
                    "drop `config` and write its options at the top level, then patch again"
                )
                out.append(
                    Leftover(
                        name,
                        f.line,
                        f.col,
                        f.attr_path,
                        f"{f.attr_path} still holds a {DESCRIPTION[f.kind]}: {why}",
                        f.start,
                        f.end,
                        "",
                    )
                )
                continue
            why = (
                f"set inside lib.{cond} (merged in only when the author's condition holds): nixmig edits values "
                "as they are written, not under a condition (which branch runs is the author's); move it out of "
                "the condition, or by hand"
                + (
                    " (a condition written with lib.mkIf is followed: `x = lib.mkIf cond { ... };`, several under "
                    "lib.mkMerge [ ... ], in place of `lib.optionalAttrs cond { ... } // ...`)"
                    if cond == "optionalAttrs"
                    else ""
                )
                if cond
                else _why(f, fm.source, role, name, migration, same, strategy)
            )
            shared = _let_read_again(fm, f) if f.rule == "sql" and not cond else None
            if shared is not None:
                why = (
                    f"a password inside SQL text bound in a let ({shared[0]}) that {name} reads {shared[1]} times: "
                    "nixmig takes the clause out of a let-bound initialScript only when the initialScript is its one "
                    "reader (an edit of the let reaches every use); read it only from the initialScript and patch "
                    "again, or drop the clause by hand and set the password at run time from the agenix file"
                )
            if not cond and _unread_let(fm, file_lets, f):
                why = (
                    f"{f.attr_path} is bound in a let and its name appears nowhere else in {name}: nothing in this "
                    "file reads it; delete the binding (the value stays in the repository's history: change it "
                    "where it is really used)"
                )
            if f.attr_path and why == unknown_shape(_attr_path(f.attr_path)):
                why += read_as_option(models, f.attr_path)
            if not same and f.attr_path and why.startswith(unknown_shape(_attr_path(f.attr_path))):
                why += _role_hint(fm, f, role)  # "not this migration's" may be the default role's doing
            pair = paired_user(fm, _attr_path(f.attr_path)) if f.attr_path else None
            var = _companion_var(f, fm.source, migration, same, pair is not None and pair[1] != role)
            if var and not same and _in_container(f, name, containers) and "also = {" not in why:
                fix = companion_fix(migration or "", var, name, f.line)
                why = (
                    "another credential of a container this migration patches (it leaves the Nix store with "
                    f"the database's password, onto its own secret): {fix}"
                )
            # a companion only of a container this migration patches: another database's container in the
            # same file (its MYSQL_ROOT_PASSWORD) is another migration's
            mine = var if same or not containers or _in_container(f, name, containers) else ""
            sql = f.rule == "sql"
            url = f.kind is Kind.URL_CREDENTIAL
            out.append(
                Leftover(name, f.line, f.col, f.attr_path, f"{head}: {why}", f.start, f.end, mine, sql, same, url)
            )
        # the password itself where scan saw none (a value that reads like a placeholder,
        # "SECURE_PASSWORD_HERE"): the plan recognised it as the password, so it is one here too
        seen = {(o.file, o.line) for o in out if o.file == name}
        lets = {ll.literal.start_byte: ll for ll in file_lets.values()}
        for lit in fm.lits:
            value = decode_string(lit.node) if lit.exact or lit.path[:1] == ("<let>",) else None
            start, end = lit.node.start_byte, lit.node.end_byte
            if value is None or not value or digest(value.encode()) not in known:
                continue
            in_env = _secret_variable(lit.path)
            reader = _credential_reader(fm, lets.get(start), spans.get(name, ()))
            if not in_env and not _credential_place(lit.path) and reader is None:
                continue  # the same bytes as a user name ("postgres") are no password there
            line, col = fm.line_col(start)
            if (name, line) in seen or (name, line) in skip or _covered_span(start, end, spans.get(name, ())):
                continue
            seen.add((name, line))
            attr = ".".join(lit.path)
            var = lit.path[-1] if in_env and migration is not None else ""
            why = (
                "another credential with the database's value under a name scan does not read as one (a rotation "
                f"must not change it): {companion_fix(migration or '', var, name, line)}"
                if var
                else f"bound to a name scan does not read as a credential, and read as one by "
                f"{'.'.join(reader.path)} at {fm.where(reader.node)}: nixmig has no edit for that use; give it the "
                "agenix secret by hand (an env file, a *File option), or bind the password under its own name"
                if reader is not None and not in_env and not _credential_place(lit.path)
                else string_shape(lit.path) or unknown_shape(lit.path)
            )
            out.append(
                Leftover(
                    name,
                    line,
                    col,
                    attr,
                    f"{attr or 'a string'} still holds this migration's password: {why}",
                    start,
                    end,
                    var,
                )
            )
    return out


# words of a variable that holds a name, not a secret: the password may equal the user's or the database's
_NAME_WORDS = frozenset({"user", "username", "name", "db", "database", "host", "hostname", "schema", "login", "owner"})


def _secret_variable(path: Sequence[str]) -> bool:
    """A container's environment variable (not a VAR_FILE path) whose name says nothing of a user, a
    database or a host: holding the database's password, it is a credential whatever scan reads in its
    name (a typo'd SECREY_KEY, an APP_SALT)."""
    if env_container(tuple(path)) is None or not path:
        return False
    var = path[-1]
    return base_variable(var) == var and not (env_words(var) & _NAME_WORDS)  # PGUSER: pg + user


def _credential_place(path: Sequence[str]) -> bool:
    """An attribute whose name says it holds a credential (``adminPassword``), or an /etc file named so
    (``environment.etc."nextcloud-admin-pass".text``): where scan finds one, placeholders aside."""
    segs = [seg.strip('"') for seg in path]
    if len(segs) >= 4 and segs[:2] == ["environment", "etc"] and segs[-1] in ("text", "source"):
        return credential_file_name(segs[2].rsplit("/", 1)[-1].split(".", 1)[0]) is not None
    return bool(segs) and classify_name(segs[-1]) is not None


def _credential_reader(fm: FileModel, let: LetLiteral | None, edited: Sequence[tuple[int, int]]) -> Bind | None:
    """A binding no edit replaces that reads the let-bound literal ``let`` as a credential
    (``DB_PASSWORD = v;``), when its own name says nothing (``v``)."""
    if let is None:
        return None
    uses = {u.start_byte for u in let.uses}
    for b in fm.binds:
        node = unparen(b.value)
        reads = node.type == "variable_expression" and node.start_byte in uses
        reads = reads and not _covered_span(b.node.start_byte, b.node.end_byte, edited)
        if reads and (_secret_variable(b.path) or _credential_place(b.path)):
            return b
    return None


def _covered_span(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(s <= start and end <= e for s, e in spans)


def copies_of(values: Collection[bytes]) -> re.Pattern[bytes]:
    """A copy of one of ``values`` as a word of its own, also right after a ``-p`` flag (``mysql -pPW``); not a
    segment of a dotted or slashed name (sops' ``"authentik.email.password"``, ``"paperless/password.env"``)."""
    return re.compile(
        b"|".join(rb"(?:(?<![\w.\-/])|(?<=\s-p))" + re.escape(v) + rb"(?![\w-]|[./]\w)" for v in sorted(values))
    )


def prose_word(source: bytes, m: re.Match[bytes]) -> bool:
    """A password that is a plain word (``password``, ``changeme``, ``synapse``) met in prose (a comment's
    ``# Should match postgres password``, a script's ``# The replication listener on the main synapse
    process.``), not in a copy of code: no quote, ``=``, ``:``, ``/`` or ``@`` beside it, and the word before
    it is no command-line flag (``--password synapse``, ``-p synapse``) nor a name of a secret (``password
    synapse``)."""
    if not m.group().isalpha():
        return False
    head = source[: m.start()].rstrip(b" \t")
    before = head[-1:]
    after = source[m.end() :].lstrip(b" \t")[:1]
    if before in (b'"', b"'", b"=", b":", b"/") or after in (b'"', b"'", b"@", b";", b"="):
        return False
    word = re.search(rb"[^\s]*$", head)
    previous = word.group().lower() if word is not None else b""
    return not previous.startswith(b"-") and not re.search(rb"pass|pw|secret|token|key|auth", previous)


def key_word(source: bytes, m: re.Match[bytes]) -> bool:
    """A password that is a plain name (``password``, ``postgres``) met as a key of a text, not a value: JSON's
    ``"password": ...``, YAML's ``postgres:``, an ini's ``password = ...`` (the key, at a line's start or after
    ``{`` ``,``), or a URL's scheme (``postgres://``): sops' JSON template of immich holds ``"password":
    "${placeholder}"`` beside the database password "password" (realcfg33/04)."""
    if not re.fullmatch(rb"[A-Za-z_][\w-]*", m.group()):
        return False
    quoted = source[m.start() - 1 : m.start()] in (b'"', b"'")
    head = source[: m.start() - 1 if quoted else m.start()]
    opens = head.rstrip(b" \t")[-1:] in (b"", b"\n", b"{", b",", b"[")
    tail = source[m.end() : m.end() + 1 + 64]
    if quoted:
        if tail[:1] != source[m.start() - 1 : m.start()]:
            return False
        tail = tail[1:]
    rest = tail.lstrip(b" \t")
    return (opens and rest[:1] in (b":", b"=") and rest[:2] != b"==") or rest.startswith(b"://")


def _nixos_test(fm: FileModel) -> bool:
    """The file is a NixOS test (``makeTest { nodes = ...; testScript = ...; }``, ``runNixOSTest``): it binds
    ``testScript`` and ``nodes`` (or the older ``machine``) somewhere."""
    last = {b.path[-1] for b in fm.binds if b.path}
    return "testScript" in last and bool(last & {"nodes", "machine"} or any("nodes" in b.path for b in fm.binds))


_NAME_SUFFIXES = tuple(sorted(_NAME_WORDS))  # as the last word's end: PAPERLESS_DBUSER's "dbuser", "dbname"


# an identifier or a label: mautrix's ``appservice.id = "telegram"`` beside the password "telegram"
_LABEL_WORDS = frozenset({"id", "identifier", "prefix", "label", "title", "type", "kind"})


def _names_something(attr: str) -> bool:
    """``POSTGRES_USER``, ``EXAMPLES_DB``, ``DB_NAME``, ``database``: the attribute holds a name (of a user, a
    database, a host), never a password, even when that name is the password's text too."""
    ws = words(attr)
    return bool(ws) and ws[-1].lower().endswith(_NAME_SUFFIXES)


def labels_something(attr: str) -> bool:
    """``appservice.id``, ``NOTIFY_CHAT_ID``: the attribute holds an identifier or a label, no credential."""
    ws = words(attr)
    return bool(ws) and ws[-1].lower() in _LABEL_WORDS


def copies_in_strings(
    models: Mapping[str, FileModel],
    edits: Sequence[Edit],
    values: Collection[bytes],
    said: set[tuple[str, int]],
    labels: list[Leftover] | None = None,
) -> list[Leftover]:
    """Each copy of ``values`` (what a plan takes out of the tree) inside a string no edit covers, one per
    line not ``said`` already: where scan reads no credential (a heredoc, ``mysql -pPW``) it is still the
    migration's password. A string bound to a name is none (``PAPERLESS_DBUSER = "postgres"`` beside the
    password "postgres", ``EXAMPLES_DB = "examples"``)."""
    if not values:
        return []
    from nixmig.nixsrc.parse import descendants

    token = copies_of(values)
    out: list[Leftover] = []
    for name, fm in sorted(models.items()):
        spans = [(e.start, e.end) for e in edits if e.file == name]
        bound = {unparen(b.value).start_byte: b.path for b in fm.binds}
        for node in descendants(fm.root):
            if node.type not in ("string_expression", "indented_string_expression"):
                continue
            path = bound.get(node.start_byte, ())
            whole = fm.source[node.start_byte + 1 : node.end_byte - 1]
            if path and _names_something(path[-1]) and whole in values:
                continue  # the whole string is the name (EXAMPLES_DB = "examples"), not NC_DB's URL holding it
            if labels is not None and path and labels_something(path[-1]) and whole in values:
                line, col = fm.line_col(node.start_byte + 1)
                if (name, line) not in said:  # an identifier (mautrix's appservice.id = "telegram"): said, apart
                    said.add((name, line))
                    labels.append(Leftover(name, line, col, ".".join(path), "", node.start_byte + 1, node.end_byte - 1))
                continue
            if path and path[-1] == "image":
                continue  # a container image's reference ("postgres:latest" beside the password "postgres")
            for m in token.finditer(fm.source, node.start_byte, node.end_byte):
                line, col = fm.line_col(m.start())
                if (
                    (name, line) in said
                    or _covered_span(m.start(), m.end(), spans)
                    or prose_word(fm.source, m)
                    or key_word(fm.source, m)
                ):
                    continue
                said.add((name, line))
                attr = ".".join(path)
                why = string_shape(path) or (
                    "a password inside a longer string (a script, an env or config text) where scan reads no "
                    "credential: nixmig has no edit for it"
                )
                out.append(
                    Leftover(
                        name,
                        line,
                        col,
                        attr,
                        f"{attr or 'a string'} still holds this migration's password: {why}",
                        m.start(),
                        m.end(),
                    )
                )
    return out


def copies_in_texts(
    models: Mapping[str, FileModel], texts: Mapping[str, bytes], values: Collection[bytes], said: set[tuple[str, int]]
) -> list[Leftover]:
    """Each copy of ``values`` in a file other than .nix that a .nix file names by a relative path
    (``texts``: patch.read_texts), one per line not ``said`` already (an initialScript's SQL file says its
    own clause). Such a file goes into the Nix store with the configuration, and it is in the repository:
    nixmig edits only .nix files, so each is by hand (realcfg21/01: a SQL file a unit feeds to psql, and
    PostgREST's config file built into its image, both with the database's password)."""
    if not values or not texts:
        return []
    token = copies_of(values)
    out: list[Leftover] = []
    for rel, data in sorted(texts.items()):
        named = next((w for name, fm in sorted(models.items()) if (w := _where_named(fm, name, rel))), "a .nix file")
        for m in token.finditer(data):
            line = data.count(b"\n", 0, m.start()) + 1
            if (rel, line) in said or prose_word(data, m) or key_word(data, m):
                continue
            said.add((rel, line))
            col = len(data[data.rfind(b"\n", 0, m.start()) + 1 : m.start()].decode("utf-8", "replace")) + 1
            sql = rel.endswith(".sql")
            fix = (
                "take the password out of the SQL (a role's PASSWORD clause, an IDENTIFIED BY) and set it at run "
                "time from the agenix file"
                if sql
                else "have its program read the password at run time from the agenix secret (an env file, a *File "
                "setting), or render the file at start from the secret"
            )
            out.append(
                Leftover(
                    rel,
                    line,
                    col,
                    "",
                    f"this file holds this migration's password in clear, and {named} names it by path, so it goes "
                    "into the world-readable Nix store with the configuration: nixmig edits only .nix files; "
                    f"{fix}, then patch again",
                    m.start(),
                    m.end(),
                    "",
                    sql,
                    True,
                )
            )
    return out


def _where_named(fm: FileModel, name: str, rel: str) -> str:
    """FILE:LINE of the first Nix path in ``fm`` that resolves to ``rel``; "" when none does."""
    from nixmig.nixsrc.scan import nix_paths

    at = next((start for start, path in nix_paths(fm.root, name) if path == rel), None)
    return f"{name}:{fm.line_col(at)[0]}" if at is not None else ""
