"""nixmig.toml -> frozen dataclasses.

The loader is driven by the dataclass annotations, so the schema is written
once. Every error names the file, the key path and what was expected, e.g.::

    nixmig.toml: hosts.newton.port: expected an integer, got "22a"
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nixmig.errors import ConfigError

DEFAULT_CONFIG = "nixmig.toml"
# read by nixmig whatever the config says: the Vault token, the blind indexes' default HMAC secret
NIXMIG_SECRET_ENV = frozenset({"VAULT_TOKEN", "ENCRYPTION_HMAC_SECRET"})

Runtime = Literal["docker", "native"]
# move: keep the secret's current value (a database nixmig cannot rotate, or no database at all):
# the deploys and the health checks only, no database change
Strategy = Literal["rotate", "rebuild", "dual-role", "move"]


@dataclass(frozen=True)
class Host:
    """A machine nixmig reaches over SSH."""

    address: str
    port: int = 22
    user: str = "root"
    identity: str | None = None
    known_hosts: str | None = None
    # The host's age recipient (usually its ssh-ed25519 host key); new secrets
    # are encrypted to it so agenix can decrypt them at activation.
    age_recipient: str | None = None
    # "ssh" (default) or "local": run on this machine (on-host mode, the demo).
    transport: Literal["ssh", "local"] = "ssh"
    # Where agenix decrypts secrets on the host (age.secretsDir).
    agenix_dir: str = "/run/agenix"
    # Where nixmig keeps its per-host lock (a tmpfs, so a reboot clears it).
    lock_dir: str = "/run/nixmig"


@dataclass(frozen=True)
class Service:
    """A database a service uses, on one host (`host`) or on several (`hosts`)."""

    # the one host running it; or `hosts`, a list of host names and glob patterns ("web-*")
    # matched against [hosts] and the deploy tool's nodes ([inventory])
    host: str = ""
    hosts: tuple[str, ...] = ()
    runtime: Runtime = "docker"
    container: str | None = None
    volume: str | None = None
    database: str = "postgres"
    role: str = "postgres"
    # docker runtime: the engine's socket on the host, when not the default (rootless docker ...)
    docker_host: str | None = None
    # the superuser nixmig connects as over the local socket (POSTGRES_USER for docker images)
    admin_role: str = "postgres"
    # native runtime: the server's log file, when it logs to a file rather than the journal
    log_file: str | None = None
    # native runtime: the server's port, unix socket directory and OS user.
    port: int = 5432
    socket_dir: str = "/run/postgresql"
    os_user: str = "postgres"
    # per-host differences of a service on several hosts: per_host.HOST = { port = 5433, container = "…" }
    per_host: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def patterns(self) -> tuple[str, ...]:
        """The host names (or glob patterns) this service runs on, as written."""
        return self.hosts or ((self.host,) if self.host else ())


@dataclass(frozen=True)
class HealthCheck:
    """An HTTP URL that must answer 2xx, or a command that must exit 0."""

    type: Literal["http", "command"]
    url: str | None = None
    command: str | None = None
    timeout: float = 30.0
    retries: int = 5


@dataclass(frozen=True)
class ReencryptSettings:
    """migrations.NAME.reencrypt: an optional phase after verify that re-encrypts columns
    (what `nixmig reencrypt --apply` does) through the SSH tunnel, logged in with the new password.

    Key sources as for `nixmig reencrypt`: env:NAME, file:PATH, age:PATH (agenix, decrypted with
    the operator identity given to apply/rollback), vault[:KEY]; relative paths are taken from
    nixmig.toml's directory. Validated by nixmig.reencrypt (spec and key sources) at load.
    """

    new_key: str
    old_key: str | None = None
    # "all" or a list of tables of the top-level [reencrypt] spec, or tables in its shape:
    # tables.users = { columns = ["email"], hmac = { email = "email_hmac" } }
    tables: Any = "all"
    schema: str | None = None
    mode: Literal["reencrypt", "encrypt-plaintext", "verify"] = "reencrypt"
    on_plaintext: Literal["error", "encrypt", "skip", "fail"] = "error"
    batch_size: int = 1000
    jobs: int | None = None  # worker processes (default: workers.default_jobs(); 0: none)
    pause: float = 0.0  # seconds between batches, to spare a busy database
    new_key_version: int | None = None
    old_key_version: int = 1
    # the blind indexes' HMAC secret (a key source), read only when a column has a blind index
    hmac_secret: str = "env:ENCRYPTION_HMAC_SECRET"  # noqa: S105  (where it is, not what)
    hmac_check: bool = True
    vault_addr: str | None = None  # default $VAULT_ADDR; the token comes from $VAULT_TOKEN only
    vault_key: str = "pos-encryption-key"
    vault_mount: str = "transit"


@dataclass(frozen=True)
class Migration:
    """Move one service's hardcoded password onto one agenix secret."""

    service: str
    secret: str
    strategy: Strategy = "rotate"
    deploy: str | None = None
    retention_days: int = 7
    # verify: seconds to watch the database server's log after the switch's deploy finished before
    # counting authentication failures, for clients that connect now and then (a cron job, a worker):
    # one still on the old password shows only when it connects. 0: read the log once, at once.
    verify_watch: int = 0
    # apply patches the repo's Nix files itself: the stage config before deploy 1, the full
    # patch before deploy 2, the originals back on rollback. false: you manage the files.
    patch_repo: bool = True
    health_checks: tuple[HealthCheck, ...] = ()
    # `nixmig patch`: where the edits go. All optional, inferred from the tree when unset;
    # paths are relative to the repo. The NixOS module that gets age.secrets.SECRET (default:
    # the one already declaring age.secrets, next to the unit that starts the containers).
    module: str | None = None
    # The arion compose file with the hardcoded literals (when several set POSTGRES_PASSWORD).
    compose: str | None = None
    # The host's config that sets password_option (default: the file under hosts/HOST setting it).
    host_file: str | None = None
    # The option that takes the password file, e.g. services.twenty-crm.database.passwordFile
    # (default: the one passwordFile option declared in the repo).
    password_option: str | None = None
    # The compose service / oci container running the database (default: the one setting POSTGRES_PASSWORD).
    db_service: str | None = None
    # The containers whose URLs move to the env file (default: every one holding such a URL).
    app_services: tuple[str, ...] = ()
    # The systemd unit that starts the arion project (default: its serviceName, else arion-PROJECT).
    unit: str | None = None
    # Where the unit renders the env file (default: /run/UNIT/SECRET.env; must be directly under /run/DIR).
    env_file: str | None = None
    # strategy "rebuild": the docker volume the data is copied to (default VOLUME-YYYYMMDD, fixed
    # in the journal at the first apply) and the image of the new server (default: the old
    # container's image; a newer major version is an upgrade).
    new_volume: str | None = None
    new_image: str | None = None
    # strategy "rebuild": commands run on the host (sh -c) to stop the app before the copy and
    # start it again (default: docker stop/start of the database's compose project's other
    # containers, or of app_services among them).
    app_stop: str | None = None
    app_start: str | None = None
    # strategy "dual-role": the second login role the services move to (default ROLE_v2, see
    # new_role_for); it gets the new password, membership in the old role and `SET role` to it.
    new_role: str | None = None
    # an optional phase after verify: re-encrypt columns (see ReencryptSettings)
    reencrypt: ReencryptSettings | None = None
    # environment variables the deploy command gets although they are named like credentials
    # (nixmig.deploy.looks_secret: *TOKEN*, *SECRET*, *_KEY, AWS_* ...), e.g. ["CACHIX_AUTH_TOKEN"];
    # never one nixmig reads a secret from (Config.secret_env)
    deploy_env: tuple[str, ...] = ()
    # companion credentials moved with this migration, their values kept (as strategy "move"):
    # VAR = "secret-name", e.g. { MYSQL_ROOT_PASSWORD = "mysql-root-password" }. Each VAR, in the
    # containers and units this migration patches, reads its own agenix secret (NAME.age, made
    # first with `nixmig secret new NAME --from FILE:LINE`) instead of its literal
    also: dict[str, str] = field(default_factory=dict)


