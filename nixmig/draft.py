"""`nixmig init`: a nixmig.toml drafted from the Nix repository alone. Pure: sources in, TOML text out.

:func:`draft` reads the repo's ``.nix`` sources (``{"repo/relative/path.nix": bytes}``) and,
optionally, the deploy tool's nodes as ``nix eval`` printed them, and returns a
:class:`Draft`: the TOML text, the guesses it marked ``# check:`` and what it drafted.

What it reads:

- scan's findings (:func:`nixmig.nixsrc.scan.scan_source`): a hardcoded ``POSTGRES_PASSWORD``
  in an arion service or an oci-containers container whose image is PostgreSQL, a nixpkgs
  option with a file sibling (``services.gitea.database.password``) or
  ``services.postgresql.initialScript``'s SQL beside ``services.postgresql``; the app
  containers holding the same value (in a URL or bare) are listed with it;
- the container: arion (``PROJECT-SERVICE-1``, named volume ``PROJECT_VOLUME``) or
  oci-containers (its name, a named volume as is, the backend);
- the database and role: ``POSTGRES_USER`` / ``POSTGRES_DB`` with the postgres image's
  defaults, ``ensureUsers`` / ``ensureDatabases`` or the SQL for the native server;
- the hosts: ``nixosConfigurations``, deploy-rs's ``deploy.nodes`` (hostname, sshUser,
  sshOpts), a colmena hive (``deployment.targetHost`` ...) and ``hosts/NAME/`` directories;
  which host runs a database follows the path expressions (``imports``, ``import ./x.nix``)
  from each host's configuration to the file that defines it;
- secrets.nix's let-bound keys: one named after a host is its age recipient, the others
  (or those in a ``users``/``admins`` list) are the operator's;
- the deploy command from the tool the repo uses.

Every value carries a ``# from FILE:LINE`` comment; every guess a ``# check:`` line above it.
"""

from __future__ import annotations

import json
import posixpath
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixmig.errors import NixSyntaxError
from nixmig.inventory import Node as EvalNode
from nixmig.inventory import parse_nodes
from nixmig.nixsrc.containers import KINDS
from nixmig.nixsrc.containers import Kind as KindPaths
from nixmig.nixsrc.lets import LetLiteral, let_binding_at, let_literals, resolve
from nixmig.nixsrc.model import FileModel, NixPath, decode_string, model, unparen
from nixmig.nixsrc.parse import descendants, parse_checked, text
from nixmig.nixsrc.quote import comment_text
from nixmig.nixsrc.shapes.etc_file import file_setting
from nixmig.nixsrc.shapes.file_reference import datasource_fields, grafana_datasource

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.patch import Imported
    from nixmig.nixsrc.scan import Finding, Kind
    from nixmig.nixsrc.shapes.let_script import SqlAccount

