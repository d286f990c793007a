"""`nixmig patch`: the Nix edits that move a service's hardcoded database password onto agenix.

Pure: sources in, edits out. :func:`plan` reads the ``.nix`` sources of a repo
(``{"repo/relative/path.nix": bytes}``) and a :class:`Spec`, and returns every
edit as ``(file, start_byte, end_byte, replacement, explanation)`` against the
original bytes, plus the literals it has no template for (with the snippet to
apply by hand). Nothing outside an edited span changes. The whole plan exists
before anything is written; the CLI validates every resulting file with
``nix-instantiate --parse`` (:mod:`nixmig.nixsrc.validate`) and only then writes.

What it does for a database in a container (arion or virtualisation.oci-containers):

- ``age.secrets.NAME = { file = <relative path to NAME.age>; mode = "0400"; }``
  beside the existing age.secrets;
- the option that takes a password file (``database.passwordFile``) set to
  ``config.age.secrets.NAME.path`` in the host's config;
- ``POSTGRES_PASSWORD = "..."`` becomes ``POSTGRES_PASSWORD_FILE``, with a
  read-only bind mount of ``/run/agenix/NAME`` into the database container;
- every URL with the password (``PG_DATABASE_URL = "postgres://u:pw@db/x"``) is
  removed from the app containers' environment; an ExecStartPre of the unit
  that starts them renders ``VAR=<the same URL, password percent-encoded>`` into
  an env file in a 0700 RuntimeDirectory (file 0400) at each start, and
  ``env_file`` / ``environmentFiles`` points the containers at it.

The secret is never read at evaluation time (no ``builtins.readFile``) and its
value never appears in a Nix string: Nix only ever holds the path.

Snippets come from the Jinja2 templates in ``templates/`` (autoescape off), loaded
by :mod:`nixmig.nixsrc.render`; the Nix string escaping (``nix_string``,
``nix_indented``) and the shell quoting (``shell_quote``) are done explicitly, and
tested, in :mod:`nixmig.nixsrc.quote`. Each file is read into a
:class:`~nixmig.nixsrc.model.FileModel` (:mod:`nixmig.nixsrc.model`) and the edits
are collected and applied by :mod:`nixmig.nixsrc.edits`. This module holds what to
do (:class:`Spec`, :func:`spec_for`, :class:`Plan`, :class:`Manual`) and the
builder that decides it.
"""

from __future__ import annotations

import dataclasses
import difflib
import posixpath
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from nixmig.config import also_name
from nixmig.errors import ConfigError
from nixmig.nixsrc.clients import Client, silent_clients
from nixmig.nixsrc.containers import (
    ENV_FILE_ATTRS,
    KINDS,
    base_variable,
    container_shape,
    env_container,
    env_words,
    file_variable,
    file_variables,
    install_only,
    is_linuxserver,
    reads_file_env,
    reads_mongo_file_env,
)
from nixmig.nixsrc.edits import Edit, Edits, apply, apply_edits, imported_modules, masked, settle
from nixmig.nixsrc.errors import PatchError as PatchError  # raised here, and caught as patch.PatchError
from nixmig.nixsrc.indented import decode_any
from nixmig.nixsrc.leftover import (
    DB_WORDS,
    ENSURE_USERS,
    HOME_MANAGER_PODMAN,
    Leftover,
    companion_fix,
    copies_in_strings,
    copies_in_texts,
    copies_of,
    declares_file,
    declares_secret,
    digest,
    home_manager_podman,
    leftovers,
    login_password,
    naming,
    nixos_container,
    other_secrets,
    paired_user,
    prose_word,
    read_as_option,
    removed_option,
    server_option,
    string_shape,
    unknown_shape,
    uses_secret,
    wrapper_container,
)
from nixmig.nixsrc.lets import LetLiteral, let_binding_value, let_expression, let_literals, resolve
from nixmig.nixsrc.model import (
    AttrSet,
    Bind,
    FileModel,
    Lit,
    NixPath,
    _apply_parts,
    attr_names,
    bindings,
    decode_string,
    model,
    path_matches,
    top_expression,
    unparen,
)
from nixmig.nixsrc.parse import descendants, text
from nixmig.nixsrc.quote import (
    Antiquote,
    comment_text,
    escape_indented,
    nix_attr,
    nix_attrpath,
    nix_escape,
    nix_string,
    store_name,
)
from nixmig.nixsrc.render import EnvFile, EnvLine, also_secrets, render_script, script_in_nix, template
from nixmig.nixsrc.scan import DESCRIPTION, Finding, Kind, NameClass, classify_name, words

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.config import Config
    from nixmig.nixsrc.model import Embedded
    from nixmig.nixsrc.shapes.let_script import Bound

DB_PASSWORD_VAR = "POSTGRES_PASSWORD"  # noqa: S105 - a variable name
URL_SCHEMES = ("postgres", "postgresql")
MYSQL_SCHEMES = ("mysql", "mariadb", "mysql2")
MONGO_SCHEMES = ("mongodb",)  # and mongodb+srv (split_url compares the part before "+")
_MYSQL_ROOT_VARS = ("MYSQL_ROOT_PASSWORD", "MARIADB_ROOT_PASSWORD")
# the official mongo image's root password (file_env: MONGO_INITDB_ROOT_PASSWORD_FILE); its user is
# MONGO_INITDB_ROOT_USERNAME's value (any name: "admin", "root", the app's)
MONGO_ROOT_VAR = "MONGO_INITDB_ROOT_PASSWORD"
_MONGO_USER_VAR = "MONGO_INITDB_ROOT_USERNAME"
# the official influxdb 2 image's first user (DOCKER_INFLUXDB_INIT_MODE=setup, read on the first start only;
# a _FILE twin): the user is DOCKER_INFLUXDB_INIT_USERNAME's value. A move keeps the value, so the setup
# done on the volume and the variable agree.
INFLUX_INIT_VAR = "DOCKER_INFLUXDB_INIT_PASSWORD"
# each initial user's password variable -> the variable naming that user
_INIT_USER_VARS = {MONGO_ROOT_VAR: _MONGO_USER_VAR, INFLUX_INIT_VAR: "DOCKER_INFLUXDB_INIT_USERNAME"}


# ---------------------------------------------------------------- what to do


@dataclass(frozen=True)
class Spec:
    """What `nixmig patch` needs to know; every field but ``secret`` can be inferred from the tree."""

    secret: str
    role: str = "postgres"
    secrets_dir: str = "secrets"
    agenix_dir: str = "/run/agenix"
    host: str | None = None
    container: str | None = None
    module: str | None = None
    compose: str | None = None
    host_file: str | None = None
    password_option: str | None = None
    db_service: str | None = None
    # strategy rebuild: the database container moves from the docker volume old_volume to
    # new_volume (and to the image new_image, when set)
    old_volume: str | None = None
    new_volume: str | None = None
    new_image: str | None = None
    app_services: tuple[str, ...] = ()
    unit: str | None = None
    env_file: str | None = None
    # strategy dual-role: the role the services connect as from now on (the env file's URLs
    # and the module's `user` option beside the password option); None: `role`, unchanged
    login_role: str | None = None
    # the migration's strategy: "move" keeps the value (no rotation), so the images nixmig cannot
    # rotate (MySQL, MariaDB) can be patched too
    strategy: str = "rotate"
    # the migration's name (for the fix a refusal names: `also = { ... }` in [migrations.NAME])
    migration: str = ""
    # companion credentials (nixmig.toml's `also`): (VAR, secret) each moved onto its own secret, value kept
    also: tuple[tuple[str, str], ...] = ()
    # secret names other migrations of nixmig.toml use (theirs and their also's): a companion found by
    # the plan is never given one of them
    taken: frozenset[str] = frozenset()
    # the containers of the other migrations' services (container -> migration): a credential left in one is
    # that migration's, and the note says so
    owners: tuple[tuple[str, str], ...] = ()
    # nixmig.toml's service key: for a move of a native service's own secret (no database), init names it
    # after the nixpkgs service (services.<service>.…): the options of that service are this migration's
    service: str | None = None

    @property
    def db_vars(self) -> tuple[str, ...]:
        """The database image variables holding this migration's password (never a companion's)."""
        if self.strategy != "move":
            found: tuple[str, ...] = (DB_PASSWORD_VAR,)
        elif self.role == "root":
            found = (DB_PASSWORD_VAR, *_MYSQL_ROOT_VARS, *_INIT_USER_VARS)
        elif self.role == "postgres":  # no role set (a MySQL server has no postgres user): the user's, else root's
            found = (DB_PASSWORD_VAR, "MYSQL_PASSWORD", "MARIADB_PASSWORD", *_MYSQL_ROOT_VARS, *_INIT_USER_VARS)
        else:  # a mongo root (an influxdb first) user may have any name: _user_is_role compares it with the role
            found = (DB_PASSWORD_VAR, "MYSQL_PASSWORD", "MARIADB_PASSWORD", *_INIT_USER_VARS)
        companions = {var for var, _ in self.also}
        return tuple(v for v in found if v not in companions)

    @property
    def url_schemes(self) -> tuple[str, ...]:
        return URL_SCHEMES + (MYSQL_SCHEMES + MONGO_SCHEMES if self.strategy == "move" else ())

    @property
    def secret_on_host(self) -> str:
        return posixpath.join(self.agenix_dir, self.secret)

    @property
    def secret_in_container(self) -> str:
        return posixpath.join("/run/secrets", self.secret)


def spec_for(cfg: Config, migration: str, *, new_volume: str | None = None, new_image: str | None = None) -> Spec:
    """The Spec of one migration of a loaded nixmig.toml.

    ``new_volume``/``new_image`` (strategy rebuild): the volume and image the engine switches
    to, given only by its switch phase (and preflight's check): `nixmig patch` and the stage
    config never point the service at a copy that was not verified."""
    from nixmig.config import new_role_for

    mig = cfg.migrations[migration]
    svc = cfg.services[mig.service]
    # a service on several hosts: the repo is shared, no host-specific inference
    targets = [svc.host] if svc.host else cfg.targets(mig.service)
    host = cfg.hosts.get(targets[0]) if targets else None
    return Spec(
        secret=mig.secret,
        role=svc.role,
        secrets_dir=cfg.secrets_dir,
        agenix_dir=host.agenix_dir if host is not None else "/run/agenix",
        host=svc.host,
        container=svc.container,
        module=mig.module,
        compose=mig.compose,
        host_file=mig.host_file,
        password_option=mig.password_option,
        db_service=mig.db_service,
        app_services=tuple(mig.app_services),
        unit=mig.unit,
        env_file=mig.env_file,
        old_volume=svc.volume if mig.strategy == "rebuild" else None,
        new_volume=new_volume if mig.strategy == "rebuild" else None,
        new_image=new_image if mig.strategy == "rebuild" else None,
        login_role=new_role_for(mig, svc) if mig.strategy == "dual-role" else None,
        strategy=mig.strategy,
        migration=migration,
        also=tuple(mig.also.items()),
        taken=frozenset(
            n for other, m in cfg.migrations.items() if other != migration for n in (m.secret, *m.also.values())
        ),
        service=mig.service,
        owners=tuple(
            (c, other)
            for other, m in cfg.migrations.items()
            if other != migration and (c := cfg.services[m.service].container)
        ),
    )


@dataclass(frozen=True)
class Manual:
    """A hardcoded literal nixmig has no template for: said, not guessed."""

    file: str
    line: int
    col: int
    what: str
    snippet: str
    # a container variable this item would be gone for if it moved as a companion (also), value kept
    companion: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Plan:
    edits: tuple[Edit, ...]
    manual: tuple[Manual, ...]
    notes: tuple[str, ...]
    masks: tuple[tuple[str, int, int], ...]  # spans of the hardcoded secret in the original sources
    # the secrets whose value is kept (strategy move; also's companions) and the FILE:LINE of each use
    # the edits remove: `nixmig secret new NAME --from FILE:LINE` reads the value at one that holds it
    kept: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # companions the plan found by itself (a container's other credential with the database's value, a
    # second MySQL credential): (VAR, secret) moved like nixmig.toml's also, to be added there by --write
    auto_also: tuple[tuple[str, str], ...] = ()

    @property
    def files(self) -> list[str]:
        return sorted({e.file for e in self.edits})

    @property
    def clean(self) -> bool:
        """Nothing left to do: no edit and nothing to apply by hand."""
        return not self.edits and not self.manual

    def results(self, sources: Mapping[str, bytes], *, stage_only: bool = False) -> dict[str, bytes]:
        """The new contents of every file that changes (``stage_only``: the stage config's)."""
        edits = [e for e in self.edits if e.stage or not stage_only]
        return {f: apply_edits(sources[f], [e for e in edits if e.file == f]) for f in sorted({e.file for e in edits})}

    def diff(self, sources: Mapping[str, bytes]) -> str:
        """A unified diff of the changes, with the hardcoded secret masked, and every other credential scan
        finds in the file too (an admin password beside the database's, on a context line)."""
        from nixmig.nixsrc.scan import scan_source

        out: list[str] = []
        for f in self.files:
            src = sources[f]
            spans = [(s, e) for (mf, s, e) in self.masks if mf == f]
            spans += [(x.start, x.end) for x in scan_source(src, f).findings if 0 <= x.start < x.end]
            old = masked(src, 0, len(src), spans).decode("utf-8", "replace")
            new = apply(src, [e for e in self.edits if e.file == f], spans).decode("utf-8", "replace")
            out.extend(
                difflib.unified_diff(
                    old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{f}", f"b/{f}", n=3
                )
            )
        return "".join(ln if ln.endswith("\n") else ln + "\n\\ No newline at end of file\n" for ln in out)


# ---------------------------------------------------------------- the plan


@dataclass(eq=False)
class _Db:
    fm: FileModel
    kind: str  # "arion" | "oci"
    name: str  # compose service or oci container name
    prefix: NixPath  # path of the service's/container's attrset that holds environment, volumes
    bind: Bind | None  # POSTGRES_PASSWORD = "..." (None when already a file)
    password: str | None
    var: str = (
        "POSTGRES_PASSWORD"  # the image's variable (MYSQL_PASSWORD, MARIADB_ROOT_PASSWORD ... with strategy move)
    )
    image: str | None = None  # the image, when a literal: its family says how it reads a file (containers.py)

    @property
    def file_var(self) -> str:
        """The variable the image reads the password file from (VAR_FILE, or linuxserver's FILE__VAR)."""
        return file_variable(self.var, self.image)


@dataclass(eq=False)
class _Renderer:
    """One systemd unit that renders env files for some consumers."""

    key: tuple[str, ...]
    kind: str  # "arion" | "oci" | "systemd"
    fm: FileModel
    anchor: Node  # a node inside the config-root binding the unit's bindings go after
    unit_seg: str  # the unit's name under systemd.services, as attr_names gives it
    unit: str  # the unit (or, for oci-containers, the container) as said to the user
    runtime_dir: str
    files: dict[str, list[EnvLine]] = field(default_factory=dict)
    container: str = ""
    literals: list[str] = field(default_factory=list)  # "VAR at file:line:col" it replaces
    # where its serviceConfig bindings go: systemd.services.<unit_seg>.serviceConfig, or the
    # container's own option (quadlet-nix: virtualisation.quadlet.containers.NAME.serviceConfig)
    service_config: NixPath | None = None
    # the runtime directory's mode (RuntimeDirectoryMode); None: the module's own directory, left as it is
    dir_mode: str | None = "0700"
    # the file LoadCredential reads when it is no agenix path of this system (a unit inside a declarative
    # NixOS container reads the host's agenix file through a bind mount); None: config.age.secrets.X.path
    credential_path: str | None = None
    # the container's own binding (oci): the lib.mkIf conditions between it and the config root are its unit's
    holder: Node | None = None

    @property
    def service_path(self) -> NixPath:
        return self.service_config or ("systemd", "services", self.unit_seg, "serviceConfig")