def new_role_for(mig: Migration, svc: Service) -> str:
    """The role a dual-role migration creates and moves the services to."""
    return mig.new_role or f"{svc.role}_v2"


# A role name that needs no quoting anywhere it goes: SQL, a postgres:// URL's userinfo, Nix, shell.
_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True)
class Inventory:
    """Hosts read from the deploy tool's node list instead of a second inventory.

    deploy-rs: `deploy.nodes.NAME.hostname` / `sshUser` / `sshOpts` of the flake;
    colmena: the hive's nodes and their `deployment.targetHost` / `targetUser` / `targetPort`.
    The other keys are defaults for every node; a [hosts.NAME] table overrides a node.
    """

    source: Literal["deploy-rs", "colmena"]
    flake: str = "."  # a flake reference; a relative path is taken from the repo root
    user: str = "root"
    port: int = 22
    identity: str | None = None
    known_hosts: str | None = None
    agenix_dir: str = "/run/agenix"
    lock_dir: str = "/run/nixmig"


@dataclass(frozen=True)
class Operator:
    """The person running nixmig: backups and rollback material are encrypted to them."""

    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: Path
    secrets_dir: str = "secrets"
    operator: Operator = field(default_factory=Operator)
    hosts: dict[str, Host] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    migrations: dict[str, Migration] = field(default_factory=dict)
    # the [reencrypt] spec, validated by nixmig.reencrypt.spec when `nixmig reencrypt` runs
    reencrypt: dict[str, Any] = field(default_factory=dict)
    # hosts from the deploy tool (nixmig.inventory reads them when a command needs them)
    inventory: Inventory | None = None

    @property
    def repo(self) -> Path:
        """The directory nixmig.toml lives in: the root of the Nix repo."""
        return self.path.parent

    def secret_env(self) -> frozenset[str]:
        """The environment variables nixmig reads secrets from with this config: every
        ``env:NAME`` key source (reencrypt's new_key, old_key, hmac_secret) and NIXMIG_SECRET_ENV.
        The deploy command never gets them (nixmig.deploy)."""
        names = set(NIXMIG_SECRET_ENV)
        for mig in self.migrations.values():
            r = mig.reencrypt
            if r is None:
                continue
            for source in (r.new_key, r.old_key, r.hmac_secret):
                if source is not None and source.startswith("env:"):
                    names.add(source.removeprefix("env:"))
        return frozenset(names)

    def host_recipients(self) -> list[str]:
        """Every host's age recipient, in file order (the default for new secrets)."""
        return [h.age_recipient for h in self.hosts.values() if h.age_recipient]

    def targets(self, service: str) -> list[str]:
        """The hosts a service runs on: its names and patterns matched against [hosts]
        (after nixmig.inventory.resolve, the deploy tool's nodes too), in that order."""
        out: list[str] = []
        for pat in self.services[service].patterns:
            found = [h for h in self.hosts if fnmatch.fnmatchcase(h, pat)] if _is_pattern(pat) else [pat]
            out += [h for h in found if h not in out]
        return out

    def service_for(self, service: str, host: str) -> Service:
        """The service as it is on one host: its per_host.HOST keys applied."""
        svc = self.services[service]
        extra = svc.per_host.get(host)
        if not extra:
            return svc
        data = {f.name: getattr(svc, f.name) for f in dataclasses.fields(Service) if f.name not in _FLEET_KEYS}
        data.update({_py(k): v for k, v in extra.items()}, host=host)
        built: Service = _build(Service, data, ("services", service, "per_host", host), str(self.path))
        return built