SECRETS_FILE = "secrets.nix"
# the last part of a PostgreSQL image's name: postgres, postgis/postgis, pgvector/pgvector,
# tensorchord/pgvecto-rs, timescale/timescaledb-ha, bitnami/postgresql, supabase/postgres ...
_PG_IMAGE = re.compile(r"(^|/)(postgres\w*|postgis|pgvector|pgvecto-rs|timescaledb[a-z0-9-]*|pgautoupgrade)(:|@|$)")
_MYSQL_USER_VARS = ("MARIADB_PASSWORD", "MYSQL_PASSWORD")
_MYSQL_ROOT_VARS = ("MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD")
_ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_$.-]{0,62}")  # a MySQL user / database name nixmig.toml takes as is
# the official mongo image (docker.io/library/mongo:7, mongo@sha256:...): MONGO_INITDB_ROOT_PASSWORD is its root's
_MONGO_IMAGE = re.compile(r"^(?:(?:docker\.io|index\.docker\.io|registry-1\.docker\.io)/)?(?:library/)?mongo(:|@|$)")
_MYSQL_IMAGE = re.compile(r"(^|[/_-])(mariadb|mysql|percona)[a-z0-9_-]*(:|@|$)")  # also example-mysql, mysql-server
_DATA_DIR = "/var/lib/postgresql"
_HOST_DIRS = frozenset({"hosts", "machines", "systems", "nodes"})
_HOST_LISTS = re.compile(r"server|host|system|machine|node", re.IGNORECASE)
_USER_LISTS = re.compile(r"user|admin|operator|people|person|dev|maintainer|me$", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_DOCKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # as nixmig.config checks container and volume names
_SQL_NAME = r"(?:IF\s+NOT\s+EXISTS\s+)?(?:\\?\"([^\"\\]+)\\?\"|([A-Za-z_][A-Za-z0-9_]*))"
_SQL_ROLE = re.compile(r"(?:CREATE|ALTER)\s+(?:ROLE|USER)\s+" + _SQL_NAME, re.IGNORECASE)
_SQL_DB = re.compile(r"CREATE\s+DATABASE\s+" + _SQL_NAME, re.IGNORECASE)
_PODMAN_SOCKET = "unix:///run/podman/podman.sock"


# ---------------------------------------------------------------- the result


@dataclass(frozen=True)
class Val:
    """One value of the draft: where it came from, and what to check when it is a guess."""

    value: str | int | list[str]
    origin: str
    check: str | None = None


@dataclass
class Block:
    """One TOML table: its keys in order, and comment lines before them."""

    header: str
    notes: list[str] = field(default_factory=list)  # "# ..." lines under the header
    keys: list[tuple[str, Val]] = field(default_factory=list)
    notes_after: list[str] = field(default_factory=list)  # "# ..." lines after the keys

    def add(self, key: str, val: Val | None) -> None:
        if val is not None:
            self.keys.append((key, val))


@dataclass(frozen=True)
class Draft:
    toml: str
    checks: tuple[str, ...]
    migrations: tuple[str, ...]
    findings: int  # hardcoded database passwords found
    other_findings: int  # other hardcoded secrets (not drafted)

    @property
    def empty(self) -> bool:
        """Nothing to migrate: no hardcoded database password anywhere."""
        return self.findings == 0


# ---------------------------------------------------------------- reading the tree


@dataclass(eq=False)
class _Container:
    fm: FileModel
    kind: str  # "arion" | "oci"
    name: str  # compose service or oci container name
    prefix: NixPath  # the attrset holding environment and volumes
    project: str = ""
    project_origin: str = ""
    plain: str = ""  # the name a computed one ("${service}-db") gets from let literals, else the name
    plain_origin: str = ""  # " (= service of line 3)" when computed

    @property
    def where(self) -> KindPaths:
        return KINDS[self.kind]  # where this kind keeps environment, volumes, image (nixsrc/containers.py)

    def env(self, var: str) -> tuple[str, str] | None:
        return _lit(self.fm, (*self.prefix, *self.where.env, var))

    def image(self) -> tuple[str, str] | None:
        if self.kind == "arion":
            return _lit(self.fm, (*self.prefix[:-1], "image", "name")) or _lit(self.fm, (*self.prefix, "image"))
        return _lit(self.fm, (*self.prefix, *self.where.image))

    @property
    def label(self) -> str:
        return f"{self.project}-{self.plain}" if self.kind == "arion" and self.project else self.plain


def _line(fm: FileModel, node: Node) -> int:
    return fm.line_col(node.start_byte)[0]


def _at(fm: FileModel, node: Node) -> str:
    return f"{fm.name}:{_line(fm, node)}"


_LETS: weakref.WeakKeyDictionary[FileModel, dict[str, LetLiteral]] = weakref.WeakKeyDictionary()


def _lets(fm: FileModel) -> dict[str, LetLiteral]:
    """The file's let-bound string literals (nixmig.nixsrc.lets), read once per file model."""
    found = _LETS.get(fm)
    if found is None:
        found = _LETS[fm] = let_literals(fm.root)
    return found


def _sql_filled(fm: FileModel, node: Node) -> tuple[str, list[int]]:
    """The text of the string ``node`` with each interpolation of a let string or a let attrset's field
    (``CREATE ROLE ${db.user} ...``) written as its value, and each character's byte offset in the file."""
    from nixmig.nixsrc.lets import _formal_names
    from nixmig.nixsrc.shapes.let_script import fields

    values = {n: x.value for n, x in _lets(fm).items()}
    values.update((x.shown, x.value) for x in fields(fm, _formal_names(fm.root)))
    out: list[str] = []
    back: list[int] = []
    pos = node.start_byte
    for c in [*(x for x in node.children if x.type == "interpolation"), None]:
        end = c.start_byte if c is not None else node.end_byte
        chunk = fm.source[pos:end].decode("utf-8", "replace")
        out.append(chunk)
        back += [pos + len(chunk[:i].encode()) for i in range(len(chunk))]
        if c is None:
            break
        inner = [x for x in c.named_children if x.type != "comment"]
        key = "".join(fm.text(inner[0]).split()) if len(inner) == 1 else ""
        value = values.get(key) if inner and inner[0].type in ("variable_expression", "select_expression") else None
        if value is None:
            value = fm.source[c.start_byte : c.end_byte].decode("utf-8", "replace")
        out.append(value)
        back += [c.start_byte] * len(value)
        pos = c.end_byte
    return "".join(out), back


def _field_lets(fm: FileModel) -> list[LetLiteral]:
    """The string fields of the file's let attrsets (``db.password``), as let literals read where they are."""
    from nixmig.nixsrc.lets import _formal_names
    from nixmig.nixsrc.shapes.let_script import fields

    return [
        LetLiteral(x.shown, x.binding, x.literal, x.value, x.uses)
        for x in fields(fm, _formal_names(fm.root))
        if x.uses  # read as a whole attrset too: patch says that read (Builder.drop_fields)
    ]


def _value(fm: FileModel, node: Node) -> tuple[str, str] | None:
    """(value, what it read) of a string: a literal (""), a let-bound one or a string only let
    literals fill (" (= NAME of line N)"); None for anything else."""
    v = decode_string(node)
    if v is not None:
        return v, ""
    if unparen(node).type not in ("variable_expression", "string_expression"):
        return None
    found = resolve(node, _lets(fm))
    if found is None:
        return _built_field(fm, node)
    lets = _lets(fm)
    read = ", ".join(dict.fromkeys(f"{text(u)} of line {_line(fm, lets[text(u)].binding)}" for u in found[1]))
    return found[0], f" (= {read})" if read else ""


def _built_field(fm: FileModel, node: Node) -> tuple[str, str] | None:
    """(value, what it read) of a ``rec { }`` field's string built from its sibling strings."""
    from nixmig.nixsrc.lets import _formal_names
    from nixmig.nixsrc.shapes.let_script import fields

    span = (node.start_byte, node.end_byte)
    for x in fields(fm, _formal_names(fm.root)):
        if (x.literal.start_byte, x.literal.end_byte) == span and x.literal.type == "string_expression":
            return x.value, f" (= {x.shown} of line {_line(fm, x.binding)}, built from its rec's fields)"
    return None


def _lit(fm: FileModel, path: NixPath) -> tuple[str, str] | None:
    """(value, FILE:LINE) of a plain string bound at ``path`` (or a let-bound one: the line of
    the binding at ``path``, then the let it reads)."""
    for b in fm.binds:
        if b.path == path and b.exact:
            found = _value(fm, b.value)
            if found is not None:
                return found[0], _at(fm, b.node) + found[1]
    return None


def _int_lit(fm: FileModel, path: NixPath) -> tuple[int, str] | None:
    for b in fm.binds:
        if b.path == path and b.exact and b.value.type == "integer_expression":
            return int(text(b.value)), _at(fm, b.node)
    return None


def _strings(fm: FileModel, path: NixPath) -> list[tuple[str, str]]:
    """Plain strings in the list bound at ``path``."""
    out = []
    for lit in fm.lits:
        if lit.path == path and lit.exact and lit.bind is None:
            found = _value(fm, lit.node)
            if found is not None:
                out.append((found[0], _at(fm, lit.node) + found[1]))
    return out


def _container_shape(path: NixPath) -> tuple[str, str, NixPath] | None:
    from nixmig.nixsrc.patch import _container_shape as shape  # one definition of the shapes

    for n in range(len(path), 1, -1):
        found = shape(path[:n])
        if found is not None:
            return found
    return None


def _containers(models: Mapping[str, FileModel]) -> list[_Container]:
    out: dict[tuple[str, NixPath], _Container] = {}
    for fm in models.values():
        for b in fm.binds:
            if not b.exact:
                continue
            shape = _container_shape(b.path)
            if shape is not None and (fm.name, shape[2]) not in out:
                out[(fm.name, shape[2])] = _Container(fm, shape[0], shape[1], shape[2], plain=shape[1])
    projects = _arion_projects(models)
    for c in out.values():
        if c.name.startswith(('"', "${")) and (found := _computed_name(c.fm, c.name)) is not None:
            c.plain, c.plain_origin = found
        if c.kind != "arion":
            continue
        if c.prefix[:3] == ("virtualisation", "arion", "projects"):
            c.project, c.project_origin = c.prefix[3], f"{c.fm.name} (virtualisation.arion.projects.{c.prefix[3]})"
        elif (found := _lit(c.fm, ("project", "name"))) is not None:
            c.project, c.project_origin = found[0], f"{found[1]} (project.name)"
        elif len(projects) == 1:
            ((name, where),) = projects.items()
            c.project, c.project_origin = name, f"{where} (the one arion project)"
    return list(out.values())


def _computed_name(fm: FileModel, raw: str) -> tuple[str, str] | None:
    """The value of an attribute name written ``"${service}-db"`` when only let literals fill it."""
    for b in fm.binds:
        ap = b.node.child_by_field_name("attrpath")
        for a in ap.named_children if ap is not None else ():
            if a.type not in ("string_expression", "interpolation") or text(a) != raw:
                continue
            inner = [x for x in a.named_children if x.type != "comment"] if a.type == "interpolation" else [a]
            found = _value(fm, inner[0]) if len(inner) == 1 else None
            return (found[0], found[1]) if found is not None and _DOCKER_NAME.fullmatch(found[0]) else None
    return None


def _arion_projects(models: Mapping[str, FileModel]) -> dict[str, str]:
    out: dict[str, str] = {}
    for fm in models.values():
        for b in fm.binds:
            if len(b.path) >= 4 and b.path[:3] == ("virtualisation", "arion", "projects") and b.exact:
                out.setdefault(b.path[3], _at(fm, b.node))
    return out


# ---------------------------------------------------------------- hosts


@dataclass(eq=False)
class _Host:
    name: str
    origin: str  # FILE:LINE (what) of its first mention
    address: Val | None = None
    user: Val | None = None
    port: Val | None = None
    identity: Val | None = None
    recipient: Val | None = None
    roots: set[str] = field(default_factory=set)  # files that configure it
    deploy_rs: str | None = None  # FILE:LINE of deploy.nodes.NAME
    colmena: str | None = None
    nixos: str | None = None
    reached: set[str] = field(default_factory=set)  # the files its configuration reaches


def _segment_after(path: NixPath, word: str) -> tuple[int, str] | None:
    for i, p in enumerate(path[:-1]):
        if p == word:
            return i, path[i + 1]
    return None


def _resolve(base_file: str, rel: str, files: Mapping[str, Any]) -> str | None:
    if not rel.startswith(("./", "../")) and rel not in (".", ".."):
        return None
    target = posixpath.normpath(posixpath.join(posixpath.dirname(base_file), rel))
    if target in files:
        return target
    if posixpath.join(target, "default.nix") in files:
        return posixpath.join(target, "default.nix")
    return None


def _edges(models: Mapping[str, FileModel]) -> dict[str, set[str]]:
    """file -> the .nix files its path expressions name (imports, `import ./x.nix`, `./hosts/x`)."""
    out: dict[str, set[str]] = {}
    for fm in models.values():
        for _, node in fm.paths:
            target = _resolve(fm.name, text(node), models)
            if target is not None and target != fm.name:
                out.setdefault(fm.name, set()).add(target)
    return out


def _host_dir(file: str) -> str | None:
    parts = file.split("/")
    for i, p in enumerate(parts[:-1]):
        if p in _HOST_DIRS:
            name = parts[i + 1].removesuffix(".nix")
            if name != "default" and _NAME.fullmatch(name):
                return name
    return None


def _where_it_sits(fm: FileModel, node: Node, path: NixPath) -> NixPath:
    """``path`` read from the root of a module held as a value, from the file's root instead."""
    m = fm.module_at(node.start_byte) if fm.modules else None
    return (*m.path, *path) if m is not None else path


def _hosts(models: Mapping[str, FileModel], nodes: Mapping[str, EvalNode] | None, eval_from: str) -> dict[str, _Host]:
    hosts: dict[str, _Host] = {}
    deploy_top: dict[str, tuple[Any, str]] = {}

    def host(name: str, origin: str) -> _Host:
        if name not in hosts:
            hosts[name] = _Host(name, origin)
        return hosts[name]

    deploy_raw: dict[str, dict[str, Any]] = {}
    deploy_where: dict[str, dict[str, str]] = {}
    for fm in models.values():
        hive = posixpath.basename(fm.name) == "hive.nix"
        # a module held as a value (a colmena hive's node): its paths as they sit in the file (model.Embedded)
        outer = [(_where_it_sits(fm, node, path), node) for path, node in fm.paths]
        for b in fm.binds:
            if not b.exact:
                continue
            p = _where_it_sits(fm, b.node, b.path)
            at = _at(fm, b.node)
            if (seg := _segment_after(p, "nixosConfigurations")) is not None:
                i, name = seg
                h = host(name, f"{at} (nixosConfigurations.{name})")
                h.nixos = h.nixos or at
                for path, node in outer:
                    if path[: i + 2] == p[: i + 2] and (t := _resolve(fm.name, text(node), models)):
                        h.roots.add(t)
            if (seg := _segment_after(p, "deploy")) is not None and len(p) > seg[0] + 1:
                i = seg[0]
                rest = p[i + 1 :]
                if rest[0] == "nodes" and len(rest) >= 2:
                    name = rest[1]
                    h = host(name, f"{at} (deploy.nodes.{name})")
                    h.deploy_rs = h.deploy_rs or at
                    key = rest[2:]
                    if key in (("hostname",), ("sshUser",), ("profiles", "system", "sshUser")):
                        v = decode_string(b.value)
                        k = key[-1]
                        if v is not None and (k not in deploy_raw.get(name, {}) or key[0] == "profiles"):
                            deploy_raw.setdefault(name, {})[k] = v
                            deploy_where.setdefault(name, {})[k] = f"{at} (deploy.nodes.{name}.{'.'.join(key)})"
                    elif key == ("sshOpts",):
                        opts = [v for v, _ in _strings(fm, p)]
                        deploy_raw.setdefault(name, {})["sshOpts"] = opts
                        deploy_where.setdefault(name, {})["sshOpts"] = f"{at} (deploy.nodes.{name}.sshOpts)"
                elif rest in (("sshUser",), ("sshOpts",)):
                    value: Any = decode_string(b.value) if rest[0] == "sshUser" else [v for v, _ in _strings(fm, p)]
                    deploy_top[rest[0]] = (value, f"{at} (deploy.{rest[0]})")
            colmena = _segment_after(p, "colmena")
            if colmena is None and hive and p and p[0] not in ("meta", "defaults"):
                colmena = (-1, p[0])
            if colmena is not None and colmena[1] not in ("meta", "defaults"):
                i, name = colmena
                h = host(name, f"{at} (colmena.{name})" if i >= 0 else f"{at} (hive node {name})")
                h.colmena = h.colmena or at
                for path, node in outer:
                    if path[: i + 2] == p[: i + 2] and (t := _resolve(fm.name, text(node), models)):
                        h.roots.add(t)
                key = p[i + 2 :]
                if key == ("deployment", "targetHost") and (v := decode_string(b.value)):
                    h.address = Val(v, f"{at} (deployment.targetHost)")
                elif key == ("deployment", "targetUser") and (v := decode_string(b.value)):
                    h.user = Val(v, f"{at} (deployment.targetUser)")
                elif key == ("deployment", "targetPort") and b.value.type == "integer_expression":
                    h.port = Val(int(text(b.value)), f"{at} (deployment.targetPort)")
    # deploy-rs nodes, read the way nixmig.inventory reads what nix eval prints
    for name, raw in deploy_raw.items():
        where = deploy_where.get(name, {})
        top_user = deploy_top.get("sshUser")
        if "sshUser" not in raw and top_user is not None and top_user[0]:
            raw["sshUser"], where["sshUser"] = top_user
        if "sshOpts" in deploy_top:
            raw["sshOpts"] = list(deploy_top["sshOpts"][0] or []) + list(raw.get("sshOpts", []))
            where.setdefault("sshOpts", deploy_top["sshOpts"][1])
        dn = parse_nodes({name: {**raw, "hostname": raw.get("hostname") or name}}, where=name)[name]
        h = hosts[name]
        if "hostname" in raw:
            h.address = Val(dn.hostname, where["hostname"])
        if dn.user:
            h.user = Val(dn.user, where["sshUser"])
        if dn.port is not None:
            h.port = Val(dn.port, where["sshOpts"])
        if dn.identity:
            h.identity = Val(dn.identity, where["sshOpts"])
    for name, n in (nodes or {}).items():
        h = host(name, f"{eval_from} (node {name})")
        src = f"{eval_from} (node {name})"
        h.address = Val(n.hostname, f"{h.address.origin}; {src}" if h.address else src)
        if n.user:
            h.user = Val(n.user, src)
        if n.port is not None:
            h.port = Val(n.port, src)
        if n.identity:
            h.identity = Val(n.identity, src)
    # hosts/NAME/ directories: roots of the named host, and hosts when nothing else names one
    dirs: dict[str, list[str]] = {}
    for name in models:
        d = _host_dir(name)
        if d is not None:
            dirs.setdefault(d, []).append(name)
    # a directory with a configuration of its own (default.nix, configuration.nix) is a host; one
    # holding only deeper files (hosts/server/walberla/x.nix) is a group, unless none has one
    whole = {d for d, files in dirs.items() if any(_is_host_root(f, d) for f in files)}
    for d, files in dirs.items():
        if whole and d not in whole and d not in hosts:
            continue
        if d in hosts or not hosts or all(not h.nixos and not h.deploy_rs and not h.colmena for h in hosts.values()):
            h = host(d, f"{files[0]} (under {files[0].split('/')[0]}/{d}/)")
            h.roots.update(files)
    return hosts


def _is_host_root(file: str, name: str) -> bool:
    parts = file.split("/")
    return (parts[-2:] in ([name, "default.nix"], [name, "configuration.nix"])) or parts[-1] == f"{name}.nix"


def _reach(roots: set[str], edges: Mapping[str, set[str]]) -> set[str]:
    seen = set(roots)
    todo = list(roots)
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# ---------------------------------------------------------------- secrets.nix


@dataclass(frozen=True)
class _Key:
    var: str
    key: str  # canonical recipient text
    origin: str  # FILE:LINE


@dataclass(frozen=True)
class _Keys:
    file: str | None
    keys: dict[str, _Key]  # let-bound name -> key
    lists: dict[str, tuple[list[str], str]]  # let-bound name -> (member names, FILE:LINE)
    entries: frozenset[str]  # secret names with an entry


def _secrets_file(sources: Mapping[str, bytes]) -> str | None:
    found = sorted((f for f in sources if posixpath.basename(f) == SECRETS_FILE), key=lambda f: (f.count("/"), f))
    preferred = [f for f in found if f == f"secrets/{SECRETS_FILE}"]
    with_keys = [f for f in found if b"publicKeys" in sources[f]]
    chosen = preferred or with_keys
    return chosen[0] if chosen else None


def _read_keys(sources: Mapping[str, bytes]) -> _Keys:
    """secrets.nix's let-bound keys and lists (NixSyntaxError / SecretsError when it does not parse)."""
    from nixmig.secrets import recipients
    from nixmig.secrets.rules import _top_attrset

    name = _secrets_file(sources)
    if name is None:
        return _Keys(None, {}, {}, frozenset())
    source = sources[name]
    root = parse_checked(source, name).root_node
    top, lets = _top_attrset(root, Path(name))
    keys: dict[str, _Key] = {}
    lists: dict[str, tuple[list[str], str]] = {}
    for var, expr in lets.items():
        line = f"{name}:{expr.start_point[0] + 1}"
        if expr.type == "string_expression" and all(c.type == "string_fragment" for c in expr.named_children):
            try:
                r = recipients.parse(text(expr)[1:-1], where=line)
            except Exception:  # noqa: S112 - not a key: some other let-bound string
                continue
            keys[var] = _Key(var, r.text, line)
        elif expr.type == "list_expression":
            members = [text(c) for c in expr.named_children if c.type == "variable_expression"]
            lists[var] = (members, line)
    entries = set()
    for b in (b for bset in top.named_children if bset.type == "binding_set" for b in bset.named_children):
        ap = b.child_by_field_name("attrpath") if b.type == "binding" else None
        if ap is not None and ap.named_children:
            first = ap.named_children[0]
            value = decode_string(first) if first.type == "string_expression" else text(first)
            if value:
                entries.add(value.removesuffix(".age"))
    return _Keys(name, keys, lists, frozenset(entries))


# ---------------------------------------------------------------- databases


@dataclass(eq=False)
class _Db:
    name: str  # service name in nixmig.toml
    secret: str
    file: str  # the file that defines it (for the host)
    origin: str  # FILE:LINE of the hardcoded password
    runtime: Val
    container: Val | None = None
    volume: Val | None = None
    database: Val | None = None
    role: Val | None = None
    admin_role: Val | None = None
    docker_host: Val | None = None
    port: Val | None = None
    notes: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    secret_origin: str = "scan's suggested name"  # noqa: S105 - where the name comes from
    password: bytes = b""  # to find the apps holding the same value; never printed
    # move: a database nixmig cannot rotate (MySQL, MariaDB): the value is kept, the service moves onto it
    strategy: str = "rotate"
    # the password was found on the database's side (its container's POSTGRES_PASSWORD, SQL that sets it):
    # with no app in the repo holding it, its clients are elsewhere (the draft says so)
    server_side: bool = False
    clients_seen: int = 0  # other holders of it in the repo: an app of its role, a heredoc, a script


def _finding_path(f: Finding, fm: FileModel) -> NixPath:
    """The option path of the string holding the finding, as the model reads it (quoted names
    unquoted, `config.` of a full-form module dropped); scan's attr_path when no string holds it."""
    holders = [lit for lit in fm.lits if lit.node.start_byte <= f.start < lit.node.end_byte]
    if holders:
        path = min(holders, key=lambda lit: lit.node.end_byte - lit.node.start_byte).path
    else:  # a module held as a value: from its root (model.Embedded); else as scan wrote it
        held = fm.path_in_module_value(f.start, f.end) if f.start >= 0 else None
        path = held if held is not None else tuple(f.attr_path.split(".")) if f.attr_path else ()
    path = path[1:] if path[:1] == ("config",) else path
    if path[:1] == ("containers",) and path[2:4] == ("config", "services"):
        return path[3:]  # a service inside a declarative NixOS container: patch gives it the host's secret
    if not holders:
        reader = _let_reader(fm, f)
        path = reader if reader is not None else path
    return path


def _let_reader(fm: FileModel, f: Finding) -> NixPath | None:
    """The one place that reads the let binding holding the finding, when it is an initialScript (``let
    initSql = ''...''; in ... initialScript = pkgs.writeText "init.sql" initSql;``) or an /etc file's text
    (``environment.etc."db-pass".text = dbPass;``, which a *File option reads): its path, as if the literal
    were written there (patch edits it there when nothing else reads the binding, and says why when)."""
    found = let_binding_at(fm.root, f.start)
    if found is None:
        return None
    name = found[0]
    scripts = [
        b
        for b in fm.binds
        if b.exact and b.path[-1:] == ("initialScript",) and any(_reads(fm, n, name) for n in descendants(b.value))
    ]
    etcs = [b for b in fm.binds if b.exact and _is_etc_text(b.path) and _reads(fm, unparen(b.value), name)]
    readers = scripts or etcs  # (an initialScript whose SQL an /etc file shows too: the script's)
    return readers[0].path if len(readers) == 1 else None


def _reads(fm: FileModel, node: Node, name: str) -> bool:
    return node.type == "variable_expression" and fm.text(node) == name


_ENV_LINE = re.compile(rb"(?m)^[ \t]*([A-Za-z_][A-Za-z0-9_]*)=([^\n]*)$")


def _is_etc_text(p: NixPath) -> bool:
    return len(p) >= 4 and p[:2] == ("environment", "etc") and p[3] == "text"


def _etc_env_var(fm: FileModel, f: Finding, p: NixPath) -> NixPath:
    """An /etc entry's text that is an env file (``DB_PASSWORD=...`` lines): the finding's path ends with
    its line's variable, as a container's environment would (``environment.etc.P.text.DB_PASSWORD``)."""
    if f.rule != "assignment" or f.start < 0:
        return p
    holder = next(
        (
            b.path
            for b in fm.binds
            if b.exact
            and len(b.path) == 4
            and _is_etc_text(b.path)
            and b.value.start_byte <= f.start < b.value.end_byte
        ),
        None,
    )
    if holder is None:
        return p
    p = holder
    start = fm.source.rfind(b"\n", 0, f.start) + 1
    m = _ENV_LINE.match(fm.source, start)
    return (*p, m.group(1).decode()) if m is not None and m.end(2) >= f.end else p


def _etc_env(fm: FileModel, p: NixPath) -> dict[str, tuple[str, str]]:
    """The plain ``VAR=value`` lines of the /etc env text at ``p[:4]`` (value, where)."""
    bind = next((b for b in fm.binds if b.exact and b.path == p[:4]), None)
    if bind is None:
        return {}
    node = unparen(bind.value)
    out: dict[str, tuple[str, str]] = {}
    for m in _ENV_LINE.finditer(fm.source, node.start_byte, node.end_byte):
        value = m.group(2).decode().strip()
        if re.fullmatch(r"[A-Za-z0-9._~:/@%+-]+", value):
            line = fm.source.count(b"\n", 0, m.start(1)) + 1
            out[m.group(1).decode().upper()] = (value, f"{fm.name}:{line} ({m.group(1).decode()} in /etc/{p[2]})")
    return out


@dataclass(frozen=True)
class _LetUse:
    """One use of a let-bound password (``POSTGRES_PASSWORD = dbPassword;``), read as a finding there."""

    finding: Finding
    path: NixPath
    let: LetLiteral | None  # None: a string of a second plain file, read by ``(import ./plain.nix).pw``


def _imported_sql(
    models: Mapping[str, FileModel], uses: Sequence[_LetUse], f: Finding
) -> tuple[Finding, SqlAccount] | None:
    """The first read of a plain file's string (``uses``) that is SQL a unit runs to set an account's
    password, with that account."""
    from nixmig.nixsrc.shapes.let_script import imported_sql_account

    value = f.value.reveal().decode("utf-8", "replace")
    for u in uses:
        if u.let is None and u.finding.start >= 0:
            account = imported_sql_account(models[u.finding.file], u.finding.start, value)
            if account is not None:
                return u.finding, account
    return None


def _import_uses(
    models: Mapping[str, FileModel], reads: Mapping[tuple[str, int], Imported], fm: FileModel, f: Finding
) -> list[_LetUse]:
    """A finding on a string of a plain .nix file other files import (``(import ./plain.nix).pw``, or
    ``s.pw`` with ``s = import ./plain.nix`` a let there; nixsrc.patch.import_target): one finding per read,
    in the reading file, at the option path that reads it (the binding whose value it is, else the one
    around it), ``reads`` being every such read of the tree (nixsrc.patch.imported_reads). [] when no file
    reads it so."""
    from nixmig.nixsrc.scan import file_project, suggest_name, words

    out: list[_LetUse] = []
    for (file, start), imp in reads.items():
        if imp.file != fm.name or not imp.literal.start_byte <= f.start < imp.literal.end_byte:
            continue
        m = models[file]
        n = m.root.descendant_for_byte_range(start, start)
        while n is not None and not (n.type == "select_expression" and n.start_byte == start):
            n = n.parent
        if n is not None:
            bound = [b for b in m.binds if unparen(b.value) == n]
            around = [b for b in m.binds if b.value.start_byte <= n.start_byte < b.value.end_byte]
            path = (
                bound[0].path
                if bound
                else min(around, key=lambda b: b.value.end_byte - b.value.start_byte).path
                if around
                else ()
            )
            path = path[1:] if path[:1] == ("config",) else path
            # named where it is read (the plain file's name says nothing of the service: `plain-secrets-...`)
            name = suggest_name(
                project=file_project(m.name, m.source),
                plain=path,
                kind=f.kind,
                name_words=words(path[-1] if path else ""),
            )
            used = replace(_read_at(m, f, n, path, f.kind, (n.start_byte, n.end_byte)), file=m.name, secret_name=name)
            out.append(_LetUse(used, path, None))
    return out


def _let_uses(fm: FileModel, f: Finding) -> list[_LetUse]:
    """A finding on a let-bound literal (``let dbPassword = "..."; in``): one finding per use of
    the name, at the option path that reads it (a binding's value, a string only let literals
    fill such as a URL, else the binding around the expression using it). [] when the finding is
    no let literal nixmig.nixsrc.lets resolves (a name bound twice, shadowed) or nothing reads it."""
    from nixmig.nixsrc.patch import split_url
    from nixmig.nixsrc.scan import Kind

    lets = _lets(fm)
    let = next((x for x in lets.values() if x.literal.start_byte <= f.start < x.literal.end_byte), None)
    if let is None:  # a let attrset's field (``db = { password = "..."; }``, read as ``db.password``)
        let = next((x for x in _field_lets(fm) if x.literal.start_byte <= f.start < x.literal.end_byte), None)
    if let is None:
        return _rec_url_uses(fm, f)
    out: list[_LetUse] = []
    for u in let.uses:
        span = (u.start_byte, u.end_byte)
        kind = f.kind  # the let's literal is a password, or a URL holding one
        bound = [b for b in fm.binds if (unparen(b.value).start_byte, unparen(b.value).end_byte) == span]
        strings = [
            lit
            for lit in fm.lits
            if lit.node.start_byte <= u.start_byte < lit.node.end_byte and lit.node.type == "string_expression"
        ]
        around = [b for b in fm.binds if b.value.start_byte <= u.start_byte < b.value.end_byte]
        if bound:
            path = bound[0].path
        elif strings:
            holder = min(strings, key=lambda lit: lit.node.end_byte - lit.node.start_byte)
            path = holder.path
            value = resolve(holder.node, lets)
            kind = Kind.URL_CREDENTIAL if value is not None and split_url(value[0]) is not None else Kind.PASSWORD
        elif around:
            path = min(around, key=lambda b: b.value.end_byte - b.value.start_byte).path
        else:
            path = ()
        path = path[1:] if path[:1] == ("config",) else path
        out.append(_LetUse(_read_at(fm, f, u, path, kind, (u.start_byte, u.end_byte)), path, let))
    return out


def _read_at(fm: FileModel, f: Finding, use: Node, path: NixPath, kind: Kind, span: tuple[int, int]) -> Finding:
    """``f`` read where ``use`` reads it: its line, the option path there, its kind, the byte span to read."""
    line, col = fm.line_col(use.start_byte)
    end_line, end_col = fm.line_col(use.end_byte)
    return replace(
        f,
        line=line,
        col=col,
        end_line=end_line,
        end_col=end_col,
        attr_path=".".join(path),
        kind=kind,
        start=span[0],
        end=span[1],
    )


def _rec_url_uses(fm: FileModel, f: Finding) -> list[_LetUse]:
    """A ``rec { }`` field read only by sibling fields that build a URL from it (``url =
    "postgres://${user}:${password}@${host}/x";``, realcfg20/23): a URL finding at each read of such a
    field, where it sits (a unit's script or command line), spanning the URL field's string."""
    from nixmig.nixsrc.lets import _formal_names
    from nixmig.nixsrc.patch import split_url
    from nixmig.nixsrc.scan import Kind
    from nixmig.nixsrc.shapes.let_script import fields

    found = fields(fm, _formal_names(fm.root))
    own = next((x for x in found if x.readers and x.literal.start_byte <= f.start < x.literal.end_byte), None)
    if own is None:
        return []
    out: list[_LetUse] = []
    for reader in (x for x in found if x.shown in own.readers and split_url(x.value) is not None):
        let = LetLiteral(reader.shown, reader.binding, reader.literal, reader.value, reader.uses)
        for u in reader.uses:
            around = [b for b in fm.binds if b.value.start_byte <= u.start_byte < b.value.end_byte]
            path = min(around, key=lambda b: b.value.end_byte - b.value.start_byte).path if around else ()
            path = path[1:] if path[:1] == ("config",) else path
            span = (reader.literal.start_byte, reader.literal.end_byte)
            out.append(_LetUse(_read_at(fm, f, u, path, Kind.URL_CREDENTIAL, span), path, let))
    return out


def _is_db_finding(f: Finding, p: NixPath) -> bool:
    from nixmig.nixsrc.patch import database_option, nixpkgs_file_sibling
    from nixmig.nixsrc.shapes.env_file_option import SERVICES as ENV_FILE_SERVICES

    if f.kind.value == "url-credential":
        return True
    if f.kind.value != "password":
        return False
    last = p[-1] if p else ""
    return (
        last.upper() in ("POSTGRES_PASSWORD", "DB_PASSWORD", "DATABASE_PASSWORD", "PGPASSWORD")
        or (p[-2:-1] in (("environment",), ("environments",)) and bool(_DB_VAR.search(_PASSWORD_END.sub("", last))))
        or (
            len(p) == 5
            and _is_etc_text(p)
            and _PASSWORD_END.search(last) is not None
            and bool(_DB_VAR.search(_PASSWORD_END.sub("", last)))
        )
        or last.upper().startswith(("MARIADB_", "MYSQL_"))
        or last.upper() in ("MONGO_INITDB_ROOT_PASSWORD", "DOCKER_INFLUXDB_INIT_PASSWORD")
        or "initialScript" in p
        or (nixpkgs_file_sibling(p) is not None and database_option(p))  # not redis' requirePass, an adminpass
        or (p[:1] == ("services",) and any(w in p for w in ("database", "db")))
        or (len(p) == 4 and p[1] in ENV_FILE_SERVICES and last in ENV_FILE_SERVICES[p[1]].variables)
        or (p[:1] == ("services",) and last.startswith("dbpass"))  # nextcloud's dbpassFile = pkgs.writeText ...
        or (p[:1] == ("services",) and last.upper() == "DATABASE_URL")  # a libpq DSN: host=... password=...
        or grafana_datasource(p)  # a provisioned datasource's password: a client of the database
        or (  # firefly-iii's settings.DB_PASSWORD_FILE (shapes/etc_file.file_setting)
            file_setting(p) and bool(_DB_VAR.search(_PASSWORD_END.sub("", last.removesuffix("_FILE"))))
        )
    )


def _in_nixos_container(f: Finding, models: Mapping[str, FileModel]) -> str | None:
    """The declarative NixOS container whose config holds ``f`` and runs its own database server there."""
    path = [seg.strip('"') for seg in f.attr_path.split(".")] if f.attr_path else []
    path = path[1:] if path[:1] == ["config"] else path
    if len(path) < 4 or path[0] != "containers" or path[2] != "config":
        return None
    from nixmig.nixsrc.shapes.container_store_file import database_server

    return path[1] if database_server(models, path[1]) is not None else None


# the official images whose first user's password a move takes (nixmig rotates PostgreSQL passwords only):
# image -> (its password variable, the variable naming that user, the database nixmig.toml names and why;
# a move never reads it)
_INIT_USER_IMAGES = {
    "mongo": (
        "MONGO_INITDB_ROOT_PASSWORD",
        "MONGO_INITDB_ROOT_USERNAME",
        "admin",
        "mongo's root user is created in the admin database",
    ),
    "influxdb": (
        "DOCKER_INFLUXDB_INIT_PASSWORD",
        "DOCKER_INFLUXDB_INIT_USERNAME",
        "influx",
        "influxdb's first user (DOCKER_INFLUXDB_INIT_MODE=setup) is no database's: a move never reads this",
    ),
}
_INFLUX_IMAGE = re.compile(
    r"^(?:(?:docker\.io|index\.docker\.io|registry-1\.docker\.io|quay\.io/influxdb)/)?(?:library/)?influxdb(:|@|$)"
)


def _init_user_container_db(c: _Container, f: Finding, models: Mapping[str, FileModel] | None, which: str) -> _Db:
    """The official mongo image's root password, influxdb 2's first user's: moved, value kept (nixmig rotates
    PostgreSQL passwords only); the role is the user the image's username variable names."""
    image = c.image()
    assert image is not None  # the caller matched it
    var, user_var, database, why = _INIT_USER_IMAGES[which]
    db = _Db(
        name=c.label,
        secret=f"{c.label}-password",  # not scan's "...-initdb-root-password"
        file=c.fm.name,
        origin=f"{f.file}:{f.line}",
        runtime=Val("docker", f"{_at(c.fm, _first_bind(c))} ({_KIND_WORD[c.kind]} {c.name})"),
    )
    db.secret_origin = "named after the container"  # noqa: S105 - where the name comes from
    db.strategy = "move"
    db.notes.append(
        f"{c.label} runs {image[0]} ({image[1]}): nixmig rotates PostgreSQL passwords only, so this migration "
        f"moves {var}, its value kept (strategy move, below)"
    )
    user = c.env(user_var)
    if user is not None and _ROLE.fullmatch(user[0]):
        db.role = Val(user[0], f"{user[1]} ({user_var})")
    else:
        db.role = Val(
            "root",
            f"{f.file}:{f.line} (no literal {user_var} in {c.label})",
            f"the user {user_var} names: patch moves its password when role is that name or root",
        )
    db.database = Val(database, why)
    return _container_name(c, db, models)


def _container_db(c: _Container, f: Finding, models: Mapping[str, FileModel] | None = None) -> _Db | str:
    """The service for a database container, or why it is not drafted."""
    image = c.image()
    mysql_var = any(c.env(v) for v in ("MARIADB_PASSWORD", "MYSQL_PASSWORD", "MARIADB_ROOT_PASSWORD"))
    mysql = (image is not None and _MYSQL_IMAGE.search(image[0])) or (image is None and mysql_var)
    var = f.attr_path.rsplit(".", 1)[-1].strip('"').upper()
    user_var = next((v for v in _MYSQL_USER_VARS if c.env(v) is not None), None) if mysql else None
    if mysql and user_var is not None and var in _MYSQL_ROOT_VARS:
        return ""  # root's beside the user's: patch moves it as a companion of the user's migration
    what = f"{c.label} ({f.file}:{f.line}, {f.attr_path.rsplit('.', 1)[-1]})"
    db = _Db(
        name=c.label,
        secret=f.secret_name,
        file=c.fm.name,
        origin=f"{f.file}:{f.line}",
        runtime=Val("docker", f"{_at(c.fm, _first_bind(c))} ({_KIND_WORD[c.kind]} {c.name})"),
    )
    if mysql:
        runs = f"runs {image[0]} ({image[1]})" if image is not None else "is a MySQL/MariaDB database"
        db.strategy = "move"
        db.notes.append(
            f"{c.label} {runs}: nixmig rotates PostgreSQL passwords only, so this migration moves the value "
            "(strategy move, below)"
        )
        if user_var is not None:
            root = next((v for v in _MYSQL_ROOT_VARS if c.env(v) is not None), None)
            if root is not None and (at := c.env(root)) is not None:
                db.notes.append(
                    f"{root} ({at[1]}) is a second credential of {c.label}: `nixmig patch` "
                    "moves it onto its own secret, value kept, and adds it to this migration's also"
                )
            user = next((c.env(v) for v in ("MARIADB_USER", "MYSQL_USER") if c.env(v) is not None), None)
            if user is not None and _ROLE.fullmatch(user[0]):
                db.role = Val(user[0], user[1])
        else:
            db.role = Val(
                "root",
                f"{f.file}:{f.line} ({var}: no user's password in {c.label})",
                "the password hardcoded here is root's: this migration moves it (strategy move)",
            )
        named = next((c.env(v) for v in ("MARIADB_DATABASE", "MYSQL_DATABASE") if c.env(v) is not None), None)
        if named is not None and _ROLE.fullmatch(named[0]):  # informative: a move connects to no database
            db.database = Val(named[0], named[1])
        if image is None:
            db.checks.append(f"{what}: its image is not a plain string here; check that it is MySQL/MariaDB")
        return _container_name(c, db, models)
    if image is None:
        db.checks.append(f"{what}: its image is not a plain string here; check that it is PostgreSQL")
    db.server_side = True
    _container_name(c, db, models)
    # volume
    for v, where in _strings(c.fm, (*c.prefix, *c.where.volumes)):
        src, _, dest = v.partition(":")
        if not dest.split(":")[0].startswith(_DATA_DIR):
            continue
        if src.startswith(("/", ".", "~", "$")):
            db.notes.append(f"the data is in the bind mount {src} ({where}): no docker volume (rebuild needs one)")
        elif c.kind == "arion" and c.project:
            db.volume = Val(f"{c.project}_{src}", f"{where} (volume {src} of project {c.project}: PROJECT_VOLUME)")
        elif _DOCKER_NAME.fullmatch(src):
            db.volume = Val(src, f"{where} (named volume)")
    if db.volume is None and not db.notes:
        db.notes.append(f"no volume at {_DATA_DIR}/data in the repo: the image's anonymous volume holds the data")
    # database and role, as the image reads them
    user = c.env("POSTGRES_USER")
    name = c.env("POSTGRES_DB")
    for var, found in (("POSTGRES_USER", user), ("POSTGRES_DB", name)):
        bound = next((b for b in c.fm.binds if b.path == (*c.prefix, *c.where.env, var)), None)
        if found is None and bound is not None:
            db.checks.append(
                f"{var} is an expression at {_at(c.fm, bound.node)}, not a string: "
                f"the {'role' if var == 'POSTGRES_USER' else 'database'} below is the image's default"
            )
    if user is not None:
        db.role = Val(user[0], f"{user[1]} (POSTGRES_USER)")
    else:
        db.role = Val(
            "postgres",
            f"the postgres image's default (no POSTGRES_USER in {c.fm.name})",
            "the image's superuser: if the apps log in as another role, name it here",
        )
    if name is not None:
        db.database = Val(name[0], f"{name[1]} (POSTGRES_DB)")
    elif user is not None:
        db.database = Val(user[0], f"{user[1]} (no POSTGRES_DB: the image names the database after POSTGRES_USER)")
    else:
        db.database = Val(
            "postgres",
            "the postgres image's default (no POSTGRES_DB, no POSTGRES_USER)",
            "the image's default database: if the apps use another one, name it here",
        )
    if user is not None and user[0] != "postgres":
        db.admin_role = Val(user[0], f"{user[1]} (POSTGRES_USER is the image's superuser)")
    return db


def _container_name(c: _Container, db: _Db, models: Mapping[str, FileModel] | None = None) -> _Db:
    """The container's name as docker knows it (and podman's socket when the backend is podman)."""
    explicit = _lit(c.fm, (*c.prefix, "container_name"))
    if explicit is not None:
        db.container = Val(explicit[0], f"{explicit[1]} (container_name)")
    elif c.kind == "arion":
        if c.project:
            db.container = Val(
                f"{c.project}-{c.plain}-1",
                f"{c.project_origin}, service {c.name}{c.plain_origin}: PROJECT-SERVICE-1",
            )
        else:
            db.container = Val(
                f"{c.plain}-1",
                f"{c.fm.name} (service {c.name}{c.plain_origin})",
                f"the arion project's name is not in the repo: the container is PROJECT-{c.plain}-1",
            )
    elif c.kind == "quadlet":  # quadlet-nix: podman, the container named by containerConfig.name or the attribute
        named = _lit(c.fm, (*c.prefix, "containerConfig", "name"))
        at = f"{_at(c.fm, _first_bind(c))} (virtualisation.quadlet.containers.{c.name}{c.plain_origin})"
        db.container = Val(named[0], f"{named[1]} (containerConfig.name)") if named is not None else Val(c.plain, at)
        db.docker_host = Val(
            _PODMAN_SOCKET,
            f"{_at(c.fm, _first_bind(c))} (quadlet-nix runs podman)",
            "nixmig runs the docker CLI against podman's socket: enable virtualisation.podman.dockerSocket "
            "and install the docker client on the host",
        )
    else:
        db.container = Val(
            c.plain,
            f"{_at(c.fm, _first_bind(c))} ({'.'.join(c.prefix[:-1])}.{c.name}{c.plain_origin})",
        )
        # docker-containers (before NixOS 20.09): nixpkgs maps it onto oci-containers with backend docker
        backend = _backend(c, models) if c.prefix[0] != "docker-containers" else ("docker", "docker-containers")
        if backend is None:
            db.docker_host = None
            db.checks.append(
                "virtualisation.oci-containers.backend is not set: NixOS's default is podman (stateVersion "
                f'22.05 and later); with podman set docker_host = "{_PODMAN_SOCKET}" and enable '
                "virtualisation.podman.dockerSocket (nixmig runs the docker CLI)"
            )
        elif backend[0] == "podman":
            rootless = _lit(c.fm, (*c.prefix, "podman", "user"))
            db.docker_host = Val(
                _PODMAN_SOCKET,
                f"{backend[1]} (backend podman)",
                f"the container runs rootless as podman.user {rootless[0]} ({rootless[1]}): root's podman socket "
                f"does not see it; set docker_host to {rootless[0]}'s (unix:///run/user/UID/podman/podman.sock, "
                "its podman.socket enabled) and install the docker client on the host"
                if rootless is not None and rootless[0] not in ("", "root")
                else "nixmig runs the docker CLI against podman's socket: enable virtualisation.podman.dockerSocket "
                "and install the docker client on the host",
            )
    if db.container is not None and not _DOCKER_NAME.fullmatch(str(db.container.value)):
        db.container = Val(
            "CONTAINER",
            db.container.origin,
            f"the container's name is computed here ({comment_text(str(db.container.value))}): write the name it gets",
        )
    return db


_KIND_WORD = {"arion": "arion service", "oci": "oci-containers container", "quadlet": "quadlet-nix container"}


def _first_bind(c: _Container) -> Node:
    return next(b.node for b in c.fm.binds if b.path[: len(c.prefix)] == c.prefix)


def _backend(c: _Container, models: Mapping[str, FileModel] | None = None) -> tuple[str, str] | None:
    """virtualisation.oci-containers.backend: in the container's file, else the one value the repo sets."""
    path = ("virtualisation", "oci-containers", "backend")
    found = _lit(c.fm, path)
    if found is not None or models is None:
        return found
    values = {v for m in models.values() if (v := _lit(m, path)) is not None}
    return next(iter(values)) if len({v[0] for v in values}) == 1 else None


def _mysql_script_db(db: _Db, fm: FileModel, f: Finding) -> _Db:
    """services.mysql.initialScript's ``IDENTIFIED BY '...'``: the account's user, strategy move (patch:
    nixsrc/shapes/mysql_initial_script.py)."""
    from nixmig.nixsrc.shapes.mysql_initial_script import statements

    at = f"{f.file}:{f.line}"
    node = fm.root.descendant_for_byte_range(f.start, max(f.start, f.end)) if f.start >= 0 else None
    while node is not None and node.type not in ("string_expression", "indented_string_expression"):
        node = node.parent
    sql, back = _sql_filled(fm, node) if node is not None else ("", [])  # a let's value where it is read
    pos = next((i for i, b in enumerate(back) if b >= f.start), len(sql))
    q = 2 if node is not None and node.type == "indented_string_expression" else 1  # the SQL between '' or "
    mine = [s for s in statements(sql[q:-q]) if s.clause is not None and s.clause[0] <= pos - q < s.clause[1]]
    db.runtime = Val("native", f"{at} (services.mysql.initialScript)")
    db.strategy = "move"
    if mine and _ROLE.fullmatch(mine[0].user):
        db.role = Val(mine[0].user, f"{at} (the account {mine[0].account} IDENTIFIED BY gives a password)")
    created = _SQL_DB.search(sql)
    if created is not None:  # informative: a move connects to no database
        db.database = Val(created.group(1) or created.group(2), f"{at} (CREATE DATABASE in initialScript)")
    if db.database is not None:
        db.name, db.secret = f"{db.database.value}-db", f"{db.database.value}-db-password"
        db.secret_origin = "named after the database"  # noqa: S105 - where the name comes from
    else:
        db.name, db.secret = "mysql", "mysql-db-password"
    db.notes.append(
        f"the password is in MySQL's SQL text ({at}, services.mysql.initialScript): nixmig rotates PostgreSQL "
        "passwords only, so this migration moves the value (strategy move, below); `nixmig patch` locks the "
        "account in the script and sets its password from the agenix file in a oneshot"
    )
    return db


def _unit_sql_db(f: Finding, account: SqlAccount) -> _Db:
    """A let-bound password read only by SQL a systemd unit runs (``mysql -e "GRANT ... IDENTIFIED BY
    '${cfg.password}'"``, ``psql -c "ALTER ROLE x PASSWORD '${pw}'"``): the account the SQL names, on
    the host's own server (patch: nixsrc/shapes/let_script.py). MySQL/MariaDB: strategy move."""
    at = f"{f.file}:{f.line}"
    why = f"{account.where} (the SQL systemd.services.{account.unit} runs gives {account.user} this password)"
    db = _Db(
        name="mysql" if account.mysql else "postgresql",
        secret="",
        file=f.file,
        origin=at,
        runtime=Val("native", why),
        role=Val(account.user, why),
    )
    if account.database is not None:
        db.database = Val(account.database, f"{account.where} (GRANT ... ON {account.database}.*)")
        db.name, db.secret = f"{account.database}-db", f"{account.database}-db-password"
        db.secret_origin = "named after the database"  # noqa: S105 - where the name comes from
    elif not account.mysql:  # PostgreSQL: the role's own database, as ensureDBOwnership makes it
        db.database = Val(
            account.user,
            f"{account.where} (the role's name)",
            check="the SQL names no database: the role's name is a guess; write the database the app uses",
        )
        db.name, db.secret = f"{account.user}-db", f"{account.user}-db-password"
        db.secret_origin = "named after the database"  # noqa: S105 - where the name comes from
    else:
        db.secret = f"{db.name}-db-password"
    if account.mysql:
        db.strategy = "move"
        db.notes.append(
            f"the password is bound at {at} and read by MySQL SQL in systemd.services.{account.unit}: nixmig "
            "rotates PostgreSQL passwords only, so this migration moves the value (strategy move, below); "
            "`nixmig patch` has the unit read it from the agenix file at start"
        )
    return db


def _beside_container(app: _Db, here: Sequence[_Db]) -> None:
    """An app that names no host for its database (a "local server" guess) in a file whose one drafted
    database runs in a container (a unit's ``podman exec postgres psql``): that container, as a guess."""
    if app.container is not None or app.runtime.value != "native" or "a local server" not in app.runtime.origin:
        return
    if len(here) != 1 or here[0].runtime.value != "docker" or here[0].container is None:
        return
    d = here[0]
    assert d.container is not None
    why = f"the only database container of {app.file} ({d.container.origin})"
    check = f"the app names no host: is its database the container {d.container.value}?"
    app.runtime = Val("docker", why, check)
    app.container = Val(d.container.value, why, check)
    app.docker_host = d.docker_host
    app.name = f"{app.database.value}-db" if app.database is not None else app.name


def _same_role(known: _Db, app: _Db) -> bool:
    """The app's database is one drafted already: the same role, and no other container or database named
    (an app names its database's container by a host name nixmig may not tie: a guess is no other)."""
    if known.role is None or app.role is None or known.role.value != app.role.value or known.strategy == "move":
        return False
    if app.database is not None and known.database is not None and app.database.value != known.database.value:
        return False
    if app.container is None or app.container.check is not None or app.container.value == "CONTAINER":
        return True
    return known.container is not None and known.container.value == app.container.value


def _unit_sql_exec_db(fm: FileModel, f: Finding) -> _Db | None:
    """A literal in SQL a systemd unit runs (``podman exec -i postgres psql -c "CREATE ROLE app WITH LOGIN
    PASSWORD '...'"``, or psql on the host): the role the clause names, in the container ``exec`` names
    (docker runtime; podman's socket) or the host's server (patch: nixsrc/shapes/unit_sql.py)."""
    from nixmig.nixsrc.shapes.unit_sql import COMMANDS, command_text, find_exec, strings_in
    from nixmig.nixsrc.sqlpass import clauses

    if f.start < 0:
        return None
    for b in fm.binds:
        if len(b.path) < 4 or b.path[:2] != ("systemd", "services") or b.path[3:] not in COMMANDS:
            continue
        if not b.value.start_byte <= f.start < b.value.end_byte:
            continue
        for node in strings_in(b.value):
            base = node.start_byte
            if not base <= f.start < node.end_byte:
                continue
            sql = fm.source[base : node.end_byte]
            found = [c for c in clauses(sql, in_shell=True) if base + c.start <= f.start < base + c.value_end + 1]
            if len(found) != 1 or not _ROLE.fullmatch(found[0].role):
                return None
            clause, unit = found[0], b.path[2]
            how = find_exec(command_text(fm, b))
            at = f"{f.file}:{f.line}"
            why = f"{at} (the SQL systemd.services.{unit} runs gives role {clause.role} this password)"
            db = _Db(name="postgresql", secret="", file=fm.name, origin=at, runtime=Val("native", why))
            db.role = Val(clause.role, why)
            db.server_side = True
            sql_text = sql.decode("utf-8", "replace")
            owned = [m for m in _SQL_DB.finditer(sql_text) if _owner_is(sql_text, m, clause.role)]
            if owned:
                dbname = owned[0].group(1) or owned[0].group(2)
                db.database = Val(dbname, f"{at} (CREATE DATABASE ... OWNER {clause.role})")
            else:
                db.database = Val(clause.role, f"{at} (named after the role)", "the database is a guess")
            if how is not None:
                via = f"{at} (systemd.services.{unit} runs psql through `{how.runtime} exec {how.name}`)"
                db.runtime = Val("docker", via)
                db.container = Val(how.name, via)
                if how.user != "postgres":
                    db.admin_role = Val(how.user, f"{at} (psql -U {how.user})")
                if how.runtime == "podman":
                    db.docker_host = Val(
                        _PODMAN_SOCKET,
                        via,
                        "nixmig runs the docker CLI against podman's socket: enable "
                        "virtualisation.podman.dockerSocket and install the docker client on the host",
                    )
            db.name = f"{db.database.value}-db"
            db.secret = f"{db.database.value}-db-password"
            db.secret_origin = "named after the database"  # noqa: S105 - where the name comes from
            return db
    return None


def _in_host_or_specialisation(p: NixPath) -> NixPath:
    """``specialisation.NAME.configuration.services.X...`` -> ``services.X...`` (patch puts the oneshot there)."""
    return p[3:] if len(p) > 3 and p[0] == "specialisation" and p[2] == "configuration" else p


_SQL_ROTATES = "apply rotates the role's password on the server"
_SQL_MOVES = "a oneshot beside the server sets the password from the secret (the value kept)"


def _native_db(fm: FileModel, f: Finding, p: NixPath, models: Mapping[str, FileModel]) -> _Db | str:
    pg = [m for m in models.values() if any(b.path[:2] == ("services", "postgresql") and b.exact for b in m.binds)]
    db = _Db(
        name="postgresql",
        secret="",
        file=fm.name,
        origin=f"{f.file}:{f.line}",
        runtime=Val("native", ""),
    )
    if p[:2] == ("services", "mysql") and "initialScript" in p:
        return _mysql_script_db(db, fm, f)
    if "initialScript" in p:
        node = fm.root.descendant_for_byte_range(f.start, max(f.start, f.end)) if f.start >= 0 else None
        while node is not None and node.type not in ("string_expression", "indented_string_expression"):
            node = node.parent
        sql, back = _sql_filled(fm, node) if node is not None else ("", [])
        pos = next((i for i, b in enumerate(back) if b >= f.start), len(sql))
        # the role of the statement that holds the password (CREATE/ALTER ROLE name ... PASSWORD '...')
        stmts = [m for m in _SQL_ROLE.finditer(sql) if m.start() <= pos]
        role = stmts[-1] if stmts else _SQL_ROLE.search(sql)
        at = f"{f.file}:{f.line}"

        def line_of(m: re.Match[str]) -> str:
            return f"{f.file}:{fm.line_col(back[m.start()] if m.start() < len(back) else f.start)[0]}"

        def name(m: re.Match[str]) -> str:
            return m.group(1) or m.group(2)

        # its database: the one it owns, else the one the script creates
        created = list(_SQL_DB.finditer(sql))
        owned = [m for m in created if role and _owner_is(sql, m, name(role))]
        dbname = owned[0] if owned else (created[0] if len(created) == 1 else None)
        db.runtime = Val("native", f"{at} (services.postgresql.initialScript)")
        db.server_side = True
        db.role = (
            Val(name(role), f"{line_of(role)} ({' '.join(role.group(0).split()[:2]).upper()} in initialScript)")
            if role
            else None
        )
        if dbname is not None:
            check = None if owned else f"the database the script creates; is it {name(role) if role else 'the role'}'s?"
            db.database = Val(name(dbname), f"{line_of(dbname)} (CREATE DATABASE in initialScript)", check)
        elif role is not None:
            db.database = Val(
                name(role),
                f"{line_of(role)} (named after the role)",
                "no database in the script: which one does the role use?",
            )
        db.notes.append(
            f"the password is in SQL text ({at}, services.postgresql.initialScript): `nixmig patch --check` "
            f"shows what changes there; {_SQL_ROTATES}"
        )
    else:
        service = p[1] if len(p) > 1 and p[0] == "services" else ""
        if pg:
            first = next(b.node for b in pg[0].binds if b.path[:2] == ("services", "postgresql"))
            db.runtime = Val("native", f"{_at(pg[0], first)} (services.postgresql)")
        else:
            db.runtime = Val(
                "native",
                f"{f.file}:{f.line} ({f.attr_path})",
                f"no services.postgresql in the repo: does services.{service} create its database locally on "
                "this host (a nixpkgs default), or is the database elsewhere?",
            )
        db.role, db.database = _native_names(pg, fm, p, service)
        if grafana_datasource(p):
            _datasource_names(db, fm, f)
        stem = p[-1].removesuffix("_PASSWORD")
        driver = _lit(fm, (*p[:-1], stem + "_DRIVER")) if stem != p[-1] else None
        if driver is not None and driver[0].lower() in ("mysql", "mariadb"):
            db.runtime = Val("native", f"{driver[1]} ({'.'.join(p[:-1])} names the {driver[0]} driver)")
            db.strategy = "move"
            db.notes.append(
                f"services.{service} logs in to MySQL/MariaDB ({driver[1]}): nixmig rotates PostgreSQL passwords "
                "only, so this migration moves the value (strategy move, below); rotate it the database's own way "
                "once the service reads the agenix file"
            )
    if db.database is not None:
        db.name = f"{db.database.value}-db"
        db.secret = f"{db.database.value}-db-password"
        db.secret_origin = "named after the database"  # noqa: S105 - where the name comes from
    else:
        db.secret = "postgresql-db-password"  # noqa: S105 - a secret's name
    for m in pg:
        port = _int_lit(m, ("services", "postgresql", "port")) or _int_lit(
            m, ("services", "postgresql", "settings", "port")
        )
        if port is not None:
            db.port = Val(port[0], f"{port[1]} (services.postgresql port)")
    return db


def _datasource_names(db: _Db, fm: FileModel, f: Finding) -> None:
    """A grafana datasource's role and database: its ``user`` and ``jsonData.database`` (or ``database``);
    a MySQL datasource's password is moved (nixmig rotates PostgreSQL passwords only)."""
    node = fm.root.descendant_for_byte_range(f.start, max(f.start, f.end)) if f.start >= 0 else None
    fields = datasource_fields(fm, node) if node is not None else {}
    at = f"{f.file}:{f.line} (the provisioned datasource {fields.get('name', '')!r})"
    if "user" in fields:
        db.role = Val(fields["user"], f"{at}: its user")
    name = fields.get("jsonData.database") or fields.get("database")
    if name:
        db.database = Val(name, f"{at}: its database")
    if fields.get("type", "").lower() == "mysql":
        db.strategy = "move"
        db.notes.append(
            f"the datasource at {f.file}:{f.line} logs in to MySQL: nixmig rotates PostgreSQL passwords only, so "
            "this migration moves the value (strategy move, below)"
        )


def _url_db(fm: FileModel, f: Finding, p: NixPath, containers: Sequence[_Container]) -> _Db | None:
    """The database a postgres:// URL with the password names (its role, database and host), or
    the one an app's variables name (DB_PASSWORD beside DB_USER, DB_HOST, DB_NAME)."""
    from urllib.parse import unquote

    from nixmig.nixsrc.patch import split_url

    holders = [lit for lit in fm.lits if lit.node.start_byte <= f.start < lit.node.end_byte]
    if holders:
        node: Node | None = min(holders, key=lambda lit: lit.node.end_byte - lit.node.start_byte).node
    else:  # a let-bound URL read whole (DATABASE_URL = dbUrl;)
        node = fm.root.descendant_for_byte_range(f.start, f.end) if f.start >= 0 else None
        if node is not None and node.parent is not None and node.parent.type == "variable_expression":
            node = node.parent
    held = _value(fm, node) if node is not None else None
    value = held[0] if held is not None else None
    if value is None and node is not None and unparen(node).type == "string_expression":
        # a host or port read from config (`:${toString config.services.postgresql.port}/`, patch keeps it):
        # the role and the database are what the draft reads
        raw = re.sub(_CONFIG_INTERPOLATION, "", fm.text(unparen(node))[1:-1])
        value = raw if "${" not in raw and "\\" not in raw else None
    parts = split_url(value) if value else None
    at = f"{f.file}:{f.line}"
    role: tuple[str, str] | None
    database: tuple[str, str] | None
    if parts is not None and parts.suffix.startswith("@"):
        rest = parts.suffix[1:]  # after "@"
        host = re.split(r"[:/?#]", rest, maxsplit=1)[0]
        path = re.split(r"[?#]", rest[len(host) :].lstrip(":0123456789"), maxsplit=1)[0].strip("/")
    elif parts is not None:  # the password in the query (postgres:///db?host=...&password=...)
        host = parts.host
        after = parts.prefix.split("://", 1)[-1]
        path = re.split(r"[?#]", after.partition("/")[2], maxsplit=1)[0].strip("/")
    if parts is not None:
        what = f"{at} ({'.'.join(p)}: a URL)"
        role = (unquote(parts.user), f"{what}: its user")
        database = (unquote(path), f"{what}: its database") if path else None
        where = (host, f"{what}: its host")
    else:
        found = _app_vars(fm, p, containers)
        if found is None:
            return None
        role, database, host_var = found
        what = f"{at} ({p[-1]})"
        where = host_var if host_var is not None else ("", what)
    if role is None or not role[0]:
        return None
    db = _Db(name="db", secret=f"{role[0]}-db-password", file=fm.name, origin=at, runtime=Val("docker", what))
    db.secret_origin = "named after the app's role"  # noqa: S105 - where the name comes from
    db.role = Val(role[0], role[1])
    db.database = Val(
        database[0] if database else role[0],
        database[1] if database else f"{role[1]} (no database named: the role's)",
        "the database this app names: any the role logs in to will do",
    )
    db.checks.append(f"only an app names this database ({at}): nothing in the repo ties it to its server")
    host = re.split(r":(?=\d+$)", where[0])[0]
    named = next((c for c in containers if host in (c.name, c.plain, c.label)), None)
    image = named.image() if named is not None else None
    if image is not None and _MYSQL_IMAGE.search(image[0]):
        return None  # the app's database is a MySQL one (said where that container is)
    local = host in ("localhost", "127.0.0.1", "::1", "") or host.startswith(("%2F", "/"))
    if (_container_shape(p) is None and local) or host in _HOST_FROM_A_CONTAINER:
        pg = next((b for b in fm.binds if b.path[:2] == ("services", "postgresql") and b.exact), None)
        beside = f"; services.postgresql at {_at(fm, pg.node)}" if pg is not None else ""
        db.runtime = Val("native", f"{where[1]}: a local server{beside}", "is it services.postgresql on this host?")
        db.name = f"{db.database.value}-db"
    elif _DOCKER_NAME.fullmatch(host) and "." not in host:
        db.container = Val(host, f"{where[1]}, the container's name on the app's network", "the container's name?")
        db.name = host
    elif not host:
        db.container = Val("CONTAINER", what, "the app does not say where its database is: name its container")
        db.name = f"{db.database.value}-db"
    else:
        db.runtime = Val(
            "native", where[1], f"the database is at {host}: on which host does it run, in a container or natively?"
        )
        db.name = f"{db.database.value}-db"
    return db


# an interpolation of a URL's host or port that reads config (patch.url_with_config keeps it)
_CONFIG_INTERPOLATION = re.compile(r"\$\{\s*(?:(?:builtins\.)?toString\s+)?config(?:\.[A-Za-z_][\w'-]*)+\s*\}")
# the machine that runs the containers, as a container names it (podman, docker)
_HOST_FROM_A_CONTAINER = frozenset({"host.containers.internal", "host.docker.internal"})
_PASSWORD_END = re.compile(r"(PASSWORD|PASSWD|PASS|PWD)$", re.IGNORECASE)
_DB_VAR = re.compile(r"(^|_)(DB|DATABASE|POSTGRES|POSTGRESQL|PG|PSQL|JDBC|DATASOURCE)(_|$)", re.IGNORECASE)


def _app_vars(
    fm: FileModel, p: NixPath, containers: Sequence[_Container]
) -> tuple[tuple[str, str] | None, tuple[str, str] | None, tuple[str, str] | None] | None:
    """(role, database, host) the variables beside a password variable name: an app container's
    environment, or any other ``environment`` attrset (a unit's, one bound in a let and merged into
    containers)."""
    etc = len(p) == 5 and _is_etc_text(p)
    if len(p) < 2 or (p[-2] not in ("environment", "environments") and not etc):
        return None
    m = _PASSWORD_END.search(p[-1])
    if m is None:
        return None
    prefix = p[-1][: m.start()].upper()
    if prefix.startswith(("MYSQL", "MARIADB")):
        return None
    shape = _container_shape(p)
    c = next((c for c in containers if c.fm is fm and c.prefix == shape[2]), None) if shape is not None else None
    if shape is not None and c is None:
        return None
    env_fm, env_path = (c.fm, (*c.prefix, *c.where.env)) if c is not None else (fm, p[:-1])
    env: dict[str, tuple[str, str]] = _etc_env(fm, p) if etc else {}
    for b in () if etc else env_fm.binds:
        if b.path[:-1] == env_path and (b.exact or c is None) and (v := _value(env_fm, b.value)) is not None:
            env[b.path[-1].upper()] = (v[0], f"{_at(env_fm, b.node)}{v[1]} ({b.path[-1]})")

    def first(*suffixes: str) -> tuple[str, str] | None:
        return next((env[prefix + s] for s in suffixes if prefix + s in env), None)

    return (
        first("USER", "USERNAME"),
        first("NAME", "DATABASE", "DATABASE_NAME", "DB", "DBNAME"),
        first("HOST", "HOSTNAME"),
    )


def _owner_is(sql: str, created: re.Match[str], role: str) -> bool:
    """Whether the CREATE DATABASE statement ``created`` gives the database to ``role`` (OWNER role)."""
    statement = sql[created.end() : created.end() + 200].split(";")[0]
    return re.search(rf"OWNER\s*=?\s*\\?\"?{re.escape(role)}\b", statement, re.IGNORECASE) is not None


def _same_native_database(a: _Db, b: _Db) -> bool:
    return (
        a.file == b.file
        and a.runtime.value == b.runtime.value == "native"
        and a.database is not None
        and b.database is not None
        and a.database.value == b.database.value
    )


def _provisioned_role(fm: FileModel, p: NixPath) -> Val | None:
    """The role a nixpkgs module that provisions its database itself logs in as (patch.NIXPKGS_LOCAL_ROLES),
    when the file option ``p`` is such a module's and its switch is not set to false."""
    from nixmig.nixsrc.patch import NIXPKGS_LOCAL_ROLES, provisioned_role

    role = provisioned_role(p, ((fm, b) for b in fm.binds))
    if role is None:
        return None
    switch = NIXPKGS_LOCAL_ROLES[p][0]
    return Val(role, f"{fm.name} (services.{p[1]} provisions its database: {'.'.join(switch)} is not false)")


def _native_names(pg: Sequence[FileModel], fm: FileModel, p: NixPath, service: str) -> tuple[Val | None, Val | None]:
    """(role, database) of a nixpkgs service's database: its options, else ensureUsers/ensureDatabases."""
    parent = p[:-1]
    role_keys, name_keys = ["user", "username"], ["name"]  # keycloak: database.username
    if parent[-1:] == ("args",):  # a driver's connection arguments (synapse's database.args): libpq's names
        name_keys = ["database", "dbname"]
    if p[-1] == "db_password":  # odoo's settings.options: db_user, db_name
        role_keys, name_keys = ["db_user"], ["db_name"]
    env = re.fullmatch(r"([A-Z0-9_]+?)(_?)(?:PASSWORD|PASSWD|PASS)", p[-1])
    if env is not None:  # env-style settings: PHOTOPRISM_DATABASE_{USER,NAME} beside _PASSWORD, PAPERLESS_DBUSER
        stem, sep = env.group(1), env.group(2)  # beside PAPERLESS_DBPASS
        role_keys, name_keys = [f"{stem}{sep}USER", f"{stem}{sep}USERNAME"], [f"{stem}{sep}NAME"]
    role_key = next((k for k in role_keys if _lit(fm, (*parent, k))), role_keys[0])
    name_key = next((k for k in name_keys if _lit(fm, (*parent, k))), name_keys[0])
    role = _lit(fm, (*parent, role_key))
    name = _lit(fm, (*parent, name_key))
    users: list[tuple[str, str]] = []
    dbs: list[tuple[str, str]] = []
    for m in pg:
        dbs += _strings(m, ("services", "postgresql", "ensureDatabases"))
        users += [(v, w) for v, w in _strings(m, ("services", "postgresql", "ensureUsers", "name"))]
        for b in m.binds:
            if b.path == ("services", "postgresql", "ensureUsers", "name") and (v := decode_string(b.value)):
                users.append((v, _at(m, b.node)))
    role_val = Val(role[0], f"{role[1]} ({'.'.join((*parent, role_key))})") if role else None
    db_val = Val(name[0], f"{name[1]} ({'.'.join((*parent, name_key))})") if name else None
    local = _provisioned_role(fm, p)
    if local is not None:  # keycloak's createLocally: its own role, whatever else is configured
        role_val = local
    if role_val is None:
        match = [u for u in users if u[0] == service] or (users if len(users) == 1 else [])
        if match:
            role_val = Val(match[0][0], f"{match[0][1]} (services.postgresql.ensureUsers)")
        elif service:
            role_val = Val(service, f"{fm.name} (services.{service}: its default database user)", "the role is a guess")
    if db_val is None:
        match = [d for d in dbs if role_val is not None and d[0] == role_val.value] or (dbs if len(dbs) == 1 else [])
        if match:
            db_val = Val(match[0][0], f"{match[0][1]} (services.postgresql.ensureDatabases)")
        elif service:
            db_val = Val(service, f"{fm.name} (services.{service}: its default database)", "the database is a guess")
    return role_val, db_val


# ---------------------------------------------------------------- the draft


NEWLINE = b"\n"


def _sql_file_dbs(models: Mapping[str, FileModel], texts: Mapping[str, bytes]) -> list[_Db]:
    """A repository SQL file an initialScript names by path (``initialScript = ./init.sql``) that sets a
    role's password (PostgreSQL's ``CREATE ROLE x ... PASSWORD '...'``; MySQL's ``CREATE USER 'x'@'h'
    IDENTIFIED BY '...'``, strategy move): the native database it belongs to, one per file (its first such
    role; patch says the line by hand: nixmig edits no SQL file)."""
    from nixmig.nixsrc.shapes.initial_script import sql_file_paths
    from nixmig.nixsrc.shapes.mysql_initial_script import statements
    from nixmig.nixsrc.sqlpass import clauses

    out: list[_Db] = []
    for fm in models.values():
        for b in fm.binds:
            server = _in_host_or_specialisation(b.path)
            if server not in (("services", "postgresql", "initialScript"), ("services", "mysql", "initialScript")):
                continue
            mysql = server == ("services", "mysql", "initialScript")
            for node, target in sql_file_paths(fm, b.value):
                raw = texts.get(target)
                if raw is None or any(d.origin.startswith(target + ":") for d in out):
                    continue
                sql = raw.decode("utf-8", "replace")
                if mysql:
                    users = [st for st in statements(sql) if st.clause is not None and _ROLE.fullmatch(st.user)]
                    if not users:
                        continue
                    clause = users[0].clause
                    assert clause is not None  # (users: the statements with one)
                    role, password = users[0].user, clause[2]
                    at = f"{target}:{sql.count(chr(10), 0, users[0].value_start) + 1}"
                    whose = f"the account {users[0].account} IDENTIFIED BY gives a password"
                else:
                    found = clauses(raw)
                    if not found:
                        continue
                    c = found[0]
                    role, password = c.role, c.password
                    at = f"{target}:{raw[: c.value_start].count(NEWLINE) + 1}"
                    whose = "the role whose PASSWORD the SQL file sets"
                db = _Db(
                    name=server[1],
                    secret="",
                    file=fm.name,
                    origin=at,
                    runtime=Val("native", f"{_at(fm, b.node)} (services.{server[1]}.initialScript = {fm.text(node)})"),
                    role=Val(role, f"{at} ({whose})"),
                    server_side=True,
                    password=password.encode(),
                )
                if mysql:
                    db.strategy = "move"
                created = list(_SQL_DB.finditer(sql))
                owned = [m for m in created if _owner_is(sql, m, role)]
                dbname = owned[0] if owned else (created[0] if len(created) == 1 else None)
                if dbname is not None:
                    line = sql.count("\n", 0, dbname.start()) + 1
                    check = None if owned or mysql else f"the database the script creates; is it {role}'s?"
                    db.database = Val(dbname.group(1) or dbname.group(2), f"{target}:{line} (CREATE DATABASE)", check)
                else:
                    db.database = Val(role, f"{at} (named after the role)", "no database in the script: which one?")
                db.name, db.secret = f"{db.database.value}-db", f"{db.database.value}-db-password"
                db.secret_origin = "named after the database"  # noqa: S105 - where the name comes from
                db.notes.append(
                    f"the password is in a repository SQL file ({at}) that services.{server[1]}.initialScript reads: "
                    "nixmig edits no SQL file; `nixmig patch --explain` names the clause to "
                    + (
                        "replace by hand (after `nixmig secret new --from` took the value: nixmig rotates "
                        "PostgreSQL passwords only, so this migration moves it, strategy move), then patch adds the "
                        "oneshot that sets the account's password from the agenix secret"
                        if mysql
                        else "delete by hand, then patch adds the oneshot that sets the role's password from the "
                        "agenix secret"
                    )
                )
                out.append(db)
    return out


def draft(
    sources: Mapping[str, bytes],
    *,
    nodes: Mapping[str, EvalNode] | None = None,
    eval_from: str = "nix eval",
    notes: Sequence[str] = (),
    texts: Mapping[str, bytes] | None = None,
) -> Draft:
    """The nixmig.toml for the repo ``sources`` (repo-relative posix paths -> bytes).

    ``nodes``: the deploy tool's nodes as ``nix eval`` gave them (``eval_from`` says how),
    over what the files say. ``notes``: lines for the header (e.g. why nix eval was not used).
    ``texts``: the SQL files the .nix files name (nixsrc.patch.read_texts): an initialScript's file.
    Raises NixSyntaxError / SecretsError when secrets.nix does not parse.
    """
    from nixmig.nixsrc.patch import imported_password_findings, imported_reads
    from nixmig.nixsrc.scan import scan_source
    from nixmig.nixsrc.shapes.let_script import sql_account

    keys = _read_keys(sources)
    models: dict[str, FileModel] = {}
    skipped: list[str] = []
    for name, src in sorted(sources.items()):
        try:
            models[name] = model(name, src)
        except NixSyntaxError as exc:
            skipped.append(f"{exc.where}: {exc.what}")
    findings: list[Finding] = []
    paths: dict[int, NixPath] = {}
    reads = imported_reads(models)  # the strings other files read from a plain .nix file
    let_uses: dict[int, _LetUse] = {}  # a let-bound password read as a finding at each use
    unit_sql: dict[int, SqlAccount] = {}  # a let-bound password read only by SQL a unit runs
    unit_exec: dict[int, _Db] = {}  # a literal in SQL a unit runs (psql, maybe through podman/docker exec)
    extra = imported_password_findings(models, reads)  # a plain file's neutral key read as a password elsewhere
    for name, fm in models.items():
        for f in [*scan_source(fm.source, name).findings, *extra.get(name, ())]:
            uses = _let_uses(fm, f) or _import_uses(models, reads, fm, f)
            account = sql_account(fm, f.start) if f.kind.value == "password" and f.start >= 0 else None
            direct = _unit_sql_exec_db(fm, f) if account is None and f.kind.value == "password" else None
            if direct is not None:
                findings.append(f)
                paths[id(f)] = _finding_path(f, fm)
                unit_exec[id(f)] = direct
            elif account is not None:
                findings.append(f)
                paths[id(f)] = ("systemd", "services", account.unit)
                unit_sql[id(f)] = account
            elif (read := _imported_sql(models, uses, f)) is not None:  # PASSWORD '${private.db}' in a unit
                findings.append(read[0])
                paths[id(read[0])] = ("systemd", "services", read[1].unit)
                unit_sql[id(read[0])] = read[1]
            elif any(_is_db_finding(u.finding, _through_etc(models, u.finding, u.path)) for u in uses):
                for u in uses:
                    findings.append(u.finding)
                    paths[id(u.finding)] = _through_etc(models, u.finding, u.path)
                    let_uses[id(u.finding)] = u
            else:
                findings.append(f)
                paths[id(f)] = _through_etc(models, f, _etc_env_var(fm, f, _finding_path(f, fm)))
    db_findings = [
        f
        for f in findings
        if id(f) in let_uses or id(f) in unit_sql or id(f) in unit_exec or _is_db_finding(f, paths[id(f)])
    ]
    other = len(findings) - len(db_findings)
    sql_dbs = _sql_file_dbs(models, texts or {})
    moves = [] if db_findings or sql_dbs else _option_moves(findings, paths, models)
    if not db_findings and not moves and not sql_dbs:
        return Draft("", (), (), 0, other)

    containers = _containers(models)
    hosts = _hosts(models, nodes, eval_from)
    edges = _edges(models)
    for h in hosts.values():
        h.reached = _reach(h.roots, edges)
    if moves:  # no database password anywhere: the services' own hardcoded secrets, each moved (value kept)
        return _render(moves, {}, [], hosts, keys, skipped, other - len(moves), notes)

    dbs: list[_Db] = list(sql_dbs)
    unplaced: list[str] = []
    used: set[int] = set()
    # the databases: a container's POSTGRES_PASSWORD, a native option, initialScript
    for i, f in enumerate(db_findings):
        p = paths[id(f)]
        shape = _container_shape(p)
        last = p[-1].upper() if p else ""
        fm = models[f.file]
        result: _Db | str | None = None
        if id(f) in unit_exec:
            result = unit_exec[id(f)]
        elif id(f) in unit_sql:
            result = _unit_sql_db(f, unit_sql[id(f)])
        elif shape is not None:
            c = next((c for c in containers if c.fm is fm and c.prefix == shape[2]), None)
            image = c.image() if c is not None else None
            postgres = last == "POSTGRES_PASSWORD" and (image is None or _PG_IMAGE.search(image[0]) is not None)
            mysql = last.startswith(("MARIADB_", "MYSQL_")) and image is not None and _MYSQL_IMAGE.search(image[0])
            mongo = last == "MONGO_INITDB_ROOT_PASSWORD" and image is not None and _MONGO_IMAGE.search(image[0])
            influx = last == "DOCKER_INFLUXDB_INIT_PASSWORD" and image is not None and _INFLUX_IMAGE.search(image[0])
            if c is not None and (mongo or influx):
                result = _init_user_container_db(c, f, models, "mongo" if mongo else "influxdb")
            elif c is not None and (postgres or mysql):
                result = _container_db(c, f, models)
        elif p[:3] == ("services", "podman", "containers"):  # home-manager's, not a NixOS service
            result = (
                f"{f.file}:{f.line} {f.attr_path}: a container of home-manager's services.podman (rootless, in "
                "a user's session): nixmig migrates NixOS-level containers (virtualisation.oci-containers); "
                "not drafted"
            )
        elif _in_host_or_specialisation(p)[:1] == ("services",) and f.kind.value == "password":
            result = _native_db(fm, f, _in_host_or_specialisation(p), models)
            inside = _in_nixos_container(f, models)
            if isinstance(result, _Db) and inside is not None:
                result.strategy = "move"
                result.notes = [n.replace(_SQL_ROTATES, _SQL_MOVES) for n in result.notes]
                result.notes.append(
                    f"the database runs inside the declarative NixOS container {inside} "
                    f"(containers.{inside}.config.services.postgresql/mysql): nixmig's database phases run on "
                    "the host, so this migration moves the value (strategy move, below); rotate it inside later"
                )
        if result is None:
            continue
        used.add(i)
        if isinstance(result, str):
            if result:  # "": a credential that moves with another migration (said in its notes)
                unplaced.append(result)
            continue
        twin = next((d for d in dbs if _same_native_database(d, result)), None)
        if twin is not None:
            who = f"role {result.role.value}" if result.role else "another role"
            unplaced.append(
                f"{result.origin}: the password of {who}, beside {twin.origin} in the same database: "
                "a migration of its own if you move it too"
            )
            continue
        result.password = f.value.reveal()
        if (use := let_uses.get(id(f))) is not None and use.let is not None:
            result.notes.insert(0, _let_note(models[f.file], use.let))
        dbs.append(result)
    # a database only the apps' URLs name (its container is elsewhere, or it is another host's)
    apps: dict[int, list[str]] = {}
    for i, f in enumerate(db_findings):
        if i in used or any(d.password == f.value.reveal() for d in dbs):
            continue
        url = _url_db(models[f.file], f, paths[id(f)], containers)
        same = next((d for d in dbs if url is not None and _same_role(d, url)), None)
        if same is not None:  # an app of a database drafted already (its role), with another value today
            used.add(i)
            same.clients_seen += 1
            same.notes.append(
                f"an app logs in as the same role with another value today: {f.file}:{f.line} "
                f"{f.attr_path or '(a string)'} (patch gives it this secret: after the rotation both hold the new one)"
            )
            continue
        if url is not None:
            used.add(i)
            _beside_container(url, [d for d in dbs if d.file == url.file and d.container is not None])
            url.password = f.value.reveal()
            if (use := let_uses.get(id(f))) is not None and use.let is not None:
                url.notes.insert(0, _let_note(models[f.file], use.let))
            dbs.append(url)
    # the apps: every other finding holding the same value
    app_dbs: dict[int, dict[str, str]] = {}  # the databases the apps' URLs name -> where, by owner
    for i, f in enumerate(db_findings):
        if i in used:
            continue
        value = f.value.reveal()
        owner = next((d for d in dbs if d.password == value), None)
        if owner is None:
            same_file = [d for d in dbs if d.file == f.file]
            owner = same_file[0] if len(same_file) == 1 else None
        where = f"{f.file}:{f.line} {f.attr_path or '(a string)'}"
        if owner is None:
            unplaced.append(f"{where}: a database credential nixmig cannot tie to a database in the repo")
        else:
            apps.setdefault(id(owner), []).append(where)
            if f.kind.value == "url-credential" and f.start >= 0:
                app_dbs.setdefault(id(owner), {}).setdefault(_url_database(models[f.file], f), where)
    for d in dbs:
        _apps_database(d, app_dbs.get(id(d), {}))
        # another holder of the same value anywhere (a heredoc an activation script writes, a script's
        # PGPASSWORD): a client in the repo, even one init does not draft as an app
        d.clients_seen += max(0, sum(f.value.reveal() == d.password for f in findings) - 1) if d.password else 0

    return _render(dbs, apps, list(dict.fromkeys(unplaced)), hosts, keys, skipped, other, notes)


def _option_moves(
    findings: Sequence[Finding], paths: Mapping[int, NixPath], models: Mapping[str, FileModel]
) -> list[_Db]:
    """With no database password in the repo: a native service's own hardcoded secret (a redis
    ``requirePass``, an admin password, a token: ``services.NAME.…``; an ``environment.etc`` text a
    service's ``*File`` option reads as ``/etc/NAME``), one strategy move migration per service, the
    first such secret of each. nixmig cannot rotate these; move keeps the value and takes it out of the
    Nix store (`nixmig patch` says what it can edit)."""
    out: list[_Db] = []
    for f in findings:
        p = paths[id(f)]
        if _is_etc_text(p) and len(p) == 4 and f.kind.value in ("password", "token", "key"):
            p = _etc_reader(models, p[2]) or p  # the option that reads it: its service's migration
        if len(p) < 3 or p[0] != "services" or f.kind.value not in ("password", "token", "key"):
            continue
        tmpfiles = f.rule == "tmpfiles" and p[-1].endswith("File")  # the file a tmpfiles rule writes, it reads
        if not tmpfiles and not _movable_option(p):
            continue  # no file variant nixmig knows: `nixmig scan` lists it, nothing to draft
        whole_text = f.rule == "assignment" and p[-1].endswith("File")  # KEY=pw in a store file's text
        if (f.rule not in ("name", "url", "token-format") and not whole_text and not tmpfiles) or any(
            d.name == p[1] for d in out
        ):
            continue
        if not _NAME.fullmatch(p[1]) or not _NAME.fullmatch(f.secret_name):
            continue
        out.append(
            _Db(
                name=p[1],
                secret=f.secret_name,
                file=f.file,
                origin=f"{f.file}:{f.line}",
                runtime=Val("native", f"{f.file}:{f.line} ({f.attr_path})"),
                notes=[
                    f"not a database's password: {f.attr_path} ({f.file}:{f.line}), an option of "
                    f"services.{p[1]}; nixmig cannot rotate it, so this migration moves it (strategy move, "
                    "below): the service reads the value from its agenix file"
                ],
                strategy="move",
            )
        )
    return out


def _through_etc(models: Mapping[str, FileModel], f: Finding, p: NixPath) -> NixPath:
    """An /etc file's text a database's *File option reads (nextcloud's ``dbpassFile = "/etc/db-pass"``):
    that option's path, where patch (shapes/etc_file.py) puts the secret; the same for the file a
    systemd-tmpfiles rule writes (shapes/tmpfiles_file.py); any other path as it is."""
    if p == ("systemd", "tmpfiles", "rules") and f.rule == "tmpfiles" and f.file in models:
        fm = models[f.file]
        line = fm.source[fm.source.rfind(b'"', 0, f.start) + 1 : f.start].split()  # the rule's words before it
        written = line[1].decode("utf-8", "replace") if len(line) > 1 else ""
        readers = {
            b.path
            for m in models.values()
            for b in m.binds
            if b.exact and len(b.path) >= 3 and b.path[0] == "services" and b.path[-1].endswith("File")
            and decode_string(unparen(b.value)) == written
        }  # fmt: skip
        return next(iter(readers)) if len(readers) == 1 else p
    inside: NixPath = p[:3] if len(p) == 7 and p[0] == "containers" and p[2] == "config" else ()
    if len(p) - len(inside) != 4 or not _is_etc_text(p[len(inside) :]):
        return p
    reader = _etc_reader(models, p[len(inside) + 2], inside)
    # inside a container: the option's path in the container's system, as scan gives a store file's there
    return reader[len(inside) :] if reader is not None and _is_db_finding(f, reader[len(inside) :]) else p


def _etc_reader(models: Mapping[str, FileModel], name: str, inside: NixPath = ()) -> NixPath | None:
    """The one service option ``*File = "/etc/NAME"`` reading ``environment.etc.NAME`` (shapes/etc_file.py), or
    the one database option of several (the others companions patch moves beside it);
    ``inside``: ``containers.C.config``, both in that declarative NixOS container (shapes/container_store_file.py)."""
    n = len(inside)
    readers = {
        b.path
        for fm in models.values()
        for b in fm.binds
        if b.exact
        and len(b.path) >= n + 3
        and b.path[:n] == inside
        and b.path[n] == "services"
        and (b.path[-1].endswith("File") or file_setting(b.path[n:]))
        and decode_string(unparen(b.value)) == f"/etc/{name}"
    }
    if len(readers) > 1:  # nextcloud's dbpassFile and adminpassFile: the database's (patch moves the other beside)
        from nixmig.nixsrc.shapes.naming import database_password_named

        readers = {r for r in readers if database_password_named(r[n:])}
    return next(iter(readers)) if len(readers) == 1 else None


def _movable_option(p: NixPath) -> bool:
    """An option `nixmig patch` can point at a file: one with a file sibling (requirePass ->
    requirePassFile), a ``*File`` option set to a store file, a setting that reads a file reference, a
    setting of a service that reads an env file (shapes/env_file_option.py, shapes/env_setting_move.py)."""
    from nixmig.nixsrc.patch import NIXPKGS_ENV_CONFIG, nixpkgs_file_sibling
    from nixmig.nixsrc.shapes import env_file_option
    from nixmig.nixsrc.shapes.env_setting_move import OPTION_ENV
    from nixmig.nixsrc.shapes.file_reference import READS_FILE_REFERENCE
    from nixmig.nixsrc.shapes.option_companion import LITERAL_SIBLINGS

    env_setting = len(p) == 4 and p[1] in env_file_option.SERVICES and p[2] == env_file_option.SERVICES[p[1]].settings
    return (
        nixpkgs_file_sibling(p) is not None
        or p[-1].endswith("File")
        or p[1] in READS_FILE_REFERENCE
        or p in LITERAL_SIBLINGS  # photoprism's settings.PHOTOPRISM_ADMIN_PASSWORD -> passwordFile
        or env_setting  # paperless' settings.PAPERLESS_SECRET_KEY: into the env file environmentFile names
        or (len(p) == 4 and (p[1], p[2]) in NIXPKGS_ENV_CONFIG)  # vaultwarden's config: an env file of its unit
        or p in OPTION_ENV  # keycloak's initialAdminPassword: an env file of its unit
    )


def _url_database(fm: FileModel, f: Finding) -> str:
    """The database a URL finding's path names (``postgres://u:pw@h:5432/NAME?...``), or ""."""
    end = fm.source.find(b'"', f.end)
    rest = fm.source[f.end : end if end != -1 else len(fm.source)].decode("utf-8", "replace")
    m = re.match(r"@[^/?#\s]*/([A-Za-z0-9_.-]+)", rest)
    return m.group(1) if m else ""


def _apps_database(db: _Db, named: Mapping[str, str]) -> None:
    """The apps' URLs name the database they use: the data is there. One name other than the draft's
    takes the place of the image's default (POSTGRES_USER's name when no POSTGRES_DB), with a check;
    beside a database the configuration names, the difference is a check."""
    names = {n: w for n, w in named.items() if n}
    if db.database is None or not names or db.strategy == "move":
        return
    if len(names) > 1:
        listed = ", ".join(f"{n} ({w})" for n, w in names.items())
        check = f"the apps' URLs name several databases: {listed}; which one holds the data?"
        db.database = replace(db.database, check=check)
        return
    ((name, where),) = names.items()
    if name == db.database.value:
        return
    if any(w in db.database.origin for w in ("no POSTGRES_DB", "image's default", "no database named")):
        made = (
            f"the image creates {db.database.value!r}, the app uses {name!r} (created by the app?)"
            if "no POSTGRES_DB" in db.database.origin or "image's default" in db.database.origin
            else f"the app's URL names {name!r}"
        )
        db.database = Val(
            name,
            f"{where} (the database the app's URL names; nothing else names one)",
            f"{made}: the backup and verify read this one",
        )
    else:
        check = f"the app's URL names database {name!r} ({where}): is the data there?"
        db.database = replace(db.database, check=db.database.check or check)


def _let_note(fm: FileModel, let: LetLiteral) -> str:
    lines = ", ".join(str(_line(fm, u)) for u in let.uses)
    return (
        f"{let.name}, bound once in a let at {_at(fm, let.binding)}, holds the password and is read at line"
        f"{'s' if len(let.uses) != 1 else ''} {lines}: `nixmig patch --check` shows the uses it moves"
    )


def _unique(name: str, taken: set[str]) -> str:
    out, n = name, 2
    while out in taken:
        out, n = f"{name}-{n}", n + 1
    taken.add(out)
    return out


def _host_of(db: _Db, hosts: Mapping[str, _Host]) -> tuple[list[str], str, str | None]:
    """(host names, origin, check) of the database's file."""
    reached = [h for h in hosts.values() if db.file in h.reached]
    if len(reached) == 1:
        h = reached[0]
        return [h.name], f"{h.origin}: its configuration reaches {db.file}", None
    if len(reached) > 1:
        names = [h.name for h in reached]
        return (
            names,
            f"{db.file} (reached from the configurations of {', '.join(names)})",
            ("several hosts import this file: keep those that run this database"),
        )
    if len(hosts) == 1:
        (h,) = hosts.values()
        return [h.name], f"{h.origin} (the one host)", f"nothing in the repo ties {db.file} to {h.name}"
    if hosts:
        names = list(hosts)
        return [names[0]], f"{db.file}", f"which host runs it? none of {', '.join(names)} imports {db.file}"
    return [], "", None


def _render(
    dbs: list[_Db],
    apps: Mapping[int, list[str]],
    unplaced: list[str],
    hosts: dict[str, _Host],
    keys: _Keys,
    skipped: list[str],
    other: int,
    notes: Sequence[str],
) -> Draft:
    checks: list[str] = []
    blocks: list[Block] = []
    top = Block("")
    # secrets.nix
    if keys.file is not None:
        top.add("secrets_dir", Val(posixpath.dirname(keys.file) or ".", f"{keys.file}"))
    else:
        top.add(
            "secrets_dir",
            Val("secrets", "nixmig's default", "no secrets.nix in the repo: create secrets/secrets.nix (agenix)"),
        )
    # no host anywhere: the hosts secrets.nix names, else one to fill in
    if not hosts:
        host_keys = _host_list_members(keys)
        for var in host_keys or [k for k in keys.keys if not _USER_LISTS.search(k)][:1]:
            hosts[var] = _Host(var, f"{keys.keys[var].origin} (a key in {keys.file})")
    # keys: hosts by name, the others are the operator's
    host_members = set(_host_list_members(keys))
    user_members = {m for v, (ms, _) in keys.lists.items() if _USER_LISTS.search(v) for m in ms}
    for h in hosts.values():
        k = keys.keys.get(h.name)
        if k is not None:
            h.recipient = Val(k.key, f"{k.origin} ({k.var}, named after the host)")
    matched = {h.name for h in hosts.values() if h.recipient is not None}
    unmatched_host_keys = [v for v in host_members if v in keys.keys and v not in matched]
    lone = [h for h in hosts.values() if h.recipient is None]
    if len(lone) == 1 and len(unmatched_host_keys) == 1:
        k = keys.keys[unmatched_host_keys[0]]
        lone[0].recipient = Val(
            k.key,
            f"{k.origin} ({k.var})",
            f"{k.var} is the one unmatched host key in {keys.file}: is it {lone[0].name}'s?",
        )
        matched.add(k.var)
    operators = [
        k
        for v, k in keys.keys.items()
        if v not in matched and v not in hosts and (v in user_members or v not in host_members)
    ]
    op = Block("operator")
    if operators:
        listed = [k.key for k in operators]
        origin = ", ".join(f"{k.origin} ({k.var})" for k in operators)
        check = None
        if any(k.var not in user_members and not _USER_LISTS.search(k.var) for k in operators):
            check = f"the keys in {keys.file} that no host is named after: keep only your own"
        op.add("recipients", Val(listed, origin, check))
    else:
        op.notes.append(
            "# check: no operator key found in secrets.nix: add your age or ssh public key here "
            "(backups and rollback material are encrypted to it)"
        )
        op.add("recipients", Val([], "nothing in the repo"))
    blocks.append(op)

    taken_services: set[str] = set()
    taken_migrations: set[str] = set()
    mig_blocks: list[Block] = []
    svc_blocks: list[Block] = []
    used_hosts: list[str] = []
    for db in dbs:
        svc_name = _unique(db.name if _NAME.fullmatch(db.name) else "db", taken_services)
        secret = db.secret if _NAME.fullmatch(db.secret) else f"{svc_name}-password"
        mig_name = _unique(secret, taken_migrations)
        svc = Block(f"services.{_key(svc_name)}")
        svc.notes.append(f"# the hardcoded password: {db.origin}")
        for where in apps.get(id(db), []):
            svc.notes.append(f"# the same password in an app: {where}")
        svc.notes += [f"# {n}" for n in db.notes]
        svc.notes += [f"# check: {c}" for c in db.checks]
        if db.server_side and db.strategy == "rotate" and not apps.get(id(db)) and not db.clients_seen:
            svc.notes.append(
                "# no app in the repo logs in with this password (no URL, variable or option holds it): "
                "a client that has it elsewhere (another host, a sops or agenix file, an app outside this repo) "
                'is refused after the rotation; give it the new secret, or use strategy = "move" (value kept)'
            )
        names, origin, check = _host_of(db, hosts)
        if len(names) == 1:
            svc.add("host", Val(names[0], origin, check))
        elif names:
            svc.add("hosts", Val(names, origin, check))
        else:
            svc.add("host", Val("HOST", "nothing in the repo", "name the host that runs it, and add [hosts.HOST]"))
            hosts.setdefault("HOST", _Host("HOST", "nothing in the repo"))
            names = ["HOST"]
        used_hosts += [n for n in names if n not in used_hosts]
        svc.add("runtime", db.runtime)
        for attr in ("container", "volume", "database", "role", "admin_role", "docker_host", "port"):
            svc.add(attr, getattr(db, attr))
        svc_blocks.append(svc)
        mig = Block(f"migrations.{_key(mig_name)}")
        mig.add("service", Val(svc_name, "the service above"))
        exists = f"{secret} already has an entry in {keys.file}: pick another name" if secret in keys.entries else None
        mig.add("secret", Val(secret, f"{db.origin} ({db.secret_origin})", exists))
        if db.strategy == "move":
            mig.notes += [
                "# move: the value is kept (nixmig cannot rotate this password): make its .age from the",
                f"# line first, `nixmig secret new {secret} --from {db.origin}`; rotate it later its own",
                "# way (the database's, the service's).",
            ]
            mig.add("strategy", Val("move", "the service's notes"))
        else:
            mig.notes += [
                "# rotate (the default): the role's password changes in place. dual-role: the apps move to",
                "# a second role, no moment where one holds a refused password. rebuild: the data moves to",
                "# a new docker volume (a bad data directory, a new major version of the image).",
            ]
            mig.add("strategy", Val("rotate", "nixmig's default"))
        mig.add("deploy", _deploy([hosts[n] for n in names], several=len(names) > 1))
        mig.notes_after = [
            f"# a health check the app answers after the switch, e.g. [[migrations.{_key(mig_name)}.health_checks]]",
            '# type = "http", url = "https://…/healthz" (see the README)',
        ]
        mig_blocks.append(mig)
    host_blocks = []
    for name in used_hosts or list(hosts):
        h = hosts[name]
        hb = Block(f"hosts.{_key(name)}")
        address = h.address or Val(
            name, h.origin, f"nothing in the repo says how to reach {name}: its name is a guess for the address"
        )
        hb.add("address", address)
        hb.add("port", h.port)
        hb.add("user", h.user)
        hb.add("identity", h.identity)
        if h.recipient is None:
            hb.notes.append(
                f"# check: no key in {keys.file or 'secrets.nix'} is named after {name}: set age_recipient to its "
                f"host key (ssh-keyscan -t ed25519 {address.value})"
            )
        hb.add("age_recipient", h.recipient)
        host_blocks.append(hb)
    blocks += host_blocks + [b for pair in zip(svc_blocks, mig_blocks, strict=True) for b in pair]

    # the text
    out: list[str] = [
        "# nixmig.toml drafted by `nixmig init` from the repository. Every value says where it came",
        "# from; `# check:` marks a guess. Review them, then run `nixmig plan`.",
    ]
    out += [f"# {comment_text(n)}" for n in notes]
    out += [f"# check: {comment_text(s)} (not read)" for s in skipped]
    if other:
        out.append(
            f"# {other} other hardcoded secret{'s are' if other != 1 else ' is'} not drafted here "
            "(nixmig migrates database passwords): `nixmig scan` lists them"
        )
    for u in unplaced:
        out.append(f"# check: not drafted: {comment_text(u)}")
    for line in top.notes:
        out.append(line)
    for tk, tv in top.keys:
        out += _kv(tk, tv, checks)
    for b in blocks:
        out.append("")
        out.append(f"[{b.header}]")
        for n in b.notes:
            out.append(comment_text(n))
            if n.startswith("# check: "):
                checks.append(n.removeprefix("# check: "))
        for bk, bv in b.keys:
            out += _kv(bk, bv, checks)
        out += [comment_text(n) for n in b.notes_after]
    checks += [f"{s} (not read)" for s in skipped] + [f"not drafted: {u}" for u in unplaced]
    migrations = tuple(b.header.removeprefix("migrations.") for b in mig_blocks)
    return Draft("\n".join(out) + "\n", tuple(checks), migrations, len(dbs) + len(unplaced), other)


def _host_list_members(keys: _Keys) -> list[str]:
    out: list[str] = []
    for var, (members, _) in keys.lists.items():
        if _HOST_LISTS.search(var) and not _USER_LISTS.search(var):
            out += [m for m in members if m not in out]
    return out


def _deploy(hosts: Sequence[_Host], *, several: bool) -> Val:
    h = hosts[0]
    name = "{host}" if several else h.name
    if h.deploy_rs:
        return Val(f"deploy --skip-checks .#{name}", f"{h.deploy_rs} (deploy.nodes.{h.name}: deploy-rs)")
    if h.colmena:
        return Val(f"colmena apply --on {name}", f"{h.colmena} (colmena node {h.name})")
    user = h.user.value if h.user else "root"
    address = h.address.value if h.address else h.name
    target = "{host}" if several else f"{user}@{address}"
    if h.nixos:
        cmd = f"nixos-rebuild switch --flake .#{name} --target-host {target}"
        check = "--target-host needs the address you ssh to" if several else None
        return Val(cmd, f"{h.nixos} (nixosConfigurations.{h.name}: nixos-rebuild)", check)
    return Val(
        f"nixos-rebuild switch --target-host {target}",
        "nothing in the repo (no flake with nixosConfigurations, deploy-rs or colmena)",
        "write the command you deploy this host with",
    )


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def _toml_value(value: str | int | list[str]) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


def _kv(key: str, val: Val, checks: list[str]) -> list[str]:
    lines = []
    if val.check:
        lines.append(f"# check: {comment_text(val.check)}")
        checks.append(f"{key}: {val.check}")
    lines.append(f"{key} = {_toml_value(val.value)}  # from {comment_text(val.origin)}")
    return lines