class Builder:
    def __init__(
        self,
        models: Mapping[str, FileModel],
        spec: Spec,
        taken_values: Collection[bytes] = (),
        texts: Mapping[str, bytes] | None = None,
    ):
        self.models = models
        self.spec = spec
        self.texts = texts or {}  # repository files a .nix file names by path that are no Nix (read_texts)
        self.taken_values = frozenset(taken_values)  # (plan's taken_values)
        # values a shape took out whose mask covers more than the value (MySQL's whole IDENTIFIED BY clause):
        # masked_values searches their other copies too
        self.taken_here: set[bytes] = set()
        self.ed = Edits(models)
        self.manual: list[Manual] = []
        self.notes: list[str] = []
        self.masks: list[tuple[str, int, int]] = []
        self.renderers: dict[tuple[str, ...], _Renderer] = {}
        self.handled: set[tuple[str, int]] = set()
        self.needs_formals: dict[str, set[str]] = {}
        # (file, *prefix) of each container this plan gives an env file: its other credentials are this
        # migration's to move too (companions), not another service's
        self.patched_containers: set[tuple[str, ...]] = set()
        self.also_values: dict[str, str] = {}  # companion secret -> the value its first literal holds
        self.handled_env: set[tuple[str, ...]] = set()
        self.mounted: set[tuple[str, ...]] = set()  # (secret, file, *container path) given the bind mount
        # (file, *container path) -> (file, kind, name, container path, the secrets mounted there)
        self.pending_volumes: dict[tuple[str, ...], tuple[FileModel, str, str, NixPath, list[str]]] = {}
        self.no_project: list[str] = []
        self.replaced: list[str] = []  # "VAR at file:line:col" of every literal the plan removes
        self.option_paths = {p for _, p in self.option_candidates()}
        self.option_literal: tuple[FileModel, Bind, NixPath] | None = None  # `password = "..."` beside passwordFile
        self.known: set[bytes] = set()  # digests of the values recognised as this migration's password
        self.let_fields = {name: _let_fields(fm) for name, fm in models.items()}  # read, never dropped
        # (file, start of a select) -> the string of a second plain .nix file it reads: (import ./plain.nix).pw
        self.imported = imported_reads(models)
        self.imported_literals = {(imp.file, imp.literal.start_byte) for imp in self.imported.values()}
        self.imported_by_file: dict[str, dict[int, str]] = {}  # file -> start of a select -> the string it reads
        for (name, start), imp in self.imported.items():
            self.imported_by_file.setdefault(name, {})[start] = imp.value
        # (with a field table, even an empty one, let_literals also takes the strings other lets or imported
        # strings fill: `url = "postgres://u:${private.pw}@db/x";`)
        self.lets = {
            name: let_literals(fm.root, self.let_fields[name], self.imported_by_file.get(name))
            for name, fm in models.items()
        }
        self.let_used: set[tuple[str, int]] = set()  # uses of a let-bound password an edit replaces
        # a URL's interpolation that reads config (`:${toString config.services.postgresql.port}/`) -> the
        # stand-in url_with_config puts in its text; the edits get the interpolation back (run)
        self.config_reads: dict[str, str] = {}
        # "NAME at FILE:LINE:COL" of a let's or an imported file's string that holds this migration's password and
        # that a replaced use read: where the value is (a use's line holds a name, and the same file may hold a
        # companion's literal: realcfg20/14 with its password let-bound named root's line for `secret new --from`)
        self.kept_literals: list[str] = []
        self.url_lets: set[tuple[str, str]] = set()  # (file, name) of let-bound URLs a use of which is replaced
        self.let_kept: set[tuple[str, int]] = set()  # (file, line) of let-bound passwords kept for a use left
        # (file, "cfg.password"): let attrset fields a replaced use read (their binding: drop_fields)
        self.fields_read: set[tuple[str, str]] = set()
        self.db: _Db | None = None
        self.store_file: FileModel | None = None  # where a passwordFile = pkgs.writeText ... was replaced
        self.role_units: set[str] = set()
        self.bind_mounts_added: set[tuple[str, tuple[str, ...]]] = set()  # (file, containers.X.bindMounts.P)
        self.sql_file: FileModel | None = None
        self.credential_units: set[tuple[str, str]] = set()  # (file, unit attribute) given LoadCredential by a shape
        self.mount_file: FileModel | None = None  # where an app container got the bind mount (FILE__VAR)
        # the agenix file's owner/group (Nix expressions) when a non-root user reads it, and why
        self.owner: str | None = None
        self.group: str | None = None
        self.owner_why = ""
        # companion credentials (spec.also): the containers this migration patches, (file, *prefix) ->
        # (kind, name); per companion secret its owner (owner, group, why), the literals it replaces,
        # and the digests of their values (a let binding of one is dropped like the password's)
        self.also_vars = dict(spec.also)
        self.touched: dict[tuple[str, ...], tuple[FileModel, str, str, NixPath]] = {}
        self.also_owner: dict[str, tuple[str, str | None, str]] = {}
        self.also_replaced: dict[str, list[str]] = {}
        self.also_known: set[bytes] = set()

    # ------------------------------------------------ lookups

    def all_binds(self) -> Iterator[tuple[FileModel, Bind]]:
        for fm in self.models.values():
            for b in fm.binds:
                yield fm, b

    def all_lits(self) -> Iterator[tuple[FileModel, Lit]]:
        for fm in self.models.values():
            for lit in fm.lits:
                yield fm, lit

    def file(self, name: str, key: str) -> FileModel:
        name = posixpath.normpath(name)
        if name not in self.models:
            raise ConfigError(
                f"migrations: {key} = {name!r}: no such .nix file in the repository",
                hint="paths are relative to the repository root",
            )
        return self.models[name]

    def attrset_at(self, fm: FileModel, path: NixPath, within: Node | None = None) -> AttrSet | None:
        """The deepest option-path attrset of ``fm`` at a prefix of ``path`` (inside ``within``)."""
        best: AttrSet | None = None
        for a in fm.attrsets:
            if not a.exact or a.path != path[: len(a.path)]:
                continue
            if within is not None and not (
                within.start_byte <= a.node.start_byte and a.node.end_byte <= within.end_byte
            ):
                continue
            if best is None or len(a.path) > len(best.path) or (len(a.path) == len(best.path)):
                best = a
        return best

    def insert_path(
        self, fm: FileModel, root: Node | None, path: NixPath, render: Any, why: str, after: Node | None = None
    ) -> None:
        """Bind ``path`` in the deepest attrset of ``fm`` on the way to it (inside ``root`` if given)."""
        target = self.attrset_at(fm, path, within=root)
        if target is None:
            raise PatchError(f"no attrset to add {'.'.join(path)} to", where=fm.name)
        rest = path[len(target.path) :]
        anchor = after if after is not None and after.parent is not None and _in(after, target.node) else None
        self.ed.insert_binding(fm, target.node, render(nix_attrpath((*target.write_prefix, *rest))), why, after=anchor)

    # ------------------------------------------------ the database

    def find_db(self) -> _Db | None:
        found: list[_Db] = []
        already: list[_Db] = []
        wanted = self.spec.db_vars
        for fm, b in self.all_binds():
            if not b.exact or not b.path or base_variable(b.path[-1]) not in wanted:
                continue
            var = base_variable(b.path[-1])
            shape = env_container(b.path)
            if shape is None:
                continue
            kind, name, prefix = shape
            image = self.image_of(fm, kind, prefix)
            if self.spec.compose and kind == "arion" and fm.name != posixpath.normpath(self.spec.compose):
                continue
            if self.spec.db_service and name != self.spec.db_service:
                continue
            if var != DB_PASSWORD_VAR and not self._user_is_role(fm, prefix, var):
                continue  # MYSQL_PASSWORD of another user than the migration's role
            if b.path[-1] != var:
                already.append(_Db(fm, kind, name, prefix, None, None, var, image))
                continue
            value = self.value_of(fm, b.value)
            if value is None:
                imported = self.imported_from(fm, b.value)
                read = file_read_of(fm, b.value) or self._read_through_select(fm, b.value)
                self.manual_here(
                    fm,
                    b.value,
                    f"{'.'.join(b.path)} "
                    + (
                        f"reads the password from {imported}, a plain .nix file of the repository (in the "
                        f"world-readable Nix store with the rest): {IMPORTED_HOW}"
                        if imported
                        else f"reads the password from {read}, a plain file of the repository read at evaluation "
                        f"(in the world-readable Nix store with the configuration): {FILE_READ_HOW}"
                        if read
                        else "is computed, not a literal: nixmig cannot tell where the password comes from"
                    ),
                    self.db_snippet(kind, prefix, file_variable(var, image)),
                )
                continue
            found.append(_Db(fm, kind, name, prefix, b, value, var, image))
        # one pick over both: once the database is patched (POSTGRES_PASSWORD_FILE), an app container
        # that also sets POSTGRES_PASSWORD must not become "the database" on the next run
        both = found + already
        if len(both) > 1 and found and already:
            try:
                return self._pick(both)[0]
            except PatchError:
                pass  # no container named in nixmig.toml: the one with the literal, as before
        found = self._pick(found) if len(found) > 1 else found
        if found:
            return found[0]
        already = self._pick(already) if len(already) > 1 else already
        return already[0] if already else None

    def _user_is_role(self, fm: FileModel, prefix: NixPath, var: str) -> bool:
        """MYSQL_PASSWORD is MYSQL_USER's (MARIADB_ same): this migration's only when that user is its role;
        a root password is root's."""
        env = (*prefix, *KINDS[_kind_at(prefix)].env)
        if var in _INIT_USER_VARS:  # the user is whoever MONGO_INITDB_ROOT_USERNAME (...) names
            init_user = self._bind_at(fm, (*env, _INIT_USER_VARS[var]))
            name = self.value_of(fm, init_user.value) if init_user is not None else None
            return self.spec.role in ("postgres", "root") or name == self.spec.role
        user_var = var.replace("ROOT_", "").replace("PASSWORD", "USER")
        user = self._bind_at(fm, (*env, user_var))
        if self.spec.role == "postgres":  # no role set: the user's password, or root's when there is none
            user_pw_var = var.replace("ROOT_", "")
            user_pw = any(self._bind_at(fm, (*env, v)) for v in (user_pw_var, *file_variables(user_pw_var)))
            return not user_pw if "ROOT" in var else user is not None
        if "ROOT" in var:
            return self.spec.role == "root"
        return user is not None and self.value_of(fm, user.value) == self.spec.role

    def _pick(self, dbs: list[_Db]) -> list[_Db]:
        c = self.spec.container
        if c:
            hits = [d for d in dbs if c in (d.name, f"{_project_of(d)}-{d.name}-1", f"{_project_of(d)}_{d.name}_1")]
            hits = hits or [d for d in dbs if c.endswith((f"-{d.name}-1", f"_{d.name}_1"))]
            if len(hits) == 1:
                return hits
        names = ", ".join(sorted({f"{d.name} ({d.fm.name})" for d in dbs}))
        raise PatchError(
            f"several database containers set {DB_PASSWORD_VAR}: {names}",
            hint="set db_service (and compose) for this migration in nixmig.toml",
        )

    def image_of(self, fm: FileModel, kind: str, prefix: NixPath) -> str | None:
        """The container's image when it is a literal (or let-bound): its family decides the file variable."""
        b = self._bind_at(fm, (*prefix, *KINDS[kind].image))
        if b is None and kind == "arion":  # arion's own option: services.NAME.image.name, beside .service
            b = self._bind_at(fm, (*prefix[:-1], "image", "name"))
        return self.value_of(fm, unparen(b.value)) if b is not None else None

    def db_snippet(self, kind: str, prefix: NixPath, file_var: str = DB_PASSWORD_VAR + "_FILE") -> str:
        k = KINDS[kind]
        tpl = template(k.template)
        return "\n".join(
            [
                "# in " + comment_text(".".join((*prefix, *k.env))) + ":",
                str(tpl.password_file_env(file_var, self.spec.secret_in_container)),
                "# in " + comment_text(".".join((*prefix, *k.volumes[:-1]))) + ":" if len(k.volumes) > 1 else "",
                str(tpl.volumes("volumes", nix_escape(self.spec.secret_on_host), self.spec.secret_in_container)),
            ]
        ).replace("\n\n", "\n")

    def patch_db(self, db: _Db) -> None:
        fm, spec = db.fm, self.spec
        tpl = template(KINDS[db.kind].template)
        if db.bind is not None and self.db_by_env_file(db):
            return
        if db.bind is not None:
            self.mask_literal(fm, db.bind.value)
            if db.password:
                self.known.add(digest(db.password.encode()))
            self.use_lets(fm, db.bind.value)
            b = db.bind
            ap = b.node.child_by_field_name("attrpath")
            assert ap is not None
            last = ap.named_children[-1]
            new = str(tpl.password_file_env(db.file_var, spec.secret_in_container))
            name, _, rest = new.partition(" = ")
            self.ed.add(
                fm,
                last.start_byte,
                b.node.end_byte,
                name + fm.source[last.end_byte : b.value.start_byte].decode() + rest,
                f"replaces the hardcoded {db.var} of the {db.name} container: the image reads the "
                f"password from {spec.secret_in_container} (a read-only bind mount of the agenix file) when it "
                f"initialises the data directory"
                + (
                    f" (a linuxserver.io image: its s6-overlay init reads {db.file_var}; it ignores {db.var}_FILE)"
                    if is_linuxserver(db.image)
                    else ""
                )
                + "; "
                + (
                    "strategy move keeps the value, so the existing user's password is unchanged"
                    if spec.strategy == "move"
                    else "the password of the existing role is changed by `nixmig apply` (ALTER ROLE), since the "
                    "image ignores both variables once the data directory exists"
                ),
            )
            self.handled.add((fm.name, b.value.start_byte))
            self.replaced.append(f"{db.var} at {fm.where(b.value)}")
        elif not self._file_var_is_ours(db):
            return  # POSTGRES_PASSWORD_FILE points somewhere else: the user's own setup
        self.touched[(fm.name, *db.prefix)] = (fm, db.kind, db.name, db.prefix)
        self.container_user(db)
        self.ensure_volume(db.fm, db.kind, db.name, db.prefix)

    def db_by_env_file(self, db: _Db) -> bool:
        """The database's variable into the env file its unit renders, not ``VAR_FILE``, when the image is
        not one known to read ``VAR_FILE`` (Oracle's mysql-server and images built on it ignore it: the
        database would initialise without the user), or the container reads env files already (one may
        hold VAR: the official entrypoints stop on VAR and VAR_FILE both set; nixmig's file comes last,
        and the last one wins). linuxserver.io images read ``FILE__VAR`` (as before). True: done here."""
        assert db.bind is not None
        if is_linuxserver(db.image):
            return False
        others = self.env_files_of(db.fm, db.kind, db.prefix)
        named = self.user_by_name(db.fm, db.kind, db.prefix)
        if reads_file_env(db.image) and not others and named is None:
            return False
        lit = next((x for x in db.fm.lits if x.bind is db.bind), None)
        if lit is None:
            return False
        why = (
            f"it reads env files already ({', '.join(others)}): one may hold {db.var}, and the image stops when "
            f"{db.var} and {db.var}_FILE are both set"
            if others
            else f"it runs as user {named!r}, a name its image resolves (agenix would resolve an owner of that "
            f"name on the host, another uid or none): the env file is read by the container engine, as root"
            if named is not None
            else f"the mongo image reads {db.var}_FILE as its mongodb user (uid 999, after dropping root), and "
            "agenix's file is root's: the env file is read by the container engine, as root"
            if db.var == MONGO_ROOT_VAR and reads_mongo_file_env(db.image)
            else f"its image ({db.image or 'computed here'}) is not one known to read {db.var}_FILE"
        )
        value = db.password or ""
        if self.spec.strategy == "move" and not _RAW_ENV_VALUE.fullmatch(value):
            self.mask_literal(db.fm, db.bind.value)
            self.handled.add((db.fm.name, lit.node.start_byte))
            self.manual_here(
                db.fm,
                db.bind.value,
                f"{db.var} of the {db.name} container: {why}, so it goes into an env file, and the value strategy "
                f"move keeps has characters an env file line cannot hold unquoted (only A-Z a-z 0-9 - . _ ~): "
                f"by hand",
                "",
            )
            return True
        self.notes.append(f"{db.name}: {db.var} goes into the env file its unit renders, not {db.var}_FILE: {why}")
        if db.password:
            self.known.add(digest(db.password.encode()))
        self.mask_literal(db.fm, lit.node)
        self.url_in_container(db.fm, lit, db.kind, db.name, db.prefix, EnvLine(db.var, "", "", raw=True))
        return True

    def user_by_name(self, fm: FileModel, kind: str, prefix: NixPath) -> str | None:
        """The container's ``user`` when it names a user or group (``mysql:mysql``) rather than a uid: the
        name means the image's /etc/passwd entry, which the host's agenix cannot give a file to."""
        b = self._bind_at(fm, (*prefix, *KINDS[kind].user))
        value = self.value_of(fm, unparen(b.value)) if b is not None else None
        if value is None:
            return None
        user, _, group = value.partition(":")
        if user in ("", "0", "root") and group in ("", "0", "root"):
            return None
        return None if all(x == "" or x.isdigit() for x in (user, group)) else value

    def env_files_of(self, fm: FileModel, kind: str, prefix: NixPath) -> list[str]:
        """The env files a container reads already (not one nixmig renders)."""
        out: list[str] = []
        for lit in fm.lits:
            if lit.path == (*prefix, *KINDS[kind].env_files) and lit.bind is None:
                value = decode_string(lit.node)
                if value is not None and not self.has_renderer(posixpath.dirname(value).removeprefix("/run/")):
                    out.append(value)
        for b in fm.binds:  # a computed list, or a single string
            if b.path == (*prefix, *KINDS[kind].env_files) and unparen(b.value).type != "list_expression":
                out.append(text(b.value))
        return out

    def container_user(self, db: _Db) -> None:
        """A database container that runs as a non-root ``user`` reads the bind-mounted file as that
        user: agenix gives the file that owner (and group), never a world-readable mode."""
        found = self.reader_of(db.fm, db.kind, db.name, db.prefix, self.spec.secret)
        if found is not None:
            self.claim_owner(*found)

    def reader_of(
        self, fm: FileModel, kind: str, name: str, prefix: NixPath, secret: str
    ) -> tuple[str, str | None, str] | None:
        """(owner, group, why) of the agenix file ``secret`` bind-mounted into a container that runs as
        a non-root ``user`` (Nix expressions); None for root. A computed user is a by-hand item, and so
        is a rootless quadlet-nix container (``rootlessConfig``): its podman runs as that user, who
        cannot read a root-owned 0400 file."""
        rootless = next((b for b in fm.binds if b.path[: len(prefix) + 1] == (*prefix, "rootlessConfig")), None)
        owned = any(
            [seg.strip('"') for seg in b.path] == ["age", "secrets", secret, "owner"]
            for m in self.models.values()
            for b in m.binds
        )
        if kind == "quadlet" and rootless is not None and not owned:
            self.manual_here(
                fm,
                rootless.node,
                f"the {name} container runs rootless ({'.'.join(rootless.path[len(prefix) :])}): its podman runs "
                f"as that user, who cannot read {posixpath.join(self.spec.agenix_dir, secret)} (root, 0400); "
                f"set age.secrets.{nix_attr(secret)}.owner to that user (agenix chowns it), then run patch again",
                f"age.secrets.{nix_attr(secret)}.owner = <the rootless user>;",
            )
            return None
        rootless_user = self._bind_at(fm, (*prefix, "podman", "user")) if kind == "oci" else None
        if rootless_user is not None:  # nixpkgs' rootless podman: the host user's podman reads the mount
            value = self.value_of(fm, unparen(rootless_user.value))
            if value is None:
                self.manual_here(
                    fm,
                    rootless_user.value,
                    f"the {name} container runs rootless as a computed podman.user: nixmig cannot tell who must "
                    f"read {posixpath.join(self.spec.agenix_dir, secret)}",
                    f"age.secrets.{nix_attr(secret)}.owner = <the podman.user>;",
                )
                return None
            if value not in ("", "root"):
                return (
                    nix_string(value),
                    None,
                    f"owned by {value}, the podman.user whose rootless podman runs the {name} container (its root "
                    "is that user: a root-owned 0400 file would be unreadable)",
                )
        b = self._bind_at(fm, (*prefix, *KINDS[kind].user))
        if b is None:
            return None
        value = self.value_of(fm, unparen(b.value))  # a literal, or one a let binds
        if value is None:
            self.manual_here(
                fm,
                b.value,
                f"the {name} container's user is computed: nixmig cannot tell who must read "
                f"{posixpath.join(self.spec.agenix_dir, secret)}",
                f"age.secrets.{nix_attr(secret)}.owner = <that user or uid>;",
            )
            return None
        user, _, group = value.partition(":")
        if user in ("", "0", "root"):
            return None
        why = f"owned by {user}, the user the {name} container runs as"
        return nix_string(user), (nix_string(group) if group else None), why

    def _file_var_is_ours(self, db: _Db) -> bool:
        env = (*db.prefix, *KINDS[db.kind].env)
        for b in db.fm.binds:
            if b.path in {(*env, v) for v in file_variables(db.var)}:
                return decode_string(b.value) == self.spec.secret_in_container
        return False

    def ensure_volume(self, fm: FileModel, kind: str, name: str, prefix: NixPath, secret: str | None = None) -> None:
        """The read-only bind mount of the agenix file (the migration's, or the companion ``secret``'s)
        into a container, written by :meth:`emit_volumes` (one edit per container however many
        files it mounts)."""
        secret = secret or self.spec.secret
        if (secret, fm.name, *prefix) in self.mounted:
            return  # one mount per container and secret, however many of its variables read the file
        self.mounted.add((secret, fm.name, *prefix))
        self.pending_volumes.setdefault((fm.name, *prefix), (fm, kind, name, prefix, []))[4].append(secret)

    def emit_volumes(self) -> None:
        """The bind mounts :meth:`ensure_volume` asked for. In a NixOS module (oci-containers, quadlet)
        the source is ``${config.age.secrets.NAME.path}`` (wherever age.secretsDir is); arion's compose
        files have arion's own ``config``, so there it is the path written out."""
        for fm, kind, name, prefix, secrets in self.pending_volumes.values():
            self._emit_volume(fm, kind, name, prefix, secrets)

    def _emit_volume(self, fm: FileModel, kind: str, name: str, prefix: NixPath, secrets: Sequence[str]) -> None:
        spec, k = self.spec, KINDS[kind]
        tpl = template(k.template)
        vol_path = (*prefix, *k.volumes)
        wanted: list[tuple[str, str, str, str]] = []  # (mount as docker reads it, element, source, container path)
        for secret in secrets:
            on_host, in_container = posixpath.join(spec.agenix_dir, secret), posixpath.join("/run/secrets", secret)
            if kind != "arion" and self.ed.can_have_formals(fm):
                source = f"${{config.age.secrets.{nix_attr(secret)}.path}}"
                self.need(fm, ("config",))
            else:
                source = nix_escape(on_host)
            wanted.append((f"{on_host}:{in_container}:ro", str(tpl.volume(source, in_container)), source, in_container))
        shown = [
            f"{posixpath.join(spec.agenix_dir, s)} read-only at {posixpath.join('/run/secrets', s)}" for s in secrets
        ]
        why = (
            f"bind-mounts the agenix file{'s' if len(shown) > 1 else ''} {' and '.join(shown)} in the "
            f"{name} container (only the path is in the Nix store)"
        )
        for b in fm.binds:
            if b.path != vol_path:
                continue
            lst = _list_part(b.value)
            if lst is not None:
                have = {decode_string(e) for e in lst.named_children} | {fm.text(e) for e in lst.named_children}
                new = [element for mount, element, _, _ in wanted if mount not in have and element not in have]
                if new:
                    self.ed.append_elements(fm, lst, new, why)
                return
            # `volumes = vols;` (a let's list, a function's result): the mounts go after it
            elements = " ".join(element for _, element, _, _ in wanted)
            value = unparen(b.value)
            self.ed.add(fm, value.start_byte, value.end_byte, f"({fm.text(value)}) ++ [ {elements} ]", why)
            return
        anchor = self._bind_at(fm, (*prefix, *k.env))
        root = self._service_attrset(fm, prefix)
        self.insert_path(
            fm,
            root,
            vol_path,
            lambda attr: str(tpl.volume_list(attr, [(source, path) for _, _, source, path in wanted])),
            why,
            after=anchor.node if anchor else None,
        )

    def service_name(self, models: Sequence[FileModel], prefix: NixPath) -> str | None:
        """An oci container's ``serviceName`` (nixpkgs: the unit that runs it, ``<backend>-<name>`` by default)
        as a unit name; None when not set, "" when set by an expression nixmig cannot read."""
        for fm in models:
            bind = self._bind_at(fm, (*prefix, "serviceName"))
            if bind is not None:
                named = decode_string(unparen(bind.value))
                return named.removesuffix(".service") if named and "/" not in named else ""
        return None

    def _bind_at(self, fm: FileModel, path: NixPath) -> Bind | None:
        for b in fm.binds:
            if b.path == path and b.exact:
                return b
        return None

    def _service_attrset(self, fm: FileModel, prefix: NixPath) -> Node:
        a = self.attrset_at(fm, prefix)
        if a is None:
            raise PatchError(f"no attrset for {'.'.join(prefix)}", where=fm.name)
        return a.node

    # ------------------------------------------------ strategy rebuild: the new volume and image

    def switch_data(self, db: _Db | None) -> None:
        """Point the database container at the new data volume (and image), when the spec says so."""
        spec = self.spec
        if not (spec.new_volume or spec.new_image):
            return
        if db is None:
            self.manual.append(
                Manual(
                    spec.compose or "(repository)",
                    1,
                    1,
                    f"no database container found to move to the volume {spec.new_volume or '?'}",
                    "set compose and db_service for this migration in nixmig.toml",
                )
            )
            return
        if spec.new_volume and spec.old_volume and spec.new_volume != spec.old_volume:
            self.switch_volume(db, spec.old_volume, spec.new_volume)
        if spec.new_image:
            self.switch_image(db, spec.new_image)

    def _compose_volumes(self, db: _Db) -> tuple[NixPath, dict[str, Bind], Callable[[str], str]]:
        """arion: (path of docker-compose.volumes, key -> its binding, key -> the docker volume name)."""
        fm, head = db.fm, db.prefix[:-3]
        base = (*head, "docker-compose", "volumes")
        decls = {b.path[-1]: b for b in fm.binds if b.exact and len(b.path) == len(base) + 1 and b.path[:-1] == base}
        project = _project_of(db)

        def docker_name(key: str) -> str:
            named = self._bind_at(fm, (*base, key, "name"))
            if named is not None:
                value = decode_string(unparen(named.value))
                return value if value is not None else fm.text(named.value)
            external = self._bind_at(fm, (*base, key, "external"))
            if external is not None and fm.text(unparen(external.value)).strip() == "true":
                return key  # compose does not prefix an external volume's name
            return f"{project}_{key}" if project else key

        return base, decls, docker_name

    def switch_volume(self, db: _Db, old: str, new: str) -> None:
        fm = db.fm
        vol_path = (*db.prefix, *KINDS[db.kind].volumes)
        b = self._bind_at(fm, vol_path)
        lst = unparen(b.value) if b is not None else None
        snippet = f"the mount of {old} in {'.'.join(vol_path)} names {new} instead"
        if b is None or lst is None or lst.type != "list_expression":
            at = b.value if b is not None else self._service_attrset(fm, db.prefix)
            self.manual_here(fm, at, f"{'.'.join(vol_path)} is not a list literal naming the volume {old}", snippet)
            return
        if db.kind == "arion":
            base, decls, docker_name = self._compose_volumes(db)
        else:
            base, decls, docker_name = (), {}, lambda key: key
        target: tuple[Node, str, str] | None = None
        for e in lst.named_children:
            value = decode_string(e)
            if value is None or value.startswith(("/", ".", "~")) or ":" not in value:
                continue  # not a literal "volume:/path" (a bind mount, computed, ...)
            src, rest = value.split(":", 1)
            if docker_name(src) == new:
                if db.kind == "arion" and src not in decls:
                    target = (e, src, rest)  # switched, but the declaration is missing
                    break
                return
            if docker_name(src) == old:
                target = (e, src, rest)
        if target is None:
            self.manual_here(fm, lst, f"no literal mount of the volume {old} in {'.'.join(vol_path)}", snippet)
            return
        e, src, rest = target
        key = new
        if db.kind == "arion":
            project = _project_of(db)
            key = new.removeprefix(f"{project}_") if project and new != f"{project}_" else new
            if key in decls and docker_name(key) != new:
                key = new
            if key in decls and docker_name(key) != new:
                self.manual_here(fm, decls[key].node, f"docker-compose.volumes.{key} names another volume", snippet)
                return
        if docker_name(src) != new:
            self.ed.replace_node(
                fm,
                e,
                nix_string(f"{key}:{rest}"),
                f"the {db.name} container's data directory is the new volume {new} from now on (filled and "
                f"verified by `nixmig apply` before this deploy); the old volume {old} is kept, untouched, "
                "for rollback",
            )
        if db.kind == "arion" and key not in decls:
            tpl = template("arion-service.nix.j2")
            old_decl = next((b for k, b in decls.items() if docker_name(k) == old), None)
            root = self._bind_containing(fm, db.prefix) if db.prefix[:1] == ("virtualisation",) else None
            self.insert_path(
                fm,
                root,
                (*base, key),
                lambda attr: str(tpl.external_volume(attr, new)),
                f"declares the volume {new} as external: nixmig created it, and a deploy never creates it "
                "empty (docker compose stops if it is missing)",
                after=old_decl.node if old_decl is not None else None,
            )

    def switch_image(self, db: _Db, image: str) -> None:
        fm = db.fm
        path = (*db.prefix[:-1], "image", "name") if db.kind == "arion" else (*db.prefix, *KINDS[db.kind].image)
        b = self._bind_at(fm, path)
        value = decode_string(unparen(b.value)) if b is not None else None
        if b is None or value is None:
            at = b.value if b is not None else self._service_attrset(fm, db.prefix)
            self.manual_here(fm, at, f"{'.'.join(path)} is not a literal image name", f"{'.'.join(path)} = {image}")
            return
        if value != image:
            self.ed.replace_node(
                fm,
                unparen(b.value),
                nix_string(image),
                f"the {db.name} container runs {image} (was {value}): the new volume was initialised and "
                "filled by that image's server",
            )

    # ------------------------------------------------ URLs and other literals

    def unread_file_option(self, fm: FileModel, lit: Lit, option: NixPath) -> bool:
        """The repo's own module declares the service and reads the literal's option (``cfg.database.password``)
        but no file option nixmig could point at the secret (none declared, or one no code reads): moved there,
        the service would run without its password. Said by hand (True); False: the option may be taken."""
        declared = [(dfm, p, n) for dfm in self.models.values() for p, n in dfm.options if p[:2] == option[:2]]
        if not declared or not option_read([d[0] for d in declared], lit.path[-1]):
            return False  # a nixpkgs module (not in the repo), or the repo's reads no such option either
        mine = next(((dfm, n) for dfm, p, n in declared if p == option), None)
        if mine is not None and option_read(self.models.values(), option[-1]):
            return False
        self.mask_literal(fm, lit.node)
        self.manual_here(
            fm,
            lit.node,
            f"{'.'.join(lit.path)}: services.{option[1]} is the repo's own module, which reads "
            f"{lit.path[-1]}, and "
            + (
                _unread_option(mine[0], option, mine[1])
                if mine is not None
                else f"declares no {'.'.join(option[2:])}: nixmig has no file option to point at the secret; add one "
                "the module reads (or name password_option), then patch again"
            ),
            "",
        )
        return True

    def take_option_literal(self, fm: FileModel, lit: Lit, value: str, option: NixPath) -> None:
        assert lit.bind is not None
        self.option_literal = (fm, lit.bind, option)
        self.known.add(digest(value.encode()))
        self.handled.add((fm.name, lit.node.start_byte))
        self.use_lets(fm, lit.node)
        self.replaced.append(f"{'.'.join(lit.path)} at {fm.where(lit.node)}")

    def imported_from(self, fm: FileModel, node: Node) -> str:
        """Where ``node`` reads a literal of a second .nix file of the repository (:class:`Imported`), as
        ``FILE:LINE (KEY)``; "" otherwise."""
        imp = self.imported.get((fm.name, unparen(node).start_byte))
        if imp is None or unparen(node).type != "select_expression":
            return ""
        return f"{self.models[imp.file].where(imp.literal)} ({'.'.join(imp.key)})"

    def url_with_config(self, fm: FileModel, node: Node) -> str | None:
        """A string patch cannot read whole only because an interpolation reads config, as a URL's host or
        port do (``"postgres://u:pw@localhost:${toString config.services.postgresql.port}/db"``): its text with
        each such interpolation as a stand-in (``%%nixmig[0]%%``, URL-safe, never percent-encoding), which the
        edits turn back into the interpolation (the env file a unit renders holds what Nix makes of it). Let
        literals are read as value_of reads them; anything else interpolated: None."""
        node = unparen(node)
        if node.type != "string_expression":
            return None
        out: list[str] = []
        for c in node.named_children:
            if c.type == "interpolation":
                inner = [x for x in c.named_children if x.type != "comment"]
                if len(inner) != 1:
                    return None
                value = self.value_of(fm, inner[0])
                if value is not None:
                    out.append(value)
                    continue
                expr = " ".join(fm.text(inner[0]).split())
                if not _CONFIG_READ.fullmatch(expr):
                    return None
                interpolation = "${" + expr + "}"
                stand_in = next((k for k, v in self.config_reads.items() if v == interpolation), None)
                if stand_in is None:
                    # (brackets: a shell word holding it is quoted, whatever Nix fills in)
                    stand_in = f"%%nixmig[{len(self.config_reads)}]%%"
                    self.config_reads[stand_in] = interpolation
                out.append(stand_in)
            elif c.type == "string_fragment":
                out.append(fm.text(c))
            elif c.type == "escape_sequence":
                return None
        return "".join(out)

    def value_of(self, fm: FileModel, node: Node) -> str | None:
        """The string ``node`` is: a literal, a let-bound literal, a string only let literals fill, or a
        string of a second plain .nix file it imports (``(import ./plain.nix).pw``, :class:`Imported`)."""
        found = resolve(node, self.lets[fm.name], self.let_fields[fm.name], self.imported_by_file.get(fm.name))
        if found is not None:
            return found[0]
        n = unparen(node)
        imp = self.imported.get((fm.name, n.start_byte)) if n.type == "select_expression" else None
        return imp.value if imp is not None else None

    def use_lets(self, fm: FileModel, node: Node) -> None:
        """An edit replaces ``node``: the let variables (or imported strings) it read are used once less."""
        found = resolve(node, self.lets[fm.name], self.let_fields[fm.name], self.imported_by_file.get(fm.name))
        for v in found[1] if found is not None else ():
            self.let_used.add((fm.name, v.start_byte))
        n = unparen(node)
        if n.type == "select_expression" and (fm.name, n.start_byte) in self.imported:
            self.let_used.add((fm.name, n.start_byte))

    def drop_imported(self) -> None:
        """A password read from a second plain .nix file (:class:`Imported`): masked there; its binding removed
        when every read of it was replaced and nothing else in the repository names its key, else said at
        its line (the literal stays, so the tree is not called patched)."""
        uses: dict[tuple[str, NixPath], list[tuple[str, int]]] = {}
        for at, imp in self.imported.items():
            uses.setdefault((imp.file, imp.key), []).append(at)
        for (file, key), reads in uses.items():
            imp = self.imported[reads[0]]
            d = digest(imp.value.encode())
            if d not in self.known and d not in self.also_known:
                continue
            if not any(r in self.let_used for r in reads):
                continue  # no read of it was replaced: the verdict says what is left
            other = self.models[file]
            self.mask_literal(other, imp.literal)
            if d in self.known:
                self.kept_literals.append(f"{'.'.join(key)} at {other.where(imp.literal)}")
            left = [r for r in reads if r not in self.let_used]
            if imp.option:
                self._drop_option_default(imp, reads, left)
                continue
            if imp.let_field is not None:
                self._drop_let_field(imp, imp.let_field)
                continue
            # the key's name as a name anywhere in the repository (an attribute, a select, a variable; not a
            # string's text): its definition and these reads only, else something else may read it
            named = sum(
                1
                for m in self.models.values()
                for n in descendants(m.root)
                if n.type == "identifier" and n.text == key[-1].encode()
            )
            if not left and named == len(reads) + 1:
                self.ed.remove_binding(
                    other,
                    imp.bind.node,
                    f"removes {'.'.join(key)}, the hardcoded password {len(reads)} binding(s) imported from this "
                    f"file; every read of it now reads the agenix secret",
                )
                continue
            line, col = other.line_col(imp.literal.start_byte)
            where = ", ".join(self.models[f].where(b) for f, b in left) if left else ""
            self.manual.append(
                Manual(
                    file,
                    line,
                    col,
                    f"{'.'.join(key)} holds this migration's password, imported from this file; "
                    + (
                        f"it is still read at {where}, in a shape nixmig has no edit for"
                        if left
                        else f"its name is read {named - len(reads) - 1} more time(s) in the repository's .nix files"
                    )
                    + ": nixmig leaves it; remove it by hand once nothing reads it",
                    "",
                )
            )

    def _drop_let_field(self, imp: Imported, field: Bound) -> None:
        """A let attrset's field held this migration's password (drop_imported): removed when every read of it
        was replaced and the attrset is never read whole, else said at its line with what still reads it (the
        YAML text of invidious' INVIDIOUS_CONFIG reads ``${meta.password}``, realcfg34/04)."""
        fm = self.models[imp.file]
        left = [u for u in field.uses if (imp.file, u.start_byte) not in self.let_used]
        if not left and not field.whole:
            self.ed.remove_binding(
                fm,
                imp.bind.node,
                f"removes {field.shown}, the hardcoded password; its {len(field.uses)} read(s) now read the "
                "agenix secret",
            )
            return
        line, col = fm.line_col(imp.literal.start_byte)
        where = ", ".join(fm.where(u) for u in left) if left else ", ".join(fm.where(u) for u in field.whole)
        self.manual.append(
            Manual(
                imp.file,
                line,
                col,
                f"{field.shown} (a field of a let attrset) holds this migration's password; "
                + (
                    f"it is still read at {where}, in a shape nixmig has no edit for"
                    if left
                    else f"the attrset is read whole at {where}, which may read it"
                )
                + ": nixmig leaves it; move that read onto the agenix secret by hand, then remove the field",
                "",
            )
        )

    def _drop_option_default(self, imp: Imported, reads: list[tuple[str, int]], left: list[tuple[str, int]]) -> None:
        """The default of a module's own option held this migration's password (drop_imported): removed when
        every read of the option was replaced and nothing else may read it, else said at its line."""
        from nixmig.nixsrc.option_default import unrecognised_reads

        other = self.models[imp.file]
        option = ".".join(imp.key)
        unknown = unrecognised_reads(self.models, imp.key)
        if not left and not unknown:
            self.ed.remove_binding(
                other,
                imp.bind.node,
                f"removes the default of option {option}, the hardcoded password; its {len(reads)} read(s) now "
                "read the agenix secret, and nothing else reads the option",
            )
            return
        line, col = other.line_col(imp.literal.start_byte)
        where = ", ".join(self.models[f].where(b) for f, b in left) if left else ", ".join(unknown)
        self.manual.append(
            Manual(
                imp.file,
                line,
                col,
                f"the default of option {option} holds this migration's password; "
                + (
                    f"the option is still read at {where}, in a shape nixmig has no edit for"
                    if left
                    else f"the option may still be read at {where} (not through config.{option})"
                )
                + ": nixmig leaves the default; remove it by hand once nothing reads the option",
                "",
            )
        )

    def fields_written_out(self, fm: FileModel, node: Node, url: UrlParts) -> None:
        """A URL whose text a let attrset's field fills (``"...@${ips.db}:5432/x"``, directly or through a let
        URL): the env file's line holds the field's value written out; a note says so (change it there too).
        Named, never shown; a field that fills the password (``${db.pass}``) is not written out: not said."""
        node = unparen(node)
        if node.type == "variable_expression":
            let = self.lets[fm.name].get(fm.text(node))
            node = let.literal if let is not None else node
        reads = [
            "".join(fm.text(c.named_children[0]).split())
            for c in node.named_children
            if c.type == "interpolation" and c.named_children and c.named_children[0].type == "select_expression"
        ]
        fields = self.let_fields[fm.name]
        kept = url.prefix + "\0" + url.suffix  # what the env file's line writes out, around the password
        for key in dict.fromkeys(r for r in reads if r in fields and fields[r] in kept):
            self.notes.append(
                f"{fm.where(node)}: the URL reads {key}; the env file's line has its value written out, so a change "
                f"of {key} must be made in the renderer's line too"
            )

    def _let_url_read_by_bindings(self, fm: FileModel, lit: Lit) -> bool:
        """``lit`` is a let-bound URL some binding reads as its whole value (``DATABASE_URL = url;``)."""
        if len(lit.path) != 2 or lit.path[0] != "<let>":
            return False
        let = self.lets[fm.name].get(lit.path[1])
        if let is None or let.literal.start_byte != lit.node.start_byte:
            return False
        return any(u.parent is not None and u.parent.type == "binding" for u in let.uses)

    def local_roles(self) -> None:
        """A nixpkgs module that provisions its database itself logs in as a role of its own, whatever
        else the configuration names (NIXPKGS_LOCAL_ROLES): a rotation of another role would leave the
        service's password and its role's apart. Said, by hand, when nixmig.toml's role is not that one."""
        if self.spec.strategy == "move":
            return
        for fm, bind in self.all_binds():
            # None: no such module's file option, or an external database (the configuration's role is right)
            role = provisioned_role(bind.path, self.all_binds()) if bind.exact else None
            if role is None or role == self.spec.role:
                continue
            v = bind.value
            if not any(
                e.file == fm.name and e.start < v.end_byte and v.start_byte < max(e.end, e.start + 1)
                for e in self.ed.items
            ):
                continue  # not an option this plan edits
            switch = NIXPKGS_LOCAL_ROLES[bind.path][0]
            self.manual_here(
                fm,
                bind.node,
                f"services.{bind.path[1]} provisions its database itself ({'.'.join(switch)} is not false) and "
                f"logs in as role {role!r}, whatever else the configuration names; nixmig.toml's role is "
                f"{self.spec.role!r}: a rotation would change that role's password, not the one the service uses. "
                f'Set role = "{role}" for this migration, then patch again',
                "",
            )

    def url_variables(self, password: str | None, db: _Db | None) -> None:
        """``DATABASE_URL = databaseUrl;`` where a let binds the URL (its host may be a let attrset's field,
        ``"postgres://u:pw@${ips.db}:5432/x"``): as if the URL were written there. The binding goes when
        every use was replaced (drop_lets), else each use left is said."""
        for fm, b in self.all_binds():
            node = unparen(b.value)
            if (
                node.type not in ("variable_expression", "select_expression")
                or (fm.name, node.start_byte) in self.handled
            ):
                continue
            if not b.exact or not environment_variable(b.path):
                continue  # not an environment variable: the let's other uses say it (let_script, drop_lets)
            let = self.lets[fm.name].get(fm.text(node)) if node.type == "variable_expression" else None
            imported = self.imported.get((fm.name, node.start_byte)) if node.type == "select_expression" else None
            value = let.value if let is not None else imported.value if imported is not None else None
            url = split_url(value, password, self.spec.url_schemes) if value is not None else None
            if value is None or url is None or url.embedded or not self._is_ours(url, password, db):
                continue
            if let is not None:
                self.url_lets.add((fm.name, let.name))
            self.on_url(fm, Lit(b.path, node, b.exact, b), value, url)

    def bare_variables(self, password: str | None, siblings: list[tuple[FileModel, Lit, str, NixPath]]) -> None:
        """``DB_PASSWORD = dbPassword;`` (a let-bound password): as if the literal were written there. The
        password: the one the plan found, else a value a shape recognised as it (SQL a unit runs); with
        neither, a let-bound value of an option with a file sibling is a candidate as a literal there is
        (``services.gitea.database.password = dbPassword;``: take_sibling picks the migration's)."""
        unknown = password is None and not self.known
        for fm, b in self.all_binds():
            node = unparen(b.value)
            if (
                node.type not in ("variable_expression", "select_expression")
                or (fm.name, node.start_byte) in self.handled
            ):
                continue
            value = self.value_of(fm, node)
            if value is None:
                continue
            lit = Lit(b.path, node, b.exact, b)
            if unknown:
                if (sibling := self.file_sibling(b.path)) is not None and b.exact:
                    siblings.append((fm, lit, value, sibling))
                continue
            if value != password if password is not None else digest(value.encode()) not in self.known:
                continue
            if self.bare_in_env(fm, lit):
                continue
            if (sibling := nixpkgs_file_sibling(b.path)) is not None and b.exact:
                siblings.append((fm, lit, value, sibling))

    def computed_clients(self) -> None:
        """An app beside the database the plan patches whose database password variable is computed
        (``DB_PASSWORD = secrets.db;``, ``(import ./pw.nix).db``): nixmig cannot tell what it holds. If it is
        this password, a rotation leaves the app on the old one (a failed login after apply), and patch
        must not call the tree done: said by hand. Under move the value is kept: nothing to say."""
        db = self.db
        if db is None or self.spec.strategy == "move":
            return
        for fm, b in self.all_binds():
            path = b.path
            if fm is not db.fm or not b.exact or len(path) < 3 or not _ENV_VAR.fullmatch(path[-1]):
                continue
            named = {w.lower() for w in words(path[-1])}
            if not _secret_name(path) or not named & _DATABASE_WORDS or _other_credential(path):
                continue
            if base_variable(path[-1]) != path[-1] or self.companion(path):
                continue  # VAR_FILE names a file; a companion moves onto its own secret
            shape = env_container(path)
            if shape is None or shape[2] == db.prefix:
                continue  # the database's own variable: find_db says a computed one
            name = shape[1]
            if (self.spec.app_services and name not in self.spec.app_services) or self._other_project(
                fm, Lit(path, b.value, True, b), db
            ):
                continue
            node = unparen(b.value)
            if node.type in ("string_expression", "indented_string_expression") or self.value_of(fm, node) is not None:
                continue  # a literal (or a let's): the rules above took it or the verdict says it
            if (fm.name, node.start_byte) in self.handled or any(
                e.file == fm.name and e.start <= node.start_byte and node.end_byte <= e.end for e in self.ed.items
            ):
                continue
            self.handled.add((fm.name, node.start_byte))
            # the expression as written, unless a string in it may be (part of) the password: never shown
            strings = any(n.type in ("string_expression", "indented_string_expression") for n in descendants(node))
            shown = "an expression with strings in it" if strings else " ".join(fm.text(node).split())[:60]
            imported = self.imported_from(fm, node)
            self.manual_here(
                fm,
                node,
                f"{'.'.join(path)} "
                + (f"reads its value from {imported}, a plain .nix file" if imported else f"is computed ({shown})")
                + ": nixmig cannot tell what it "
                f"holds; if it is the password of role {self.spec.role}, the {name} container keeps the old one when "
                "apply rotates it (a failed login): give it the agenix secret by hand (an env file the container "
                'reads), write the value where nixmig moves it, or use strategy = "move" (the value kept)',
                "",
            )

    def masked_values(self) -> set[bytes]:
        """The values the plan takes out of the tree (the bytes it masks), each at least 6 bytes long and no
        name the migration uses (a password that is the role's name: a text naming the role is no copy)."""
        names = {n.encode() for n in (self.spec.role, self.spec.container, self.spec.db_service, self.spec.secret) if n}
        names |= {k.removeprefix("role:").encode() for k, _ in self.spec.also if k.startswith("role:")}  # companions'
        values: set[bytes] = set()
        # not a by-hand item's literal: masked in the diff only, it stays (another role's password in the same
        # script: its word, "blocky", is the database's name too, all over the file)
        manual = {(m.file, m.line) for m in self.manual}
        taken = [
            self.models[n].source[s:e]
            for n, s, e in self.masks
            if n in self.models and (n, self.models[n].line_col(s)[0]) not in manual
        ]
        for value in (*taken, *self.taken_values, *self.taken_here):
            if len(value) >= 6 and b"*" not in value and value not in names:
                values.add(value)
        return values

    def copies_left(self, found: Sequence[Leftover]) -> list[Leftover]:
        """A copy of a value the plan takes out inside a longer string no edit covers, where scan reads no
        credential (``mysql -pPW``): still this migration's password (leftover.copies_in_strings)."""
        said = {(x.file, x.line) for x in found} | {(m.file, m.line) for m in self.manual} | self.let_kept
        values = self.masked_values()
        # a companion's value (kept, not rotated) in a variable scan reads as no credential: said, not blocking
        # (remnawave's TELEGRAM_NOTIFY_*_CHAT_ID equal to the bot token's placeholder; 18C/01)
        theirs = {v for v in values if digest(v) in self.also_known and digest(v) not in self.known}
        for x in copies_in_strings(self.models, self.ed.items, theirs, set(said)):
            self.notes.append(
                f"{x.file}:{x.line}: {x.attribute or 'a string'} holds the same bytes as a credential this migration "
                "moves onto its own secret (its value kept): if it is a copy of that credential, move it too (also = "
                "{ ... } in nixmig.toml); else it is left as it is"
            )
        labels: list[Leftover] = []
        left = copies_in_strings(self.models, self.ed.items, values - theirs, said, labels)
        for x in labels:  # realcfg26/07: mautrix's appservice.id = "telegram" beside the password "telegram"
            self.masks.append((x.file, x.start, x.end))
            self.notes.append(
                f"{x.file}:{x.line}: {x.attribute} holds the same bytes as this migration's password; by its name an "
                "identifier, no credential: left as it is"
                + (" (after the rotation it no longer equals the password)" if self.spec.strategy != "move" else "")
            )
        return left

    def copies_in_texts(self, found: Sequence[Leftover]) -> list[Manual]:
        """A copy of a value the plan takes out in a file other than .nix that a .nix file names by path (a
        SQL file a unit script feeds to psql, a program's config file built into an image; realcfg21/01):
        it goes into the Nix store with the configuration, and nixmig edits no such file: by hand."""
        said = {(x.file, x.line) for x in found} | {(m.file, m.line) for m in self.manual}
        values = {v for v in self.masked_values() if digest(v) not in self.also_known or digest(v) in self.known}
        return [
            Manual(x.file, x.line, x.col, x.what, "") for x in copies_in_texts(self.models, self.texts, values, said)
        ]

    def comments_with_values(self) -> None:
        """A comment holding a value the plan takes out of the tree (``# MARIADB_PASSWORD = "...";``, a copy
        left commented out): the file's text is in the Nix store and the repo, the comment with it. A comment
        alone on its line goes; one after code is said. Only in files the plan edits."""
        values = self.masked_values()
        if not values:
            return
        from nixmig.nixsrc.parse import descendants

        token = copies_of(values)
        for name in sorted({e.file for e in self.ed.items}):
            fm = self.models[name]
            for node in descendants(fm.root):
                found = (
                    [
                        m
                        for m in token.finditer(fm.source, node.start_byte, node.end_byte)
                        if not prose_word(fm.source, m)
                    ]
                    if node.type == "comment"
                    else []
                )
                if not found:
                    continue
                self.masks += [(name, m.start(), m.end()) for m in found]  # masked in the diff patch prints
                start = fm.source.rfind(b"\n", 0, node.start_byte) + 1
                if fm.source[start : node.start_byte].strip() or any(
                    e.file == name and e.start < node.end_byte and node.start_byte < e.end for e in self.ed.items
                ):
                    self.manual_here(
                        fm,
                        node,
                        "a comment holds this migration's password (a copy left commented out): the file's text is "
                        "in the Nix store and the repository; delete it from the comment",
                        "",
                    )
                    continue
                self.ed.remove_binding(
                    fm,
                    node,
                    "removes a comment that held this migration's password (a copy left commented out): the file's "
                    "text is in the Nix store and the repository",
                )

    def drop_lets(self) -> None:
        """A let-bound password: masked; its binding removed when every use of it was replaced, else each
        use left is said (the literal stays, so the tree is not called patched)."""
        for name, lets in self.lets.items():
            fm = self.models[name]
            # a let URL first: when its binding goes, the lets it reads (`"...:${pw}@db/x"`) are read there no more
            for let in sorted(lets.values(), key=lambda x: (name, x.name) not in self.url_lets):
                url_let = (name, let.name) in self.url_lets  # a URL holding the password (url_variables)
                ours = digest(let.value.encode()) in self.known or url_let
                if not ours and digest(let.value.encode()) not in self.also_known:
                    continue
                left = [u for u in let.uses if (name, u.start_byte) not in self.let_used]
                if not url_let and classify_name(let.name) is None and not self.used_as_password(fm, let, left):
                    # `dbUser = "app"` when the password is "app" too: a name (the verdict sees the rest); a
                    # name that says nothing (`v`) is the password once a use of it as one was replaced
                    # (`DB_PASSWORD = v;`), not when it was a part of a replaced URL (`${service}` as its user)
                    continue
                self.mask_literal(fm, let.literal)
                if digest(let.value.encode()) in self.known and len(left) < len(let.uses):
                    self.kept_literals.append(f"{let.name} at {fm.where(let.literal)}")
                if not left:
                    if url_let:
                        found = resolve(let.literal, lets, self.let_fields[name], self.imported_by_file.get(name))
                        self.let_used |= {(name, v.start_byte) for v in (found[1] if found is not None else ())}
                    self.ed.remove_binding(
                        fm,
                        let.binding,
                        f"removes {let.name}, the "
                        + ("URL with the hardcoded password" if url_let else "hardcoded password")
                        + " every use of which now reads "
                        + (f"the agenix secret {self.spec.secret}" if ours else "its own agenix secret (also)"),
                    )
                    continue
                # the literal stays with its binding: said once, at each use left (not again by the verdict)
                self.let_kept.add((name, fm.line_col(let.literal.start_byte)[0]))
                named = classify_name(let.name)
                other = named is not None and (named.kind is not Kind.PASSWORD or _other_credential((let.name,)))
                if ours and not self.let_used_in(name, let) and other and named is not None:
                    # `penpotSecretKey = "..."` with the database's value: another credential, not this password
                    line, col = fm.line_col(let.literal.start_byte)
                    self.manual.append(
                        Manual(
                            name,
                            line,
                            col,
                            f"{let.name} holds the database's value under another credential's name (a "
                            f"{named.kind.value}): two secrets in one, and not this migration's to move (a rotation "
                            f"must not change it): give it its own secret, `nixmig secret new NAME --from "
                            f"{name}:{line}`, and change it its own way",
                            "",
                        )
                    )
                    continue
                for u in left:
                    line, col = fm.line_col(u.start_byte)
                    where = self._bound_at(fm, u)
                    shape = string_shape(where) if where else None
                    self.manual.append(
                        Manual(
                            name,
                            line,
                            col,
                            f"{let.name} (the hardcoded password, bound at {fm.where(let.binding)}) is used here"
                            + (f", in {'.'.join(where)}: {shape}" if shape else " in a shape nixmig has no edit for")
                            + ": the binding stays until this use reads the secret",
                            "",
                        )
                    )

    def drop_fields(self) -> None:
        """A let attrset's password field (``db.password``) some edit stopped reading (fields_read): its binding
        goes when every read of it was replaced, else each read left is said (the literal stays)."""
        from nixmig.nixsrc.lets import _formal_names
        from nixmig.nixsrc.shapes.let_script import fields

        for name in sorted({n for n, _ in self.fields_read}):
            fm = self.models[name]
            for bound in fields(fm, _formal_names(fm.root)):
                if (name, bound.shown) not in self.fields_read or (name, bound.literal.start_byte) in self.handled:
                    continue
                self.handled.add((name, bound.literal.start_byte))
                self.mask_literal(fm, bound.literal)
                left = [u for u in bound.uses if (name, u.start_byte) not in self.let_used]
                if not left and not bound.whole:
                    self.ed.remove_binding(
                        fm,
                        bound.binding,
                        f"removes {bound.shown}, the hardcoded password every read of which now reads the agenix "
                        f"secret {self.spec.secret}",
                    )
                    continue
                self.let_kept.add((name, fm.line_col(bound.literal.start_byte)[0]))  # said at each use left
                for u in (*left, *bound.whole):
                    where = self._bound_at(fm, u)
                    whole = u in bound.whole
                    self.manual_here(
                        fm,
                        u,
                        f"{bound.shown} (the hardcoded password, bound at {fm.where(bound.binding)}) is "
                        + ("read here as a whole attrset, which may read the field" if whole else "also read here")
                        + (f", in {'.'.join(where)}" if where else "")
                        + ", where nixmig has no edit for it: every read must take the agenix secret "
                        f"{self.spec.secret}, or none; the binding stays until this one does",
                        "",
                    )

    def used_as_password(self, fm: FileModel, let: LetLiteral, left: Sequence[Node]) -> bool:
        """A use of ``let`` an edit replaced was the whole value of a binding named for a secret, or the text of
        an /etc file a password option read (etc_file removed it: ``environment.etc."db-pass".text = v;``)."""
        replaced = {u.start_byte for u in let.uses} - {u.start_byte for u in left}
        return any(
            b.exact
            and unparen(b.value).start_byte in replaced
            and unparen(b.value).type == "variable_expression"
            and (
                _secret_name(b.path)
                or (len(b.path) == 4 and b.path[:2] == ("environment", "etc") and b.path[3] == "text")
            )
            for b in fm.binds
        )

    def let_used_in(self, name: str, let: LetLiteral) -> bool:
        """Some use of ``let`` was replaced by an edit."""
        return any((name, u.start_byte) in self.let_used for u in let.uses)

    def _bound_at(self, fm: FileModel, node: Node) -> NixPath:
        """The option path of the innermost binding whose value holds ``node`` (() when none)."""
        best: Bind | None = None
        for b in fm.binds:
            inside = b.value.start_byte <= node.start_byte and node.end_byte <= b.value.end_byte
            if inside and (best is None or b.value.start_byte >= best.value.start_byte):
                best = b
        return best.path if best is not None else ()

    def claim_owner(self, owner: str, group: str | None, why: str, at: tuple[FileModel, Node] | None = None) -> None:
        """A reader of the migration's agenix file that is not root: the file gets that owner (and group).
        Two readers that are different users cannot both read a 0400 file: a by-hand item at ``at`` (the
        second reader), the first owner kept (root reads any file: only non-root readers claim)."""
        if self.owner is not None and self.owner == owner:
            self.group = self.group or group  # the same user: one claim, its group kept
            return
        if self.owner is not None:
            what = (
                f"the secret {self.spec.secret} is read by {owner.strip(chr(34))} here and by "
                f"{self.owner.strip(chr(34))} ({self.owner_why}): agenix gives a file one owner (0400); give "
                "one of them its own copy of the password (a second agenix secret), by hand"
            )
            if at is not None:
                self.manual_here(at[0], at[1], what, "")
            else:
                self.manual.append(Manual("", 0, 0, what, ""))
            return
        self.owner, self.group, self.owner_why = owner, group, why

    def service_reads(self, option: NixPath, at: tuple[FileModel, Node] | None = None) -> None:
        """``services.X...``: the agenix file is owned by the user X runs as, where nixmig knows it
        (NIXPKGS_READER); where it does not, the file stays root-only and a note says so."""
        from nixmig.nixsrc.shapes.option_companion import known_reader

        listed, reader = known_reader(option)
        if listed and reader is None:
            return  # systemd reads it (LoadCredential) as root: agenix's root-only file is right
        if reader is None and len(option) > 3 and option[:3] == ("services", "authelia", "instances"):
            reader = f"config.services.authelia.instances.{option[3]}.user"  # authelia-<name> by default
        if reader is None and len(option) > 1 and option[0] == "services":
            reader = NIXPKGS_READER.get(option[1])
        if reader is not None:
            self.claim_owner(reader, None, f"owned by the user services.{option[1]} runs as, who reads it", at)
            return
        self.notes.append(
            f"{'.'.join(option)}: agenix makes the file root-only (0400) and nixmig does not know which user "
            f"services.{option[1]} reads it as; if not root, set age.secrets.{self.spec.secret}.owner to that user "
            "(else the service fails to read it at start)"
        )

    def own_service(self, paths: Sequence[NixPath]) -> list[int]:
        """Under a move of a native service's own secret (no database recognised), the indexes of ``paths``
        that are options of the migration's service (services.<service>.…) when some are: another service's
        secret in the same file is another migration's (lanraragi's passwordFile, redis' requirePass)."""
        everything = list(range(len(paths)))
        service = self.spec.service
        if self.spec.strategy != "move" or not service or self.known or self.db is not None:
            return everything
        if not any(b.path[:2] == ("services", service) for _, b in self.all_binds()):
            return everything  # the key names no nixpkgs service of the tree: nothing to go by
        return [i for i, p in enumerate(paths) if len(p) > 1 and p[0] == "services" and p[1] == service]

    def file_sibling(self, path: NixPath) -> NixPath | None:
        """The file option that takes the literal at ``path`` instead: nixpkgs' ``<name>File`` sibling, or,
        under strategy move (the secret may be no database's: an admin password), one of
        option_companion.LITERAL_SIBLINGS (photoprism's settings.PHOTOPRISM_ADMIN_PASSWORD -> passwordFile)."""
        from nixmig.nixsrc.shapes.option_companion import LITERAL_SIBLINGS

        found = nixpkgs_file_sibling(path)
        if found is None and self.spec.strategy == "move":
            found = LITERAL_SIBLINGS.get(path)
        return found

    def take_sibling(self, found: list[tuple[FileModel, Lit, str, NixPath]], recognised: bool) -> None:
        """A nixpkgs option with a file sibling (``database.password`` beside ``passwordFile``): the
        database's one if several (or password_option's), else said, not guessed. ``recognised``: the
        plan found the password elsewhere (a database container, a URL, SQL): then an option of no
        database (redis' ``requirePass`` with the same value) is another credential, a companion the
        verdict offers (its own secret, value kept), never moved onto the database's secret: a rotation
        would change it while the clients that read it as a companion keep the old value."""
        if self.option_literal is not None or not found:
            return
        found = [found[i] for i in self.own_service([f[1].path for f in found])]
        if self.spec.password_option:
            want = tuple(self.spec.password_option.split("."))
            found = [f for f in found if f[3] == want]
        elif (
            recognised
            or len(found) > 1
            or self.spec.strategy != "move"
            or uses_secret(self.models, self.spec.secret, self.spec.secret_on_host)
        ):
            # (under a strategy that changes the value, only a database's option is this migration's: a
            # redis requirePass alone would get the rotated value while its clients keep the old one; and once
            # the tree uses the migration's secret, a move's first write took its value: a lone option left,
            # nextcloud's adminpass beside the dbpassFile it wrote, is another credential, not a second value)
            found = [f for f in found if database_option(f[1].path)]
        if len(found) != 1:
            return  # several: the verdict lists them, password_option picks one
        fm, lit, value, option = found[0]
        readers = environment_readers(self.models.values(), option[1]) if option[:-1] != lit.path[:-1] else []
        if readers:  # another unit copies the service's environment: moved, it would lose the password
            rfm, node = readers[0]
            self.mask_literal(fm, lit.node)
            self.manual_here(
                fm,
                lit.node,
                f"{'.'.join(lit.path)}: {rfm.where(node)} ({rfm.text(node)}) copies services.{option[1]}'s "
                f"environment, this password with it; with {'.'.join(option)} the module exports the password in "
                "its own unit's script only, so that copy would run without it: no template for this shape; move "
                f"it by hand (that unit needs the password too: LoadCredential from the agenix file)",
                "",
            )
            return
        if self.unread_file_option(fm, lit, option):
            return
        self.take_option_literal(fm, lit, value, option)
        self.service_reads(option, (fm, lit.node))

    def scan_literals(self, password: str | None, db: _Db | None) -> None:
        from nixmig.nixsrc.shapes import SHAPES  # the shapes import this module's helpers

        for shape in SHAPES:
            shape.apply(self, password)
        siblings: list[tuple[FileModel, Lit, str, NixPath]] = []
        self._scan_literals(password, db, siblings)
        self.url_variables(password, db)
        self.bare_variables(password, siblings)
        self.computed_clients()
        self.take_sibling(siblings, recognised=password is not None or bool(self.known))

    def _scan_literals(
        self, password: str | None, db: _Db | None, siblings: list[tuple[FileModel, Lit, str, NixPath]]
    ) -> None:
        from nixmig.nixsrc.shapes import env_subst, shared_env

        for fm, lit in self.all_lits():
            if (fm.name, lit.node.start_byte) in self.handled or self.companion(lit.path):
                continue  # a companion credential (also) is moved onto its own secret by patch_also
            if env_subst.handles(lit.path):
                continue  # settings a service substitutes variables into: shapes/env_subst.py
            if (fm.name, lit.node.start_byte) in self.imported_literals:
                continue  # a string of a plain file another file imports: edited where it is read (drop_imported)
            value = self.value_of(fm, lit.node)
            if value is None:  # a URL whose host or port reads config: edited as the literal, config kept
                value = self.url_with_config(fm, lit.node)
                url = split_url(value, password, self.spec.url_schemes) if value is not None else None
                if value is None or url is None or "%%nixmig" in url.prefix + url.password:
                    continue
                if self._is_ours(url, password, db) and not self._let_url_read_by_bindings(fm, lit):
                    self.on_url(fm, lit, value, url)
                continue
            url = split_url(value, password, self.spec.url_schemes)
            if url is not None and self._is_ours(url, password, db):
                if self._let_url_read_by_bindings(fm, lit):
                    continue  # its uses are edited where they are (url_variables), the binding then goes
                if self._other_project(fm, lit, db):
                    self.notes.append(
                        f"{fm.where(lit.node)}: a URL with the same password in another arion project; "
                        f"not this migration's database, left as it is (nixmig scan lists it)"
                    )
                    continue
                self.on_url(fm, lit, value, url)
            elif (
                lit.bind is not None
                and lit.exact
                and lit.path[-1:] == ("password",)
                and (password is None or value == password)
                and ((*lit.path[:-1], "passwordFile")) in self.option_paths
                and self.option_literal is None
            ):
                if not self.unread_file_option(fm, lit, (*lit.path[:-1], "passwordFile")):
                    self.take_option_literal(fm, lit, value, (*lit.path[:-1], "passwordFile"))
            elif (sibling := self.file_sibling(lit.path)) is not None and lit.bind is not None and lit.exact:
                if password is None or value == password:
                    siblings.append((fm, lit, value, sibling))
            elif password is not None and value == password and self.bare_in_env(fm, lit):
                continue
            elif password is not None and value == password and lit.bind is not None and _secret_name(lit.path):
                other = _other_credential(lit.path) or self.other_user(fm, lit.path)
                self.mask_literal(fm, lit.node)
                line = fm.line_col(lit.node.start_byte)[0]
                in_env = env_container(lit.path) is not None or shared_env.shared_var(self, fm, lit.bind) is not None
                fix = (
                    companion_fix(self.spec.migration, lit.path[-1], fm.name, line)
                    if in_env and _ENV_VAR.fullmatch(lit.path[-1])
                    else "give it its own secret, or a move migration"
                )
                self.manual_here(
                    fm,
                    lit.node,
                    f"the hardcoded password is bound to {'.'.join(lit.path)}: "
                    + (
                        "another credential with the database's value (two secrets in one; a rotation must not "
                        f"change it): {fix}"
                        if other
                        else ENSURE_USERS
                        if "ensureUsers" in lit.path
                        else ("no template for this shape: " + read[2:])
                        if (read := read_as_option(self.models, ".".join(lit.path)))
                        else unknown_shape(lit.path)
                    )
                    + self.let_reads(fm.name, lit.path),
                    "" if other else self.generic_snippet(lit.path),  # another's recipe would name this secret
                    lit.path[-1] if other and fix.startswith("run ") else "",
                )

    def app_password(self) -> str | None:
        """No database container in the repo (the database runs elsewhere): the password the apps hold
        for the migration's role, from a URL with that user on a host named in nixmig.toml (or local),
        or from a database password variable beside a database user variable naming the role
        (``FORGEJO__database__USER`` / ``..._PASSWD``, ``PAPERLESS_DBUSER`` / ``PAPERLESS_DBPASS``).
        One value, or None (several values: nothing is guessed)."""
        hosts = {"localhost", "127.0.0.1", "::1"} | {n for n in (self.spec.container, self.spec.db_service) if n}
        near: set[str] = set()
        far: set[str] = set()  # on another host (the database runs elsewhere): used when no near one is
        for _fm, lit in self.all_lits():
            value = decode_string(lit.node)
            if value is None:
                continue
            url = split_url(value, schemes=self.spec.url_schemes)
            if url is not None and unquote(url.user) == self.spec.role:
                (near if url.host in hosts else far).add(unquote(url.password))
        values = near or far
        any_user: set[str] = set()  # under move with no role set: whoever's (see _moves_any_user)
        for fm, b in self.all_binds():
            shared = len(b.path) in (3, 4) and b.path[0] == "<let>"  # a let-bound environment (shared_env)
            if not (b.exact or shared) or len(b.path) < 2:
                continue
            env_config = _env_option_shape(b.path) is not None  # services.mealie.settings.POSTGRES_PASSWORD
            if (
                b.path[-2] not in ("environment", "environments")
                and not (shared and len(b.path) == 3)
                and not env_config
            ):
                continue
            if not _db_words(b.path[-1]) or base_variable(b.path[-1]) != b.path[-1]:
                continue  # FILE__DB_PASS / DB_PASS_FILE: a path, not the password
            ws = env_words(b.path[-1])
            if not ws & {"pass", "passwd", "password", "pw", "pwd"}:
                continue
            env = b.path[:-1]
            users = [
                self.value_of(fm, unparen(u.value))
                for u in fm.binds
                if u.path[:-1] == env and _db_words(u.path[-1]) and env_words(u.path[-1]) & {"user", "username"}
            ]
            value = self.value_of(fm, unparen(b.value))
            if value is not None and self.spec.role in users:
                values.add(value)
            elif value is not None and self._moves_any_user(b.path):
                any_user.add(value)
        values = values or any_user
        return next(iter(values)) if len(values) == 1 else None

    def _moves_any_user(self, path: NixPath) -> bool:
        """A database password variable beside a user other than the role, under strategy move with no role
        set: move changes no password, so whose it is does not matter; the secret's name must name it
        (``photoprism-db-password`` and PHOTOPRISM_DATABASE_PASSWORD, or the container it is in)."""
        if self.spec.strategy != "move" or self.spec.role != "postgres":
            return False
        wanted = {w.lower() for w in words(self.spec.secret) if len(w) >= 3} - _PLAIN_SECRET_WORDS
        shape = env_container(path)
        have = {w.lower() for w in env_words(path[-1])} | ({w.lower() for w in words(shape[1])} if shape else set())
        return bool(wanted & have)

    def bare_in_env(self, fm: FileModel, lit: Lit) -> bool:
        """The password itself (not a URL) in a container's environment or a unit's Environment
        (``DB_PASSWORD = "..."``, an app's own ``POSTGRES_PASSWORD``): rendered into the env file as it is."""
        if lit.bind is None or not lit.exact or len(lit.path) < 2 or not _ENV_VAR.fullmatch(lit.path[-1]):
            return False
        if self.companion(lit.path):
            return False  # moved onto its own secret (also), by patch_also
        if not _secret_name(lit.path):
            return False  # POSTGRES_USER = "app" when the password is "app" too: a name, not the password
        if _other_credential(lit.path) or self.other_user(fm, lit.path):
            return False  # NEXTCLOUD_ADMIN_PASSWORD = the same value: another credential, the verdict says it
        if base_variable(lit.path[-1]) != lit.path[-1]:
            return False  # FILE__VAR / VAR_FILE: names a file, holds no password
        kept = self.value_of(fm, lit.node) if self.spec.strategy == "move" else None
        if kept is not None and not _RAW_ENV_VALUE.fullmatch(kept):
            # move keeps this value, and the renderer writes a bare line only for A-Z a-z 0-9 - . _ ~: it would
            # stop the unit at every start (its advice, a new value, is a rotation move does not do)
            self.refuse_kept(
                fm,
                lit,
                "has characters an env file line cannot hold unquoted (only A-Z a-z 0-9 - . _ ~), and the "
                "renderer would stop the unit at each start: by hand (a *_FILE variable if the app reads one), or "
                "rotate it first",
            )
            return True
        line = EnvLine(lit.path[-1], "", "", raw=True)
        shape = env_container(lit.path)
        if shape is not None:
            kind, name, prefix = shape
            if self.spec.app_services and name not in self.spec.app_services:
                return False
            if self._other_project(fm, lit, self.db) or (
                lit.path[-1] in self.spec.db_vars and self._is_server(fm, prefix)
            ):
                return False  # another project's, or another database server that has the same password
            self.mask_literal(fm, lit.node)
            image = self.image_of(fm, kind, prefix)
            if self.spec.strategy != "move" and (app := install_only(image, lit.path[-1])) is not None:
                self.install_only_client(fm, lit, name, image or app, app)
                return True
            if is_linuxserver(image):
                self.file_var_in_container(fm, lit, kind, name, prefix, image)
            else:
                self.url_in_container(fm, lit, kind, name, prefix, line)
            return True
        unit = _systemd_shape(lit.path) or _env_option_shape(lit.path)
        if unit is not None:
            self.mask_literal(fm, lit.node)
            self.url_in_systemd(fm, lit, unit, line)
            return True
        return False

    def other_user(self, fm: FileModel, path: NixPath) -> bool:
        """``ES_PASS`` beside ``ES_USER = "admin"`` (not the migration's role): the password of another account
        that holds the database's value (mastodon's ZincSearch login), not the database's: a rotation must not
        change it. A database word in the name changes nothing: ``SEAFILE_MYSQL_DB_PASSWORD`` beside
        ``SEAFILE_MYSQL_DB_USER = "seafile"`` is the seafile account's when the migration's role is root
        (realcfg33/04)."""
        var = path[-1] if path else ""
        if not var or ({w.lower() for w in env_words(var)} & _DATABASE_WORDS and self._moves_any_user(path)):
            return False  # a database password under move with no role set: whoever's, it moves (_moves_any_user)
        stem = _PASSWORD_SUFFIX.sub("", var)
        if stem == var:
            return False
        users = {stem + u for u in ("USER", "USERNAME", "LOGIN", "user", "username")}
        for b in fm.binds:
            if b.exact and b.path[:-1] == path[:-1] and b.path[-1] in users:
                who = decode_string(unparen(b.value))
                return who is not None and who != self.spec.role and who != self.spec.login_role
        return False

    def file_var_in_container(
        self, fm: FileModel, lit: Lit, kind: str, name: str, prefix: NixPath, image: str | None
    ) -> None:
        """``DB_PASS = "..."`` in a linuxserver.io app container: ``FILE__DB_PASS`` names the bind-mounted
        agenix file instead (the image's s6-overlay init reads any ``FILE__VAR`` as root at start), so no
        env file and no renderer; any byte of the password is fine."""
        assert lit.bind is not None
        var = lit.path[-1]
        ap = lit.bind.node.child_by_field_name("attrpath")
        assert ap is not None
        last = ap.named_children[-1]
        file_var = file_variable(var, image)
        new = str(template(KINDS[kind].template).password_file_env(file_var, self.spec.secret_in_container))
        attr, _, rest = new.partition(" = ")
        self.ed.add(
            fm,
            last.start_byte,
            lit.bind.node.end_byte,
            attr + fm.source[last.end_byte : lit.bind.value.start_byte].decode() + rest,
            f"replaces the hardcoded {var} of the {name} container ({image}, a linuxserver.io image): its "
            f"s6-overlay init sets {var} from the file {file_var} names, {self.spec.secret_in_container} (a "
            f"read-only bind mount of the agenix file), at each start; linuxserver images ignore {var}_FILE",
        )
        self.handled.add((fm.name, lit.node.start_byte))
        self.use_lets(fm, lit.node)
        self.replaced.append(f"{var} at {fm.where(lit.node)}")
        self.touched[(fm.name, *prefix)] = (fm, kind, name, prefix)
        self.ensure_volume(fm, kind, name, prefix)
        self.mount_file = self.mount_file or fm

    def _is_server(self, fm: FileModel, prefix: NixPath) -> bool:
        """The container runs a PostgreSQL server image (its own POSTGRES_PASSWORD initialises it)."""
        image = self._bind_at(fm, (*prefix, *KINDS[_kind_at(prefix)].image))
        value = decode_string(unparen(image.value)) if image is not None else None
        servers = ("postgres", "postgis", "pgvecto", "timescale", "mysql", "mariadb", "percona")
        return value is not None and any(w in value.lower() for w in servers)

    def _other_project(self, fm: FileModel, lit: Lit, db: _Db | None) -> bool:
        """The literal is in an arion service of another project than the database's."""
        if db is None or db.kind != "arion" or len(lit.path) < 2 or lit.path[-2] != "environment":
            return False
        shape = _container_shape(lit.path[:-2])
        if shape is None or shape[0] != "arion":
            return False
        return _project_key(fm, shape[2]) != _project_key(db.fm, db.prefix)

    def _is_ours(self, url: UrlParts, password: str | None, db: _Db | None) -> bool:
        if unquote(url.user) != self.spec.role:
            return False
        if password is not None:
            return unquote(url.password) == password
        if digest(unquote(url.password).encode()) in self.known:
            return True  # a value a shape recognised as the password (SQL a unit runs sets it for the role)
        hosts = {"localhost", "127.0.0.1", "::1"} | ({db.name} if db else set())
        return url.host in hosts

    def on_url(self, fm: FileModel, lit: Lit, value: str, url: UrlParts) -> None:
        self.fields_written_out(fm, lit.node, url)
        self.mask_url(fm, lit.node, value, url)
        self.known |= {digest(url.password.encode()), digest(unquote(url.password).encode())}
        url = self.as_login_role(url)
        var = env_variable_of(lit.path)
        shape = env_container(lit.path)
        systemd = _systemd_shape(lit.path) or _env_option_shape(lit.path)
        assignment = _environment_assignment(lit, value, url)
        if assignment is not None and _SAFE_URL_PART.fullmatch(url.suffix):
            unit, line = assignment
            self.url_in_systemd(fm, lit, unit, line)
            return
        problem = None
        safe = _SAFE_URL_PART.fullmatch(url.prefix) and _SAFE_URL_PART.fullmatch(url.suffix)
        if safe and not url.embedded and _ENV_VAR.fullmatch(lit.path[-1] if lit.path else ""):
            from nixmig.nixsrc.shapes import shared_env

            if shared_env.url_in_shared(self, fm, lit, EnvLine(lit.path[-1], url.prefix, url.suffix)):
                return  # a let-bound environment attrset the containers' environment is (realcfg36/06)
        if lit.bind is None or not lit.exact:
            problem = "not bound directly to an environment variable"
        elif url.embedded:
            problem = "the URL is part of a longer string"
        elif not _ENV_VAR.fullmatch(var):
            problem = f"{var!r} is not an environment variable name"
        elif not (_SAFE_URL_PART.fullmatch(url.prefix) and _SAFE_URL_PART.fullmatch(url.suffix)):
            problem = "the URL has characters an env file would reinterpret (quotes, spaces, $, backslashes)"
        if problem is None and shape is not None:
            kind, name, prefix = shape
            if self.spec.app_services and name not in self.spec.app_services:
                problem = f"{name} is not in app_services"
            else:
                self.url_in_container(fm, lit, kind, name, prefix, EnvLine(var, url.prefix, url.suffix))
                return
        elif problem is None and systemd is not None:
            self.url_in_systemd(fm, lit, systemd, EnvLine(var, url.prefix, url.suffix))
            return
        where = ".".join(lit.path) if lit.path else "an unbound string"
        segs = [seg.strip('"') for seg in lit.path]
        if (
            len(segs) >= 3
            and segs[-1] in ("command", "cmd", "entrypoint", "entrypoints")
            and ((segs[0] == "services" and segs[2] == "service") or "oci-containers" in segs)
        ):  # a container's command line: no env file line can be its argv; the generic recipe would mislead
            self.manual_here(
                fm,
                lit.node,
                f"a {url.scheme}:// URL with the hardcoded password in {where}, a container's command line (its "
                "argv, shown by `ps` and the engine's inspect): nixmig has no edit for it; have the program read "
                "the URL from its environment instead (most take DATABASE_URL), then patch again: nixmig moves "
                "an environment variable into an env file rendered from the agenix secret",
                "",
            )
            return
        shaped = string_shape(lit.path)  # environment.variables (every shell's), an activation script ...
        home = home_manager_podman(lit.path)
        self.manual_here(
            fm,
            lit.node,
            f"a {url.scheme}:// URL with the hardcoded password in {where}: "
            + (problem or shaped or (f"no template for this shape: {HOME_MANAGER_PODMAN}" if home else "")
               or "no template for this shape"),
            "" if shaped else self.generic_snippet(lit.path, EnvLine(var or "DATABASE_URL", url.prefix, url.suffix)),
        )  # fmt: skip

    def let_reads(self, file: str, path: NixPath) -> str:
        """For a let attrset's field (``<let>.env.DB_PASSWORD``): "; env is read at FILE:LINE:COL, ..." (``env``,
        ``env.DB_PASSWORD``), where the value goes (a wrapper's containers, home-manager's rootless quadlet:
        realcfg31/07); "" for any other path."""
        fm = self.models.get(file)
        if fm is None or path[:1] != ("<let>",) or len(path) < 3:
            return ""
        name = path[1]
        nodes = [n for n in descendants(fm.root) if n.type == "variable_expression" and fm.text(n) == name]
        reads = [fm.where(n) for n in sorted(nodes, key=lambda n: n.start_byte)]
        return f"; {name} is read at {', '.join(reads)}" if reads else ""

    @property
    def _new_login(self) -> bool:
        return bool(self.spec.login_role) and self.spec.login_role != self.spec.role

    def as_login_role(self, url: UrlParts) -> UrlParts:
        """The URL with the user the services connect as after the migration (dual-role: the new role)."""
        login = self.spec.login_role
        if not login or not self._new_login:
            return url
        new = quote(login, safe="")
        if url.prefix.endswith(url.user + ":"):  # the userinfo's user:password@
            head = url.prefix.removesuffix(url.user + ":")
            return dataclasses.replace(url, user=new, prefix=f"{head}{new}:")
        # the password in the query: its user= parameter, or the authority's user@
        param = re.compile(rf"([?&]user=){re.escape(url.user)}(?=[&#]|$)")
        prefix, n = param.subn(lambda m: m.group(1) + new, url.prefix, count=1)
        suffix = url.suffix
        if not n:
            suffix, n = param.subn(lambda m: m.group(1) + new, url.suffix, count=1)
        if not n:
            prefix, n = re.subn(rf"(://){re.escape(url.user)}@", lambda m: m.group(1) + new + "@", prefix, count=1)
        if not n:
            raise PatchError(
                f"a URL with its password in the query names no user nixmig can change to {login}",
                hint="add user= to the URL, then patch again",
            )
        return dataclasses.replace(url, user=new, prefix=prefix, suffix=suffix)

    def url_in_container(self, fm: FileModel, lit: Lit, kind: str, name: str, prefix: NixPath, line: EnvLine) -> None:
        assert lit.bind is not None
        r = self.renderer_for_container(fm, kind, name, prefix)
        if r is None:
            why = (
                f"no arion project imports {fm.name} by path, so nixmig cannot tell which systemd unit starts it "
                f"(set unit and module for this migration)"
                if kind == "arion"
                else "its name is computed (or its unit's, serviceName), so nixmig cannot tell its unit and runtime "
                "directory"
            )
            snippet = self.generic_snippet(lit.path, line)
            self.manual_here(fm, lit.node, f"{line.var} in the {name} container: {why}", snippet)
            return
        env_path = self.env_path(r)
        existing = r.files.setdefault(env_path, [])
        clash = [x for x in existing if x.var == line.var and x != line]
        if clash:
            self.manual_here(
                fm,
                lit.node,
                f"{line.var} has different URLs in different containers of {r.unit}: set env_file per "
                f"container by hand",
                self.generic_snippet(lit.path, line),
            )
            return
        if line not in existing:
            existing.append(line)
        self.ed.remove_binding(
            fm,
            lit.bind.node,
            f"removes {line.var} ({_holding(line)}) from the {name} container's environment, "
            f"which lands in the world-readable Nix store: the container reads it from {env_path} instead"
            + (f", connecting as {self.spec.login_role} (dual-role)" if self._new_login else ""),
        )
        self.handled.add((fm.name, lit.node.start_byte))
        self.use_lets(fm, lit.node)
        self.replaced.append(f"{line.var} at {fm.where(lit.node)}")
        r.literals.append(f"{line.var} at {fm.where(lit.node)}")
        self.touched[(fm.name, *prefix)] = (fm, kind, name, prefix)
        self.ensure_env_file(fm, kind, name, prefix, env_path, lit)

    def ensure_env_file(
        self, fm: FileModel, kind: str, name: str, prefix: NixPath, env_path: str, lit: Lit | Bind, why: str = ""
    ) -> None:
        rel = KINDS[kind].env_files
        tpl = template(KINDS[kind].template)
        node = lit.node if isinstance(lit, Lit) else lit.value
        why = why or (
            f"points the {name} container at {env_path}, rendered at each start by the unit's ExecStartPre "
            f"(outside the Nix store), for {lit.path[-1]} removed at {fm.where(node)}"
        )
        key = (fm.name, *prefix, *rel, env_path)
        self.patched_containers.add((fm.name, *prefix))
        if key in self.handled_env:
            return
        self.handled_env.add(key)
        for b in fm.binds:
            if b.path == (*prefix, *rel):
                lst = _list_part(b.value)
                if lst is not None:
                    if not any(decode_string(e) == env_path for e in lst.named_children):
                        self.ed.append_element(fm, lst, str(tpl.env_file_entry(env_path)), why)
                    return
                value = unparen(b.value)  # `environmentFiles = common;`: the env file goes after it
                entry = str(tpl.env_file_entry(env_path))
                self.ed.add(fm, value.start_byte, value.end_byte, f"({fm.text(value)}) ++ [ {entry} ]", why)
                return
        env_bind = self._bind_at(fm, (*prefix, *KINDS[kind].env))
        after = env_bind.node if env_bind is not None else None
        macro = tpl.env_file if kind == "arion" else tpl.environment_files
        root = self._service_attrset(fm, prefix)
        self.insert_path(fm, root, (*prefix, *rel), lambda a: str(macro(a, [env_path])), why, after)

    def renderer_for_container(self, fm: FileModel, kind: str, name: str, prefix: NixPath) -> _Renderer | None:
        if kind == "oci":
            real = self.container_name(fm, name)
            if real is None:
                return None  # "${f x}-db": no unit name, no runtime directory nixmig can write
            key = ("oci", fm.name, real)
            if key not in self.renderers:
                containers = self._bind_containing(fm, prefix)
                service = self.service_name([fm], prefix)
                if service == "":
                    return None  # a unit named by an expression: nixmig cannot tell which one to give it
                unit_seg = nix_attrpath((service,)) if service is not None else oci_unit_seg(fm, real)
                held = self._bind_at(fm, prefix)  # the container's own binding: the conditions around it
                self.renderers[key] = _Renderer(
                    key, "oci", fm, containers, unit_seg, real, real, container=real,
                    holder=held.node if held is not None else None,
                )  # fmt: skip
            return self.renderers[key]
        if kind == "quadlet":
            real = self.container_name(fm, name)
            if real is None:
                return None
            key = ("quadlet", fm.name, real)
            if key not in self.renderers:
                # quadlet-nix: the unit is NAME.service (the attribute name), configured by the
                # container's own serviceConfig, which quadlet writes into the unit's [Service]
                self.renderers[key] = _Renderer(
                    key,
                    "quadlet",
                    fm,
                    self._bind_containing(fm, prefix),
                    "",
                    f"{name}.service",
                    real,
                    container=real,
                    service_config=(*prefix, "serviceConfig"),
                )
            return self.renderers[key]
        # arion: the project (and its unit) that brings this compose file up
        project = self.arion_project(fm, prefix)
        if project is None:
            return None
        pfm, pname, anchor, unit = project
        key = ("arion", pfm.name, pname)
        if key not in self.renderers:
            self.renderers[key] = _Renderer(key, "arion", pfm, anchor, unit, unit, unit)
        return self.renderers[key]

    def container_name(self, fm: FileModel, name: str) -> str | None:
        """An oci container's attribute name as it is: ``web``, ``"web"``, or ``${svc}`` / ``"${svc}-db"`` with
        ``svc`` a let literal; None when an expression nixmig cannot read makes it."""
        raw = name[1:-1] if len(name) >= 2 and name.startswith('"') and name.endswith('"') else name
        if "\\" in raw:
            return None
        lets = self.lets[fm.name]
        out, i = "", 0
        while i < len(raw):
            if raw.startswith("${", i):
                j = raw.find("}", i)
                key = raw[i + 2 : j] if j != -1 else ""
                if key not in lets:
                    return None
                out += lets[key].value
                i = j + 1
            else:
                out += raw[i]
                i += 1
        return out

    def _bind_containing(self, fm: FileModel, prefix: NixPath) -> Node:
        for b in fm.binds:
            if b.exact and b.path and prefix[: len(b.path)] == b.path:
                return b.node
        for b in fm.binds:  # only dotted bindings under it (containers.web.image = ...; containers.web.env... = ...)
            if b.exact and b.path[: len(prefix)] == prefix:
                return b.node
        raise PatchError(f"no binding for {'.'.join(prefix)}", where=fm.name)

    def arion_project(self, fm: FileModel, prefix: NixPath) -> tuple[FileModel, str, Node, str] | None:
        """(file, project name, a node of the project's binding, unit name) for a compose service."""
        pname: str | None = None
        pfm: FileModel | None = None
        anchor: Node | None = None
        if prefix[:3] == ("virtualisation", "arion", "projects") and len(prefix) > 3:
            pfm, pname = fm, prefix[3]
            anchor = self._bind_containing(fm, prefix[:4])
        else:
            hits: list[tuple[FileModel, str, Node]] = []
            projects: list[tuple[FileModel, str, Node]] = []
            for other in self.models.values():
                for path, node in other.paths:
                    if path[:3] == ("virtualisation", "arion", "projects") and len(path) > 3:
                        target = posixpath.normpath(posixpath.join(posixpath.dirname(other.name), text(node)))
                        if fm.name in (target, posixpath.join(target, "default.nix")):
                            hits.append((other, path[3], node))
                for b in other.binds:
                    if b.exact and len(b.path) >= 4 and b.path[:3] == ("virtualisation", "arion", "projects"):
                        projects.append((other, b.path[3], b.node))
            if not hits and len({(p[0].name, p[1]) for p in projects}) == 1:
                hits = projects[:1]
                self.notes.append(
                    f"{fm.name} is not imported by path from a project: assuming the only arion project, "
                    f"{projects[0][1]} in {projects[0][0].name}"
                )
            if not hits:
                if self.spec.unit and self.spec.module:
                    mfm = self.file(self.spec.module, "module")
                    if mfm.roots:
                        return mfm, self.spec.unit, bindings(mfm.roots[0])[-1], self.spec.unit
                self.no_project.append(fm.name)
                return None
            pfm, pname, node = hits[0]
            anchor = node
        assert pfm is not None and pname is not None and anchor is not None
        unit = self.spec.unit or f"arion-{pname}"
        if not self.spec.unit:
            for b in pfm.binds:
                if b.path == ("virtualisation", "arion", "projects", pname, "serviceName"):
                    v = decode_string(b.value)
                    if v is None:
                        raise PatchError(
                            "the arion project's serviceName is computed",
                            where=pfm.where(b.value),
                            hint="set unit for this migration in nixmig.toml",
                        )
                    unit = v
        return pfm, pname, anchor, unit

    def url_in_systemd(
        self,
        fm: FileModel,
        lit: Lit,
        unit: str,
        line: EnvLine,
        removed: str = "",
        *,
        prefix: NixPath = (),
        credential_path: str | None = None,
    ) -> _Renderer:
        """``systemd.services.U.environment.VAR``, ``serviceConfig.Environment = [ "VAR=url" ]`` or a module's
        env-var config: the unit renders the line into an EnvironmentFile from a systemd credential.
        ``removed``: what the removed binding is, when it is no variable of the unit's Environment.
        ``prefix``: the system the unit is part of (``containers.NAME.config``: a declarative NixOS
        container's), whose LoadCredential reads ``credential_path`` (the host's file, bind-mounted)."""
        drop = lit.bind.node if lit.bind is not None else lit.node  # the binding, or the list element
        r = self.systemd_renderer(fm, unit, drop, prefix=prefix, credential_path=credential_path)
        env_path = self.add_env_line(r, line)
        removed = removed or f"{line.var} ({_holding(line)}) from the {unit} unit's Environment"
        self.ed.remove_binding(
            fm,
            drop,
            f"removes {removed}, which lands in the world-readable Nix store: the unit reads {line.var} from "
            f"{env_path} (EnvironmentFile)",
        )
        self.handled.add((fm.name, lit.node.start_byte))
        self.use_lets(fm, lit.node)
        self.replaced.append(f"{line.var} at {fm.where(lit.node)}")
        r.literals.append(f"{line.var} at {fm.where(lit.node)}")
        return r

    def systemd_renderer(
        self, fm: FileModel, unit: str, near: Node, *, prefix: NixPath = (), credential_path: str | None = None
    ) -> _Renderer:
        """The renderer of the unit ``systemd.services.<unit>`` of ``fm`` (``prefix``: the system it is part of,
        see url_in_systemd); its bindings go after the unit's, else after ``near`` (a module's unit)."""
        key = ("systemd", fm.name, *prefix, unit)
        if key not in self.renderers:
            try:
                anchor = self._bind_containing(fm, (*prefix, "systemd", "services", unit))
            except PatchError:  # services.X.config.VAR: the unit is configured by its module
                anchor = near
            self.renderers[key] = _Renderer(
                key,
                "systemd",
                fm,
                anchor,
                unit,
                unit,
                unit,
                service_config=(*prefix, "systemd", "services", unit, "serviceConfig") if prefix else None,
                credential_path=credential_path,
            )
        return self.renderers[key]

    def add_env_line(self, r: _Renderer, line: EnvLine) -> str:
        """``line`` into the env file ``r`` renders (once); that file's path."""
        env_path = self.env_path(r)
        existing = r.files.setdefault(env_path, [])
        if line not in existing:
            existing.append(line)
        return env_path

    def env_path(self, r: _Renderer) -> str:
        if self.spec.env_file:
            return self.spec.env_file
        return f"/run/{r.runtime_dir}/{self.spec.secret}.env"

    def runtime_dir(self, r: _Renderer) -> str:
        paths = list(r.files)
        dirs = {posixpath.dirname(p) for p in paths}
        if len(dirs) != 1 or not next(iter(dirs)).startswith("/run/"):
            raise ConfigError(
                f"env_file = {paths[0]!r}: must be a file directly in a directory under /run",
                hint="systemd creates it as the unit's RuntimeDirectory (0700)",
            )
        return next(iter(dirs)).removeprefix("/run/")

    # ------------------------------------------------ companion credentials (also)

    def companion(self, path: NixPath) -> bool:
        """``path`` binds a variable of a container's environment (or of a let-bound one containers share)
        that nixmig.toml's ``also`` names."""
        return bool(path) and path[-1] in self.also_vars and (env_container(path) is not None or path[0] == "<let>")

    def patch_also(self) -> None:
        """Each ``also = { VAR = "NAME" }``: VAR, in the containers this migration patches, reads the agenix
        secret NAME (its value kept): ``VAR_FILE`` / ``FILE__VAR`` and a bind mount where the image reads
        one, else a line of the env file the container's unit already renders. A VAR found nowhere in
        scope, or in a shape nixmig cannot edit, is said (never ignored)."""
        from nixmig.nixsrc.shapes import (
            activation_heredoc,
            container_store_file,
            initial_script,
            option_companion,
            shared_env,
        )

        for var, secret in self.spec.also:
            if container_store_file.is_key(var):  # a store file of a service inside a NixOS container
                container_store_file.move(self, var, secret)
                continue
            if option_companion.is_option_key(var):  # an option that takes a file: its own shape module
                option_companion.move(self, var, secret)
                continue
            if var.startswith("role:"):  # another role of an initialScript
                initial_script.move_role(self, var.removeprefix("role:"), secret)
                continue
            found = False
            for fm, b in list(self.all_binds()):
                if not b.path or b.path[-1] != var or not (b.exact or b.path[0] == "<let>"):
                    continue  # (a let-bound environment shared by containers: shared_env.shared_var)
                if decode_string(unparen(b.value)) == "":
                    continue  # an empty variable holds no secret (compose2nix copies a project's variables)
                shape = env_container(b.path)
                shared = shared_env.shared_var(self, fm, b) if shape is None else None
                if shared is not None:  # a let-bound environment every container using it is patched
                    found = True
                    self.move_shared_companion(fm, b, shared, var, secret)
                    continue
                if not b.exact:
                    continue  # another let binding: not a container's
                if shape is None:
                    if decode_string(unparen(b.value)) is not None or self.value_of(fm, b.value) is not None:
                        found = True
                        self.manual_here(
                            fm,
                            b.value,
                            f"{'.'.join(b.path)} is named in also ({var} = {secret!r}), but nixmig moves a "
                            f"companion credential only out of a container's environment: move it by hand",
                            self.generic_snippet(b.path),
                        )
                    continue
                kind, name, prefix = shape
                found = True
                if (fm.name, *prefix) not in self.touched:
                    self.manual_here(
                        fm,
                        b.value,
                        f"{var} is named in also ({var} = {secret!r}), but the {name} container is not one this "
                        f"migration patches (it holds neither the database's password nor a URL with it): give "
                        f"{var} of {name} its own migration, or move it by hand",
                        "",
                    )
                    continue
                self.move_companion(fm, b, kind, name, prefix, var, secret)
            if not found and activation_heredoc.move_companion(self, var, secret):
                continue  # a line of an activation script's heredoc, read by containers
            if not found and not self.companion_done(var, secret):
                touched = sorted({n for _, _, n, _ in self.touched.values()})
                self.manual.append(
                    Manual(
                        "",
                        0,
                        0,
                        f"also names {var} (secret {secret!r}), but no container this migration patches sets it"
                        + (f" ({', '.join(touched)})" if touched else "")
                        + f": remove {var} from also in [migrations.{self.spec.migration or '…'}], or check its name, "
                        "or move it by hand where it is set (nixmig patches virtualisation.oci-containers, arion, "
                        "quadlet-nix and docker-containers: a compose file written as text, or a wrapper's container, "
                        "is none of them)",
                        "",
                    )
                )

    def companion_done(self, var: str, secret: str) -> bool:
        """A tree patched already: VAR_FILE / FILE__VAR names the companion's file (its mount and
        age.secrets are checked again), or a renderer writes VAR from it."""
        in_container = posixpath.join("/run/secrets", secret)
        done = False
        for fm, b in list(self.all_binds()):
            if not b.exact or not b.path or b.path[-1] not in file_variables(var):
                continue
            shape = env_container(b.path)
            if shape is not None and decode_string(unparen(b.value)) == in_container:
                kind, name, prefix = shape
                done = True
                self.ensure_volume(fm, kind, name, prefix, secret)
                self.companion_owner(fm, kind, name, prefix, secret)
                self.also_replaced.setdefault(secret, [])
        # the renderer's line for VAR (its also_N is the companion's place in that script) and the file it reads
        line = _printf_lines(self.spec.secret, [EnvFile("x", (EnvLine(var, "", "", secret=secret),))])[0]
        head = line[: line.index('"$also_') + len('"$also_')].encode()
        reads = f"config.age.secrets.{nix_attr(secret)}.path".encode()
        if any(head in fm.source and reads in fm.source for fm in self.models.values()):
            done = True
            self.also_replaced.setdefault(secret, [])
        return done

    def companion_owner(self, fm: FileModel, kind: str, name: str, prefix: NixPath, secret: str) -> None:
        if is_linuxserver(self.image_of(fm, kind, prefix)):
            return  # FILE__VAR: read by the image's init, as root
        found = self.reader_of(fm, kind, name, prefix, secret)
        if found is not None:
            self.also_owner[secret] = found

    def companion_value(
        self, fm: FileModel, b: Bind, where: str, var: str, secret: str, *, env_line: bool = True
    ) -> str | None:
        """A companion literal's value, when it can move: a literal, not empty, one value per secret and
        (``env_line``) one an env file line holds unquoted; else None (said at its line, or nothing to move)."""
        value = self.value_of(fm, b.value)
        why = None
        if value is None:
            imported = self.imported_from(fm, b.value)
            why = f"{'.'.join(b.path)} (also: {secret!r}) " + (
                f"reads its value from {imported}, a plain .nix file of the repository: {IMPORTED_HOW}"
                if imported
                else "is computed, not a literal: nixmig cannot tell what it holds"
            )
        elif value == "":
            return None  # an empty variable holds no secret
        elif value != self.also_values.setdefault(secret, value):
            why = (
                f"{var} (also: {secret!r}) in {where} holds another value than where the secret {secret} takes "
                "it from: one secret holds one value; give this one its own migration, or make them equal first"
            )
        elif env_line and not _ALSO_VALUE.fullmatch(value):
            why = (
                f"{var} (also: {secret!r}) in {where} holds characters an env file line cannot hold unquoted "
                f"(only {ALSO_CHARS}): move it by hand"
            )
        if why is not None:
            self.manual_here(fm, b.value, why, "")
            return None
        return value

    def move_shared_companion(
        self, fm: FileModel, b: Bind, containers: Sequence[tuple[str, str, NixPath]], var: str, secret: str
    ) -> None:
        """A companion in a let-bound environment attrset shared by containers this plan patches: the
        variable leaves the attrset once, each container's env file gets its line (value kept)."""
        names = ", ".join(name for _, name, _ in containers)
        value = self.companion_value(fm, b, f"{b.path[1]}, the environment of {names},", var, secret)
        if value is None:
            return
        where = f"{var} at {fm.where(b.value)}"
        renderers = []
        for kind, name, prefix in containers:
            r = self.renderer_for_container(fm, kind, name, prefix)
            if r is None:
                self.manual_here(
                    fm,
                    b.value,
                    f"{var} (also: {secret!r}) in {b.path[1]}: nixmig cannot tell the unit that starts the {name} "
                    "container: move it by hand",
                    "",
                )
                return
            renderers.append((r, kind, name, prefix))
        for r, kind, name, prefix in renderers:
            env_path = self.add_env_line(r, EnvLine(var, "", "", secret=secret))
            self.ensure_env_file(fm, kind, name, prefix, env_path, b)
            r.literals.append(where)
        self.ed.remove_binding(
            fm,
            b.node,
            f"removes {var} (also) from {b.path[1]}, the environment shared by the {names} container(s), which "
            f"lands in the world-readable Nix store: each reads it from its env file, rendered from the agenix "
            f"secret {secret} (its value kept)",
        )
        self.mask_literal(fm, unparen(b.value))
        self.also_known.add(digest(value.encode()))
        self.handled.add((fm.name, unparen(b.value).start_byte))
        self.use_lets(fm, b.value)
        self.also_replaced.setdefault(secret, []).append(where)

    def move_companion(
        self, fm: FileModel, b: Bind, kind: str, name: str, prefix: NixPath, var: str, secret: str
    ) -> None:
        """One companion literal onto its own secret (see :meth:`patch_also`)."""
        value = self.companion_value(fm, b, f"the {name} container", var, secret, env_line=False)
        if value is None:
            return
        image = self.image_of(fm, kind, prefix)
        db = self.db
        is_db = db is not None and db.fm is fm and db.prefix == prefix
        file_var = None
        if is_linuxserver(image):
            file_var = file_variable(var, image)
        elif (
            var in _FILE_VARIANT_VARS
            and (is_db or self._is_server(fm, prefix))
            and reads_file_env(image)
            and not self.env_files_of(fm, kind, prefix)
            and self.user_by_name(fm, kind, prefix) is None
        ):
            file_var = f"{var}_FILE"  # else (an image not known to read it, env files already): an env file line
        where = f"{var} at {fm.where(b.value)}"
        if file_var is not None:
            ap = b.node.child_by_field_name("attrpath")
            assert ap is not None
            last = ap.named_children[-1]
            in_container = posixpath.join("/run/secrets", secret)
            new = str(template(KINDS[kind].template).password_file_env(file_var, in_container))
            attr, _, rest = new.partition(" = ")
            self.ed.add(
                fm,
                last.start_byte,
                b.node.end_byte,
                attr + fm.source[last.end_byte : b.value.start_byte].decode() + rest,
                f"replaces the hardcoded {var} of the {name} container (also): the image reads it from "
                f"{in_container}, a read-only bind mount of the agenix secret {secret}, which keeps its value"
                + (" (a linuxserver.io image: its s6-overlay init reads FILE__VAR)" if is_linuxserver(image) else ""),
            )
            self.ensure_volume(fm, kind, name, prefix, secret)
            self.companion_owner(fm, kind, name, prefix, secret)
        else:
            r = self.renderer_for_container(fm, kind, name, prefix)
            if r is None:
                self.manual_here(
                    fm,
                    b.value,
                    f"{var} (also: {secret!r}) in the {name} container: the image reads no file for it and "
                    f"nixmig cannot tell the unit that starts the container (a computed name, an arion file no "
                    f"project imports): move it by hand",
                    self.generic_snippet(b.path),
                )
                return
            if not _ALSO_VALUE.fullmatch(value):
                what = f"holds characters an env file line cannot hold unquoted (only {ALSO_CHARS}): move it by hand"
                self.manual_here(fm, b.value, f"{var} (also: {secret!r}) in the {name} container {what}", "")
                return
            env_path = self.add_env_line(r, EnvLine(var, "", "", secret=secret))
            self.ensure_env_file(fm, kind, name, prefix, env_path, b)  # the container's first env file, maybe
            self.ed.remove_binding(
                fm,
                b.node,
                f"removes {var} (also) from the {name} container's environment, which lands in the "
                f"world-readable Nix store: the container reads it from {env_path}, rendered from the agenix "
                f"secret {secret} (its value kept)",
            )
            r.literals.append(where)
        self.mask_literal(fm, b.value)
        self.also_known.add(digest(value.encode()))
        self.handled.add((fm.name, unparen(b.value).start_byte))
        self.use_lets(fm, b.value)
        self.also_replaced.setdefault(secret, []).append(where)

    # ------------------------------------------------ renderers

    def emit_renderers(self) -> None:
        spec = self.spec
        # one lib.mkMerge per computed binding, holding every renderer that joins it (two units of one file)
        merges: dict[tuple[str, int], tuple[FileModel, Bind, list[tuple[str, _Renderer]]]] = {}
        for r in self.renderers.values():
            if not r.files:
                continue
            files = [EnvFile(p, tuple(lines)) for p, lines in r.files.items()]
            fm = r.fm
            if self.has_renderer(r.runtime_dir):
                missing = [ln for ln in _printf_lines(spec.secret, files) if ln.encode() not in fm.source]
                if missing:
                    self.manual_here(
                        fm,
                        r.anchor,
                        f"{r.unit} already renders {spec.secret}, but not every URL found: add these lines to it",
                        "\n".join(missing),
                    )
                continue
            path = r.service_path
            root = fm.root_of(r.anchor)
            if root is None:
                snippet = self.render_unit(r, files, nix_attrpath(path))
                self.manual_here(fm, r.anchor, f"cannot find where {r.unit} is configured in this module", snippet)
                continue
            attrset, root_binding = root
            computed = self._computed_prefix(fm, path, attrset)
            if computed is not None:  # `systemd.services = (lib.genAttrs ...) // { ... };` (realcfg33/02)
                snippet = self.render_unit(r, files, nix_attrpath(path[len(computed.path) :]))
                merges.setdefault((fm.name, computed.node.start_byte), (fm, computed, []))[2].append((snippet, r))
                continue
            target = self.attrset_at(fm, path, within=attrset)
            if target is None:
                raise PatchError(f"no attrset for the unit {r.unit}", where=fm.name)
            after = root_binding if target.node == attrset else None
            if any(b.exact and b.path == (*r.service_path, "RuntimeDirectoryMode") for b in fm.binds):
                r.dir_mode = None  # the unit's own mode stays (join_runtime_directory)
            lines = [ln for f in files for ln in f.lines]
            urls = any(ln.prefix or ln.suffix for ln in lines)
            how = (
                "password percent-encoded"
                if urls
                else "the value single-quoted as it is"
                if any(ln.quoted for ln in lines)
                else "the value as it is"
            )
            source = spec.secret_on_host
            if r.credential_path is not None:  # a unit inside a declarative NixOS container
                inside = r.service_path[1]
                source = f"{r.credential_path} (the host's {source}, bind-mounted into the {inside} container)"
            why = (
                f"{r.unit}: an ExecStartPre renders {', '.join(f.path for f in files)} from "
                f"{source} at each start (RuntimeDirectory{' ' + r.dir_mode if r.dir_mode else ''}, file 0400, "
                f"{how}), "
                f"so the {'URL' if urls else 'value'} is never in the Nix store; it replaces {_listing(r.literals)}"
            )
            own_env_files = not (r.kind == "systemd" and self.append_environment_file(fm, r, files))
            attr = nix_attrpath((*target.write_prefix, *path[len(target.path) :]))
            snippet = self.join_exec_start_pre(fm, r, self.render_unit(r, files, attr, env_files=own_env_files))
            snippet = self.join_runtime_directory(fm, r, snippet)
            snippet = self.join_load_credential(fm, r, snippet)
            conds = self._conditions(r.holder, attrset) if r.holder is not None else []
            unit_bound = any(b.path[: len(path) - 1] == path[:-1] for b in fm.binds)
            if conds and not unit_bound and path[-1:] == ("serviceConfig",) and attr.endswith(".serviceConfig"):
                snippet = _under_conditions(snippet, attr, conds)
                why += f" (under the condition the container is defined under: {' && '.join(conds)})"
            self.ed.insert_binding(fm, target.node, snippet, why, after=after)
            self.need(fm, ("config", "lib", "pkgs"))
        for fm, b, joined in merges.values():
            self.merge_into(fm, b, joined)

    def _read_through_select(self, fm: FileModel, node: Node) -> str | None:
        """``POSTGRES_PASSWORD = chat.environment.SECRETS_postgres_password;`` in a ``rec`` set whose ``chat``
        binds that to ``lib.fileContents ./secrets/db-pass`` (realcfg39/03): the repository file it reads, once
        one binding of the file ends with the select's path and reads a file; None otherwise."""
        node = unparen(node)
        base = node.child_by_field_name("expression") if node.type == "select_expression" else None
        attrs = node.child_by_field_name("attrpath") if node.type == "select_expression" else None
        if base is None or attrs is None or unparen(base).type != "variable_expression":
            return None
        tail = (text(unparen(base)), *attr_names(attrs))
        found = {
            rel for b in fm.binds if b.path[-len(tail) :] == tail and (rel := file_read_of(fm, b.value)) is not None
        }
        return found.pop() if len(found) == 1 else None

    def readers_of_another_secret(self) -> None:
        """A service of the migration's role that reads its database password from another agenix secret
        already (``services.waterwheel.database.passwordFile = config.age.secrets.waterwheel.path``): the plan
        would set the role's password from this migration's secret while the service keeps reading the other,
        so after a rotation they differ (realcfg39/04, patched wrong). Said by hand, nothing written: the
        migration takes that secret (``secret = ...``), or the option is pointed at this one."""
        spec = self.spec
        theirs = {spec.secret} | {sec for _, sec in spec.also}
        for fm, bind in self.all_binds():
            p = bind.path
            if not bind.exact or len(p) < 4 or p[0] != "services" or not p[-1].endswith("File"):
                continue
            if p[1] != spec.role and not any(
                b.exact and b.path[:-1] == p[:-1] and b.path[-1] in ("user", "username", "name")
                and decode_string(unparen(b.value)) == spec.role
                for b in fm.binds
            ):  # fmt: skip
                continue
            if not ({w.lower() for w in words(".".join(p[1:-1]))} & _DATABASE_WORDS or "password" in p[-1].lower()):
                continue
            m = _AGE_PATH.search(fm.text(bind.value))
            name = m.group(1).strip('"') if m else None
            if name is None or name in theirs:
                continue
            self.manual_here(
                fm,
                bind.value,
                f"{'.'.join(p)} reads the agenix secret {name} already, and this migration's secret is {spec.secret}: "
                f"the plan would set role {spec.role}'s password from {spec.secret} while services.{p[1]} keeps "
                f'reading {name}, so after a rotation they differ. Set secret = "{name}" in this migration '
                f"(nixmig then rotates that secret), or point {p[-1]} at "
                f"config.age.secrets.{nix_attr(spec.secret)}.path",
                "",
            )

    def trust_notes(self, db: _Db | None) -> None:
        """PostgreSQL set to trust this migration's role (the image's POSTGRES_HOST_AUTH_METHOD = "trust", a
        pg_hba line of services.postgresql.authentication with method trust for its database and role): no
        client is asked the password, so a rotation changes nothing a client needs, and the secret protects
        nothing until that goes (realcfg36/03, 36/06). Said, never changed: the trust may be wanted."""
        if db is not None:
            b = self._bind_at(db.fm, (*db.prefix, *KINDS[db.kind].env, "POSTGRES_HOST_AUTH_METHOD"))
            if b is not None and decode_string(unparen(b.value)) == "trust":
                self.notes.append(
                    f"{db.fm.where(b.value)}: the {db.name} container sets POSTGRES_HOST_AUTH_METHOD = trust: "
                    "PostgreSQL asks no client for a password, so this secret is never checked (a rotation changes "
                    "nothing a client needs); remove that line to have the password matter"
                )
        wanted_db = {"all", "sameuser", "samerole", self.spec.role}  # (the database named after its role, usually)
        wanted_user = {"all", self.spec.role}
        for fm, bind in self.all_binds():
            if bind.path[-3:] != ("services", "postgresql", "authentication"):
                continue
            node = written_text(bind.value, root=fm.root)
            value = decode_any(node) if node is not None else None
            for line in (value or "").splitlines():
                tokens = line.split("#", 1)[0].split()
                if len(tokens) < 4:
                    continue
                at = 3 if tokens[0] == "local" else 4
                if len(tokens) > at and tokens[at] == "trust" and tokens[1] in wanted_db and tokens[2] in wanted_user:
                    self.notes.append(
                        f"{fm.where(bind.value)}: services.postgresql.authentication trusts role {self.spec.role} "
                        f"(`{' '.join(tokens)}`): a client that connects that way is never asked the password, so the "
                        "secret does not guard it (a rotation changes nothing that client needs)"
                    )
                    return

    def _conditions(self, anchor: Node, root: Node) -> list[str]:
        """The conditions of the ``lib.mkIf C { ... }`` (or ``optionalAttrs``) between the config root ``root``
        and a container's node ``anchor`` (``containers = mkMerge [ (mkIf cfg.monica.enable { monica = ...; })
        ]``), outermost first: its unit's renderer, written at the root, must exist only when the container
        does (realcfg37/05). Empty when there is none, or when a let or a function between them may bind a
        name a condition reads (it would not mean the same at the root)."""
        conds: list[str] = []
        n: Node | None = anchor
        while n is not None and not (n.start_byte == root.start_byte and n.end_byte == root.end_byte):
            parent = n.parent
            if parent is None:
                return []
            if parent.type in ("let_expression", "function_expression"):
                return []
            if parent.type == "apply_expression":
                name, args = _apply_parts(parent)
                last = args[-1] if args else None
                if (
                    name in ("mkIf", "optionalAttrs")
                    and len(args) == 2
                    and last is not None
                    and last.start_byte <= anchor.start_byte < last.end_byte
                ):
                    conds.insert(0, text(args[0]))
            n = parent
        return conds

    def _computed_prefix(self, fm: FileModel, path: NixPath, within: Node) -> Bind | None:
        """The binding of a prefix of ``path`` whose value merges attrsets with ``//``
        (``systemd.services = (lib.genAttrs ...) // { ... };``): a binding added inside its right operand
        would replace what the left one gives the same unit (``//`` is shallow), and one added beside it
        would not parse; None when there is none. A ``let ... in`` or ``with ...;`` around the ``//`` is looked
        through (compose2nix's ``systemd.services = let ... systemdServices = foldl' recursiveUpdate ...; in
        systemdServices // { ... };``, realcfg34/03)."""
        for b in fm.binds:
            if not b.exact or not b.path or len(b.path) >= len(path) or path[: len(b.path)] != b.path:
                continue
            if not (within.start_byte <= b.node.start_byte and b.node.end_byte <= within.end_byte):
                continue
            value = unparen(b.value)
            while value.type in ("let_expression", "with_expression"):
                body = value.child_by_field_name("body")
                if body is None:
                    break
                value = unparen(body)
            op = value.child_by_field_name("operator") if value.type == "binary_expression" else None
            if op is not None and text(op) == "//":
                return b
            if value.type == "variable_expression" or (
                value.type == "apply_expression" and _apply_parts(value)[0] not in _DEEP_WRAPPERS
            ):
                return b  # `lib.listToAttrs (map ...)`, `units`: a binding beside it would be a second definition
        return None

    def merge_into(self, fm: FileModel, b: Bind, joined: Sequence[tuple[str, _Renderer]]) -> None:
        """``NAME = EXPR;`` -> ``NAME = lib.mkMerge [ (EXPR) { SNIPPET } ... ];``, one attrset per renderer: the
        module system merges their bindings into what EXPR gives (a unit's after/requires from lib.genAttrs
        stay)."""
        value = b.value
        ind = " " * (fm.line_col(b.node.start_byte)[1] - 1)
        parts = [f"{ind}  ({fm.text(value)})"]
        for snippet, _ in joined:
            body = "\n".join(f"{ind}    {line}" if line else line for line in snippet.strip("\n").splitlines())
            parts.append(f"{ind}  {{\n{body}\n{ind}  }}")
        units = " and ".join(r.unit for _, r in joined)
        self.ed.add(
            fm,
            value.start_byte,
            value.end_byte,
            "lib.mkMerge [\n" + "\n".join(parts) + f"\n{ind}]",
            f"{units}: {'their renderers' if len(joined) > 1 else 'its renderer'} merged with lib.mkMerge into "
            f"{'.'.join(b.path)}, which an expression gives (a binding beside it would not parse; inside a // "
            "operand it would replace what the other gives)",
        )
        self.need(fm, ("config", "lib", "pkgs"))

    def join_exec_start_pre(self, fm: FileModel, r: _Renderer, snippet: str) -> str:
        """The unit's serviceConfig sets ExecStartPre already (``...serviceConfig.ExecStartPre = [ build ];``):
        the renderer's command goes first in that list, and the snippet loses its own ExecStartPre (a
        second one would not parse). A value that is no list becomes ``[ ours ] ++ lib.toList (old)``."""
        found = [b for b in fm.binds if b.exact and b.path == (*r.service_path, "ExecStartPre")]
        m = _SNIPPET_EXEC_START_PRE.search(snippet)
        if len(found) != 1 or m is None:
            return snippet
        value = unparen(found[0].value)
        why = f"{r.unit}: the renderer's command runs first among the ExecStartPre the unit sets already"
        if value.type == "list_expression":
            self.ed.add(fm, value.start_byte + 1, value.start_byte + 1, f" {m.group(1)}", why)
        else:
            old = fm.text(value)
            self.ed.add(fm, value.start_byte, value.end_byte, f"[ {m.group(1)} ] ++ lib.toList ({old})", why)
        return snippet[: m.start()] + snippet[m.end() :]

    def join_runtime_directory(self, fm: FileModel, r: _Renderer, snippet: str) -> str:
        """The unit's serviceConfig sets RuntimeDirectory (and maybe its mode) already, as a hand-written unit
        may: a second binding would not parse. The renderer's directory joins the unit's (the same name: the
        unit's declares it; another: a list of both), and a mode the unit sets stays (the env file is 0400
        in it, whatever the directory's mode)."""
        dirs = [b for b in fm.binds if b.exact and b.path == (*r.service_path, "RuntimeDirectory")]
        modes = [b for b in fm.binds if b.exact and b.path == (*r.service_path, "RuntimeDirectoryMode")]
        if len(dirs) > 1 or len(modes) > 1:
            return snippet
        if modes:  # (emit_renderers rendered it without one: dir_mode None)
            snippet = _SNIPPET_RUNTIME_MODE.sub("", snippet)
        if not dirs:
            return snippet
        runtime_dir = self.runtime_dir(r)
        value = unparen(dirs[0].value)
        theirs = decode_string(value)
        elements = [decode_string(e) for e in value.named_children] if value.type == "list_expression" else []
        if theirs != runtime_dir and runtime_dir not in elements:
            why = f"{r.unit}: the renderer's runtime directory /run/{runtime_dir} beside the one the unit sets"
            self.append_to_value(fm, value, nix_string(runtime_dir), why)
        return _SNIPPET_RUNTIME_DIRECTORY.sub("", snippet)

    def join_load_credential(self, fm: FileModel, r: _Renderer, snippet: str) -> str:
        """The unit's serviceConfig sets LoadCredential already (a TLS key, another secret): the renderer's
        credential joins that list (a second binding would not parse)."""
        found = [b for b in fm.binds if b.exact and b.path == (*r.service_path, "LoadCredential")]
        m = _SNIPPET_LOAD_CREDENTIAL.search(snippet)
        if len(found) != 1 or m is None:
            return snippet
        value = unparen(found[0].value)
        self.append_to_value(fm, value, m.group(1), f"{r.unit}: the renderer's credential beside those it loads")
        return snippet[: m.start()] + snippet[m.end() :]

    def append_environment_file(self, fm: FileModel, r: _Renderer, files: Sequence[EnvFile]) -> bool:
        """The unit's serviceConfig sets EnvironmentFile already (a string, an expression or a list):
        the rendered files join it, listed after (they win), instead of a second EnvironmentFile that would
        not parse. True when it did."""
        found = [b for b in fm.binds if b.exact and b.path == (*r.service_path, "EnvironmentFile")]
        if len(found) != 1:
            return False
        value = unparen(found[0].value)
        ours = " ".join(nix_string("-" + f.path) for f in files)
        why = f"{r.unit} reads {', '.join(f.path for f in files)} too, after the EnvironmentFile it sets (so it wins)"
        self.append_to_value(fm, value, ours, why)
        return True

    def append_to_value(self, fm: FileModel, value: Node, elements: str, why: str) -> None:
        """``elements`` (Nix text) after a serviceConfig value the unit sets: at the end of its list, or
        ``[ (old) elements ]`` for a string or an expression (a unit option takes either)."""
        if value.type == "list_expression":
            close = value.end_byte - 1
            self.ed.add(fm, close, close, f"{elements} ", why)
        else:
            self.ed.add(fm, value.start_byte, value.end_byte, f"[ ({fm.text(value)}) {elements} ]", why)

    def script_name(self, r: _Renderer) -> str:
        return store_name(f"{r.runtime_dir}-{self.spec.secret}-env")

    def has_renderer(self, runtime_dir: str) -> bool:
        name = store_name(f"{runtime_dir}-{self.spec.secret}-env")
        return any(decode_string(lit.node) == name for _, lit in self.all_lits())

    def orphan_env_files(self) -> None:
        """env_file entries naming our env file when no unit renders it (a tree patched only in part)."""
        generated = {r.runtime_dir for r in self.renderers.values() if r.files}
        for fm, b in self.all_binds():
            if not b.path or b.path[-1] not in ENV_FILE_ATTRS:
                continue
            lst = unparen(b.value)
            for e in lst.named_children if lst.type == "list_expression" else ():
                value = decode_string(e)
                m = re.fullmatch(r"/run/([^/]+)/" + re.escape(self.spec.secret) + r"\.env", value or "")
                if value is None or (m is None and value != self.spec.env_file):
                    continue
                runtime_dir = m.group(1) if m else posixpath.dirname(value).removeprefix("/run/")
                if runtime_dir not in generated and not self.has_renderer(runtime_dir):
                    self.manual_here(
                        fm,
                        e,
                        f"{'.'.join(b.path)} names {value}, but no unit renders it: restore the URL literal and "
                        f"run nixmig patch again, or add the renderer by hand",
                        "",
                    )

    def render_unit(self, r: _Renderer, files: Sequence[EnvFile], attr: str, *, env_files: bool = True) -> str:
        """The serviceConfig bindings of a renderer unit, written at ``attr`` ("" for inside serviceConfig);
        without EnvironmentFile when the unit sets one already (``env_files`` false: the files join it)."""
        spec = self.spec
        secret_attr = nix_attr(spec.secret)
        paths = [f.path for f in files]
        runtime_dir = self.runtime_dir(r)
        if r.kind == "systemd":
            cred = credential_name(spec.secret)
            script = script_in_nix(spec.secret, credential_word(cred), files)
            tpl = template("systemd-credential.nix.j2")
            load = (r.fm.name, r.unit_seg) not in self.credential_units  # else a script's shape set it: one only
            return str(
                tpl.unit(
                    attr,
                    r.unit,
                    cred,
                    secret_attr,
                    runtime_dir,
                    paths,
                    self.script_name(r),
                    script,
                    env_files,
                    load,
                    r.dir_mode,
                    r.credential_path,
                )
            )
        also = [
            (n, Antiquote(f"lib.escapeShellArg config.age.secrets.{nix_attr(n)}.path")) for n in also_secrets(files)
        ]
        script = script_in_nix(
            spec.secret, Antiquote(f"lib.escapeShellArg config.age.secrets.{secret_attr}.path"), files, also=also
        )
        tpl = template("arion-service.nix.j2" if r.kind == "arion" else "oci-containers.nix.j2")
        return str(tpl.unit(attr, r.container or r.unit, runtime_dir, paths, self.script_name(r), script))

    def need(self, fm: FileModel, names: Sequence[str]) -> None:
        self.needs_formals.setdefault(fm.name, set()).update(names)

    # ------------------------------------------------ age.secrets and the option

    def age_secret(self, preferred: FileModel | None, name: str | None = None) -> None:
        """age.secrets.NAME (the migration's secret, or the companion ``name``) in the module that holds
        the service, unless the tree declares it already."""
        spec = self.spec
        name = name or spec.secret
        entry = [(fm, b) for fm, b in self.all_binds() if b.exact and b.path[:3] == ("age", "secrets", name)]
        if any(declares_file(b, name) for _, b in entry):
            return
        if entry:  # written by hand without its file (owner, mode): the file goes beside them
            self.age_file_beside(entry[0][0], name)
            return
        fm = self.file(spec.module, "module") if spec.module else None
        if fm is None:
            with_age = [
                f for f in self.models.values() if any(b.exact and b.path[:2] == ("age", "secrets") for b in f.binds)
            ]
            if preferred is not None and preferred in with_age:
                fm = preferred
            elif len(with_age) == 1:
                fm = with_age[0]
            elif with_age:
                raise PatchError(
                    f"age.secrets is set in several files: {', '.join(f.name for f in with_age)}",
                    hint="set module for this migration in nixmig.toml",
                )
            else:
                fm = preferred
        if fm is None or not fm.roots:
            if not self.standalone_arion():  # (a standalone project's first line says why: run)
                self.manual.append(
                    Manual(
                        "",
                        0,
                        0,
                        f"no module to declare age.secrets.{name} in",
                        self.age_snippet(None, ("age", "secrets", name), name),
                    )
                )
            return
        existing = [b for b in fm.binds if b.exact and b.path[:2] == ("age", "secrets")]
        root = self.age_root(fm, existing)
        if root is None:
            self.manual.append(
                Manual(
                    fm.name,
                    1,
                    1,
                    f"{fm.name} holds several NixOS modules as values ({', '.join(m.label for m in fm.modules)}) "
                    f"and none holds this service: nixmig will not guess which declares age.secrets.{name}; "
                    "add it by hand"
                    if len(fm.modules) > 1
                    else f"every config block of {fm.name} that could hold age.secrets.{name} is conditional "
                    f"(lib.mkIf, if) and none holds this service: nixmig will not guess which; add it by hand",
                    self.age_snippet(fm, ("age", "secrets", name), name),
                )
            )
            return
        age_file = posixpath.join(posixpath.normpath(spec.secrets_dir), name + ".age")
        rel = posixpath.relpath(age_file, posixpath.dirname(fm.name) or ".")
        path_expr = nix_path(rel)
        tpl = template("agenix-secret.nix.j2")
        target = self.attrset_at(fm, ("age", "secrets", name), within=root)
        after = None
        if target is not None and target.path == ():
            # the entries themselves (age.secrets.X = { ... }), never a binding inside one (its `mode`)
            entries = [b for b in existing if not any(o.node != b.node and _in(b.node, o.node) for o in existing)]
            last_age = [b for b in entries if _in(b.node, target.node)]
            after = last_age[-1].node if last_age else None
        self.ed.staging = True
        try:
            self._insert_age(fm, root, name, tpl, path_expr, age_file, after)
        finally:
            self.ed.staging = False

    def age_missing_in_module_values(self) -> bool:
        """Edits that read ``config.age.secrets.NAME`` in two NixOS modules held as values of one file (a
        colmena node, a NixOps machine: hosts of their own) need age.secrets.NAME in each; nixmig declares
        it in one. True (nothing is written, each said) when a module reads one it does not declare."""
        missing = False
        for fm in self.models.values():
            if len(fm.modules) < 2:
                continue
            reads: dict[tuple[int, str], Embedded] = {}
            declares: set[tuple[int, str]] = set()
            for e in self.ed.items:
                m = fm.module_at(e.start) if e.file == fm.name else None
                if m is None:
                    continue
                for name in _AGE_READ.findall(e.replacement.decode(errors="replace")):
                    reads[(id(m), name.strip('"'))] = m
                for name in _AGE_DECLARED.findall(e.replacement.decode(errors="replace")):
                    declares.add((id(m), name.strip('"')))
            for b in fm.binds:
                m = fm.module_at(b.node.start_byte)
                if m is not None and b.path[:2] == ("age", "secrets") and len(b.path) >= 3:
                    declares.add((id(m), b.path[2]))
            for (key, name), m in reads.items():
                if (key, name) in declares or not any(n == name for _, n in declares):
                    continue  # declared here, or in no module value of this file (another file's: its import)
                others = sorted({o.label for (k, n), o in reads.items() if n == name and k != key})
                self.manual.append(
                    Manual(
                        fm.name,
                        fm.source.count(b"\n", 0, m.node.start_byte) + 1,
                        1,
                        f"{m.label} reads config.age.secrets.{name}.path, and so does {', '.join(others)}: NixOS "
                        f"modules held as values in {fm.name} (hosts of their own: a colmena node, a NixOps "
                        f"machine) each need age.secrets.{name}, and nixmig declares it in one module only; "
                        "nothing is written: declare it in each by hand (the snippet), then run patch again",
                        self.age_snippet(fm, ("age", "secrets", name), name),
                    )
                )
                missing = True
        return missing

    def age_file_beside(self, fm: FileModel, name: str) -> None:
        age_file = posixpath.join(posixpath.normpath(self.spec.secrets_dir), name + ".age")
        path_expr = nix_path(posixpath.relpath(age_file, posixpath.dirname(fm.name) or "."))
        self.ed.staging = True
        try:
            self.insert_path(
                fm,
                None,
                ("age", "secrets", name, "file"),
                lambda attr: f"{attr} = {path_expr};",
                f"age.secrets.{name} is set here without its file (agenix has no default for it): {age_file}",
            )
        finally:
            self.ed.staging = False

    def age_root(self, fm: FileModel, existing: Sequence[Bind]) -> Node | None:
        """Where age.secrets.NAME goes in ``fm``: the config block that holds this service (what the plan
        edits there), else an unconditional block (the one with the other age.secrets first), never a
        `lib.mkIf` block of something else; None when every block is conditional and none is this one's."""
        edited = [e.start for e in self.ed.items if e.file == fm.name]
        if self.option_literal is not None and self.option_literal[0] is fm:  # edited after age.secrets
            edited.append(self.option_literal[1].node.start_byte)
        related = [r for r in fm.roots if any(r.start_byte <= at < r.end_byte for at in edited)]
        if related:
            return related[-1]
        if len(fm.modules) > 1:  # several modules held as values, none edited: which is this host's?
            return None
        free = [r for r in fm.roots if not _conditional(r)]
        with_age = [r for r in free if any(_in(b.node, r) for b in existing)]
        if with_age or free:
            return (with_age or free)[-1]
        return None

    def _insert_age(
        self, fm: FileModel, root: Node, name: str, tpl: Any, path_expr: str, age_file: str, after: Node | None
    ) -> None:
        if name == self.spec.secret:
            owner, group, owner_why, replaced = self.owner, self.group, self.owner_why, self.replaced
            kept = ""
        else:
            owner, group, owner_why = self.also_owner.get(name, (None, None, ""))
            replaced = self.also_replaced.get(name, [])
            kept = " (a companion credential, nixmig.toml's also: its value is kept)"
        if any("config." in (x or "") for x in (owner, group)):
            self.need(fm, ("config",))
        self.insert_path(
            fm,
            root,
            ("age", "secrets", name),
            lambda attr: str(tpl.entry(attr, path_expr, owner, group)),
            f"declares the agenix secret {name}{kept}: agenix decrypts {age_file} to "
            f"{posixpath.join(self.spec.agenix_dir, name)} "
            + (f"({owner_why}, 0400)" if owner else "(root, 0400)")
            + f" at activation; the path is relative to {fm.name}"
            + (f"; it replaces {_listing(replaced)}" if replaced else ""),
            after=after,
        )

    def age_snippet(self, fm: FileModel | None, path: NixPath, name: str | None = None) -> str:
        age_file = posixpath.join(self.spec.secrets_dir, (name or self.spec.secret) + ".age")
        rel = posixpath.relpath(age_file, posixpath.dirname(fm.name) if fm else ".")
        return str(template("agenix-secret.nix.j2").entry(nix_attrpath(path), nix_path(rel)))

    def option_candidates(self) -> list[tuple[FileModel | None, NixPath]]:
        """The option(s) that may take the password file: password_option, else every declared passwordFile."""
        if self.spec.password_option:
            return [(None, tuple(self.spec.password_option.split(".")))]
        return [(fm, p) for fm in self.models.values() for p, _ in fm.options if p and p[-1] == "passwordFile"]

    def password_option(self, renderer_files: Sequence[FileModel]) -> None:
        spec = self.spec
        secret_attr = nix_attr(spec.secret)
        if self.option_literal is not None:
            tpl = template("module-option.nix.j2")
            fm, b, found = self.option_literal
            if found[:-1] != b.path[:-1]:  # the file option is elsewhere in the module (NIXPKGS_PATH_SIBLINGS)
                self.mask_literal(fm, b.value)
                self.ed.remove_binding(
                    fm,
                    b.node,
                    f"removes the hardcoded {'.'.join(b.path)}: services.{found[1]} reads the password from "
                    f"{'.'.join(found)} instead",
                )
                self.insert_path(
                    fm,
                    None,
                    found,
                    lambda attr: f"{attr} = config.age.secrets.{secret_attr}.path;",
                    f"{'.'.join(found)} names the file agenix decrypts {spec.secret} to (only the path is in the "
                    "Nix store; the module reads the file at runtime; a nixpkgs whose module lacks the option fails "
                    "to evaluate, naming it: update nixpkgs)",
                )
                self.need(fm, ("config",))
                return
            ap = b.node.child_by_field_name("attrpath")
            assert ap is not None
            last = ap.named_children[-1]
            new = str(tpl.password_file(found[-1], secret_attr))
            name, _, rest = new.partition(" = ")
            self.mask_literal(fm, b.value)
            self.ed.add(
                fm,
                last.start_byte,
                b.node.end_byte,
                name + fm.source[last.end_byte : b.value.start_byte].decode() + rest,
                f"replaces the hardcoded {'.'.join(b.path)} with {'.'.join(found)}: the path agenix decrypts "
                f"{spec.secret} to (only the path is in the Nix store; the module reads the file at runtime)",
            )
            self.need(fm, ("config",))
            return
        option: NixPath | None = tuple(spec.password_option.split(".")) if spec.password_option else None
        declared_in: FileModel | None = None
        if option is None:
            decl = [(fm, p) for fm, p in self.option_candidates() if fm is not None]
            near = [d for d in decl if d[0] in renderer_files]
            decl = near or decl
            if len(decl) > 1:
                self.notes.append(
                    "several passwordFile options are declared ("
                    + ", ".join(".".join(p) for _, p in decl)
                    + "): set password_option in nixmig.toml to pick one"
                )
                return
            if not decl:
                return
            declared_in, option = decl[0]
        assert option is not None
        for fm, b in self.all_binds():
            if b.exact and b.path == option:
                want = f"config.age.secrets.{secret_attr}.path"
                edited = any(
                    e.file == fm.name and e.start <= b.value.start_byte < max(e.end, e.start + 1) for e in self.ed.items
                )
                if fm.text(b.value).strip() != want and not edited:  # (a store file this plan points at the secret)
                    self.notes.append(f"{fm.where(b.node)}: {'.'.join(option)} is already set; left as it is")
                return
        if spec.strategy == "move" and not self.replaced and not self.known and self.db is None:
            # the value a move keeps comes from a literal the plan takes out: with none, the option would
            # name a secret nothing fills (and the literal would stay, as this migration's or not)
            self.manual.append(
                Manual(
                    "",
                    0,
                    0,
                    f"strategy move keeps a value, but nixmig found no literal of this migration to take it from: "
                    f"{'.'.join(option)} is not set to the secret (check the migration's service and role, and run "
                    "`nixmig scan`)",
                    "",
                )
            )
            return
        if spec.host_file:
            host: FileModel | None = self.file(spec.host_file, "host_file")
        else:
            host = self.infer_host_file(option, declared_in)
        tpl = template("module-option.nix.j2")
        snippet = str(tpl.password_file(nix_attrpath(option), secret_attr))
        if host is None or not host.roots:
            self.manual.append(Manual("", 0, 0, f"no host configuration sets {'.'.join(option[:2])}", snippet))
            return
        self.insert_path(
            host,
            None,
            option,
            lambda attr: str(tpl.password_file(attr, secret_attr)),
            f"sets {'.'.join(option)} to the path agenix decrypts {spec.secret} to (only the path is in the "
            f"Nix store; the module reads the file at runtime), instead of a password in the configuration",
        )
        self.need(host, ("config",))

    def login_user(self) -> None:
        """dual-role: the module's user option beside the password option (``database.user``) names the
        new role, when it is set to the old one in the configuration."""
        login, role = self.spec.login_role, self.spec.role
        if not login or login == role:
            return
        options = [p for _, p in self.option_candidates()]
        if self.option_literal is not None:
            options.append(self.option_literal[2])
        users = {(*p[:-1], u) for p in options for u in ("user", "username")}
        for fm, b in self.all_binds():
            if b.exact and b.path in users and decode_string(unparen(b.value)) == role:
                self.ed.add(
                    fm,
                    b.value.start_byte,
                    b.value.end_byte,
                    nix_string(login),
                    f"{'.'.join(b.path)}: the service connects as {login} (the second role, strategy dual-role) "
                    f"instead of {role}",
                )

    def infer_host_file(self, option: NixPath, declared_in: FileModel | None) -> FileModel | None:
        owner = option[:2]
        cands = [
            fm
            for fm in self.models.values()
            if fm is not declared_in and any(b.exact and b.path[:2] == owner for b in fm.binds)
        ]
        if self.spec.host:
            named = [
                fm for fm in cands if f"/{self.spec.host}/" in f"/{fm.name}" or fm.name.startswith(f"{self.spec.host}.")
            ]
            cands = named or cands
        if len(cands) > 1:
            raise PatchError(
                f"several files set {'.'.join(owner)}: {', '.join(f.name for f in cands)}",
                hint="set host_file for this migration in nixmig.toml",
            )
        return cands[0] if cands else None

    def mysql_under_rotation(self) -> bool:
        """The password the plan would move is a MySQL/MariaDB database's (its image's MYSQL_PASSWORD,
        MARIADB_PASSWORD ... holds it) while the strategy changes it: apply's phases are PostgreSQL's, so
        the rotation cannot happen. Said at that line (strategy move keeps the value); True: give up."""
        if self.spec.strategy == "move":
            return False
        places = [p for p in map(_mysql_place, self.replaced) if p is not None]
        if not places:
            return False
        var, file, line, col = places[0]
        mig = self.spec.migration or "NAME"
        self.manual.append(
            Manual(
                file,
                line,
                col,
                f"{var} holds this migration's password: the database is MySQL/MariaDB, and nixmig cannot "
                f'rotate its password (strategy {self.spec.strategy}): set strategy = "move" in '
                f"[migrations.{mig}] (the value is kept: `nixmig secret new {self.spec.secret} --from "
                f"{file}:{line}`), and role to the MySQL user (or root)",
                "",
            )
        )
        return True

    # ------------------------------------------------ the verdict: what the plan would leave

    def verdict(self, db: _Db | None, *, given_up: bool = False) -> None:
        """Scan the tree: every credential of this migration that no edit replaces is a by-hand item.

        "Nothing to change" is only possible when the scan found nothing left and the tree
        uses the secret (see :mod:`nixmig.nixsrc.leftover`)."""
        from nixmig.nixsrc.shapes import activation_heredoc, container_store_file, option_companion, shared_env

        spec = self.spec
        self.container_files_edited()
        used = uses_secret(self.models, spec.secret, spec.secret_on_host)
        in_use = bool(used) and declares_secret(self.models, spec.secret)
        recognised = bool(self.known) or db is not None or bool(self.renderers) or bool(self.ed.items)
        idents = [n for n in (spec.container, spec.db_service, *spec.app_services, spec.unit, spec.secret) if n]
        scope: set[str] | None = None
        read_by: dict[str, str] = {}  # a file a patched container reads values from -> what reads it
        if recognised or in_use:
            named = {posixpath.normpath(n) for n in (spec.module, spec.compose, spec.host_file) if n}
            scope = {e.file for e in self.ed.items} | named | used | naming(self.models, idents)
            patched_here = self.patched_containers | ({(db.fm.name, *db.prefix)} if db is not None else set())
            read_by = self.read_by_containers(patched_here)
            scope |= set(read_by)
        found = leftovers(
            self.models,
            self.ed.items,
            known=self.known,
            also_known=self.also_known,  # a companion's kept value left in the store is one too
            scope=scope,
            idents=idents,
            role=spec.role,
            skip={(m.file, m.line) for m in self.manual} | self.let_kept,
            migration=spec.migration if db is not None or self.known or self.patched_containers else None,
            containers=self.patched_containers | ({(db.fm.name, *db.prefix)} if db is not None else set()),
            strategy=spec.strategy,
        )
        found += self.copies_left(found)
        in_texts = self.copies_in_texts(found)
        patched = self.patched_containers | ({(db.fm.name, *db.prefix)} if db is not None else set())
        if self.ed.items and any(c[1:2] == ("docker-containers",) for c in patched):
            self.notes.append(
                "docker-containers is the option's name before NixOS 20.09: nixpkgs since maps it onto "
                "virtualisation.oci-containers (backend docker), whose environmentFiles and backend these edits use; "
                "on an older nixpkgs they do not evaluate (rename it to virtualisation.oci-containers.containers "
                "when you can)"
            )
        # the first item is the refusal's headline: this migration's own value first, then what the files that
        # name the migration (its container, service, unit) hold, then the rest (a helper's default elsewhere)
        named = naming(self.models, [*idents, spec.role])
        # a database's, or this service's words (not a secret's generic ones: "password" of influxdb-telegraf-password
        # made grafana's adminPassword this migration's, realcfg27/05)
        ours = DB_WORDS | {w for n in (*idents, spec.role) for w in words(n) if w.lower() not in GENERIC_SECRET_WORDS}

        def theirs(x: Leftover) -> bool:  # a wifi psk, an admin password: not what the refusal is about
            segs = [seg.strip('"') for seg in x.attribute.split(".")] if x.attribute else []
            # an account of another name (users.guacamole.password beside users.authentik's, realcfg31/03)
            other_account = any(
                segs[i] in _ACCOUNT_SETS and segs[i + 1] not in (spec.role, spec.login_role)
                for i in range(len(segs) - 2)
            )
            # a container's password whose own user variable names another user (zitadel's ADMIN_PASSWORD
            # beside ADMIN_USERNAME = "postgres", the role being zitadel: realcfg32/02)
            fm = self.models.get(x.file)
            pair = paired_user(fm, [s.strip('"') for s in segs[1:]] if segs[:1] == ["config"] else segs) if fm else None
            other_user = pair is not None and pair[1] not in (spec.role, spec.login_role)
            return (
                other_account
                or other_user
                or (fm is not None and _beside_a_database_password(fm, segs))
                or not ({w.lower() for w in words(x.attribute)} & ours)
            )

        def mine(x: Leftover) -> bool:  # its value is this migration's ("... not this migration's" is not)
            return x.ours or "holds this migration's" in x.what

        found.sort(key=lambda x: (not mine(x), x.file not in named, theirs(x)))
        if not given_up:
            said = {(m.file, m.line) for m in self.manual} | {(x.file, x.line) for x in found}
            self.notes += other_secrets(
                self.models, self.ed.items, known=self.known | self.also_known, said=said, owners=dict(spec.owners)
            )
        for left in found:
            self.masks.append((left.file, left.start, left.end))
            path = tuple(left.attribute.split(".")) if left.attribute else ()
            if path[:1] == ("config",) and len(path) > 1:  # a full-form module's: the option's path
                path = path[1:]
            # the line says what to do
            # (another credential's recipe would name this migration's secret: none; with the password known, a
            # literal that is not it is another credential, whatever its name; and a token or a key is none of a
            # database's passwords: loomio's secrets.cookie)
            other = not mine(left) and (
                theirs(left) or bool(self.known) or not any(f"a {DESCRIPTION[k]}" in left.what for k in _DB_KINDS)
            )
            snippet = (
                ""
                if string_shape(path)
                or len(path) <= 1  # a let binding's name is no variable an env file could set (18H/03)
                or left.in_sql
                or left.in_url
                or other
                or server_option(path)
                or login_password(path)
                or removed_option(path)
                or nixos_container(path) is not None  # its own system: the item says what to do there
                else self.generic_snippet(path)
            )
            if given_up and left.start in {m for f, m, _ in self.masks[:-1] if f == left.file}:
                # a literal the plan had an edit for: the reason it stays is the file above, not its shape
                what = left.what.partition(": ")[0] + ": left as it is: every edit was given up (the first item)"
                self.manual.append(Manual(left.file, left.line, left.col, what, ""))
                continue
            companion = (  # a native option's (also) too, and a heredoc line's
                left.companion
                or container_store_file.key_at(self, left)
                or option_companion.key_at(self, left)
                or activation_heredoc.companion_at(self, left)
                or shared_env.companion_at(self, left)
            )
            if given_up:
                companion = ""  # nothing moves: no companion to take first
            what = left.what
            if not companion and left.ours and _other_credential(path):
                # the database's value under another credential's name (synapse's registration_shared_secret):
                # the generic recipe would render it from the database's secret, which a rotation changes
                snippet = ""
                what = (
                    f"{left.what}; it is another credential (by its name) that shares the database's value: two "
                    "secrets in one, which nixmig does not move onto the database's secret (a rotation would change "
                    "it while what reads it keeps the old one): give it its own secret first (a migration of its "
                    f"own, strategy move: `nixmig secret new NAME --from {left.file}:{left.line}`), or change its "
                    "value, then patch again"
                )
            if not companion:
                what += self.let_reads(left.file, path)
            if left.file in read_by and not companion:
                what += (
                    f"; {read_by[left.file]} reads values from this file, in a container this migration patches: "
                    "nixmig moves a container's other credential onto a secret of its own only where its environment "
                    "holds the literal; write it there (patch then offers it, value kept), or move it by hand"
                )
                snippet = ""
            self.manual.append(Manual(left.file, left.line, left.col, what, snippet, companion))
        self.manual += in_texts
        self.manual = [app_route(self.models, data_key(self.models, m)) for m in self.manual]
        if found and not self.ed.items and not in_use and not any(mine(x) for x in found):
            # only others' literals left, and the password read from a repository file: the read is the
            # headline (realcfg35/02: a TURN secret's item was, and `secret new --from` named its line)
            self.manual[:0] = self.file_read_items()
        if not found and not self.ed.items and not self.manual and not in_use:
            hashes = self.password_hashes()
            if hashes:  # realcfg25/05: a SCRAM verifier set by postStart, which "check your keys" misread
                file, line, col, attr = hashes[0]
                self.manual.append(
                    Manual(
                        file,
                        line,
                        col,
                        f"found no hardcoded password of role {spec.role!r}, but a password hash ({attr}: a SCRAM "
                        "verifier or a crypt hash) that a statement or option may give it: a hash is not the "
                        "password (nobody logs in with it, and the password itself is not in the repository), so "
                        "nixmig has nothing to move onto the agenix secret. Nothing changed; if you want the hash "
                        "out of the Nix store too, move it by hand (a file the statement reads at run time)",
                        "",
                    )
                )
                return
            reads = self.file_read_items()
            if reads:  # realcfg26/10: `password = lib.strings.fileContents ./password.key`, read by the containers
                self.manual.append(reads[0])
                return
            self.manual.append(
                Manual(
                    "",
                    0,
                    0,
                    f"found no hardcoded password of role {spec.role!r} in a shape nixmig knows, and nothing uses "
                    f"the agenix secret {spec.secret} ({spec.secret_on_host}): nothing changed. Check the "
                    f"migration's service and its compose/module/db_service keys, and run `nixmig scan`",
                    "",
                )
            )

    def file_read_items(self) -> list[Manual]:
        """One by-hand item per password read from a plain file of the repository (file_read_passwords), or
        kept in a .nix file that is one string and imported whole (said at that string: realcfg35/07)."""
        out: list[Manual] = []
        for file, line, col, name, target in self.file_read_passwords():
            other = self.models.get(target) if target.endswith(".nix") else None
            literal = string_file(other) if other is not None else None
            if target.endswith(".nix") and (other is None or literal is None):
                continue  # no file of the tree, or no string: an attrset, a function (imported_reads' shapes)
            if other is not None and literal is not None:
                at_line, at_col = other.line_col(literal.start_byte + 1)
                out.append(
                    Manual(
                        target,
                        at_line,
                        at_col,
                        f"{target} holds a hardcoded password, a .nix file that is one string, imported whole as "
                        f"{name} at {file}:{line} (so in the world-readable Nix store with the configuration); "
                        f"nixmig edits a password where it is used, not in the file it is imported from: write "
                        f"the literal at {file}:{line} instead of the import, delete {target}, then patch again: "
                        "the literal moves onto the agenix secret",
                        "",
                    )
                )
                continue
            out.append(
                Manual(
                    file,
                    line,
                    col,
                    f"found no hardcoded password of role {self.spec.role!r} in the .nix files: {name} reads it from "
                    f"{target}, a plain file of the repository (read at evaluation, so it goes into the "
                    f"world-readable Nix store with the configuration); nothing changed: {FILE_READ_HOW}",
                    "",
                )
            )
        return out

    def file_read_passwords(self) -> list[tuple[str, int, int, str, str]]:
        """(file, line, col, name, the file read) of each binding whose value is a plain file of the repository
        read at evaluation, or a .nix file imported whole (file_read_passwords_of). A database's first: its name
        says one (``dbPass``), or the file reads it where a database password goes (a URL's userinfo,
        ``POSTGRES_PASSWORD = pw;``), so a web admin's (``adminPass``) is no headline (realcfg36/04)."""
        reads = [
            (name, *read)
            for name, fm in sorted(self.models.items())
            for read in file_read_passwords_of(fm, imports=True)
        ]

        def database(read: tuple[str, int, int, str, str]) -> bool:
            key = re.escape(read[3].encode())
            source = self.models[read[0]].source
            return _db_words(read[3]) or bool(
                re.search(rb":\$\{" + key + rb"\}@", source)
                or re.search(rb"(?:POSTGRES|MYSQL|MARIADB|DB|DATABASE)\w*PASS\w*\s*=\s*" + key + rb"\s*;", source)
            )

        return sorted(reads, key=lambda r: not database(r))

    def password_hashes(self) -> list[tuple[str, int, int, str]]:
        """(file, line, col, attribute) of each password hash scan finds in the tree's .nix files."""
        from nixmig.nixsrc.scan import scan_source

        return [
            (f.file, f.line, f.col, f.attr_path or "a string")
            for name, fm in sorted(self.models.items())
            for f in scan_source(fm.source, name).findings
            if f.kind is Kind.HASH
        ]

    # ------------------------------------------------ manual items and masks

    def silent_clients(self, db: _Db | None) -> None:
        """A container that uses the database with a password nixmig does not see (see nixsrc/clients.py)
        would be locked out by a rotation: said, by hand (strategy move changes no password)."""
        if db is None or self.spec.strategy == "move":
            return
        for c in silent_clients(self.models, db.kind, db.name):
            if self.spec.app_services and c.name.strip('"') not in self.spec.app_services:
                continue  # the user listed the database's clients
            if not self.image_default_client(c, db):
                self.manual_here(c.fm, c.depends.node, c.what(db.name, db.password), "")

    def etc_config_clients(self) -> None:
        """A native client configured by a file of the repository linked into /etc (``environment.etc.
        "pretalx/pretalx.cfg".source = ./pretalx.cfg``; a blind case, stop 23), named for the role a rotation
        changes: its password may be in that file, which nixmig does not read (no Nix): said, by hand."""
        if self.spec.strategy == "move" or not (self.role_units or self.sql_file):
            return
        role = self.spec.role.lower()
        for fm, bind in self.all_binds():
            if len(bind.path) != 4 or bind.path[:2] != ("environment", "etc") or bind.path[3] != "source":
                continue
            value = unparen(bind.value)
            if value.type != "path_expression" or role not in bind.path[2].strip('"').lower():
                continue
            name = bind.path[2].strip('"')
            self.manual_here(
                fm,
                bind.node,
                f"/etc/{name} comes from {fm.text(value)}, a file of the repository nixmig does not read (no Nix "
                f"in it): if a client of role {self.spec.role} keeps its database password there, the rotation "
                f'locks it out; move that password out of the file (or use strategy = "move", which changes no '
                f"password), then patch again",
                "",
            )

    def image_default_client(self, c: Client, db: _Db) -> bool:
        """A client whose image logs in as the migration's role with a known default variable (paperless-ngx'
        PAPERLESS_DBPASS, default "paperless") that is the database's password today: the variable is set
        in its env file,
        rendered from the agenix secret like any other, so a rotation reaches it. False: said by hand."""
        shape = container_shape(c.depends.path[:-1])
        if c.default is None or db.password is None or c.default[1] != db.password or shape is None:
            return False
        if c.login != self.spec.role:
            return False  # it logs in as another role (or one nixmig cannot read): the rotation is not its
        kind, name, prefix = shape
        r = self.renderer_for_container(c.fm, kind, name, prefix)
        if r is None:
            return False
        var = c.default[0]
        env_path = self.add_env_line(r, EnvLine(var, "", "", raw=True))
        self.ensure_env_file(
            c.fm,
            kind,
            name,
            prefix,
            env_path,
            c.depends,
            why=f"points the {name} container at {env_path}, rendered at each start by the unit's ExecStartPre: "
            f"its image ({c.image}) logs in with {var}, whose default is the database's password today; set "
            "there from the agenix secret, a rotation reaches it",
        )
        r.literals.append(f"{var} (the {c.image} image's default) for {c.fm.where(c.depends.node)}")
        return True

    def standalone_arion(self) -> bool:
        """The repository's .nix files are arion projects (run with `arion up`) and no NixOS module: nothing
        there can declare or read an agenix secret."""
        models = self.models.values()
        return any(_arion_compose(m) for m in models) and not any(
            m.roots and posixpath.basename(m.name) != "secrets.nix" and not _arion_compose(m) for m in models
        )

    def read_by_containers(self, containers: Collection[tuple[str, ...]]) -> dict[str, str]:
        """The .nix files a patched container's attrset reads values from (``MYSQL_ROOT_PASSWORD = (import
        ./plain-secrets.nix).rootPassword``, or through a let of its file: ``secrets = import ./secrets.nix``),
        each with where it is read: what they hold is the container's too, so the verdict reads them (a
        credential left there is said, naming its reader)."""
        from nixmig.nixsrc.scan import nix_paths

        def nix_files(node: Node, fm: FileModel) -> list[str]:
            return [
                name
                for _, p in nix_paths(node, fm.name)
                for name in (p, posixpath.join(p, "default.nix"))
                if name.endswith(".nix") and name in self.models
            ]

        files: dict[str, str] = {}
        for file, *rest in sorted(containers):
            fm = self.models.get(file)
            prefix = tuple(rest)
            if fm is None or not prefix:
                continue
            # the deepest binding first: the reader said is the variable (MYSQL_ROOT_PASSWORD), not the container
            binds = sorted(
                (b for b in fm.binds if b.exact and b.path[: len(prefix)] == prefix), key=lambda b: -len(b.path)
            )
            names: dict[str, Bind] = {}
            for b in binds:
                for n in descendants(b.value):
                    if n.type == "identifier":
                        names.setdefault(text(n), b)
                for name in nix_files(b.value, fm):
                    files.setdefault(name, f"{'.'.join(b.path)} ({fm.where(b.node)})")
            for n in descendants(fm.root):  # the lets of the file those values read
                parent = n.parent.parent if n.parent is not None else None
                if n.type != "binding" or parent is None or parent.type not in _LET_SCOPES:
                    continue
                ap, value = n.child_by_field_name("attrpath"), n.child_by_field_name("expression")
                reader = names.get(text(ap)) if ap is not None else None
                if ap is not None and reader is not None and value is not None:
                    for name in nix_files(value, fm):
                        files.setdefault(
                            name, f"{'.'.join(reader.path)} ({fm.where(reader.node)}, through the let {text(ap)})"
                        )
        return {k: v for k, v in files.items() if k not in {file for file, *_ in containers}}

    def container_files_edited(self) -> None:
        """An edit in a file that is a declarative NixOS container's configuration (``containers.NAME.config =
        ./chat.nix;``, ``import ./chat.nix``, or its ``imports``): that file is the container's system, not the
        host's, so ``age.secrets`` and ``config.age.secrets`` written there do not exist (no agenix inside; the
        deploy fails to evaluate). Said by hand, once per file, and nothing is written."""
        files = container_config_files(self.models)
        for name in sorted({e.file for e in self.ed.items} & set(files)):
            container, at = files[name]
            self.manual.append(
                Manual(
                    name,
                    1,
                    1,
                    f"{name} is the configuration of the declarative NixOS container {container} ({at} names it): a "
                    "system of its own, with no agenix, so the edits nixmig plans there (age.secrets, "
                    "config.age.secrets paths) would not evaluate; nixmig edits a container's services only where "
                    f"containers.{container}.config is written inline in the host's module. By hand: declare the "
                    f"secret in the host's module, bind-mount it read-only (containers.{container}.bindMounts), "
                    "and point the service inside at the mount",
                    "",
                )
            )

    def manual_here(self, fm: FileModel, node: Node, what: str, snippet: str, companion: str = "") -> None:
        line, col = fm.line_col(node.start_byte)
        item = Manual(fm.name, line, col, what, snippet, companion)
        if item not in self.manual:  # two shapes reaching one value say it once
            self.manual.append(item)

    def install_only_client(self, fm: FileModel, lit: Lit, name: str, image: str, app: str) -> None:
        """A client whose image reads the password only when it installs the app (the nextcloud image's
        POSTGRES_PASSWORD): the running app logs in with what its installer wrote into its config.php, often
        another user (``oc_<admin>``) with a password of its own. A rotation would lock it out or change
        nothing it uses, and nixmig cannot tell which from the repo (realcfg34/08, realcfg35/06)."""
        var = lit.path[-1]
        role = self.spec.role
        name = name.strip('"')
        self.handled.add((fm.name, lit.node.start_byte))
        self.manual_here(
            fm,
            lit.node,
            f"{var} of the {name} container ({image}): the {app} image reads it only when it installs {app}; the "
            f"running {app} logs in with dbuser/dbpassword from its config.php, often another user (oc_…) the "
            f"installer made: a rotation of {role} could lock it out, or change nothing it uses. Check on the "
            f"host (`occ config:system:get dbuser` in the container, as www-data): if it prints {role}, use "
            f'strategy = "move" (keeps the value) or change config.php\'s dbpassword with the rotation; if not, '
            f"{var} is read at install only: remove it and run patch again",
            "",
        )

    def refuse_kept(self, fm: FileModel, lit: Lit, why: str) -> None:
        """A value strategy move keeps that the env file nixmig would render cannot hold: the literal stays
        (masked in the diff), said at its line with ``why``; no other edit takes it."""
        self.mask_literal(fm, lit.node)
        self.handled.add((fm.name, lit.node.start_byte))
        self.manual_here(fm, lit.node, f"{'.'.join(lit.path)}: the value strategy move keeps {why}", "")

    def generic_snippet(self, path: NixPath, line: EnvLine | None = None) -> str:
        """For a shape without a template: what nixmig would write, for the unit that really starts the
        service (docker-/podman-NAME for an oci container, arion-PROJECT, the service's own unit) and
        the container's own option (environmentFiles, env_file); names guessed from the path."""
        spec = self.spec
        if wrapper_container(path) is not None:
            return ""  # the repo's own container option: a unit's EnvironmentFile= never reaches the container
        # a unit's script or command holds it: no variable of that name (`script=...` in an env file means
        # nothing); the script reads $DB_PASSWORD instead (realcfg34/06)
        scripted = bool(path) and path[-1] in ("script", "preStart", "postStart", "ExecStart", "ExecStartPre")
        line = line or EnvLine("DB_PASSWORD" if scripted else path[-1] if path else "PASSWORD", "", "", raw=True)
        if not line.prefix and not line.raw:
            line = dataclasses.replace(line, raw=True)
        note = (
            "# remove the literal, then either point the option at the file agenix decrypts (if the module\n"
            f"# has a *File option): config.age.secrets.{nix_attr(spec.secret)}.path\n"
            "# or render an env file at start from the agenix file, as nixmig does:\n"
        )
        if scripted:
            note = (
                f'# remove the literal from {path[-1]}, which then reads "$DB_PASSWORD" (its unit\'s environment),\n'
                "# rendered into an env file at start from the agenix file, as nixmig does:\n"
            )
        shape = env_container(path)
        if shape is not None:
            kind, name, prefix = shape
            name = name.strip('"')  # virtualisation.oci-containers.containers."web": the container is web
            files = [EnvFile(f"/run/{name}/{spec.secret}.env", (line,))]
            script = script_in_nix(
                spec.secret, Antiquote(f"lib.escapeShellArg config.age.secrets.{nix_attr(spec.secret)}.path"), files
            )
            paths = [f.path for f in files]
            if kind == "quadlet":  # quadlet-nix: NAME.service, set through the container's own serviceConfig
                tpl = template("oci-containers.nix.j2")
                return (
                    note
                    + str(tpl.environment_files(nix_attrpath((*prefix, *KINDS[kind].env_files)), paths))
                    + "\n"
                    + str(
                        tpl.unit(
                            nix_attrpath((*prefix, "serviceConfig")),
                            name,
                            name,
                            paths,
                            store_name(f"{name}-{spec.secret}-env"),
                            script,
                        )
                    )
                )
            if kind == "oci":
                tpl = template("oci-containers.nix.j2")
                segs = {oci_unit_seg(fm, name) for fm in self.models.values()}
                named = self.service_name(list(self.models.values()), prefix)
                segs = {named} if named else segs  # the container's serviceName
                literal = sorted(seg for seg in segs if not seg.startswith('"'))
                unit_seg = nix_attrpath((literal[0] if literal else oci_unit_seg(None, name),))
                return (
                    note
                    + str(tpl.environment_files(nix_attrpath((*prefix, "environmentFiles")), paths))
                    + "\n"
                    + str(
                        tpl.unit(
                            f"systemd.services.{unit_seg}.serviceConfig",
                            name,
                            name,
                            paths,
                            store_name(f"{name}-{spec.secret}-env"),
                            script,
                        )
                    )
                )
            project = prefix[3] if prefix[:3] == ("virtualisation", "arion", "projects") else "PROJECT"
            unit = f"arion-{project}"
            tpl = template("arion-service.nix.j2")
            return (
                note
                + f"# (the unit that starts the project: {unit}, or its serviceName)\n"
                + str(tpl.env_file(nix_attrpath((*prefix, "env_file")), paths))
                + "\n"
                + str(
                    tpl.unit(
                        f"systemd.services.{nix_attr(unit)}.serviceConfig",
                        unit,
                        name,
                        paths,
                        store_name(f"{name}-{spec.secret}-env"),
                        script,
                    )
                )
            )
        if path[:1] == ("<let>",) or home_manager_podman(path):
            return ""  # a let's field (what reads it is said: let_reads), a user's container: no system unit
        if path[:1] == ("services",) and not _UPPER_ENV_VAR.fullmatch(line.var):
            # a module's own option (mattermost's localDatabasePassword): no program reads a variable named after
            # it, so an env file line is no recipe (realcfg25/01: following it would leave the database as it was)
            return (
                "# remove the literal, then point the module at the file agenix decrypts, if it has a file option\n"
                f"# for it ({', '.join(dict.fromkeys((f'{line.var}File', 'passwordFile', 'environmentFile')))}): "
                f"config.age.secrets.{nix_attr(spec.secret)}"
                ".path\n"
                f"# (no program reads a variable named {line.var}: an env file line of that name is no recipe)"
            )
        if path[:2] == ("systemd", "services") and len(path) > 2:
            unit = path[2]
        elif path[:1] == ("services",) and len(path) > 1:
            unit = path[1]  # the service's own unit, in most nixpkgs modules
        elif not _UPPER_ENV_VAR.fullmatch(line.var):
            # no unit and no variable (an option's `default`, a unit's `script`): an env file line `default=...`
            # for a unit named UNIT is no recipe (realcfg30/01, 04, 05, 08); the item's text says what to do
            return ""
        else:
            unit = "UNIT"
        files = [EnvFile(f"/run/{unit}/{spec.secret}.env", (line,))]
        cred = credential_name(spec.secret)
        script = script_in_nix(spec.secret, credential_word(cred), files)
        return note + str(
            template("systemd-credential.nix.j2").unit(
                f"systemd.services.{nix_attr(unit)}.serviceConfig",
                unit,
                cred,
                nix_attr(spec.secret),
                unit,
                [f.path for f in files],
                store_name(f"{unit}-{spec.secret}-env"),
                script,
            )
        )

    def mask_literal(self, fm: FileModel, node: Node) -> None:
        if node.type in ("string_expression", "indented_string_expression"):  # (a let variable holds no value)
            quote = 2 if node.type == "indented_string_expression" else 1  # '' ... '' or " ... "
            self.masks.append((fm.name, node.start_byte + quote, node.end_byte - quote))

    def config_reads_back(self) -> None:
        """Each stand-in url_with_config put in a URL's text is its interpolation again, in the edits and the
        recipes (the renderer's script is a Nix string: Nix fills it in, the port or host the unit reads)."""
        if not self.config_reads:
            return

        def back(text: str) -> str:
            for stand_in, interpolation in self.config_reads.items():
                text = text.replace(stand_in, interpolation)
            return text

        self.ed.items = [
            dataclasses.replace(e, replacement=back(e.replacement.decode()).encode())
            if b"%%nixmig" in e.replacement
            else e
            for e in self.ed.items
        ]
        self.manual = [dataclasses.replace(m, snippet=back(m.snippet)) for m in self.manual]

    def mask_url(self, fm: FileModel, node: Node, value: str, url: UrlParts) -> None:
        if node.type == "variable_expression":
            return  # a let-bound URL's use: the let's literal is masked where it is (drop_lets)
        raw = fm.text(node)[1:-1]
        if raw == value:
            start = node.start_byte + 1 + len(url.prefix.encode())
            self.masks.append((fm.name, start, start + len(url.password.encode())))
        else:
            self.mask_literal(fm, node)

    # ------------------------------------------------ all together

    def run(self) -> Plan:
        db = self.db = self.find_db()
        if db is not None:
            self.patch_db(db)
        password = db.password if db is not None else self.app_password()
        if password:  # recognised: every copy of it left anywhere is this migration's (a plain file's SQL too)
            self.known.add(digest(password.encode()))
        self.scan_literals(password, db)
        self.local_roles()
        self.silent_clients(db)
        self.etc_config_clients()
        for name in sorted(set(self.no_project)):
            self.notes.append(
                f"{name}: no arion project imports this file by path: set unit and module for this migration"
            )
        self.patch_also()
        self.emit_volumes()
        self.switch_data(db)  # after the bind mounts: a volume renamed in a list they rewrite goes into that edit
        self.emit_renderers()
        self.orphan_env_files()
        renderer_files = [r.fm for r in self.renderers.values()]
        preferred = renderer_files[0] if renderer_files else None
        if preferred is None and db is not None and db.kind in ("oci", "quadlet"):
            preferred = db.fm
        if preferred is None and db is not None and db.kind == "arion":
            project = self.arion_project(db.fm, db.prefix)
            preferred = project[0] if project else None
        if preferred is None and self.option_literal is not None:
            preferred = self.option_literal[0]
        preferred = preferred or self.store_file or self.sql_file or self.mount_file
        if db is not None or self.renderers or self.spec.module or self.option_literal or preferred:
            self.age_secret(preferred)
        for secret in self.also_replaced:  # each companion moved (or found moved): its own age.secrets
            self.age_secret(preferred or self.mount_file, secret)
        self.password_option(renderer_files or ([preferred] if preferred else []))
        self.login_user()
        age_missing = self.age_missing_in_module_values()
        unusable = age_missing
        for name, names in self.needs_formals.items():
            fm = self.models[name]
            wanted = [n for n in ("config", "lib", "pkgs") if n in names]
            if wanted and not self.ed.ensure_formals(fm, wanted, f"the new code uses {', '.join(wanted)}"):
                line, what = self.ed.formals_refused.get(name) or (
                    1,
                    f"not a NixOS module nixmig can give {', '.join(wanted)} (a function of other arguments, "
                    f"or of one name): the new code needs them; if it is a NixOS module, write its head as "
                    f"{{ {', '.join(wanted)}, ... }}@NAME: (one name) or add them to its arguments, then patch again",
                )
                self.manual.append(Manual(name, line, 1, what, ""))
                unusable = True
        if unusable:  # the edits hang together (a renderer here, its env file named there): none, all said
            self.ed.items = []
            self.let_used.clear()  # no use was replaced: every let-bound password stays
            self.notes.append(
                "nothing is written: "
                + (
                    "age.secrets is needed in several NixOS modules held as values (above)"
                    if age_missing
                    else "the edits need a file nixmig cannot give config/lib/pkgs"
                )
            )
        elif self.mysql_under_rotation():
            unusable = True
            self.ed.items = []
            self.let_used.clear()
            self.notes.append("nothing is written: the password is a MySQL/MariaDB database's (strategy move)")
        self.drop_lets()
        self.drop_imported()
        self.drop_fields()
        if not unusable:
            self.comments_with_values()
        if self.ed.items:
            self.readers_of_another_secret()
        self.verdict(db, given_up=unusable)
        if self.ed.items and self.spec.strategy != "move":
            self.trust_notes(db)
        if self.standalone_arion() and (self.manual or self.ed.items):  # the refusal's first line
            self.manual.insert(
                0,
                Manual(
                    "",
                    0,
                    0,
                    f"no module to declare age.secrets.{self.spec.secret} in: no .nix file of the repository is a "
                    "NixOS module (an arion project run with `arion up`, a compose file: agenix decrypts secrets on "
                    "NixOS hosts only); import the project from a host's virtualisation.arion.projects.NAME.settings "
                    "and patch that repository, or keep this one's password out of it by hand",
                    "",
                ),
            )
            self.ed.items = []  # nothing here deploys: no diff to hold back
            self.manual = [dataclasses.replace(m, snippet="") for m in self.manual]  # no unit to give a recipe for
        self.ed.items = settle(self.ed.items, {name: fm.source for name, fm in self.models.items()})
        self.config_reads_back()
        edits = tuple(sorted(self.ed.items, key=lambda e: (e.file, e.start, e.end)))
        # the strings that hold the kept value first (a let's, an imported file's): `secret new --from` reads there
        kept = [(self.spec.secret, [*self.kept_literals, *self.replaced])] if self.spec.strategy == "move" else []
        kept += list(self.also_replaced.items())
        return Plan(
            edits,
            tuple(self.manual),
            tuple(dict.fromkeys(self.notes)),
            tuple(self.masks),
            tuple((name, tuple(dict.fromkeys(_file_line(p) for p in places))) for name, places in kept if places),
        )