_FLEET_KEYS = ("host", "hosts", "per_host")
_HOST_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-*?[]")


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def load(path: Path) -> Config:
    """Read and validate a nixmig.toml."""
    where = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file", where=where, hint="create it (see the README) or pass -c PATH") from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", where=where) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=where) from None
    data = {_py(k): v for k, v in data.items()}
    if "path" in data:
        raise ConfigError("path: unknown key", where=where)
    data["path"] = path
    cfg: Config = _build(Config, data, (), where, skip={"path"})
    _cross_check(cfg, where)
    return cfg


def _cross_check(cfg: Config, where: str) -> None:
    _check_names(cfg, where)
    for name, svc in cfg.services.items():
        _check_service_hosts(cfg, name, svc, where)
        if svc.runtime == "docker" and not svc.container and not _only_moved(cfg, name):
            raise ConfigError(f'services.{name}.container: required when runtime = "docker"', where=where)
    for name, mig in cfg.migrations.items():
        if mig.service not in cfg.services:
            raise ConfigError(
                f"migrations.{name}.service: unknown service {mig.service!r}",
                where=where,
                hint=f"define [services.{mig.service}] or use one of: {_names(cfg.services)}",
            )
        _check_fleet_deploy(cfg, name, mig, where)
        _check_rebuild(name, mig, cfg.services[mig.service], where)
        for i, hc in enumerate(mig.health_checks):
            key = f"migrations.{name}.health_checks[{i}]"
            if hc.type == "http" and not hc.url:
                raise ConfigError(f"{key}.url: required for an http check", where=where)
            if hc.type == "command" and not hc.command:
                raise ConfigError(f"{key}.command: required for a command check", where=where)
        _check_new_role(name, mig, cfg.services[mig.service], where)
        _check_move(name, mig, where)
        _check_reencrypt(cfg, name, mig, where)
        _check_deploy_env(cfg, name, mig, where)
        _check_also(name, mig, where)


