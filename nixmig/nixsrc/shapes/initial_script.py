"""``services.postgresql.initialScript`` with ``CREATE/ALTER ROLE <role> ... PASSWORD '...'``.

The clause leaves the SQL (which stays valid: ``CREATE ROLE x WITH LOGIN;``) and a oneshot sets
the password from the agenix file after the server is up (templates/role-password.nix.j2): the
initialScript is a file in the world-readable Nix store.
"""

from __future__ import annotations

import re
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
        unit = (*prefix, "systemd", "services", unit_name(b))
        if remove_clauses(b, fm, node, password, where):
            role_unit(b, fm, bind.node, prefix=prefix)
            b.sql_file = fm
        elif not any(x.path[: len(unit)] == unit for _, x in b.all_binds()):
            continue  # not this migration's script (nor one patched already)
        _mysql_syntax(b, fm, node, where)
        _other_roles(b, fm, node)


def _other_roles(b: Builder, fm: FileModel, node: Node) -> None:
    """Another role's PASSWORD beside the migration's: left, and said as what it is (at its line, so the
    verdict's line for it is this one)."""
    from nixmig.nixsrc.patch import Manual

    raw = fm.source[node.start_byte : node.end_byte]
    for c in clauses(raw):
        if c.role != b.spec.role:
            line, col = fm.line_col(node.start_byte + c.value_start)
            b.masks.append((fm.name, node.start_byte + c.value_start, node.start_byte + c.value_end))  # diffs
            b.manual.append(
                Manual(
                    fm.name,
                    line,
                    col,
                    f"services.postgresql.initialScript sets the password of role {c.role}, another role than this "
                    f"migration's ({b.spec.role}): it stays in the Nix store; give role {c.role} a migration of its "
                    "own in nixmig.toml (its own secret: patch moves its clause the same way), or remove it",
                    "",
                )
            )


# MySQL's account syntax ('user'@'host') in a PostgreSQL script: PostgreSQL rejects the statement (psql,
# as nixpkgs runs initialScript, reports it and goes on), so its password never set anything
_MYSQL_ACCOUNT = re.compile(
    rb"(?i)\b(?:CREATE|ALTER)\s+USER\s+'(?P<user>[A-Za-z0-9_.-]+)'\s*@\s*'[^'\n]*'[^;']*?"
    rb"(?P<clause>\s+(?:PASSWORD|IDENTIFIED\s+BY)\s+'(?P<pw>(?:[^'\\\n]|'')*)')"
)


def _mysql_syntax(b: Builder, fm: FileModel, node: Node, where: str) -> None:
    """``CREATE USER 'role'@'host' ... PASSWORD '...'`` naming the migration's role: a statement that never
    ran (see _MYSQL_ACCOUNT); its literal leaves the store, the statement stays as it was otherwise."""
    raw = fm.source[node.start_byte : node.end_byte]
    for m in _MYSQL_ACCOUNT.finditer(raw):
        if m.group("user").decode().lower() != b.spec.role.lower() or b"${" in m.group(0):
            continue
        start, end = node.start_byte + m.start("clause"), node.start_byte + m.end("clause")
        b.masks.append((fm.name, node.start_byte + m.start("pw"), node.start_byte + m.end("pw")))
        b.ed.add(
            fm,
            start,
            end,
            "",
            f"removes a literal password from {where}: its statement names role {b.spec.role} in MySQL's "
            "'user'@'host' syntax, which PostgreSQL rejects (psql reports it and goes on): it never set a "
            "password, and stays as it was otherwise",
        )


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
        if c.invalid:  # the statement never ran: setting the password after it would fail on a missing role
            b.masks.append((fm.name, base + c.value_start, base + c.value_end))
            line, col = fm.line_col(base + c.value_start)
            from nixmig.nixsrc.patch import Manual

            b.manual.append(
                Manual(
                    fm.name,
                    line,
                    col,
                    f"the statement that sets role {c.role}'s password in {where} is not valid SQL: PostgreSQL takes "
                    f"WITH only right after the role's name (CREATE USER {c.role} WITH SUPERUSER LOGIN ...), so it "
                    f"never created or changed role {c.role}; fix the statement (and create the role on the host if "
                    "the server runs already), then patch again",
                    "",
                )
            )
            continue  # no clause cut, no unit: the item is this line (the verdict skips it)

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
        if c.whole is not None:
            b.ed.add(
                fm,
                base + c.whole[0],
                base + c.whole[1],
                "",
                f"removes the ALTER statement that set only role {c.role}'s literal PASSWORD from {where}",
            )
        else:
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
