"""A let-bound attrset of environment variables shared by containers (or units), holding the password.

Two layouts seen in real configurations:

- ``env = { DATABASE_PASSWORD = dbPassword; ... };`` and ``environment = env;`` in containers;
- ``base = { environment = { DB_PASSWORD = dbPassword; ... }; ... };`` and ``NAME = base // { ... };``;
- ``systemd.services.U.environment = env;`` in hand-written units (realcfg32/05): the unit renders the
  variable into an EnvironmentFile of its own from a systemd credential.

The variable leaves the shared attrset (once) and each container that uses it gets the env file
its unit renders at start (``environmentFiles``), as for a variable written in the container.
Only when every use of the attrset is such a container (a use anywhere else, an ``inherit``, a
right operand of ``//`` that sets ``environment`` or a base that sets ``environmentFiles``: the
attrset stays and the verdict says it), and when each container's name is a literal or a
let-bound one (``${name}``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import Lit, unparen
from nixmig.nixsrc.parse import descendants, text
from nixmig.nixsrc.render import EnvLine
from nixmig.nixsrc.scan import words
from nixmig.nixsrc.shapes import Shape

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.leftover import Leftover
    from nixmig.nixsrc.model import Bind, FileModel, NixPath
    from nixmig.nixsrc.patch import Builder, _Renderer


_DB_WORDS = frozenset({"db", "database", "postgres", "postgresql", "pg", "sql", "psql"})


def _binding_of(fm: FileModel, use: Node) -> Bind | None:
    """The binding whose value is ``use``, or ``use // { ... }`` with ``use`` on the left."""
    node = use
    while node.parent is not None and node.parent.type == "parenthesized_expression":
        node = node.parent
    parent = node.parent
    if parent is not None and parent.type == "binary_expression" and parent.child_by_field_name("left") == node:
        op = parent.child_by_field_name("operator")
        if op is None or text(op) != "//":
            return None
        node = parent
    return next((b for b in fm.binds if b.exact and unparen(b.value) == node), None)


def _right_sets(fm: FileModel, bind: Bind, name: str) -> bool:
    """``base // { environment = ...; }``: the right operand replaces base's ``name``."""
    value = unparen(bind.value)
    right = value.child_by_field_name("right") if value.type == "binary_expression" else None
    if right is None:
        return False
    if unparen(right).type not in ("attrset_expression", "rec_attrset_expression"):
        return True  # not a literal: it may set anything
    n = len(bind.path)
    return any(x.path[:n] == bind.path and x.path[n : n + 1] == (name,) for x in fm.binds)


def apply(b: Builder, password: str | None) -> None:
    from nixmig.nixsrc.patch import _ENV_VAR, _other_credential, _secret_name

    if password is None and not b.known:
        return
    for fm, bind in list(b.all_binds()):
        path = bind.path
        if len(path) not in (3, 4) or path[0] != "<let>" or (fm.name, bind.value.start_byte) in b.handled:
            continue
        var, set_name, inner = path[-1], path[1], path[2:-1]
        if inner not in ((), ("environment",)) or not _ENV_VAR.fullmatch(var) or not _secret_name(path):
            continue
        if unparen(bind.value).type != "variable_expression" and not _DB_WORDS & set(words(var)):
            continue  # REDIS_PASSWORD = "..." with the same value: another service's, the verdict says it
        if _other_credential(path):
            continue  # REDIS_PASSWORD = redisPassword, a binding of its own with the same text: redis' too
        value = b.value_of(fm, unparen(bind.value))
        if value is None or (value != password if password is not None else digest(value.encode()) not in b.known):
            continue  # not the password the plan recognised (or an earlier shape took from SQL)
        found = _containers(b, fm, set_name, inner)
        if not found:
            continue  # used elsewhere too, or not by a container: the verdict lists the literal
        line = EnvLine(var, "", "", raw=True)
        lit = Lit(path, unparen(bind.value), False, bind)
        renderers = _renderers(b, fm, bind, found)
        if renderers is None:
            return
        b.mask_literal(fm, unparen(bind.value))
        b.known.add(digest(value.encode()))  # its let binding goes once no use is left (Builder.drop_lets)
        _move(b, fm, lit, line, renderers, "the hardcoded password", bind.value)