def _only_moved(cfg: Config, service: str) -> bool:
    """Every migration of this service is a move (no database is reached: host is enough)."""
    strategies = {m.strategy for m in cfg.migrations.values() if m.service == service}
    return strategies == {"move"}


# what strategy "move" never uses: each logs in to, stops or copies the database
_NOT_FOR_MOVE = (
    ("reencrypt", "re-encrypting columns logs in to the database"),
    ("app_stop", 'only used with strategy = "rebuild"'),
    ("app_start", 'only used with strategy = "rebuild"'),
)


def _check_move(name: str, mig: Migration, where: str) -> None:
    """strategy = "move" keeps the value and changes no database: the keys of a database
    step are refused (new_volume, new_image and new_role are refused for it as for others)."""
    if mig.strategy != "move":
        return
    for k, why in _NOT_FOR_MOVE:
        if getattr(mig, k) is not None:
            raise ConfigError(
                f'migrations.{name}.{k}: strategy "move" changes no database ({why})',
                where=where,
                hint='remove it, or use a strategy that rotates the password ("rotate", "dual-role", "rebuild")',
            )


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# an also key that is another PostgreSQL role whose password services.postgresql.initialScript sets
# ("role:blocky"): its clause leaves the SQL, a oneshot sets it from its own secret (value kept)
# another role of an initialScript (role:blocky, role:matrix-synapse: nixmig quotes it in SQL)
ROLE_KEY = re.compile(r"role:[A-Za-z_][A-Za-z0-9_-]{0,62}")
# an also key that is a NixOS option taking a file (services.nextcloud.config.adminpassFile)
OPTION_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*(\.[A-Za-z_][A-Za-z0-9_'-]*)+")


def _check_deploy_env(cfg: Config, name: str, mig: Migration, where: str) -> None:
    secret = cfg.secret_env()
    for i, var in enumerate(mig.deploy_env):
        key = f"migrations.{name}.deploy_env[{i}]"
        if not _ENV_NAME.fullmatch(var):
            raise ConfigError(f"{key}: {_show(var)} is not an environment variable name", where=where)
        if var in secret:
            raise ConfigError(
                f"{key}: nixmig reads a secret from {var}; the deploy command never gets it",
                where=where,
                hint="remove it from deploy_env (give the deploy its own variable if it needs one)",
            )


def _check_also(name: str, mig: Migration, where: str) -> None:
    """also = { VAR = "secret-name" }: environment variable names, agenix secret names, each secret once
    and none the migration's own (one value per secret: a rotation of the migration's would change it)."""
    seen: dict[str, str] = {}
    for var, secret in mig.also.items():
        key = f"migrations.{name}.also.{var}"
        if not _ENV_NAME.fullmatch(var) and not OPTION_PATH.fullmatch(var) and not ROLE_KEY.fullmatch(var):
            raise ConfigError(
                f"migrations.{name}.also: {_show(var)} is not an environment variable name",
                where=where,
                hint="letters, digits and _, not starting with a digit (e.g. MYSQL_ROOT_PASSWORD), a NixOS "
                'option that takes a file, quoted (e.g. "services.nextcloud.config.adminpassFile"), or another '
                'PostgreSQL role whose password services.postgresql.initialScript sets, quoted (e.g. "role:blocky")',
            )
        if not _SECRET_NAME.fullmatch(secret):
            raise ConfigError(
                f"{key}: {_show(secret)} is not an agenix secret name",
                where=where,
                hint="letters, digits and . _ - (e.g. mysql-root-password), as for `nixmig secret new`",
            )
        if secret == mig.secret:
            raise ConfigError(
                f"{key}: {secret!r} is this migration's own secret",
                where=where,
                hint=f"give {var} a secret of its own (e.g. {also_name(var)}): it keeps its value, the "
                "migration's secret may be rotated",
            )
        if secret in seen:
            raise ConfigError(
                f"{key}: {secret!r} is also the secret of {seen[secret]}",
                where=where,
                hint="one secret per variable (a secret holds one value)",
            )
        seen[secret] = var


def also_name(var: str) -> str:
    """The secret name a refusal suggests for a companion credential: MYSQL_ROOT_PASSWORD -> mysql-root-password;
    an option that takes a file, by its service and its name: services.nextcloud.config.adminpassFile ->
    nextcloud-adminpass; another role of an initialScript: role:blocky -> blocky-db-password."""
    if ROLE_KEY.fullmatch(var):
        var = var.removeprefix("role:") + "-db-password"
    elif OPTION_PATH.fullmatch(var):
        parts = var.split(".")
        last = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", parts[-1].removesuffix("File")) or "secret"
        if "secrets" in parts[:-1] and last != "secret":  # gitlab's secrets.dbFile: its db key, not a password
            last += "-secret"
        if parts[0] == "containers" and parts[2:4] == ["config", "services"] and len(parts) > 5:
            parts = parts[3:]  # a declarative NixOS container's service: named by the service, as on the host
        var = f"{parts[1] if parts[0] == 'services' and len(parts) > 2 else parts[0]}-{last}"
    return re.sub(r"-+", "-", var.lower().replace("_", "-")).strip("-") or "secret"


# Names that become file names, lock names, unit names, secret names: a strict pattern each,
# so that no quoting is ever needed where they go (paths, Nix attributes, comments, argv).
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")  # hosts and migrations: journal/HOST/MIGRATION.json
_SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")  # as nixmig secret new
_UNIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9:_.@-]{0,254}")
_RUN_PATH = re.compile(r"/run(/[A-Za-z0-9_@+][A-Za-z0-9_.@+-]*){2,}")


def _check_names(cfg: Config, where: str) -> None:
    def bad(key: str, value: str, what: str, hint: str) -> ConfigError:
        return ConfigError(f"{key}: {_show(value)} is not {what}", where=where, hint=hint)

    file_hint = "use letters, digits, '.', '-' and '_', starting with a letter, digit or _"
    for h in cfg.hosts:
        if not _FILE_NAME.fullmatch(h):
            raise bad(f"hosts.{h}", h, "a usable host name (it names files and locks)", file_hint)
    for name, svc in cfg.services.items():
        shapes: list[tuple[str, dict[str, Any]]] = [("", {"container": svc.container, "volume": svc.volume})]
        shapes += [(f".per_host.{h}", {_py(k): v for k, v in svc.per_host[h].items()}) for h in svc.per_host]
        for at, values in shapes:
            for k in ("container", "volume"):
                value = values.get(k)
                if isinstance(value, str) and not _DOCKER_NAME.fullmatch(value):
                    raise bad(f"services.{name}{at}.{k}", value, f"a docker {k} name", "letters, digits, _ . -")
    for name, mig in cfg.migrations.items():
        key = f"migrations.{name}"
        if not 0 <= mig.verify_watch <= 3600:
            raise bad(f"{key}.verify_watch", str(mig.verify_watch), "0 to 3600 seconds", "e.g. verify_watch = 60")
        if not _FILE_NAME.fullmatch(name):
            raise bad(key, name, "a usable migration name (it names files and locks)", file_hint)
        if not _SECRET_NAME.fullmatch(mig.secret):
            raise bad(f"{key}.secret", mig.secret, "an agenix secret name", "e.g. twenty-db-password")
        if mig.unit is not None and not _UNIT_NAME.fullmatch(mig.unit):
            raise bad(f"{key}.unit", mig.unit, "a systemd unit name", "letters, digits and : _ . @ - (e.g. arion-x)")
        if mig.env_file is not None and not _RUN_PATH.fullmatch(mig.env_file):
            raise bad(
                f"{key}.env_file",
                mig.env_file,
                "a file in a directory under /run",
                "e.g. /run/twenty/db.env (letters, digits and _ . @ + - in each part)",
            )
        apps = [(f"app_services[{i}]", s) for i, s in enumerate(mig.app_services)]
        services = [("db_service", mig.db_service), *apps]
        for k, value in services:
            if value is not None and not _DOCKER_NAME.fullmatch(value):
                raise bad(f"{key}.{k}", value, "a container or compose service name", "letters, digits, _ . -")


def _check_new_role(name: str, mig: Migration, svc: Service, where: str) -> None:
    key = f"migrations.{name}.new_role"
    if mig.strategy != "dual-role":
        if mig.new_role is not None:
            raise ConfigError(
                f'{key}: only used with strategy = "dual-role" (this migration is {mig.strategy!r})',
                where=where,
                hint='remove it, or set strategy = "dual-role"',
            )
        return
    new = new_role_for(mig, svc)
    if not _ROLE_NAME.fullmatch(new) or new.lower().startswith("pg_"):
        raise ConfigError(
            f"{key}: {new!r} is not a usable role name",
            where=where,
            hint="use 1-63 letters, digits and _, starting with a letter or _, not pg_… (e.g. twenty_v2)",
        )
    if new in (svc.role, svc.admin_role):
        raise ConfigError(
            f"{key}: {new!r} is the service's {'role' if new == svc.role else 'admin_role'}",
            where=where,
            hint=f"dual-role needs a second role beside {svc.role!r}, e.g. {svc.role}_v2",
        )


def _check_service_hosts(cfg: Config, name: str, svc: Service, where: str) -> None:
    if bool(svc.host) == bool(svc.hosts):
        raise ConfigError(
            f"services.{name}: {'both host and hosts' if svc.host else 'no host'}",
            where=where,
            hint='set host = "NAME" for one host, or hosts = ["a", "b", "web-*"] for several',
        )
    key = "host" if svc.host else "hosts"
    for i, h in enumerate(svc.patterns):
        at = key if svc.host else f"{key}[{i}]"
        if not h or not set(h) <= _HOST_CHARS:
            raise ConfigError(f"services.{name}.{at}: {h!r} is not a host name or glob pattern", where=where)
        if not _is_pattern(h) and h not in cfg.hosts and cfg.inventory is None:
            raise ConfigError(
                f"services.{name}.{at}: unknown host {h!r}",
                where=where,
                hint=f"define [hosts.{h}], read nodes from the deploy tool with [inventory], "
                f"or use one of: {_names(cfg.hosts)}",
            )
    for h in svc.per_host:
        if h not in svc.patterns and not any(fnmatch.fnmatchcase(h, p) for p in svc.patterns):
            raise ConfigError(f"services.{name}.per_host.{h}: {h!r} is not one of this service's hosts", where=where)
        bad = sorted({_py(k) for k in svc.per_host[h]} & set(_FLEET_KEYS))
        if bad:
            raise ConfigError(f"services.{name}.per_host.{h}.{bad[0]}: cannot be set per host", where=where)
        cfg.service_for(name, h)  # types and unknown keys, with the key path in the message


def _check_fleet_deploy(cfg: Config, name: str, mig: Migration, where: str) -> None:
    """A migration on several hosts runs its deploy once per host, in parallel: the command
    must name the host, or it would deploy every node on each call."""
    svc = cfg.services[mig.service]
    several = len(svc.hosts) > 1 or any(_is_pattern(p) for p in svc.hosts)
    if several and mig.deploy and "{host}" not in mig.deploy and "NIXMIG_HOST" not in mig.deploy:
        raise ConfigError(
            f"migrations.{name}.deploy: service {mig.service!r} runs on several hosts, the deploy command "
            "does not say which one",
            where=where,
            hint='put {host} where the node name goes, e.g. deploy = "deploy --skip-checks .#{host}" '
            "(or read $NIXMIG_HOST in a script)",
        )
    if several and mig.strategy == "rebuild" and mig.patch_repo and mig.new_volume is None:
        raise ConfigError(
            f"migrations.{name}.new_volume: required for a rebuild on several hosts",
            where=where,
            hint="the shared repo names one volume for every host; the default (VOLUME-DATE) could differ per host",
        )


_DOCKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_rebuild(name: str, mig: Migration, svc: Service, where: str) -> None:
    key = f"migrations.{name}"
    if mig.strategy != "rebuild":
        for k in ("new_volume", "new_image"):
            if getattr(mig, k) is not None:
                raise ConfigError(
                    f'{key}.{k}: only used with strategy = "rebuild" (this migration is {mig.strategy!r})',
                    where=where,
                    hint='remove it, or set strategy = "rebuild"',
                )
        return
    if svc.runtime != "docker" or not svc.volume:
        raise ConfigError(
            f'{key}: strategy "rebuild" needs a docker service with its data volume',
            where=where,
            hint=f'set runtime = "docker" and volume = "…" in [services.{mig.service}]',
        )
    if mig.new_volume is not None and (not _DOCKER_NAME.fullmatch(mig.new_volume) or mig.new_volume == svc.volume):
        raise ConfigError(
            f"{key}.new_volume: {mig.new_volume!r} is not a new docker volume name",
            where=where,
            hint=f"letters, digits, _ . -; not the current volume {svc.volume!r}",
        )
    if (mig.app_stop is None) != (mig.app_start is None):
        raise ConfigError(
            f"{key}: app_stop and app_start go together",
            where=where,
            hint="set both (commands run on the host), or neither (docker stop/start of the compose project's app)",
        )


def _names(d: dict[str, Any]) -> str:
    return ", ".join(sorted(d)) or "(none defined)"


def _py(key: str) -> str:
    """TOML keys use dashes or underscores; fields use underscores."""
    return key.replace("-", "_")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    return str(tp)


def _fmt_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, str) and _CONTROL.search(part):
            part = repr(part)  # a key with a newline stays on the error's one line
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


