"""``services.postgresql.initialScript`` with ``CREATE/ALTER ROLE <role> ... PASSWORD '...'``.

The clause leaves the SQL (which stays valid: ``CREATE ROLE x WITH LOGIN;``) and a oneshot sets
the password from the agenix file after the server is up (templates/role-password.nix.j2): the
initialScript is a file in the world-readable Nix store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.quote import escape_indented, nix_attr
from nixmig.nixsrc.render import template
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.sqlpass import clauses, role_identifier

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import FileModel, NixPath
    from nixmig.nixsrc.patch import Builder


INITIAL_SCRIPT = ("services", "postgresql", "initialScript")


def apply(b: Builder, password: str | None) -> None:
    from nixmig.nixsrc.patch import written_text

    for fm, bind in b.all_binds():
        if bind.path[-3:] != INITIAL_SCRIPT or not bind.exact:
            continue
        prefix = bind.path[:-3]  # the host's own configuration, or a specialisation's (the oneshot goes there)
        if prefix and (len(prefix) != 3 or prefix[0] != "specialisation" or prefix[2] != "configuration"):
            continue
        node = written_text(bind.value)
        if node is None:
            continue
        if prefix and not _inherits(b, prefix):
            b.manual_here(
                fm,
                bind.value,
                f"services.postgresql.initialScript inside specialisation.{prefix[1]}, which sets "
                f"inheritParentConfig = false: the host's age.secrets do not reach that configuration, and "
                f"nixmig will not declare the secret twice; move the database out of it, or patch by hand",
                "",
            )
            continue
        where = ".".join(bind.path) + " (a file in the world-readable Nix store)"
        if remove_clauses(b, fm, node, password, where):
            role_unit(b, fm, bind.node, prefix=prefix)
            b.sql_file = fm


def _inherits(b: Builder, prefix: NixPath) -> bool:
    """specialisation.NAME inherits the host's configuration (nixpkgs' default), so its age.secrets."""
    inherit = (*prefix[:2], "inheritParentConfig")
    return not any(x.exact and x.path == inherit and fm.text(x.value) != "true" for fm, x in b.all_binds())


def remove_clauses(
    b: Builder, fm: FileModel, node: Node, password: str | None, where: str, *, in_shell: bool = False
) -> bool:
    """Cut every ``PASSWORD '...'`` of the migration's role out of the SQL in the string ``node``;
    True when one was. Another role's clause, or a value nixmig would have to unescape, is left
    (the verdict says it); ``password`` only decides whether to say the values differ. ``in_shell``:
    the SQL sits in a shell command (``psql -c "..."``)."""
    raw = fm.source[node.start_byte : node.end_byte]
    cut = False
    for c in clauses(raw, in_shell=in_shell):
        if c.role != b.spec.role or "'" in c.password:
            continue
        base = node.start_byte
        if password is not None and c.password != password:
            # the role's password, whatever the value: the migration sets it, and a second run (with the
            # other copy gone) would take it anyway
            b.notes.append(
                f"{fm.where(base + c.value_start)}: the SQL sets role {c.role} a password other than the one the "
                f"plan recognised; the role gets the agenix secret, the clause goes all the same"
            )
        b.masks.append((fm.name, base + c.value_start, base + c.value_end))
        b.known.add(digest(c.password.encode()))
        b.replaced.append(f"the PASSWORD of role {c.role} at {fm.where(base + c.value_start)}")
        b.ed.add(
            fm,
            base + c.start,
            base + c.end,
            "",
            f"removes the literal PASSWORD of role {c.role} from {where}; the statement stays valid SQL",
        )
        cut = True
    return cut


def unit_name(b: Builder) -> str:
    from nixmig.nixsrc.patch import credential_name

    return f"nixmig-{credential_name(b.spec.secret)}-password"


def add_unit(b: Builder, fm: FileModel, near: Node, render: object, why: str, prefix: NixPath = ()) -> None:
    """Bind ``systemd.services.<unit_name>`` (rendered by ``render(attr)``) in the config root that holds
    ``near`` (under ``prefix`` there: a specialisation's configuration), once per plan and only when the
    tree has no such unit yet."""
    unit = unit_name(b)
    path = (*prefix, "systemd", "services", unit)
    if any(x.path[: len(path)] == path for _, x in b.all_binds()) or unit in b.role_units:
        return
    b.role_units.add(unit)
    root = fm.root_of(near)
    if root is None:
        b.manual_here(fm, near, "cannot find the module's config to add the password unit to", "")
        return
    attrset, binding = root
    b.insert_path(fm, attrset, path, render, why, after=binding)
    b.need(fm, ("config",))


def role_unit(b: Builder, fm: FileModel, near: Node, after: str | None = None, prefix: NixPath = ()) -> None:
    from nixmig.nixsrc.patch import credential_name

    spec = b.spec
    tpl = template("role-password.nix.j2")
    role_sql = escape_indented(role_identifier(spec.role), before_antiquote=False)
    add_unit(
        b,
        fm,
        near,
        lambda attr: str(
            tpl.unit(attr, spec.secret, nix_attr(spec.secret), spec.role, role_sql, credential_name(spec.secret), after)
        ),
        f"the oneshot {unit_name(b)} sets the password of role {spec.role} from {spec.secret_on_host} after "
        f"PostgreSQL is up, at each boot and deploy (the password is read by psql from the credential file: "
        f"never in the store, an argv or the server's log)"
        + (f"; in specialisation.{prefix[1]}, beside the server it sets" if prefix else ""),
        prefix,
    )


SHAPE = Shape(
    "initial-script",
    "services.postgresql.initialScript with CREATE/ALTER ROLE ... PASSWORD '...': the clause goes, a oneshot "
    "sets the password from the agenix file",
    apply,
    ("native-initialscript-sql", "native-initialscript-other-role"),
)