def url_in_shared(b: Builder, fm: FileModel, lit: Lit, line: EnvLine) -> bool:
    """A URL holding the password in a let-bound environment attrset whose every use is a container's (or a
    unit's) environment (``env = { DATABASE_URL = "postgresql://...password=..."; } // cfg.extraEnv;`` and
    ``environment = env;`` in two containers, realcfg36/06): its line goes into each one's env file, and the
    variable leaves the attrset once. False (nothing done) for any other shape."""
    bind = lit.bind
    path = lit.path
    if bind is None or len(path) not in (3, 4) or path[0] != "<let>" or unparen(bind.value) != lit.node:
        return False
    set_name, inner = path[1], path[2:-1]
    if inner not in ((), ("environment",)):
        return False
    found = _containers(b, fm, set_name, inner)
    renderers = _renderers(b, fm, bind, found, line) if found else None
    if renderers is None:
        return False
    _move(b, fm, lit, line, renderers, "a URL with the hardcoded password", lit.node, touch=True)
    return True


def _renderers(
    b: Builder, fm: FileModel, bind: Bind, found: list[tuple[str, str, NixPath]], line: EnvLine | None = None
) -> list[tuple[_Renderer, str, str, NixPath]] | None:
    """The renderer of each unit or container that takes the shared attrset; None when one has none (a
    computed name), or, with ``line``, when its env file holds another line under that variable."""
    out = []
    for kind, name, prefix in found:
        r = (
            b.systemd_renderer(fm, name, bind.node)
            if kind == "systemd"
            else b.renderer_for_container(fm, kind, name, prefix)
        )
        if r is None:
            return None
        if line is not None and any(x.var == line.var and x != line for x in r.files.get(b.env_path(r), [])):
            return None  # another URL under the same name in that env file: the verdict says it
        out.append((r, kind, name, prefix))
    return out


def _move(
    b: Builder,
    fm: FileModel,
    lit: Lit,
    line: EnvLine,
    renderers: list[tuple[_Renderer, str, str, NixPath]],
    what: str,
    at: Node,
    touch: bool = False,
) -> None:
    """``line`` into each renderer's env file (a container gets environmentFiles too), and the variable out
    of the shared attrset, once; ``at``: the value as the plan marks and names it."""
    assert lit.bind is not None
    for r, kind, name, prefix in renderers:
        env_path = b.add_env_line(r, line)
        r.literals.append(f"{line.var} at {fm.where(at)}")
        if kind != "systemd":  # (a unit's renderer gives it the EnvironmentFile itself)
            b.ensure_env_file(fm, kind, name, prefix, env_path, lit)
            if touch:
                b.touched[(fm.name, *prefix)] = (fm, kind, name, prefix)
    names = ", ".join(
        f"{r.unit} unit" if kind == "systemd" else f"{r.container or r.unit} container" for r, kind, _, _ in renderers
    )
    b.ed.remove_binding(
        fm,
        lit.bind.node,
        f"removes {line.var} ({what}) from {lit.path[1]}, the environment shared by the {names}(s), which lands "
        "in the world-readable Nix store: each reads it from its env file",
    )
    b.handled.add((fm.name, at.start_byte))
    b.use_lets(fm, lit.node)
    b.replaced.append(f"{line.var} at {fm.where(at)}")