# Control characters and line separators are refused in every string and key of nixmig.toml:
# names go into comments of the Nix and bash nixmig writes, where a newline ends the comment
# and the rest would run as root. Commands (deploy, app_stop, app_start, a health check's
# command) may hold tabs and newlines: they run as commands anyway, never in a comment.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_COMMAND_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_COMMAND_KEYS = frozenset({"deploy", "app_stop", "app_start", "command"})


def _check_text(value: str, path: tuple[str | int, ...], where: str, *, key: bool = False) -> None:
    command = not key and bool(path) and path[-1] in _COMMAND_KEYS
    m = (_COMMAND_CONTROL if command else _CONTROL).search(value)
    if m is None:
        return
    what = f"the key {_show(value)}" if key else _show(value)
    at = path[:-1] if key else path
    raise ConfigError(
        f"{_fmt_path(at)}: control character {m.group()!r} in {what}",
        where=where,
        hint="names, paths and URLs are one line of printable text: remove it",
    )


def _check_any(value: Any, path: tuple[str | int, ...], where: str) -> None:
    """A free-form value (the reencrypt spec): every string and key in it, at any depth."""
    if isinstance(value, str):
        _check_text(value, path, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(str(k), (*path, str(k)), where, key=True)
            _check_any(v, (*path, str(k)), where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_any(v, (*path, i), where)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _convert(tp: Any, value: Any, path: tuple[str | int, ...], where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        _check_any(value, path, where)
        return value

    def bad() -> ConfigError:
        return ConfigError(f"{_fmt_path(path)}: expected {_describe(tp)}, got {_show(value)}", where=where)

    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:  # X | None: X's own error (an unknown key names the key)
            return _convert(args[0], value, path, where)
        for arg in args:
            try:
                return _convert(arg, value, path, where)
            except ConfigError:
                continue
        raise bad()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if tp is str:
        if isinstance(value, str):
            _check_text(value, path, where)
            return value
        raise bad()
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad()
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise bad()
        (item,) = typing.get_args(tp)[:1]
        items = [_convert(item, v, (*path, i), where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        _, vt = typing.get_args(tp)
        for k in value:
            _check_text(k, (*path, k), where, key=True)
        return {k: _convert(vt, v, (*path, k), where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, {_py(k): v for k, v in value.items()}, path, where)
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in the schema, not user input


def _build(
    cls: type[Any],
    data: dict[str, Any],
    path: tuple[str | int, ...],
    where: str,
    skip: frozenset[str] | set[str] = frozenset(),
) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(k for k in fields if k not in skip)
            raise ConfigError(f"{_fmt_path((*path, key))}: unknown key", where=where, hint=f"expected one of: {known}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in skip:
            kwargs[name] = data[name]
            continue
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], (*path, name), where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(
                f"{_fmt_path((*path, name))}: required key is missing",
                where=where,
                hint=f"add {name} = {_describe(hints[name])}",
            )
    return cls(**kwargs)


def _check_reencrypt(cfg: Config, name: str, mig: Migration, where: str) -> None:
    """The reencrypt phase's spec and key sources, checked now: nothing runs with a bad one."""
    r = mig.reencrypt
    if r is None:
        return
    from nixmig.reencrypt import keys
    from nixmig.reencrypt import spec as specs
    from nixmig.reencrypt.errors import ReencryptError

    key = f"migrations.{name}.reencrypt"
    if r.mode == "reencrypt" and not r.old_key:
        raise ConfigError(
            f'{key}.old_key: required with mode = "reencrypt"',
            where=where,
            hint='name the old key (env:, file:, age: or vault:), or use mode = "encrypt-plaintext"',
        )
    limits = (("batch_size", 1), ("jobs", 0), ("new_key_version", 1), ("old_key_version", 1), ("pause", 0))
    for field_name, least in limits:
        value = getattr(r, field_name)
        if value is not None and value < least:
            raise ConfigError(f"{key}.{field_name}: must be at least {least}, got {value}", where=where)
    try:
        specs.for_migration(r.tables, r.schema, cfg.reencrypt or None, migration=name, where=where)
    except ReencryptError as exc:
        raise ConfigError(exc.what, where=where, hint=exc.hint) from None
    sources = [("new_key", r.new_key), ("old_key", r.old_key), ("hmac_secret", r.hmac_secret)]
    for field_name, text in sources:
        if text is None:
            continue
        try:
            src = keys.parse_source(text, option=f"{key}.{field_name}", vault_key=r.vault_key)
        except ReencryptError as exc:
            raise ConfigError(f"{key}.{field_name}: {exc.what}", where=where, hint=exc.hint) from None
        if field_name == "hmac_secret" and src.kind == "vault":
            raise ConfigError(f"{key}.hmac_secret: cannot come from Vault", where=where, hint="use env:, file: or age:")