_MYSQL_PASSWORD_VARS = frozenset({"MYSQL_PASSWORD", "MARIADB_PASSWORD", *_MYSQL_ROOT_VARS})


def _mysql_place(replaced: str) -> tuple[str, str, int, int] | None:
    """ "MARIADB_PASSWORD at f:12:9" -> (var, f, 12, 9) for a MySQL/MariaDB image's password variable."""
    var, _, where = replaced.rpartition(" at ")
    file, _, line_col = where.partition(":")
    line, _, col = line_col.partition(":")
    if var not in _MYSQL_PASSWORD_VARS or not line.isdigit() or not col.isdigit():
        return None
    return var, file, int(line), int(col)


def _file_line(replaced: str) -> str:
    """ "VAR at file:line:col" -> "file:line"."""
    return replaced.rpartition(" at ")[2].rpartition(":")[0]


def _printf_lines(secret: str, files: Sequence[EnvFile]) -> list[str]:
    """The renderer's printf lines for ``files``, as they appear escaped in the Nix source."""
    script = render_script(secret, "x", files, [(name, "x") for name in also_secrets(files)])
    lines = [ln.strip() for ln in script.splitlines() if ln.strip().startswith("printf '%s=")]
    return [escape_indented(ln + "\n", before_antiquote=False)[:-1] for ln in lines]