def shared_var(b: Builder, fm: FileModel, bind: Bind) -> list[tuple[str, str, NixPath]] | None:
    """``bind`` is a variable of a let-bound environment attrset whose every use is a container this
    plan patches: those containers (kind, name, prefix); None when it is anything else."""
    from nixmig.nixsrc.patch import _ENV_VAR

    path = bind.path
    if len(path) not in (3, 4) or path[0] != "<let>" or not _ENV_VAR.fullmatch(path[-1]):
        return None
    set_name, inner = path[1], path[2:-1]
    if inner not in ((), ("environment",)):
        return None
    found = _containers(b, fm, set_name, inner)
    patched = b.patched_containers | set(b.touched)
    if not found or any((fm.name, *prefix) not in patched for _, _, prefix in found):
        return None
    return found


def companion_at(b: Builder, left: Leftover) -> str:
    """The variable a leftover binds in an environment attrset shared by containers this plan patches
    (the database's value under REDIS_PASSWORD beside DB_PASSWORD): a companion, as in a container."""
    fm = b.models.get(left.file)
    if fm is None:
        return ""
    for bind in fm.binds:
        value = unparen(bind.value)
        if value.start_byte <= left.start < value.end_byte and shared_var(b, fm, bind) is not None:
            return bind.path[-1]
    return ""


def _containers(b: Builder, fm: FileModel, set_name: str, inner: NixPath) -> list[tuple[str, str, NixPath]]:
    from nixmig.nixsrc.patch import _container_shape

    out: list[tuple[str, str, NixPath]] = []
    for n in descendants(fm.root):
        if n.type in ("inherit", "inherit_from") and any(
            text(i) == set_name for i in descendants(n) if i.type == "identifier"
        ):
            inherited = _inherited_environment(fm, n, set_name, inner)
            if inherited is None:
                return []  # passed on: nixmig cannot follow it
            out.append(inherited)
            continue
        if n.type != "variable_expression" or text(n) != set_name:
            continue
        target = _binding_of(fm, n)
        if target is None:
            return []
        if inner == () and _unit_environment(target.path):  # systemd.services.U.environment = env;
            unit = target.path[2]
            if b.container_name(fm, unit) is None:
                return []
            out.append(("systemd", unit, target.path[:3]))
            continue
        if inner == ():
            shape = _container_shape(target.path[:-1]) if target.path[-1:] == ("environment",) else None
        else:
            shape = _container_shape(target.path)
            if shape is not None and any(_right_sets(fm, target, k) for k in ("environment", "environmentFiles")):
                return []
        if shape is None:
            return []
        kind, name, prefix = shape
        if b.container_name(fm, name) is None:
            return []
        out.append((kind, name, prefix))
    return out


def _unit_environment(path: NixPath) -> bool:
    """``systemd.services.U.environment``: a unit's whole environment."""
    return len(path) == 4 and path[:2] == ("systemd", "services") and path[3] == "environment"


def _inherited_environment(fm: FileModel, node: Node, set_name: str, inner: NixPath) -> tuple[str, str, NixPath] | None:
    """``inherit environment;`` inside a container's attrset, with ``environment`` the let-bound attrset:
    ``environment = environment;`` (kind, name, prefix); None for any other inherit (``inherit (x) ...``,
    another name: the set would be bound under that name, not as the container's environment)."""
    from nixmig.nixsrc.patch import _container_shape

    if node.type != "inherit" or set_name != "environment" or inner != ():
        return None
    holders = [a for a in fm.attrsets if a.node.start_byte < node.start_byte and node.end_byte <= a.node.end_byte]
    if not holders:
        return None
    holder = min(holders, key=lambda a: a.node.end_byte - a.node.start_byte)
    return _container_shape(holder.path) if holder.exact else None


SHAPE = Shape(
    "shared-env",
    "a let-bound attrset of environment variables (env = { DB_PASSWORD = pw; }; environment = env; or "
    "base = { environment = ...; }; NAME = base // { ... };) shared by containers: the variable leaves the "
    "attrset, each container gets its env file",
    apply,
    ("oci-shared-env-let",),
)
