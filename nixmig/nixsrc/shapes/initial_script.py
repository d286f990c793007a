"""``services.postgresql.initialScript`` with ``CREATE/ALTER ROLE <role> ... PASSWORD '...'``.

The clause leaves the SQL (which stays valid: ``CREATE ROLE x WITH LOGIN;``) and a oneshot sets
the password from the agenix file after the server is up (templates/role-password.nix.j2): the
initialScript is a file in the world-readable Nix store.

The SQL may be bound in a let the file reads only there (``initialScript = pkgs.writeText "i.sql"
initSql;``): the let's text is edited. The script may sit in a specialisation (the oneshot goes
there) or, under strategy move, inside a declarative NixOS container (``containers.NAME.config``):
the host's agenix file is bind-mounted read-only at /run/agenix-host/SECRET and the oneshot inside
reads it through LoadCredential (the container's PID 1 is the host's root: refused with
``privateUsers``); apply's psql runs on the host, so no rotation reaches that server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from nixmig.config import ROLE_KEY, also_name
from nixmig.nixsrc.indented import decode_any
from nixmig.nixsrc.leftover import copies_of, digest
from nixmig.nixsrc.model import unparen
from nixmig.nixsrc.parse import text
from nixmig.nixsrc.quote import escape_indented, nix_attr
from nixmig.nixsrc.render import template
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.container_store_file import MOUNT_DIR, bind_mount
from nixmig.nixsrc.sqlpass import clauses, role_identifier

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import Bind, FileModel, NixPath
    from nixmig.nixsrc.patch import Builder


INITIAL_SCRIPT = ("services", "postgresql", "initialScript")


def _scripts(b: Builder) -> Iterator[tuple[FileModel, Bind, Node, NixPath, str]]:
    """Each initialScript nixmig may edit: (file, binding, its SQL string, the prefix of the configuration
    that holds it: () or a specialisation's, where to say it is). A specialisation that does not inherit
    the host's configuration is said (by hand), not yielded."""
    from nixmig.nixsrc.patch import written_text

    for fm, bind in list(b.all_binds()):
        if bind.path[-3:] != INITIAL_SCRIPT or not bind.exact:
            continue
        # the host's own configuration, a specialisation's or a container's: the oneshot goes there
        prefix = bind.path[:-3]
        container = container_of(prefix)
        special = len(prefix) == 3 and prefix[0] == "specialisation" and prefix[2] == "configuration"
        if prefix and not special and container is None:
            continue
        node = written_text(bind.value, root=fm.root)
        if node is None:
            continue
        if container is not None and (b.spec.strategy != "move" or private_users(b, container) is not None):
            continue  # the verdict says why (leftover: the database phases run on the host; privateUsers)
        if prefix and not _inherits(b, prefix):
            if (fm.name, bind.value.start_byte) not in b.handled:
                b.handled.add((fm.name, bind.value.start_byte))
                b.manual_here(
                    fm,
                    bind.value,
                    f"services.postgresql.initialScript inside specialisation.{prefix[1]}, which sets "
                    f"inheritParentConfig = false: the host's age.secrets do not reach that configuration, and "
                    f"nixmig will not declare the secret twice; move the database out of it, or patch by hand",
                    "",
                )
            continue
        yield fm, bind, node, prefix, ".".join(bind.path) + " (a file in the world-readable Nix store)"


def sql_holes(b: Builder, fm: FileModel, node: Node) -> dict[tuple[int, int], tuple[str, Node]]:
    """The interpolations of the SQL string ``node`` whose value nixmig knows: a let string (``${pw}``), a
    field of a let attrset (``${db.password}``) or a string of a plain file the file imports
    (``${secrets.db}``, patch.Imported), by their offsets in the string's source, with the expression read
    (sqlpass.clauses takes the values)."""
    out: dict[tuple[int, int], tuple[str, Node]] = {}
    fields = b.let_fields[fm.name]
    imported = b.imported_by_file.get(fm.name, {})
    for c in node.named_children:
        inner = [x for x in c.named_children if x.type != "comment"] if c.type == "interpolation" else []
        if len(inner) != 1:
            continue
        expr = inner[0]
        if expr.type == "variable_expression":
            let = b.lets[fm.name].get(fm.text(expr))
            value = let.value if let is not None else None
        elif expr.type == "select_expression" and not any(x.type == "or" for x in expr.children):
            value = fields.get("".join(fm.text(expr).split())) or imported.get(expr.start_byte)
        else:
            value = None
        if value:
            out[(c.start_byte - node.start_byte, c.end_byte - node.start_byte)] = (value, expr)
    return out


def _values(holes: dict[tuple[int, int], tuple[str, Node]]) -> dict[tuple[int, int], str]:
    return {k: v for k, (v, _) in holes.items()}


def read_once_less(b: Builder, fm: FileModel, expr: Node) -> None:
    """The clause that read ``expr`` (a let string, a let attrset's field) is gone: that use is replaced.
    The binding goes with its last use (Builder.drop_lets, which says any use left)."""
    b.let_used.add((fm.name, expr.start_byte))
    if expr.type == "select_expression":
        b.fields_read.add((fm.name, "".join(fm.text(expr).split())))


def sql_file_paths(fm: FileModel, value: Node) -> list[tuple[Node, str]]:
    """The .sql files an initialScript's ``value`` names by path (``./init.sql``, or ``pkgs.writeText "i"
    (builtins.readFile ./init.sql)``): (the path expression, the file, repo-relative), for patch and init."""
    import posixpath

    from nixmig.nixsrc.parse import descendants

    paths = {n.start_byte: n for n in (value, *descendants(value)) if n.type == "path_expression"}
    return [
        (node, posixpath.normpath(posixpath.join(posixpath.dirname(fm.name), fm.text(node))))
        for node in paths.values()
        if fm.text(node).endswith(".sql")
    ]


def _sql_files(b: Builder) -> Iterator[tuple[FileModel, Bind, Node, str]]:
    """Each repository SQL file the host's initialScript names by path: (file, binding, the path, the SQL file)."""
    for fm, bind in list(b.all_binds()):
        if bind.path[-3:] != INITIAL_SCRIPT or bind.path[:-3]:
            continue
        for node, target in sql_file_paths(fm, bind.value):
            if target in b.texts:
                yield fm, bind, node, target


def _creates(sql: bytes, role: str) -> bool:
    name = re.escape(role.encode())
    quoted = re.escape(role_identifier(role).encode())
    head = rb"(?i)\b(?:CREATE|ALTER)\s+(?:ROLE|USER)\s+"
    return re.search(head + rb"(?:" + quoted + rb"|" + name + rb"(?![\w$]))", sql) is not None


def sql_file_scripts(b: Builder) -> None:
    """A repository SQL file as the initialScript: its ``PASSWORD '...'`` clauses are by-hand items at
    their line in that file (nixmig edits Nix, not SQL; the file is copied into the world-readable Nix
    store all the same). With the migration's role created there and no clause left, the oneshot sets its
    password from the agenix file, as for an inline script (the user's second run, after the clause went)."""
    from nixmig.nixsrc.patch import Manual

    for fm, bind, node, target in _sql_files(b):
        sql = b.texts[target]
        found = clauses(sql)
        for c in found:
            line = sql.count(b"\n", 0, c.value_start) + 1
            col = c.value_start - sql.rfind(b"\n", 0, c.value_start)
            whose = (
                f"role {c.role}'s password"
                if c.role == b.spec.role
                else f"role {c.role}'s password (another role than this migration's {b.spec.role})"
            )
            then = (
                "then `nixmig patch --write` again: it adds the oneshot that sets the role's password from the "
                "agenix secret after PostgreSQL starts"
                if c.role == b.spec.role
                else "give that role a migration of its own, or set its password another way"
            )
            item = Manual(
                target,
                line,
                col,
                f"{whose} in clear in {target}, the SQL file services.postgresql.initialScript reads "
                f"({fm.where(node)}; it is copied into the world-readable Nix store): nixmig edits no SQL file; "
                f"delete the PASSWORD '...' clause there (CREATE ROLE {c.role} WITH LOGIN; stays valid), {then}",
                "",
            )
            if item not in b.manual:  # (apply runs once per shape pass)
                b.manual.append(item)
        if not found and b.spec.strategy != "move" and _creates(sql, b.spec.role):
            role_unit(b, fm, bind.node)
            b.sql_file = fm


def apply(b: Builder, password: str | None) -> None:
    sql_file_scripts(b)
    for fm, bind, node, prefix, where in _scripts(b):
        unit = (*prefix, "systemd", "services", unit_name(b))
        raw = fm.source[node.start_byte : node.end_byte]
        values = {c.password for c in clauses(raw, holes=_values(sql_holes(b, fm, node))) if c.role == b.spec.role}
        if remove_clauses(b, fm, node, password, where):
            role_unit(b, fm, bind.node, prefix=prefix)
            b.sql_file = fm
            _unseen_clients(b, fm, node, values)
            if unparen(bind.value) == node:  # realcfg27/01: `initialScript = '' CREATE USER ... '';`
                b.notes.append(
                    f"{fm.where(node)}: {'.'.join(bind.path)} is a string of SQL, not a file: nixpkgs' option takes "
                    "a path (pkgs.writeText \"init.sql\" ''...''), so this configuration does not evaluate as it is "
                    "(nixmig edits the SQL all the same); wrap it in pkgs.writeText"
                )
        elif not any(x.path[: len(unit)] == unit for _, x in b.all_binds()):
            continue  # not this migration's script (nor one patched already)
        _mysql_syntax(b, fm, node, where)
        _other_roles(b, fm, node)


def _unseen_clients(b: Builder, fm: FileModel, node: Node, values: set[str]) -> None:
    """The role's password is nowhere else in the repository's .nix files (no app's URL, variable or option
    holds it): its clients, if any log in with it, are configured elsewhere (a compiled app, a config file of
    their own: 18F/01, 18F/03) and keep the old one after a rotation. Said once; a client on the local socket
    with peer authentication needs no password."""
    if b.spec.strategy == "move" or not values or any(n.startswith("no other place in the repo") for n in b.notes):
        return
    from nixmig.nixsrc.scan import scan_source

    names = {n for n in (b.spec.role, b.spec.container, b.spec.db_service) if n}
    wanted = {v.encode() for v in values}
    for other in b.models.values():
        for f in scan_source(other.source, other.name).findings:  # a credential scan reads: a holder
            if f.value.reveal() in wanted and not (other is fm and node.start_byte <= f.start < node.end_byte):
                return
        rest = values - names if all(len(v) >= 6 for v in values) else set()
        # any other copy of the bytes as a word of its own (not the "synapse" of "synapse-init.sql")
        for m in copies_of({v.encode() for v in rest}).finditer(other.source) if rest else ():
            if not (other is fm and node.start_byte <= m.start() < node.end_byte):
                return  # another holder: an app patch edits, or one the verdict says
    trusted = _trust_only(b)
    if trusted is not None:  # realcfg27/06: no line of pg_hba asks for a password
        b.notes.append(
            f"services.postgresql.authentication ({trusted}) replaces nixpkgs' own lines with trust/peer ones only: "
            f"no client is asked for role {b.spec.role}'s password, so no client is refused after the rotation; the "
            "secret matters once a line asks for a password (md5, scram-sha-256)"
        )
        return
    b.notes.append(
        f"no other place in the repository's .nix files holds role {b.spec.role}'s password: a client that "
        "logs in with it from elsewhere (an app configured outside Nix, a config file of its own) is refused after "
        'the rotation: give it the agenix secret, or use strategy = "move" (value kept); a client on the local '
        "socket with peer authentication needs no password"
    )


_OVERRIDE = re.compile(r"^\s*(?:[\w.]*\.)?(?:mkForce|mkOverride\s+(\d+))\b")
_NO_PASSWORD = {"trust", "peer", "ident", "reject"}


def _trust_only(b: Builder) -> str | None:
    """Where ``services.postgresql.authentication`` is set, with a priority over nixpkgs' own lines
    (``lib.mkForce``, ``mkOverride N`` under 100), to lines none of which asks for a password (trust, peer,
    ident, reject); None otherwise (nixpkgs' md5/scram lines stay, or a line asks for one)."""
    from nixmig.nixsrc.patch import written_text

    found = None
    for fm, bind in b.all_binds():
        if bind.path[-3:] != ("services", "postgresql", "authentication") or len(bind.path) != 3:
            continue
        whole = bind.node.child_by_field_name("expression")  # the value as written, wrapper and all
        m = _OVERRIDE.match(fm.text(whole)) if whole is not None else None
        if m is None or (m.group(1) is not None and int(m.group(1)) >= 100):
            return None
        node = written_text(bind.value, root=fm.root)
        value = decode_any(node) if node is not None else None
        if value is None:
            return None
        for line in value.splitlines():
            tokens = line.split("#", 1)[0].split()
            if not tokens:
                continue
            at = 3 if tokens[0] == "local" else 5 if len(tokens) > 5 and "/" not in tokens[3] else 4
            if len(tokens) <= at or tokens[at] not in _NO_PASSWORD:
                return None
        found = fm.where(bind.value)
    return found


def move_role(b: Builder, role: str, secret: str) -> None:
    """``also = { "role:ROLE" = "SECRET" }``: another role's PASSWORD clause leaves the initialScript and a
    oneshot of its own sets that role's password from SECRET (its value kept, as any companion); a tree
    moved already (the oneshot there) is checked; nothing found is said."""
    from nixmig.nixsrc.patch import Manual
    from nixmig.nixsrc.shapes.file_reference import move_datasources

    found = False
    for fm, bind, node, prefix, where in _scripts(b):
        raw = fm.source[node.start_byte : node.end_byte]
        values = {c.password for c in clauses(raw, holes=_values(sql_holes(b, fm, node))) if c.role == role}
        if remove_clauses(b, fm, node, None, where, role=role, companion=secret):
            found = True
            role_unit(b, fm, bind.node, prefix=prefix, role=role, secret=secret)
            b.sql_file = b.sql_file or fm
            for value in values:  # its clients the tree holds, where nixmig has an edit for them
                move_datasources(b, role, value, secret)
    unit = unit_name(b, secret)
    if found or any(x.path[-3:] == ("systemd", "services", unit) for _, x in b.all_binds()):
        b.also_replaced.setdefault(secret, [])
        return
    b.manual.append(
        Manual(
            "",
            0,
            0,
            f'also names "role:{role}" (secret {secret!r}), but no services.postgresql.initialScript sets a '
            f"password of role {role}: remove it from also in [migrations.{b.spec.migration or '…'}], or check "
            "its name",
            "",
        )
    )


def _other_roles(b: Builder, fm: FileModel, node: Node) -> None:
    """Another role's PASSWORD beside the migration's: left, and said as what it is (at its line, so the
    verdict's line for it is this one); a plain clause is a companion patch moves by itself (``role:NAME``,
    its own secret, value kept), one in also is moved already (move_role)."""
    from nixmig.nixsrc.patch import Manual

    raw = fm.source[node.start_byte : node.end_byte]
    moved = {k.removeprefix("role:") for k, _ in b.spec.also if k.startswith("role:")}
    for c in clauses(raw, holes=_values(sql_holes(b, fm, node))):
        if c.role != b.spec.role and c.role not in moved:
            line, col = fm.line_col(node.start_byte + c.value_start)
            b.masks.append((fm.name, node.start_byte + c.value_start, node.start_byte + c.value_end))  # diffs
            movable = not c.invalid and "'" not in c.password and ROLE_KEY.fullmatch(f"role:{c.role}") is not None
            b.manual.append(
                Manual(
                    fm.name,
                    line,
                    col,
                    f"services.postgresql.initialScript sets the password of role {c.role}, another role than this "
                    f"migration's ({b.spec.role}): it stays in the Nix store; "
                    + (
                        f"give role {c.role} a migration of its own in nixmig.toml (its own secret: patch moves its "
                        f'clause the same way), or name it in also ("role:{c.role}" = '
                        f'"{also_name("role:" + c.role)}": its value kept)'
                        if movable
                        else f"nixmig does not take this clause out (a quote in its value, or a statement that never "
                        f"ran): set role {c.role}'s password by hand, or remove it"
                    ),
                    "",
                    f"role:{c.role}" if movable else "",
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


def container_of(prefix: NixPath) -> str | None:
    """The declarative NixOS container whose system ``prefix`` is (``containers.NAME.config``), else None."""
    return prefix[1] if len(prefix) == 3 and prefix[0] == "containers" and prefix[2] == "config" else None


def private_users(b: Builder, container: str) -> Bind | None:
    """``containers.NAME.privateUsers`` when set: the container's root is not the host's."""
    want = ("containers", container, "privateUsers")
    return next((x for _, x in b.all_binds() if x.exact and x.path == want), None)


def _container_config(b: Builder, container: str) -> str:
    """How the oneshot inside ``containers.NAME.config`` names the container's own configuration: ``config``
    when that config is a function taking ``config`` (the container's, there), else the host's
    ``config.containers.NAME.config`` (the container's evaluated configuration)."""
    want = ("containers", container, "config")
    for _, x in b.all_binds():
        if x.exact and x.path == want:
            fn = unparen(x.value)
            formals = fn.child_by_field_name("formals") if fn.type == "function_expression" else None
            names = {
                text(n)
                for f in (formals.named_children if formals is not None else [])
                if f.type == "formal"
                for n in f.named_children[:1]
            }
            if "config" in names:
                return "config"
    return f"config.containers.{nix_attr(container)}.config"


def _inherits(b: Builder, prefix: NixPath) -> bool:
    """specialisation.NAME inherits the host's configuration (nixpkgs' default), so its age.secrets."""
    inherit = (*prefix[:2], "inheritParentConfig")
    return not any(x.exact and x.path == inherit and fm.text(x.value) != "true" for fm, x in b.all_binds())


def remove_clauses(
    b: Builder,
    fm: FileModel,
    node: Node,
    password: str | None,
    where: str,
    *,
    in_shell: bool = False,
    role: str | None = None,
    companion: str | None = None,
) -> bool:
    """Cut every ``PASSWORD '...'`` of the migration's role (or ``role``) out of the SQL in the string
    ``node``; True when one was. Another role's clause, or a value nixmig would have to unescape, is left
    (the verdict says it); ``password`` only decides whether to say the values differ. ``in_shell``:
    the SQL sits in a shell command (``psql -c "..."``). ``companion``: the secret of another role moved
    with its value kept (also's ``role:NAME``), not the migration's."""
    role = role or b.spec.role
    raw = fm.source[node.start_byte : node.end_byte]
    cut = False
    holes = sql_holes(b, fm, node)
    for c in clauses(raw, in_shell=in_shell, holes=_values(holes)):
        if c.role != role or "'" in c.password:
            continue
        if (fm.name, node.start_byte + c.value_start) in b.handled:
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
        b.handled.add((fm.name, base + c.value_start))
        place = f"the PASSWORD of role {c.role} at {fm.where(base + c.value_start)}"
        if companion is None:
            b.known.add(digest(c.password.encode()))
            b.replaced.append(place)
        else:
            b.also_known.add(digest(c.password.encode()))
            b.also_replaced.setdefault(companion, []).append(place)
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
        hole = holes.get((c.value_start, c.value_end))
        if hole is not None:
            read_once_less(b, fm, hole[1])
        cut = True
    return cut


def unit_name(b: Builder, secret: str | None = None) -> str:
    from nixmig.nixsrc.patch import credential_name

    return f"nixmig-{credential_name(secret or b.spec.secret)}-password"


def add_unit(
    b: Builder, fm: FileModel, near: Node, render: object, why: str, prefix: NixPath = (), secret: str | None = None
) -> None:
    """Bind ``systemd.services.<unit_name>`` (rendered by ``render(attr)``) in the config root that holds
    ``near`` (under ``prefix`` there: a specialisation's configuration), once per plan and only when the
    tree has no such unit yet."""
    unit = unit_name(b, secret)
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


def before_why(before: Sequence[str], sql_unit: str) -> str:
    if not before:
        return ""
    units = ", ".join(before)
    return f"; it starts before {units}, which the configuration orders after {sql_unit} to wait for the password"


def role_unit(
    b: Builder,
    fm: FileModel,
    near: Node,
    after: str | None = None,
    prefix: NixPath = (),
    role: str | None = None,
    secret: str | None = None,
    before: Sequence[str] = (),
) -> None:
    """The oneshot that sets the password of the migration's role (or a companion ``role`` from its
    ``secret``) from the agenix file after PostgreSQL is up."""
    from nixmig.nixsrc.patch import credential_name

    spec = b.spec
    role, secret = role or spec.role, secret or spec.secret
    on_host = spec.secret_on_host if secret == spec.secret else f"config.age.secrets.{nix_attr(secret)}.path"
    tpl = template("role-password.nix.j2")
    role_sql = escape_indented(role_identifier(role), before_antiquote=False)
    container = container_of(prefix)
    mount = f"{MOUNT_DIR}/{secret}" if container is not None else None
    cfg = _container_config(b, container) if container is not None else "config"
    add_unit(
        b,
        fm,
        near,
        lambda attr: str(
            tpl.unit(
                attr,
                secret,
                nix_attr(secret),
                role,
                role_sql,
                credential_name(secret),
                after,
                secret != spec.secret,
                credential_path=mount,
                cfg=cfg,
                before=list(before),
            )
        ),
        f"the oneshot {unit_name(b, secret)} sets the password of role {role} from "
        + (f"{mount} (the host's {on_host}, bind-mounted)" if mount else on_host)
        + " after PostgreSQL is up, at each boot and on a deploy that changes the unit or restarts the server (the "
        "password is read by psql from the credential file: never in the store, an argv or the server's log)"
        + (
            f"; inside the {container} container, beside the server it sets"
            if container is not None
            else f"; in specialisation.{prefix[1]}, beside the server it sets"
            if prefix
            else ""
        )
        + ("" if secret == spec.secret else " (a companion: its value kept)")
        + (before_why(before, after.removesuffix(".service")) if after else ""),
        prefix,
        secret,
    )
    if container is not None and mount is not None:
        bind_mount(b, fm, container, secret, mount)


SHAPE = Shape(
    "initial-script",
    "services.postgresql.initialScript with CREATE/ALTER ROLE ... PASSWORD '...': the clause goes, a oneshot "
    "sets the password from the agenix file",
    apply,
    ("native-initialscript-sql", "native-initialscript-other-role"),
)