def store_file_content(value: Node, *, indented: bool = False, root: Node | None = None) -> Node | None:
    """The content string of ``pkgs.writeText "name" "content"`` (``toString`` around it, parentheses),
    or None when the value is anything else; ``indented``: an indented string too (a whole text); ``root``:
    the content may be a let string of the file read there only (written_text)."""
    node = written_text(value, plain=False, root=root)
    kinds = ("string_expression", "indented_string_expression") if indented else ("string_expression",)
    return node if node is not None and node.type in kinds else None


def container_config_files(models: Mapping[str, FileModel]) -> dict[str, tuple[str, str]]:
    """The repository files that are a declarative NixOS container's configuration -> (container, FILE:LINE
    that names it): ``containers.NAME.config = ./x.nix;``, ``= import ./x.nix;`` (with arguments too), or
    ``imports = [ ./x.nix ]`` inside it (a directory: its default.nix)."""
    out: dict[str, tuple[str, str]] = {}
    for fm in models.values():
        for b in fm.binds:
            p = b.path
            if not b.exact or len(p) < 3 or p[0] != "containers" or p[2] != "config" or len(p) not in (3, 4):
                continue
            if len(p) == 4 and p[3] != "imports":
                continue
            nodes = b.value.named_children if b.value.type == "list_expression" else [b.value]
            for node in nodes:
                node = unparen(node)
                if node.type == "apply_expression":
                    fn, args = _apply_parts(node)
                    node = unparen(args[0]) if fn == "import" and args else node
                if node.type != "path_expression":
                    continue
                target = posixpath.normpath(posixpath.join(posixpath.dirname(fm.name), fm.text(node)))
                target = target if target in models else posixpath.join(target, "default.nix")
                if target in models:
                    out.setdefault(target, (p[1], fm.where(node)))
    return out


def written_text(value: Node, *, plain: bool = True, root: Node | None = None) -> Node | None:
    """The text of ``pkgs.writeText "name" <text>`` (through toString and parentheses), or (``plain``)
    the value itself when it is a string: a double-quoted or an indented string node, else None.
    A ``*File`` option set to a plain string names a path, not a password: never ``plain`` there.
    With ``root`` (the file's), a variable read once and bound once in a let of the file stands for
    its expression, for the value or the text (``initialScript = pkgs.writeText "init.sql" initSql;``)."""
    node = _let_bound(value, root)
    while node.type == "apply_expression":  # lib.mkDefault (pkgs.writeText ...), mkForce, mkOverride 50 ...
        name, args = _apply_parts(node)
        if name not in ("mkDefault", "mkForce", "mkOverride", "mkOptionDefault") or not args:
            break
        node = unparen(args[-1])
    if plain and node.type in ("string_expression", "indented_string_expression"):
        return node
    inner = _sole_interpolation(node)
    if inner is not None:  # "${pkgs.writeText "pw" "..."}": the store path as a string
        node = inner
    node = _out_path(node)
    name, args = _apply_parts(node) if node.type == "apply_expression" else ("", [])
    if name == "toString" and len(args) == 1:
        node = unparen(args[0])
        name, args = _apply_parts(node) if node.type == "apply_expression" else ("", [])
    if name in ("writeText", "toFile") and len(args) == 2:
        content = _let_bound(args[1], root)
        return content if content.type in ("string_expression", "indented_string_expression") else None
    return None


def _let_bound(node: Node, root: Node | None) -> Node:
    node = unparen(node)
    if root is not None and node.type == "variable_expression":
        bound = let_expression(root, text(node))
        if bound is not None:
            return unparen(bound)
    return node


def _out_path(node: Node) -> Node:
    """``(pkgs.writeText "pw" "...").outPath`` -> the writeText (the derivation's store path, as toString
    gives it); any other node as it is."""
    if node.type != "select_expression":
        return node
    expr, attrpath = node.child_by_field_name("expression"), node.child_by_field_name("attrpath")
    if expr is None or attrpath is None or node.child_by_field_name("default") is not None:
        return node
    if attrpath.text != b"outPath" or unparen(expr).type != "apply_expression":
        return node
    return unparen(expr)


def _sole_interpolation(node: Node) -> Node | None:
    """The expression of ``"${expr}"`` (a string that is one interpolation and nothing else)."""
    if node.type != "string_expression":
        return None
    parts = [c for c in node.named_children]
    if len(parts) != 1 or parts[0].type != "interpolation" or parts[0].named_child_count != 1:
        return None
    return unparen(parts[0].named_children[0])


def _db_words(name: str) -> bool:
    return bool(
        env_words(name) & {"db", "database", "pg", "postgres", "postgresql", "psql", "sql", "jdbc", "datasource"}
    )


def _conditional(node: Node) -> bool:
    """The attrset is a `lib.mkIf COND { ... }` (or an `if` branch, `optionalAttrs`) somewhere up its chain."""
    cur = node.parent
    while cur is not None:
        if cur.type == "apply_expression":
            name, _ = _apply_parts(cur)
            if name in ("mkIf", "optionalAttrs"):
                return True
        elif cur.type == "if_expression":
            return True
        cur = cur.parent
    return False


def _holding(line: EnvLine) -> str:
    if line.quoted:
        return "the hardcoded value"
    return "the hardcoded password" if line.raw else "a URL with the hardcoded password"


def _listing(items: Sequence[str]) -> str:
    """ "the hardcoded literals A at f:1:2 and B at f:3:4" """
    if not items:
        return "no literal"
    head = "the hardcoded literal " if len(items) == 1 else "the hardcoded literals "
    return head + (items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1])


def option_read(models: Iterable[FileModel], name: str) -> bool:
    """Some file reads an option named ``name`` (``cfg.passwordFile``, ``inherit (cfg) passwordFile``), not
    only defines it (``x.passwordFile = ...``): a module of the repo that declares a file option may never
    read it, and then pointing it at the secret leaves the service without its password."""
    word = re.escape(name.encode())
    reads = re.compile(rb"\." + word + rb"\b(?!\s*=[^=])|\binherit\s*\([^)]*\)[^;]*\b" + word + rb"\b")
    return any(reads.search(m.source) for m in models)


def _unread_option(fm: FileModel, path: NixPath, node: Node) -> str:
    return (
        f"{'.'.join(path)}, declared at {fm.where(node)}, is read nowhere in the repo (no `.{path[-1]}`, "
        f"no `inherit (...) {path[-1]}`): nixmig does not point an option no code reads at the secret; make the "
        "module read it (or name password_option), then patch again"
    )


def credential_name(secret: str) -> str:
    """A systemd credential name for ``secret``: safe as a file name and as a bare shell word."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", secret).lstrip(".-") or "secret"


def credential_word(credential: str) -> str:
    """The shell word naming a credential's file: "$CREDENTIALS_DIRECTORY"/NAME (NAME from credential_name)."""
    return '"$CREDENTIALS_DIRECTORY"/' + credential


def _list_part(value: Node) -> Node | None:
    """The list literal a list-valued binding's value is (``[ ... ]``), or ends with (``vols ++ [ ... ]``,
    what an earlier run of patch makes of ``vols``); None for anything else."""
    value = unparen(value)
    if value.type == "list_expression":
        return value
    op = value.child_by_field_name("operator") if value.type == "binary_expression" else None
    right = value.child_by_field_name("right") if op is not None and text(op) == "++" else None
    return unparen(right) if right is not None and unparen(right).type == "list_expression" else None


def _in(node: Node, container: Node) -> bool:
    return container.start_byte <= node.start_byte and node.end_byte <= container.end_byte


def _beside_a_database_password(fm: FileModel, segs: Sequence[str]) -> bool:
    """A container's password variable with no database word in its name, beside one that has one
    (zitadel's FIRSTINSTANCE_ORG_HUMAN_PASSWORD beside DATABASE_POSTGRES_USER_PASSWORD): another account's
    (a web admin's, an smtp login), not the database's (realcfg32/02)."""
    path = tuple(segs[1:]) if segs[:1] == ["config"] else tuple(segs)
    if not path or env_container(path) is None or env_words(path[-1]) & DB_WORDS:
        return False
    return any(
        tuple(seg.strip('"') for seg in b.path[:-1]) == path[:-1]
        and b.path[-1] != path[-1]
        and env_words(b.path[-1]) & DB_WORDS
        and _PASSWORD_VAR_END.search(b.path[-1]) is not None
        for b in fm.binds
        if b.path
    )


_PASSWORD_VAR_END = re.compile(r"(?i)(PASSWORD|PASSWD|PASS|PWD)$")
# attribute sets keyed by an account's name (services.x.users.<name>.password)
_ACCOUNT_SETS = frozenset({"users", "accounts", "roles", "logins"})
_LET_SCOPES = ("let_expression", "rec_attrset_expression")  # where a binding's name is a variable
_UPPER_ENV_VAR = re.compile(r"[A-Z][A-Z0-9_]*")  # an environment variable as programs name theirs (DB_PASSWORD)


@dataclass(frozen=True)
class Imported:
    """A string of a second plain .nix file of the repository that a select reads: ``(import ./plain.nix).pw``
    or ``s.pw`` with ``s = import ./plain.nix`` a let of the reading file, that file a plain attrset
    binding the key to a string. The select is as good as the literal there (Builder.value_of); its binding
    goes when every read was replaced (Builder.drop_imported)."""

    file: str  # the plain file
    key: NixPath
    bind: Bind  # its binding of the key
    literal: Node
    value: str
    # the default of a module's own option (nixsrc/option_default.py): key is the option's path, bind its
    # `default = "...";`, file where the option is declared
    option: bool = False
    # a field of an attrset a let of the same file binds (`meta = { password = "..."; };`), read as a binding's
    # whole value (`POSTGRES_PASSWORD = meta.password;`): key is ("<let>", "meta", "password"), file the
    # reading file; its other reads (an interpolation in a text) are the field's, said if left
    let_field: Bound | None = None


def imported_reads(models: Mapping[str, FileModel]) -> dict[tuple[str, int], Imported]:
    """(file, start of the select) -> the :class:`Imported` string it reads, for every select of the tree:
    a plain file's string, or the default of an option no module sets (``"${cfg.dbPassword}"``)."""
    from nixmig.nixsrc.option_default import default_reads

    out = {
        (name, n.start_byte): imp
        for name, fm in models.items()
        for n in descendants(fm.root)
        if n.type == "select_expression" and (imp := import_target(models, fm, n)) is not None
    }
    for at, d in default_reads(models).items():
        out.setdefault(at, Imported(d.file, d.option, d.bind, d.literal, d.value, option=True))
    for name, fm in models.items():
        for start, imp in let_field_reads(fm).items():
            out.setdefault((name, start), imp)
    return out


def let_field_reads(fm: FileModel) -> dict[int, Imported]:
    """start of a select -> the :class:`Imported` let field it reads, for each select of a let attrset's string
    field that is a binding's whole value (``POSTGRES_PASSWORD = meta.password;``, realcfg34/04); a field
    built from its siblings in a ``rec { }`` is not followed."""
    from nixmig.nixsrc.lets import _formal_names
    from nixmig.nixsrc.shapes.let_script import fields

    out: dict[int, Imported] = {}
    for b in fields(fm, _formal_names(fm.root)):
        if b.readers or b.imported:
            continue
        bind = next((x for x in fm.binds if x.node == b.binding), None)
        if bind is None:
            continue
        key = ("<let>", *b.shown.split("."))
        for sel in b.uses:
            if sel.parent is not None and sel.parent.type == "binding":
                out[sel.start_byte] = Imported(fm.name, key, bind, b.literal, b.value, let_field=b)
    return out


def imported_password_findings(
    models: Mapping[str, FileModel], reads: Mapping[tuple[str, int], Imported] | None = None
) -> dict[str, list[Finding]]:
    """file -> findings scan cannot make alone: a string of a plain .nix file whose key says nothing
    (``albumsDb = "..."``), read by another file where a password goes (``PASSWORD '${private.albumsDb}'``,
    ``://u:${private.albumsDb}@``), found at its binding in the plain file (rule read-as-sql / read-as-url)."""
    from nixmig.nixsrc.scan import literal_finding, password_position, scan_source

    out: dict[str, list[Finding]] = {}
    done: set[tuple[str, int]] = set()
    for (name, start), imp in sorted((reads if reads is not None else imported_reads(models)).items()):
        at = (imp.file, imp.literal.start_byte)
        if at in done:
            continue
        fm, other = models[name], models[imp.file]
        node: Node | None = fm.root.descendant_for_byte_range(start, start)
        while node is not None and not (node.type == "select_expression" and node.start_byte == start):
            node = node.parent
        rule = password_position(fm.source, node) if node is not None else None
        if rule is None:
            continue
        done.add(at)
        lo, hi = imp.literal.start_byte, imp.literal.end_byte
        if any(lo <= f.start < hi for f in scan_source(other.source, other.name).findings):
            continue  # found by its name already
        f = literal_finding(other.source, other.name, lo, imp.key[-1], f"read-as-{rule}")
        if f is not None:
            out.setdefault(imp.file, []).append(f)
    return out


def import_target(models: Mapping[str, FileModel], fm: FileModel, node: Node) -> Imported | None:
    """The :class:`Imported` the select ``node`` of ``fm`` reads, or None."""
    base, attrs = node.child_by_field_name("expression"), node.child_by_field_name("attrpath")
    if base is None or attrs is None or node.child_by_field_name("default") is not None:
        return None
    base = unparen(base)
    if base.type == "variable_expression":
        bound_name = text(base).encode()
        if not re.search(rb"(?<![\w'-])" + re.escape(bound_name) + rb"\s*=\s*\(?\s*import\b", fm.source):
            return None  # (most selects read config or lib: no walk of the file for those)
        bound = let_binding_value(fm.root, text(base))
        base = unparen(bound) if bound is not None else base
    if base.type != "apply_expression":
        return None
    fn, args = _apply_parts(base)
    target = unparen(args[0]) if fn == "import" and len(args) == 1 else None
    if target is None or target.type != "path_expression" or not text(target).startswith(("./", "../")):
        return None
    name = posixpath.normpath(posixpath.join(posixpath.dirname(fm.name), text(target)))
    name = name if name in models else posixpath.join(name, "default.nix")
    other = models.get(name)
    if other is None or other is fm or other.bare_attrset() is None:
        return None
    key = attr_names(attrs)
    held = next((x for x in other.binds if x.exact and x.path == key), None)
    literal = unparen(held.value) if held is not None else None
    value = decode_string(literal) if literal is not None else None
    if held is None or literal is None or value is None:
        return None
    return Imported(name, key, held, literal, value)


# what to do with a password read from a second plain .nix file (Builder.imported_from)
IMPORTED_HOW = (
    "nixmig edits a password where it is used, not in the file it is imported from; write the literal here "
    "instead (and take it out of that file), then patch again: it moves onto the agenix secret"
)


def file_read_passwords_of(fm: FileModel, imports: bool = False) -> list[tuple[int, int, str, str]]:
    """(line, col, name, the file read, repo-relative) of each binding of ``fm`` whose value is a plain file
    of the repository read at evaluation (``builtins.readFile ./pw``, ``lib.strings.fileContents
    ./password.key``) and that is a password by its name or by where it is read (``POSTGRES_PASSWORD = pw;``,
    ``"postgres://u:${pw}@"``). ``imports``: a .nix file imported whole (``dbPassword = import ./pw.nix;``)
    too; the caller checks that it is one string (:func:`string_file`)."""
    from nixmig.nixsrc.scan import password_position

    out: list[tuple[int, int, str, str]] = []
    for node in descendants(fm.root):
        if node.type != "binding" or node.parent is None:
            continue
        ap, value = node.child_by_field_name("attrpath"), node.child_by_field_name("expression")
        rel = file_read_of(fm, value, follow=False, imports=imports) if ap is not None and value is not None else None
        if rel is None or ap is None or value is None:
            continue
        key = fm.text(ap).split(".")[-1]
        uses = [u for u in descendants(fm.root) if u.type == "variable_expression" and fm.text(u) == key]
        read_as = any(password_position(fm.source, u) for u in uses) or any(
            (classify_name(b.path[-1]) or _NO_CLASS).kind is Kind.PASSWORD
            for b in fm.binds
            if unparen(b.value).type == "variable_expression" and fm.text(unparen(b.value)) == key
        )
        if read_as or (classify_name(key) or _NO_CLASS).kind is Kind.PASSWORD:
            line, col = fm.line_col(value.start_byte)
            out.append((line, col, key, rel))
    return out


FILE_READ_HOW = (
    "nixmig edits .nix files only; write the literal here instead of the read, delete that file, then patch "
    "again: the literal moves onto the agenix secret (the value stays in the repository's history: rotate it)"
)


def file_read_of(fm: FileModel, node: Node, follow: bool = True, imports: bool = False) -> str | None:
    """The repository file ``node`` reads at evaluation (``lib.fileContents ./pw``, or, with ``follow``, a let
    variable bound to such a read; with ``imports``, a .nix file imported whole), repo-relative; None when it
    is no such read."""
    from nixmig.nixsrc.lets import let_binding_value

    node = unparen(node)
    if follow and node.type == "variable_expression":
        bound = let_binding_value(fm.root, fm.text(node))
        node = unparen(bound) if bound is not None else node
    written = fm.text(node).strip()
    m = _FILE_READ.fullmatch(written) or (_STRING_IMPORT.fullmatch(written) if imports else None)
    return posixpath.normpath(posixpath.join(posixpath.dirname(fm.name), m.group("path"))) if m else None


def string_file(fm: FileModel) -> Node | None:
    """The string literal a .nix file is, whole (``"pw"`` and nothing else: a password kept apart and imported
    whole as a value), else None."""
    top = top_expression(fm.root)
    node = unparen(top) if top is not None else None
    return node if node is not None and node.type == "string_expression" and decode_string(node) else None


def nix_path(rel: str) -> str:
    """A Nix path expression for a relative path (a literal when it can be one)."""
    if not rel.startswith(("./", "../")):
        rel = "./" + rel
    if re.fullmatch(r"[A-Za-z0-9._+\-/]+", rel) and "//" not in rel and not rel.endswith("/"):
        return rel
    return f"(./. + {nix_string('/' + rel)})"


# nixpkgs options that hold a secret in the store and have a sibling that takes the bare secret from a
# file instead, checked one by one against nixpkgs' modules ("*": any name): the literal becomes the
# sibling, set to the agenix path. Only these: a `password` elsewhere may have no twin (vikunja, hydra,
# zoneminder, selfoss), a twin of another format (roundcube's passwordFile is a .pgpass line), or sit in a
# freeform attrset where a `passwordFile` key is read by nothing (icingaweb2's resources, limesurvey's config).
NIXPKGS_FILE_SIBLINGS: dict[NixPath, str] = {
    ("services", "gitea", "database", "password"): "passwordFile",
    ("services", "forgejo", "database", "password"): "passwordFile",  # the literal is removed in newer nixpkgs
    ("services", "tt-rss", "database", "password"): "passwordFile",
    ("services", "redmine", "database", "password"): "passwordFile",  # the literal is removed in newer nixpkgs
    ("services", "nextcloud", "config", "dbpass"): "dbpassFile",  # the literals are removed in newer nixpkgs
    ("services", "nextcloud", "config", "adminpass"): "adminpassFile",
    ("services", "redis", "servers", "*", "requirePass"): "requirePassFile",  # read by a "+" ExecStartPre (root)
    ("services", "redis", "requirePass"): "requirePassFile",  # before servers.<name> (renamed to servers."")
    # old modules (<= 20.09) had both, asserting one; newer ones only the file (the literal dropped, no rename)
    ("services", "gitlab", "databasePassword"): "databasePasswordFile",
}
# who reads the file at runtime, when it is not root: agenix must give it that owner (never a
# world-readable mode). Keyed by the service under `services.`; a Nix expression for the owner.
NIXPKGS_READER: dict[str, str] = {
    "gitea": "config.services.gitea.user",
    "forgejo": "config.services.forgejo.user",
    "nextcloud": '"nextcloud"',
    "grafana": '"grafana"',
    "peertube": "config.services.peertube.user",  # its unit's script cats database/redis passwordFile
    "freshrss": "config.services.freshrss.user",  # freshrss-config (User = freshrss) cats database.passFile
    # bookstack-setup (User = bookstack) reads appKeyFile and database.passwordFile (public configurations set
    # their sops/agenix owner to config.services.bookstack.user)
    "bookstack": "config.services.bookstack.user",
    # gitlab-config (User = gitlab) reads databasePasswordFile and the secrets.* files (public configurations
    # set their agenix owner to config.services.gitlab.user)
    "gitlab": "config.services.gitlab.user",
    # checked in nixpkgs' modules: the unit (or php-fpm pool) that reads the file runs as that user
    "mediawiki": '"mediawiki"',  # mediawiki-init (User = "mediawiki") and the php-fpm pool
    "tt-rss": "config.services.tt-rss.user",
    "redmine": "config.services.redmine.user",  # redmine's preStart
    "zabbixServer": '"zabbix"',  # zabbix-server's preStart
    "zabbixProxy": '"zabbix"',
    "zabbixWeb": '"zabbix"',  # the php-fpm pool
    "limesurvey": '"limesurvey"',
    "wordpress": '"wordpress"',
    "mastodon": "config.services.mastodon.user",  # mastodon-init-dirs
    "writefreely": "config.services.writefreely.user",
    "discourse": '"discourse"',
    "kimai": '"kimai"',
    "snipe-it": "config.services.snipe-it.user",
    "monica": "config.services.monica.user",
    "dolibarr": "config.services.dolibarr.user",
    "cloudlog": "config.services.cloudlog.user",
    # their setup units (User = cfg.user) read each *_FILE setting (shapes/etc_file.FILE_SETTINGS_SERVICES)
    "firefly-iii": "config.services.firefly-iii.user",
    "firefly-iii-data-importer": "config.services.firefly-iii-data-importer.user",
}


# a nixpkgs module's database file option -> (the switch that makes the module provision the database
# itself, the role it then logs in as, whatever database.username says). Checked in nixpkgs: keycloak's
# keycloakPostgreSQLInit / keycloakMySQLInit create role keycloak with the password from passwordFile
# (database.username "has no effect when a local database is automatically provisioned"; createLocally
# defaults to true).
NIXPKGS_LOCAL_ROLES: dict[NixPath, tuple[NixPath, str]] = {
    ("services", "keycloak", "database", "passwordFile"): (
        ("services", "keycloak", "database", "createLocally"),
        "keycloak",
    ),
}


def provisioned_role(option: NixPath, binds: Iterable[tuple[FileModel, Bind]]) -> str | None:
    """The role the module of the file option ``option`` logs in as when it provisions its database itself
    (NIXPKGS_LOCAL_ROLES), unless one of ``binds`` sets its switch to false; None for any other option."""
    local = NIXPKGS_LOCAL_ROLES.get(option)
    if local is None:
        return None
    switch, role = local
    off = any(b.path == switch and fm.text(unparen(b.value)) == "false" for fm, b in binds)
    return None if off else role


# a database's password in a nixpkgs module's settings whose file option sits elsewhere in the module
# (not a `<name>File` beside it). Checked in nixpkgs: photoprism's module loads databasePasswordFile
# with LoadCredential (so root reads it) and exports PHOTOPRISM_DATABASE_PASSWORD from it in the unit's
# script and preStart; a nixpkgs from before that option fails to evaluate, loudly, naming it.
NIXPKGS_PATH_SIBLINGS: dict[NixPath, NixPath] = {
    ("services", "photoprism", "settings", "PHOTOPRISM_DATABASE_PASSWORD"): (
        "services",
        "photoprism",
        "databasePasswordFile",
    ),
    # removed in newer nixpkgs ("Use services.zabbixServer.database.passwordFile instead."); read by
    # zabbix-server's preStart as "zabbix"
    ("services", "zabbixServer", "dbPassword"): ("services", "zabbixServer", "database", "passwordFile"),
}


def environment_readers(models: Iterable[FileModel], service: str) -> list[tuple[FileModel, Node]]:
    """Expressions that copy a service's environment elsewhere: ``config.systemd.services.S.environment``
    (also by ``inherit (config.systemd.services.S) environment``) or ``config.services.S.settings``."""
    from nixmig.nixsrc.parse import descendants

    unit = f"config.systemd.services.{service}"
    out: list[tuple[FileModel, Node]] = []
    for fm in models:
        for node in descendants(fm.root):
            if node.type not in ("select_expression", "inherit_from"):
                continue
            text = re.sub(r"\s+", "", fm.text(node))
            copies = (
                text.startswith((f"{unit}.environment", f"config.services.{service}.settings"))
                if node.type == "select_expression"
                else text.startswith(f"inherit({unit})") and "environment" in text
            )
            if copies:
                out.append((fm, node))
    return out


def database_option(path: NixPath) -> bool:
    """An option that holds a database's password (``services.gitea.database.password``, nextcloud's
    ``dbpass``, photoprism's ``settings.PHOTOPRISM_DATABASE_PASSWORD``), not another service's (redis'
    ``requirePass``, an smtp or admin password)."""
    if bool(set(path[-2:]) & {"database", "db"}) or path[-1] == "dbpass" or path in NIXPKGS_PATH_SIBLINGS:
        return True
    if _authelia_file_variable(path) is not None:  # its storage backend's login
        return True
    return bool(path) and words(path[-1])[:2] == ["database", "password"]  # gitlab's old databasePassword


def _authelia_file_variable(path: NixPath) -> NixPath | None:
    """``services.authelia.instances.<n>.settings.storage.postgres.password`` -> the instance's
    ``environmentVariables.AUTHELIA_STORAGE_POSTGRES_PASSWORD_FILE``. Authelia reads every key of its
    configuration from ``AUTHELIA_<KEY PATH>_FILE`` (its documented secrets mechanism; nixpkgs' module hands
    ``environmentVariables`` to the instance's unit, which runs as ``instances.<n>.user``)."""
    if len(path) != 8 or path[:3] != ("services", "authelia", "instances") or path[4] != "settings":
        return None
    if path[5:7] not in (("storage", "postgres"), ("storage", "mysql")) or path[7] != "password":
        return None
    return (*path[:4], "environmentVariables", f"AUTHELIA_STORAGE_{path[6].upper()}_PASSWORD_FILE")


# options whose file twin is built from the option's own path (an instance's name in it)
NIXPKGS_BUILT_SIBLINGS: tuple[Callable[[NixPath], NixPath | None], ...] = (_authelia_file_variable,)


def nixpkgs_file_sibling(path: NixPath) -> NixPath | None:
    """``services.X...password`` -> ``services.X...passwordFile`` for the options in NIXPKGS_FILE_SIBLINGS,
    the options of NIXPKGS_PATH_SIBLINGS and those NIXPKGS_BUILT_SIBLINGS build a twin for."""
    if path in NIXPKGS_PATH_SIBLINGS:
        return NIXPKGS_PATH_SIBLINGS[path]
    for build in NIXPKGS_BUILT_SIBLINGS:
        if (built := build(path)) is not None:
            return built
    for pattern, twin in NIXPKGS_FILE_SIBLINGS.items():
        if path_matches(pattern, path):
            return (*path[:-1], twin)
    return None


_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# A variable that names another credential: the same value there is two secrets in one, and moving it
# onto the database's secret would change it at each rotation (the admin's login kept the old one)
_DATABASE_WORDS = frozenset(
    {"db", "database", "postgres", "postgresql", "pg", "pgpassword", "sql", "psql", "mysql", "mariadb"}
)
# a program's or a service's name that says its credentials are no database's (msmtp's SMTP login)
_OTHER_PROGRAMS = frozenset(
    {"msmtp", "smtp", "mail", "email", "ldap", "redis", "minio", "s3", "oidc"}
    # a dashboard's widget logs in to a service's web API (homepage-dashboard's widgets; realcfg29/04)
    | {"widget", "widgets", "homepage"}
)
_OTHER_WORDS = frozenset(
    {"admin", "redis", "smtp", "mail", "email", "ldap", "jwt", "secret", "key", "token", "api", "oidc", "s3"}
    | {"minio", "vapid", "session", "cookie", "superuser", "initial", "bootstrap"}
    # a web UI's own login (pgweb's PGWEB_AUTH_PASS, BASIC_AUTH_PASSWORD), not the database's (realcfg30/06)
    | {"auth"}
)


def _other_credential(path: NixPath) -> bool:
    """``...environment.NEXTCLOUD_ADMIN_PASSWORD``, ``...REDIS_PASSWORD``, ``programs.msmtp.accounts.X.password``:
    not the database's (``DB_ADMIN_PASSWORD`` is, and so is an option ``database.adminPassword``)."""
    if not path:
        return False
    named = {w.lower() for w in words(path[-1])}
    near = named | {w.lower() for p in path[-2:-1] for w in words(p)}
    whole = {w.lower() for p in path for w in words(p)}
    if whole & _OTHER_PROGRAMS and not whole & _DATABASE_WORDS:  # programs.msmtp.accounts.X.password
        return True
    return bool(named & _OTHER_WORDS) and not near & _DATABASE_WORDS


# the official images' variables that have a VAR_FILE twin (postgres, mysql, mariadb entrypoints: file_env)
_FILE_VARIANT_VARS = frozenset(
    {"POSTGRES_PASSWORD", "MYSQL_PASSWORD", "MYSQL_ROOT_PASSWORD", "MARIADB_PASSWORD", "MARIADB_ROOT_PASSWORD"}
    | {"MARIADB_REPLICATION_PASSWORD", "MYSQL_REPLICATION_PASSWORD", "MONGO_INITDB_ROOT_PASSWORD"}
    | {"DOCKER_INFLUXDB_INIT_PASSWORD"}
)
# a companion's value written as it is on an env file line: what docker's and podman's --env-file (the
# rest of the line, raw), compose's env_file (unquoted: $, a leading quote, " #" and trailing blanks are
# special) and systemd's EnvironmentFile all read alike unquoted (no quotes, $, #, \\, blanks, and none
# of the shell's & | ; < > ( ): the renderer's `case` pattern would need them quoted)
_ALSO_VALUE = re.compile(r"[A-Za-z0-9._~+/=:@,%\[\]{}*?!^-]+")
ALSO_CHARS = "A-Z a-z 0-9 - . _ ~ + / = : @ , % [ ] { } * ? ! ^"
_PASSWORD_SUFFIX = re.compile(r"(?:PASSWORD|PASSWD|PASS|PWD|password|passwd|pass|pwd)$")
_RAW_ENV_VALUE = re.compile(r"[A-Za-z0-9._~-]+")  # what the renderer writes as a bare VAR=value line
# an interpolation a URL's host or port may read, kept as it is in the env file's renderer (url_with_config)
_CONFIG_READ = re.compile(r"(?:(?:builtins\.)?toString )?config(?:\.[A-Za-z_][\w'-]*)+")
_SAFE_URL_PART = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]*")
# the words of a secret's name that name no service (photoprism-db-password: photoprism)
_PLAIN_SECRET_WORDS = frozenset(
    {"password", "passwd", "pass", "secret", "key", "token", "env", "file", "db", "database", "pg", "mysql"}
)
_SECRET_WORDS = re.compile(r"pass(word)?|passwd|pwd|secret", re.IGNORECASE)
# the words of a variable that make its password a database's (DB_PASSWORD, POSTGRES_PASSWORD, PGPASSWORD)
# what an edit reads and declares of agenix (the names as written: a bare attribute or a quoted one)
_AGE_READ = re.compile(r"config\.age\.secrets\.([A-Za-z0-9_'-]+|\"[^\"]+\")\.path")
_AGE_DECLARED = re.compile(r"(?m)^\s*age\.secrets\.([A-Za-z0-9_'-]+|\"[^\"]+\")\s*=")
# the renderer's ExecStartPre line in a rendered unit snippet (its script is an indented string ending ''})
_SNIPPET_LOAD_CREDENTIAL = re.compile(r"(?m)^[ \t]*LoadCredential = \[ (\"[^\"\n]*\") \];\n")
_SNIPPET_RUNTIME_DIRECTORY = re.compile(r"(?m)^[ \t]*RuntimeDirectory = \"[^\"\n]*\";\n")
_SNIPPET_RUNTIME_MODE = re.compile(r"(?m)^[ \t]*RuntimeDirectoryMode = \"[0-7]+\";\n")
_SNIPPET_EXEC_START_PRE = re.compile(
    r"(?ms)^[ \t]*ExecStartPre = (?:lib\.mkBefore )?\[ (\"\$\{pkgs\.writeShellScript .*?''\}\") \];\n"
)


def _let_fields(fm: FileModel) -> dict[str, str]:
    """``ips.db`` -> its string, for each string field of an attrset a let binds once (not shadowed)."""
    from nixmig.nixsrc.lets import _formal_names
    from nixmig.nixsrc.shapes.let_script import fields

    return {b.shown: b.value for b in fields(fm, _formal_names(fm.root))}


def _arion_compose(fm: FileModel) -> bool:
    """``fm`` is an arion project's module (``services.NAME.service.*``, ``project.name``), not a host's."""
    return any(
        (len(b.path) >= 4 and b.path[0] == "services" and b.path[2] in ("service", "nixos"))
        or b.path[:2] == ("project", "name")
        for b in fm.binds
    )


def oci_unit_seg(fm: FileModel | None, name: str) -> str:
    """The attribute under systemd.services of an oci container's unit, as patch writes it: the unit
    ``fm`` already binds by its literal name (compose2nix writes ``systemd.services."docker-NAME"``;
    a second binding beside it through the backend option would be a duplicate attribute), else
    through ``virtualisation.oci-containers.backend``."""
    for backend in ("docker", "podman"):
        unit = f"{backend}-{name}"
        if fm is not None and any(b.exact and b.path[:3] == ("systemd", "services", unit) for b in fm.binds):
            return unit
    if fm is not None:  # the author's own block named through the backend: "${backend}-NAME" (realcfg23/05)
        for b in fm.binds:
            seg = b.path[2] if len(b.path) >= 3 and b.path[:2] == ("systemd", "services") else ""
            m = _BACKEND_UNIT.fullmatch(seg)
            if m is not None and m.group(2) == nix_escape(name) and _names_backend(fm, m.group(1)):
                return seg  # a dynamic attribute: a second one beside it would be "already defined"
    return '"${config.virtualisation.oci-containers.backend}-' + nix_escape(name) + '"'


_BACKEND_UNIT = re.compile(r"\"\$\{\s*([A-Za-z_][\w'.-]*)\s*\}-([^\"$\\]+)\"")


def _names_backend(fm: FileModel, expr: str) -> bool:
    """``expr`` (inside ``${...}`` of a unit's name) is the oci-containers backend: the option itself, or a
    name a let binds to it (``oci-backend = config.virtualisation.oci-containers.backend;``)."""
    if expr.endswith("virtualisation.oci-containers.backend"):
        return True
    from nixmig.nixsrc.lets import _formal_names

    if expr in _formal_names(fm.root):
        return False
    return any(
        (ap := n.child_by_field_name("attrpath")) is not None
        and fm.text(ap) == expr
        and (v := n.child_by_field_name("expression")) is not None
        and fm.text(unparen(v)).replace(" ", "").endswith("virtualisation.oci-containers.backend")
        and n.parent is not None
        and n.parent.parent is not None
        and n.parent.parent.type == "let_expression"
        for n in descendants(fm.root)
        if n.type == "binding"
    )


def _secret_name(path: NixPath) -> bool:
    return bool(path) and bool(_SECRET_WORDS.search(path[-1]))


_container_shape = container_shape  # (kind, name, the container's attrset path), see nixsrc/containers.py


def _kind_at(prefix: NixPath) -> str:
    shape = container_shape(prefix)
    assert shape is not None, prefix
    return shape[0]


def _project_key(fm: FileModel, prefix: NixPath) -> tuple[str, str]:
    return (fm.name, prefix[3] if prefix[:3] == ("virtualisation", "arion", "projects") else "")


# nixpkgs modules whose attrs (services.X.<attr>.VAR) are the environment of a unit: VAR there can come
# from an EnvironmentFile of that unit instead (the module sets Environment=, the file adds to it).
# vaultwarden: config; n8n: environment (the n8n unit's environment, DynamicUser: the renderer reads a
# systemd credential and writes into the unit's own runtime directory, as that user)
NIXPKGS_ENV_CONFIG: dict[tuple[str, str], str] = {
    ("vaultwarden", "config"): "vaultwarden",
    ("n8n", "environment"): "n8n",
    # mealie: settings are the mealie unit's environment (toString of each); its ExecStartPre (init_db, a
    # string) merges after nixmig's (lib.mkBefore), its EnvironmentFile (credentialsFile) beside nixmig's
    ("mealie", "settings"): "mealie",
    # woodpecker-server (checked in nixpkgs' woodpecker/server.nix): `inherit (cfg) environment;` into its unit
    # (no RuntimeDirectory of its own; its EnvironmentFile a list, beside nixmig's)
    ("woodpecker-server", "environment"): "woodpecker-server",
}


# nixpkgs modules whose structured settings the program reads back from its environment, one variable per
# setting: services.X.<settings>.a.b -> PREFIX + "A_B" (hierarchy levels joined by "_", upper-cased). The
# value is the unit's (here the module's own unit, X). mautrix-telegram: its Config.__getitem__ returns
# os.environ["MAUTRIX_TELEGRAM_" + key.replace(".", "_").upper()] before the config file's value (the
# nixpkgs module's environmentFile documents it), so the setting's removal leaves the module's default
# (sqlite) in the file and the variable wins.
# a plain file of the repository read at evaluation: builtins.readFile ./pw, lib.fileContents ./pw (any lib path)
_FILE_READ = re.compile(
    r"(?:builtins\.readFile|readFile|(?:[\w.]+\.)?fileContents)\s+\(?\s*(?P<path>\.\.?/[\w./-]+)\s*\)?"
)
# a .nix file imported whole as a value: `dbPassword = import ./zabbix-password.nix;` (a file that is one string)
_STRING_IMPORT = re.compile(r"import\s+\(?\s*(?P<path>\.\.?/[\w./-]+\.nix)\s*\)?")
_NO_CLASS = NameClass(Kind.TOKEN, ())
_DB_KINDS = (Kind.PASSWORD, Kind.URL_CREDENTIAL)  # what a database's password is found as
# words of a secret's name that say nothing of whose it is
GENERIC_SECRET_WORDS = frozenset(
    {"password", "passwd", "pass", "pw", "secret", "secrets", "key", "token", "credential"}
)

NIXPKGS_ENV_SETTINGS: dict[tuple[str, str], str] = {
    ("mautrix-telegram", "settings"): "MAUTRIX_TELEGRAM_",
}
# a nixpkgs option holding a database URL that the module's unit (services.X's, named X) also reads from a
# variable of its environment, a value there winning: the option goes (its default is left), the URL is
# rendered into that variable in the unit's EnvironmentFile (which wins over Environment=). Checked in nixpkgs:
# atuin exports database.uri as ATUIN_DB_URI (its default a socket URL; "can be set to null in which case
# ATUIN_DB_URI should be set through an EnvironmentFile"); lldap reads any setting from LLDAP_<NAME>, which
# "takes priority over the one in the configuration file" (database_url's default: sqlite); lemmy exports
# database.uri as LEMMY_DATABASE_URL ("takes priority over the configuration file").
NIXPKGS_OPTION_ENV: dict[NixPath, str] = {
    ("services", "atuin", "database", "uri"): "ATUIN_DB_URI",
    ("services", "lldap", "settings", "database_url"): "LLDAP_DATABASE_URL",
    ("services", "lemmy", "database", "uri"): "LEMMY_DATABASE_URL",
    # nixpkgs' exporter: environment.DATA_SOURCE_NAME = cfg.dataSourceName, and "contents from [environmentFile]
    # will override dataSourceName" (its EnvironmentFile wins over Environment=); unit below
    ("services", "prometheus", "exporters", "postgres", "dataSourceName"): "DATA_SOURCE_NAME",
}
# the unit an option of NIXPKGS_OPTION_ENV is read by, when it is not services.<name>'s own
NIXPKGS_OPTION_UNIT: dict[NixPath, str] = {
    ("services", "prometheus", "exporters", "postgres", "dataSourceName"): "prometheus-postgres-exporter",
}


def _env_option_shape(path: NixPath) -> str | None:
    if path in NIXPKGS_OPTION_UNIT:
        return NIXPKGS_OPTION_UNIT[path]
    if len(path) == 4 and path[0] == "services" and (path[1], path[2]) in NIXPKGS_ENV_CONFIG:
        return NIXPKGS_ENV_CONFIG[(path[1], path[2])]
    if env_setting_variable(path) is not None:
        return path[1]
    return None


def env_setting_variable(path: NixPath) -> str | None:
    """The variable a setting of a module in NIXPKGS_ENV_SETTINGS is read from (``MAUTRIX_TELEGRAM_APPSERVICE_
    DATABASE`` for services.mautrix-telegram.settings.appservice.database), or an option of NIXPKGS_OPTION_ENV
    (``ATUIN_DB_URI`` for services.atuin.database.uri); None otherwise."""
    if path in NIXPKGS_OPTION_ENV:
        return NIXPKGS_OPTION_ENV[path]
    if len(path) < 4 or path[0] != "services" or (path[1], path[2]) not in NIXPKGS_ENV_SETTINGS:
        return None
    var = NIXPKGS_ENV_SETTINGS[(path[1], path[2])] + "_".join(seg.strip('"') for seg in path[3:]).upper()
    return var if _ENV_VAR.fullmatch(var) else None


def env_variable_of(path: NixPath) -> str:
    """The environment variable the binding at ``path`` sets: its last name, or what a setting is read from."""
    return env_setting_variable(path) or (path[-1] if path else "")


def _environment_assignment(lit: Lit, value: str, url: UrlParts) -> tuple[str, EnvLine] | None:
    """``systemd.services.U.serviceConfig.Environment = "VAR=url"`` (or an element of its list): the unit
    and the line, when the string is exactly one plain assignment of the URL."""
    path = lit.path
    if len(path) != 5 or path[:2] != ("systemd", "services") or path[3:] != ("serviceConfig", "Environment"):
        return None
    if not lit.exact or (lit.bind is None and (lit.node.parent is None or lit.node.parent.type != "list_expression")):
        return None
    var, sep, rest = value.partition("=")
    if (
        not sep
        or not _ENV_VAR.fullmatch(var)
        or not url.prefix.startswith(var + "=")
        or not rest.startswith(url.scheme)
    ):
        return None
    prefix = url.prefix[len(var) + 1 :]
    if not _SAFE_URL_PART.fullmatch(prefix):
        return None
    return path[2], EnvLine(var, prefix, url.suffix)


def environment_variable(path: NixPath) -> bool:
    """``path`` is a variable of a container's environment, of a unit's ``environment`` or of a nixpkgs module's
    env-var config (vaultwarden's ``config.DATABASE_URL``): what on_url edits."""
    return env_container(path) is not None or _systemd_shape(path) is not None or _env_option_shape(path) is not None


def _systemd_shape(path: NixPath) -> str | None:
    if len(path) == 5 and path[:2] == ("systemd", "services") and path[3] == "environment":
        return path[2]
    return None


def _project_of(db: _Db) -> str:
    for b in db.fm.binds:
        if b.path == ("project", "name"):
            v = decode_string(b.value)
            if v:
                return v
    if db.prefix[:3] == ("virtualisation", "arion", "projects"):
        return db.prefix[3]
    return ""


@dataclass(frozen=True)
class UrlParts:
    scheme: str
    user: str  # as written (percent-encoded)
    password: str  # as written (percent-encoded)
    host: str
    prefix: str  # everything before the password
    suffix: str  # everything after it (starts with "@")
    embedded: bool = False  # the URL does not start the string


_SCHEME = re.compile(r"(?<![A-Za-z0-9+.-])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_USERINFO = re.compile(r"(?P<user>[^:@/?#\s]*):(?P<pw>[^@/?#\s]*)@(?P<host>[^:/?#\s]*)")


_URL_END = re.compile(r"[\s\"'`]|$")
_QUERY_PASSWORD = re.compile(r"[?&]password=(?P<pw>[^&#\s\"'`]*)")


def _query_password(value: str, m: re.Match[str], password: str | None) -> UrlParts | None:
    """A libpq URI with the password as a query parameter (``postgres:///db?host=/run/postgresql&user=app
    &password=PW``), split around it: its user is ``user=`` or the userinfo's, its host ``host=`` or the
    authority's. libpq percent-decodes query values, so the renderer's percent-encoded password reads back."""
    end = _URL_END.search(value, m.end())
    url_end = end.start() if end is not None else len(value)
    q = _QUERY_PASSWORD.search(value, m.end(), url_end)
    if q is None or not q.group("pw") or (password is not None and unquote(q.group("pw")) != password):
        return None
    url = value[m.start() : url_end]
    user_q = re.search(r"[?&]user=([^&#]*)", url)
    host_q = re.search(r"[?&]host=([^&#]*)", url)
    authority = re.match(r"(?:(?P<user>[^:@/?#\s]*)@)?(?P<host>[^:/?#\s]*)", value[m.end() : url_end])
    user = user_q.group(1) if user_q else (authority.group("user") or "" if authority else "")
    host = host_q.group(1) if host_q else (authority.group("host") if authority else "")
    return UrlParts(
        m.group("scheme"), user, q.group("pw"), host, value[: q.start("pw")], value[q.end("pw") :], m.start() > 0
    )


def split_url(value: str, password: str | None = None, schemes: Sequence[str] = URL_SCHEMES) -> UrlParts | None:
    """The first postgres:// URL with a password in its userinfo, split around the password.

    The URL may sit inside a longer string (``embedded``). With ``password`` given,
    a URL that holds it unencoded (``postgres://u:a/b@h``, which no URL parser reads
    right) is found and split around it too.
    """
    for m in _SCHEME.finditer(value):
        if m.group("scheme").split("+")[0].lower() not in schemes:
            continue
        start, rest = m.start(), m.end()
        if password:
            at = value.find(f":{password}@", rest)
            user = value[rest:at]
            if at != -1 and not re.search(r"[/?#@\s]", user):
                pw_start, pw_end = at + 1, at + 1 + len(password)
                host = re.split(r"[:/?#\s]", value[pw_end + 1 :], maxsplit=1)[0]
                return UrlParts(m.group("scheme"), user, password, host, value[:pw_start], value[pw_end:], start > 0)
        u = _USERINFO.match(value, rest)
        if u is None or not u.group("pw"):
            query = _query_password(value, m, password)
            if query is not None:
                return query
            continue
        return UrlParts(
            scheme=m.group("scheme"),
            user=u.group("user"),
            password=u.group("pw"),
            host=u.group("host"),
            prefix=value[: u.start("pw")],
            suffix=value[u.end("pw") :],
            embedded=start > 0,
        )
    return None


def plan(
    sources: Mapping[str, bytes],
    spec: Spec,
    *,
    find_companions: bool = False,
    taken_values: Collection[bytes] = (),
    texts: Mapping[str, bytes] | None = None,
) -> Plan:
    """Every edit for ``spec`` over ``sources`` (repo-relative posix paths -> bytes).

    ``find_companions`` (`nixmig patch`): a container's other credential that a first plan leaves
    by hand as a companion (the database's value under another name, a second MySQL credential)
    is moved onto a secret of its own, value kept, as if nixmig.toml's ``also`` named it; the plan
    lists those in ``auto_also`` for --write to add to nixmig.toml. The engine never does this: a
    companion needs its .age made from the line first, and its ``also`` entry for verify.

    Raises NixSyntaxError (file:line:col) when a file does not parse, PatchError
    when the tree is ambiguous. Applying the plan and planning again gives no edits.

    ``taken_values``: values an earlier plan of this migration took out of the tree (several migrations
    written in turn: the verdict pass over what they all wrote no longer sees the database's value), each
    copy of which is still this migration's password (Builder.copies_left).

    ``texts``: the repository's SQL files the .nix files name by path (:func:`read_texts`): an
    initialScript's file is read for the role's password (nixmig edits no SQL file: said by hand).
    """
    models = {name: model(name, src) for name, src in sorted(sources.items())}
    check_keys(models, spec)
    first = Builder(models, spec, taken_values, texts).run()
    found = companions_of(first, spec) if find_companions and first.edits else ()  # none: nothing recognised
    if not found:
        return first
    return dataclasses.replace(
        Builder(models, dataclasses.replace(spec, also=spec.also + found), taken_values, texts).run(), auto_also=found
    )


def _under_conditions(snippet: str, attr: str, conds: Sequence[str]) -> str:
    """``ATTR = { ... };`` (ATTR ending in .serviceConfig) -> ``UNIT = lib.mkIf (C) { serviceConfig = { ... }; };``."""
    lines = snippet.split("\n")
    head = next((i for i, ln in enumerate(lines) if ln.strip() == f"{attr} = {{"), None)
    tail = max((i for i, ln in enumerate(lines) if ln.strip() == "};"), default=None)
    if head is None or tail is None or tail <= head:
        return snippet
    ind = lines[head][: len(lines[head]) - len(lines[head].lstrip())]
    cond = " && ".join(f"({c})" for c in conds) if len(conds) > 1 else conds[0]
    unit = attr.removesuffix(".serviceConfig")
    body = [f"  {ln}" if ln.strip() else ln for ln in lines[head + 1 : tail]]
    return "\n".join(
        [
            *lines[:head],
            f"{ind}{unit} = lib.mkIf ({cond}) {{",
            f"{ind}  serviceConfig = {{",
            *body,
            f"{ind}  }};",
            f"{ind}}};",
            *lines[tail + 1 :],
        ]
    )


# `config.age.secrets.NAME.path` (NAME bare or quoted) in an option's value
_AGE_PATH = re.compile(r"config\.age\.secrets\.(\"[^\"]+\"|[\w'-]+)\.path")


# lib's functions whose last argument is the attrset a binding's value is (an edit goes inside it)
_DEEP_WRAPPERS = frozenset(
    {"mkIf", "mkMerge", "mkDefault", "mkForce", "mkOverride", "mkBefore", "mkAfter", "mkOrder", "optionalAttrs"}
)


# an app that takes its database's URL from a variable of its own, which overrides the config text a password
# sits in (checked in the app's source): the route a by-hand item about that text names
_APP_ROUTES = {
    # iv-org/invidious src/invidious/config.cr: every top-level setting from INVIDIOUS_<NAME>, and db.* is
    # read only when database_url is empty (db.password is required while a db: block is there)
    b"invidious": (
        "Invidious reads INVIDIOUS_DATABASE_URL (postgres://USER:PASSWORD@HOST:PORT/DBNAME), which overrides the "
        "config's db: block: render that line into the container's env file from the agenix secret (the password "
        "percent-encoded), then remove the db: block from the config, so no password is left in it"
    ),
}


_IMPORTED_AS_DATA = re.compile(rb"\bimport\s+\(?\s*(\.\.?/[\w./-]+)(?![\w./-])\s*\)?(?!\s*[{(\w])")
_NO_OPTION_SAID = "still holds a hardcoded password: no template for this shape: "


def data_key(models: Mapping[str, FileModel], m: Manual) -> Manual:
    """``m``, said as a key of a plain data file when its file is no module but a .nix file another file
    imports as a value (``setup = (import ../home_crypt.nix).services.nextcloud;``): its attribute path
    (``services.nextcloud.postgres.pass``) is that file's, no NixOS option (realcfg35/08: "an option of
    services.nextcloud with no file variant" sent the user looking for an option that does not exist)."""
    head, sep, _ = m.what.partition(_NO_OPTION_SAID)
    if not sep or m.file not in models or m.file in imported_modules(models):
        return m
    for name, fm in sorted(models.items()):
        for hit in _IMPORTED_AS_DATA.finditer(fm.source):
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), hit.group(1).decode()))
            if target == m.file or posixpath.join(target, "default.nix") == m.file:
                line = fm.source.count(b"\n", 0, hit.start()) + 1
                attr = head.removesuffix(" ").strip()
                return dataclasses.replace(
                    m,
                    what=f"{head}{sep.removesuffix('no template for this shape: ')}{attr} is a key of {m.file}, a "
                    f"plain .nix file that {name}:{line} imports as a value (no NixOS option): nixmig follows "
                    "`(import ./file).key`, and `s.key` with `s` a let of that import, into what reads them; this "
                    "one reaches its reader through more lets or selects than that: write the literal where the "
                    "service reads it (or a file option there), then patch again",
                )
    return m


def app_route(models: Mapping[str, FileModel], m: Manual) -> Manual:
    """``m`` with the route of the app whose config text holds the password (_APP_ROUTES), when the lines
    around it name that app (``INVIDIOUS_CONFIG``, a config.yml written for invidious) and it says a text."""
    fm = models.get(m.file)
    if fm is None or m.line < 1 or not any(w in m.what for w in ("text", "string", "script", "serialised", "read at")):
        return m
    lines = fm.source.splitlines()
    near = b"\n".join(lines[max(0, m.line - 15) : m.line + 15]).lower()
    for app, route in _APP_ROUTES.items():
        if app in near and route not in m.what:
            return dataclasses.replace(m, what=f"{m.what}. {route}")
    wide = b"\n".join(lines[max(0, m.line - 60) : m.line + 60])
    if b"services:" in wide and b"image:" in wide and _COMPOSE_ROUTE not in m.what:  # a compose file's YAML text
        return dataclasses.replace(m, what=f"{m.what}. {_COMPOSE_ROUTE}")
    return m


# docker compose substitutes ${VAR} in a compose file from its own environment (and .env): a route for a compose
# file written as text into the store (realcfg36/02, realcfg32/09)
_COMPOSE_ROUTE = (
    "It is a compose file's text: write ${VAR} there instead of the value, and give the unit that runs "
    "`docker compose` an EnvironmentFile rendered at start from the agenix secret (compose substitutes ${VAR} from "
    "its environment); or, for the official database images, VAR_FILE naming the agenix file mounted read-only"
)


def companions_of(first: Plan, spec: Spec) -> tuple[tuple[str, str], ...]:
    """(VAR, secret) for each container variable the plan's by-hand items name as a companion it could
    move (not one nixmig.toml's also has), each with a secret name no migration uses (:func:`companion_secret`)."""
    configured = {var for var, _ in spec.also}
    taken = set(spec.taken) | {spec.secret} | {s for _, s in spec.also}
    out: list[tuple[str, str]] = []
    for m in first.manual:
        if m.companion in spec.db_vars and (spec.role == "root" or m.companion not in _MYSQL_ROOT_VARS):
            continue  # the migration's own variable, not a companion (root's is one when no role is named)
        if m.companion and m.companion not in configured and m.companion not in {v for v, _ in out}:
            name = companion_secret(m.companion, spec, taken)
            taken.add(name)
            out.append((m.companion, name))
    return tuple(out)


def companion_secret(var: str, spec: Spec, taken: Collection[str]) -> str:
    """A companion's secret name: the variable's (MYSQL_ROOT_PASSWORD -> mysql-root-password), prefixed
    with the migration's secret when another secret has that name (never one that is taken)."""
    name = also_name(var)
    if name not in taken:
        return name
    name = f"{spec.secret}-{name}"
    n = 2
    while name in taken:
        name, n = f"{spec.secret}-{also_name(var)}-{n}", n + 1
    return name


def _candidates(wanted: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.5)
    shown = close or sorted(names)[:6]
    more = "" if close or len(names) <= 6 else f" (and {len(names) - 6} more)"
    return ("did you mean: " if close else "candidates: ") + (", ".join(shown) + more if shown else "(none)")


def unit_names(models: Mapping[str, FileModel]) -> set[str]:
    """The systemd units the tree defines: systemd.services.X, arion-PROJECT (and serviceName), docker-/podman-X."""
    out: set[str] = set()
    for fm in models.values():
        for b in fm.binds:
            p = b.path
            if len(p) >= 3 and p[:2] == ("systemd", "services"):
                out.add(p[2])
            elif len(p) >= 4 and p[:3] == ("virtualisation", "arion", "projects"):
                out.add(f"arion-{p[3]}")
                if p[4:] == ("serviceName",) and (v := decode_string(b.value)):
                    out.add(v)
            elif len(p) >= 4 and p[:3] == ("virtualisation", "oci-containers", "containers"):
                out |= {f"docker-{p[3]}", f"podman-{p[3]}"}
            elif len(p) >= 2 and p[0] == "docker-containers":  # (before 20.09: docker's, containers.py)
                out.add(f"docker-{p[1]}")
    return out


def container_names(models: Mapping[str, FileModel]) -> set[str]:
    """Every arion service and oci-containers container the tree defines."""
    out: set[str] = set()
    for fm in models.values():
        for b in fm.binds:
            for n in range(len(b.path), 1, -1):
                shape = _container_shape(b.path[:n])
                if shape is not None:
                    out.add(shape[1])
                    break
    return out


def check_keys(models: Mapping[str, FileModel], spec: Spec) -> None:
    """A key of nixmig.toml that names nothing in the repo is an error with the candidates, never a silent default."""
    files = sorted(models)
    for key in ("module", "compose", "host_file"):
        name = getattr(spec, key)
        if name and posixpath.normpath(name) not in models:
            raise ConfigError(
                f"migrations: {key} = {name!r}: no such .nix file in the repository",
                hint="paths are relative to the repository root; " + _candidates(posixpath.normpath(name), files),
            )
    containers = sorted(container_names(models))
    for key, names in (
        ("db_service", [spec.db_service] if spec.db_service else []),
        ("app_services", spec.app_services),
    ):
        for name in names:
            if name not in containers:
                raise ConfigError(
                    f"migrations: {key} names {name!r}: no arion service or oci-containers container of that name",
                    hint=_candidates(name, containers),
                )
    if spec.unit:
        units = sorted(unit_names(models))
        if spec.unit not in units and spec.unit.removesuffix(".service") not in units and not spec.module:
            raise ConfigError(
                f"migrations: unit = {spec.unit!r}: no systemd service, arion project or container of that name",
                hint=_candidates(spec.unit, units) + "; or set module to the file that defines the unit",
            )


def read_sources(repo: Path) -> dict[str, bytes]:
    """Every .nix file under ``repo`` (skipping .git, result links, hidden and node_modules dirs)."""
    import os

    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and d != "node_modules"
            and not (d.startswith("result") and (Path(dirpath) / d).is_symlink())
        )
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if f.endswith(".nix") and not (f.startswith("result") and p.is_symlink()) and p.is_file():
                out[p.relative_to(repo).as_posix()] = p.read_bytes()
    return out


TEXT_LIMIT = 1 << 20  # a named file larger than this is no configuration text nixmig reads


def read_texts(repo: Path, sources: Mapping[str, bytes]) -> dict[str, bytes]:
    """The repository's files other than .nix that a .nix file names by a relative path (``initialScript =
    ./init.sql``, ``builtins.readFile ../db/init.sql``, ``config.Cmd = [ "postgrest" ./tutorial.conf ]``):
    repo-relative posix path -> bytes. Each goes into the Nix store with the configuration: an
    initialScript's SQL file is read for the role's password, and any of them for a copy of the values a
    plan takes out (nixmig edits no such file: said by hand). A path that leaves the repository, a link,
    a directory, a missing file, a file over 1 MiB or a binary one (a NUL byte) is not read."""
    from nixmig.nixsrc.scan import sql_paths, text_paths

    out: dict[str, bytes] = {}
    for name, src in sources.items():
        for rel in dict.fromkeys([*sql_paths(src, name), *text_paths(src, name)]):
            p = repo / rel
            if rel.startswith("../") or rel == ".." or rel in out or p.is_symlink() or not p.is_file():
                continue
            try:
                if p.stat().st_size > TEXT_LIMIT:
                    continue
                data = p.read_bytes()
            except OSError as exc:  # unread, its password would go unseen: no verdict without it
                raise ConfigError(
                    f"cannot read {rel}, the {'SQL ' if rel.endswith('.sql') else ''}file {name} names: "
                    f"{exc.strerror or exc}",
                    where=rel,
                    hint="make it readable, then run again",
                ) from None
            if b"\0" not in data[:8192]:
                out[rel] = data
    return out
