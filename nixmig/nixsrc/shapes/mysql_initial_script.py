"""``services.mysql.initialScript`` with ``IDENTIFIED BY '...'``, under strategy move (MySQL/MariaDB).

nixpkgs' mysql module pipes initialScript into the client (as services.mysql.user over the socket)
in mysql.service's postStart, on the first start only; the script is a file in the world-readable
Nix store. nixmig cannot rotate a MySQL password, so this is strategy move: the value is kept
(``nixmig secret new NAME --from FILE:LINE``), and

- ``CREATE USER a IDENTIFIED BY '...'`` / ``ALTER USER a IDENTIFIED BY '...'``: the clause becomes
  ``ACCOUNT LOCK`` (the account is never left with an empty password);
- ``GRANT ... TO a IDENTIFIED BY '...'`` (MariaDB, MySQL 5.7): the clause goes, and the script's own
  ``CREATE USER a`` before it gets ``ACCOUNT LOCK`` (without one, GRANT is what creates the account:
  refused, said);
- a oneshot after mysql.service sets each account's password from the agenix file and unlocks it
  (templates/mysql-user-password.nix.j2), at each boot;
- ``ALTER USER a IDENTIFIED BY '...'`` with nothing before it in the script creating ``a`` (root and
  services.mysql.user exist; an account ensureUsers makes does not yet: nixpkgs runs initialScript first)
  never set a password: said at its line, with no oneshot (it would give the account a password it never
  had, a change to the database under strategy move).

Inside a declarative NixOS container (``containers.NAME.config.services.mysql.initialScript``, realcfg20/24):
the same edits, the oneshot inside the container (its own mysql package and user), reading the host's
agenix file through a read-only bind mount at /run/agenix-host/SECRET with LoadCredential (the container's
PID 1 is the host's root); with ``privateUsers`` set, said (its root cannot read the host's root-only file).

Which accounts: the service's role (the MySQL user) when nixmig.toml names one, else the one user
the script gives a password. Anything else (another user's password, ``SET PASSWORD``, an
``IDENTIFIED BY`` nixmig cannot read) is left for the verdict, which says it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.quote import nix_attr
from nixmig.nixsrc.render import template
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.sqlpass import SAFE_HOLE, fill_holes

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import FileModel, NixPath
    from nixmig.nixsrc.patch import Builder

INITIAL_SCRIPT = ("services", "mysql", "initialScript")
_NAME = r"(?:'[A-Za-z0-9_.%:-]+'|`[A-Za-z0-9_.%:-]+`|\"[A-Za-z0-9_.%:-]+\"|[A-Za-z0-9_]+)"
_ACCOUNT = rf"(?P<user>{_NAME})(?:\s*@\s*(?P<host>{_NAME}))?"
_HEAD = re.compile(
    rf"(?is)\s*(?P<verb>CREATE\s+(?:OR\s+REPLACE\s+)?USER(?:\s+IF\s+NOT\s+EXISTS)?|ALTER\s+USER(?:\s+IF\s+EXISTS)?)"
    rf"\s+{_ACCOUNT}"
)
_GRANT_TO = re.compile(rf"(?is)\s*GRANT\s.*?\sTO\s+{_ACCOUNT}")
# whitespace and comments before a statement: ``-- ...`` and ``# ...`` lines, ``/* ... */``
_LEADING_COMMENTS = re.compile(r"(?s)(?:\s+|--[^\n]*|#[^\n]*|/\*.*?\*/)*")
_CLAUSE = re.compile(r"(?is)\s+IDENTIFIED\s+BY\s+'(?P<pw>(?:[^'\\\n]|'')*)'")


@dataclass(frozen=True)
class Statement:
    verb: str  # "create" | "alter" | "grant"
    user: str
    host: str
    start: int  # of the statement, without its ';' (offsets into the text given)
    end: int
    clause: tuple[int, int, str] | None  # the IDENTIFIED BY clause (start, end, password)
    read: tuple[int, int] | None = None  # the interpolation the password is (``'${pw}'``: a hole's offsets)
    value_start: int = -1  # where the password itself starts, inside the clause's quotes (-1: no clause)

    @property
    def account(self) -> str:
        return f"'{self.user}'@'{self.host}'"


def _unquote(name: str) -> str:
    return name[1:-1] if name[:1] in "'`\"" else name


def statements(text: str, holes: Mapping[tuple[int, int], str] | None = None) -> list[Statement]:
    """The CREATE USER / ALTER USER / GRANT ... TO statements of an SQL text, each with its account
    (MySQL's default host '%') and its ``IDENTIFIED BY '...'`` clause, if any. A statement that
    interpolates anything (``${``) is left out, but for ``holes``: interpolations whose value nixmig
    knows (a let string, a let attrset's field), by their offsets in ``text``, each read as that value
    where it is a whole user, host or password (``'${db.user}'@'localhost' IDENTIFIED BY '${db.pw}'``)."""
    holes = {k: v for k, v in (holes or {}).items() if SAFE_HOLE.fullmatch(v)}
    filled = fill_holes(text, holes) if holes else text

    def whole(start: int, end: int, quoted: bool) -> tuple[str | None, bool]:
        """(the hole's value, whether a hole is only a part of it) for the name or value at start:end."""
        start, end = (start + 1, end - 1) if quoted else (start, end)
        if (start, end) in holes:
            return holes[(start, end)], False
        return None, any(s < end and start < e for s, e in holes)

    out: list[Statement] = []
    pos = 0
    for part in filled.split(";"):
        start, end = pos, pos + len(part)
        pos = end + 1
        if "${" in part:
            continue
        lead = _LEADING_COMMENTS.match(part)
        skip = lead.end() if lead is not None else 0  # ``-- a comment`` lines before the statement
        head = _HEAD.match(part, skip)
        grant = None if head is not None else _GRANT_TO.match(part, skip)
        m = head or grant
        if m is None:
            continue
        verb = "grant" if grant is not None else m.group("verb").split()[0].lower()
        c = _CLAUSE.search(part, m.end())
        user, host = _unquote(m.group("user")), _unquote(m.group("host")) if m.group("host") else "%"
        clause = (start + c.start(), start + c.end(), c.group("pw").replace("''", "'")) if c else None
        read = None
        if holes:
            got = [
                whole(start + m.start(g), start + m.end(g), m.group(g)[:1] in "'`\"")
                for g in ("user", "host")
                if m.group(g)
            ]
            pw = whole(start + c.start("pw"), start + c.end("pw"), False) if c else (None, False)
            if any(partial for _, partial in (*got, pw)):
                continue  # a hole inside a name or a value: not one nixmig knows whole
            user = got[0][0] or user
            host = (got[1][0] if len(got) > 1 else None) or host
            if c is not None and pw[0] is not None:
                clause, read = (start + c.start(), start + c.end(), pw[0]), (start + c.start("pw"), start + c.end("pw"))
        value_start = start + c.start("pw") if c is not None else -1
        out.append(Statement(verb, user, host, start, end, clause, read, value_start))
    return out


def apply(b: Builder, password: str | None) -> None:
    from nixmig.nixsrc.patch import written_text

    if b.spec.strategy != "move":
        return  # nixmig cannot rotate a MySQL password: the verdict says so, and names strategy move
    sql_files(b)
    for fm, bind in b.all_binds():
        if bind.path[-3:] != INITIAL_SCRIPT or not bind.exact:
            continue
        prefix = bind.path[:-3]
        if prefix and _container(b, prefix) is None:
            continue  # a specialisation's, a container with privateUsers: the verdict says it
        node = written_text(bind.value, root=fm.root)
        if node is not None:
            _patch(b, fm, bind.node, node, password, prefix)


def _container(b: Builder, prefix: NixPath) -> str | None:
    """The declarative NixOS container whose system ``prefix`` is (``containers.NAME.config``), when the
    oneshot can go inside it: its root is the host's (no ``privateUsers``), so a read-only bind mount of
    the host's root-only agenix file is a file its LoadCredential reads."""
    from nixmig.nixsrc.shapes.initial_script import container_of, private_users

    container = container_of(prefix)
    return container if container is not None and private_users(b, container) is None else None


def _place(text: str, st: Statement) -> tuple[int, int]:
    """(line, col) of the value of ``st``'s IDENTIFIED BY clause in ``text``."""
    at = st.value_start
    return text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)


def account_user(users: set[str], role: str) -> str | None:
    """The MySQL user a migration's role names among those a script gives a password: the role, or the
    one user when the role is unset (nixmig.toml's default "postgres")."""
    return role if role in users else (next(iter(users)) if role == "postgres" and len(users) == 1 else None)


def sql_files(b: Builder) -> None:
    """A repository SQL file as services.mysql.initialScript (``./init.sql``): each ``IDENTIFIED BY '...'``
    of the migration's account is a by-hand item at its line there (nixmig edits no SQL file; a flake's
    source, the file with it, is in the world-readable Nix store): take the value (the one the account ends
    with: the last clause of one account), take the clause out as its statement allows, patch again. With
    the account created or altered there and no clause left, the oneshot sets its password from the agenix
    file, as for an inline script (top level only: inside a NixOS container, by hand)."""
    from nixmig.nixsrc.patch import Manual
    from nixmig.nixsrc.shapes.initial_script import sql_file_paths

    for fm, bind in list(b.all_binds()):
        if bind.path[-3:] != INITIAL_SCRIPT:
            continue
        for node, target in sql_file_paths(fm, bind.value):
            if target not in b.texts:
                continue
            text = b.texts[target].decode("utf-8", "surrogateescape")
            stmts = statements(text)
            users = {s.user for s in stmts if s.clause is not None}
            role = b.spec.role
            wanted = account_user(users, role)
            ours = [st for st in stmts if st.clause is not None and st.user == wanted]
            container = bind.path[1] if bind.path[:1] == ("containers",) and len(bind.path) > 3 else None
            prefix = bind.path[:-3]
            nested = bool(prefix) and _container(b, prefix) is None  # no oneshot nixmig can add there

            one_account = len({(st.user, st.host) for st in ours}) == 1
            values = {st.clause[2] for st in ours if st.clause is not None}
            live = ours[-1] if ours and one_account else None  # the script runs once, in order: the last value
            # the live value's item first: the missing .age note names the first item's line
            for st in sorted(ours, key=lambda st: st is not live):
                line, col = _place(text, st)
                if nested:
                    then = (
                        f"it is inside the declarative NixOS container {container} (containers.{container}.config), "
                        f"and containers.{container}.privateUsers is set: the container's root is not the host's "
                        "and cannot read the host's root-only agenix file through a bind mount; by hand: give the "
                        "host's file the container's shifted uid (its base + the uid inside), bind-mount it "
                        f"read-only (containers.{container}.bindMounts), take the clause out, and set the password "
                        "at run time inside from the mount (ALTER USER ... IDENTIFIED BY, the value read by the shell)"
                        if container
                        else f"{'.'.join(bind.path[:-3])} holds that database, which nixmig has no edit for; by hand"
                    )
                elif live is None and len(values) > 1:
                    then = (
                        f"the script gives {len({(x.user, x.host) for x in ours})} accounts of {st.user} different "
                        "passwords: one secret holds one value; by hand"
                    )
                else:
                    kept = live or st
                    if st.verb == "grant":
                        created = any(
                            c.verb == "create" and (c.user, c.host) == (st.user, st.host) and c.end <= st.start
                            for c in stmts
                        )
                        fix = f"delete the IDENTIFIED BY '...' clause (GRANT ... TO {st.account};)" + (
                            ""
                            if created
                            else f" and create the account locked before it (CREATE USER {st.account} "
                            "ACCOUNT LOCK;): without the clause, GRANT creates no account"
                        )
                    else:
                        fix = (
                            f"replace the IDENTIFIED BY '...' clause with ACCOUNT LOCK ({st.verb.upper()} USER "
                            f"{st.account} ACCOUNT LOCK;)"
                        )
                    earlier = (
                        f" (an earlier value: the account ends with the one at line {_place(text, kept)[0]})"
                        if kept is not st
                        else ""
                    )
                    take = f"nixmig secret new {b.spec.secret} --from {target}:{_place(text, kept)[0]}"
                    then = (
                        f"take the value first (`{take}`){earlier}, {fix}, then `nixmig patch --write` again: it "
                        "adds the oneshot that sets the "
                        "password from the agenix secret after mysql.service starts, and unlocks the account"
                    )
                item = Manual(
                    target,
                    line,
                    col,
                    f"the password of {st.account} in clear in {target}, the SQL file {'.'.join(bind.path)} reads "
                    f"({fm.where(node)}; a flake's source, this file with it, is in the world-readable Nix store): "
                    "nixmig edits no SQL file; " + then,
                    "",
                )
                if item not in b.manual:  # (apply runs once per shape pass)
                    b.manual.append(item)
            made = [
                st
                for st in stmts
                if st.verb in ("create", "alter") and st.user == role and st.clause is None and not nested
            ]
            if made and not any(st.clause is not None and st.user == role for st in stmts):
                b.sql_file = fm
                _unit(b, fm, bind.node, sorted({st.account for st in made}), prefix)


def _said_at_binding(b: Builder, fm: FileModel, expr: Node) -> None:
    """The let string or let attrset field ``expr`` reads: its literal's line is said (Builder.let_kept)."""
    from nixmig.nixsrc.lets import _formal_names
    from nixmig.nixsrc.shapes.let_script import fields

    name = "".join(fm.text(expr).split())
    let = b.lets[fm.name].get(name)
    literal = let.literal if let is not None else None
    if literal is None:
        literal = next((x.literal for x in fields(fm, _formal_names(fm.root)) if x.shown == name), None)
    if literal is not None:
        b.let_kept.add((fm.name, fm.line_col(literal.start_byte)[0]))
        b.mask_literal(fm, literal)


def _server_user(b: Builder, prefix: NixPath = ()) -> str:
    """``services.mysql.user`` as the tree sets it (nixpkgs' default ``mysql``) in the system ``prefix`` is:
    an account the server has."""
    from nixmig.nixsrc.model import decode_string

    want = (*prefix, "services", "mysql", "user")
    return next(
        (v for _, x in b.all_binds() if x.exact and x.path == want and (v := decode_string(x.value))),
        "mysql",
    )


def _patch(b: Builder, fm: FileModel, near: Node, node: Node, password: str | None, prefix: NixPath = ()) -> None:
    from nixmig.nixsrc.patch import Manual
    from nixmig.nixsrc.shapes.initial_script import read_once_less, sql_holes

    quote = 2 if node.type == "indented_string_expression" else 1  # '' or ": the SQL is between them
    base = node.start_byte + quote
    raw = fm.source[base : node.end_byte - quote].decode("utf-8", "surrogateescape")

    def char(byte: int) -> int:  # a byte offset of the file -> a character offset of raw
        return len(fm.source[base:byte].decode("utf-8", "surrogateescape"))

    holes = {
        (char(node.start_byte + s), char(node.start_byte + e)): hole for (s, e), hole in sql_holes(b, fm, node).items()
    }
    stmts = statements(raw, {k: v for k, (v, _) in holes.items()})

    def at(i: int) -> int:  # a character offset of raw -> a byte offset of the file
        return base + len(raw[:i].encode("utf-8", "surrogateescape"))

    def said(i: int, what: str) -> None:  # at the clause's line: the verdict's line for it is this one
        b.manual.append(Manual(fm.name, *fm.line_col(at(i)), what, ""))

    with_pw = [s for s in stmts if s.clause is not None]
    users = {s.user for s in with_pw}
    role = b.spec.role
    wanted = account_user(users, role)
    ours = [s for s in with_pw if s.user == wanted]
    if not ours:
        return
    values = {s.clause[2] for s in ours if s.clause is not None}
    assert ours[-1].clause is not None  # (ours: the statements with a clause)
    last = ours[-1].clause[2]
    if len(values) > 1 and len({(s.user, s.host) for s in ours}) == 1 and password in (None, last):
        # one account, its password set again later in the same script (CREATE USER ... IDENTIFIED BY 'a';
        # GRANT ... IDENTIFIED BY 'b'): the script runs once, in order, so the last value is the live one;
        # the earlier ones were nobody's password once it had run
        b.notes.append(
            f"services.mysql.initialScript sets the password of {ours[0].account} {len(ours)} times: the last "
            "value is the one the account ends with, and the one the secret must hold; the earlier ones go with "
            "their clauses"
        )
        values = {last}
    if len(values) != 1 or (password is not None and password not in values):
        said(
            ours[0].clause[0] if ours[0].clause else 0,
            f"services.mysql.initialScript gives {wanted} {len(values)} passwords"
            + ("" if len(values) != 1 else " other than the one the plan recognised")
            + ": one secret holds one value; by hand",
        )
        return
    (value,) = values
    for s in ours:
        made = [c for c in stmts if c.verb in ("create", "grant") and c.end <= s.start and c.user == s.user]
        if s.verb == "alter" and not made and s.user not in ("root", _server_user(b, prefix)) and s.clause is not None:
            said(
                s.clause[0],
                f"services.mysql.initialScript: ALTER USER {s.account} IDENTIFIED BY never set a password: nixpkgs "
                "runs initialScript once, on a new data directory, before ensureUsers creates any account, and "
                f"nothing before it in the script creates {s.account}, so the statement fails (no such account) "
                "and the account keeps what ensureUsers gives it (unix_socket). The value is nobody's password: "
                "take the clause (or the statement) out by hand; nixmig does not turn it into a password the "
                "account never had",
            )
            if s.read is not None and (hole := holes.get(s.read)) is not None:
                _said_at_binding(b, fm, hole[1])  # a let's value: said here, not again where it is bound
            return
    edits: list[tuple[int, int, str, str]] = []
    for s in ours:
        assert s.clause is not None
        start, end, _ = s.clause
        if s.verb in ("create", "alter"):
            edits.append((start, end, " ACCOUNT LOCK", f"{s.verb.upper()} USER {s.account}"))
            continue
        created = [c for c in stmts if c.verb == "create" and c.end <= s.start and (c.user, c.host) == (s.user, s.host)]
        if not created:
            said(
                start,
                f"services.mysql.initialScript: GRANT ... TO {s.account} IDENTIFIED BY creates the account, and "
                f"without the clause it would have no password: add CREATE USER {s.account} ACCOUNT LOCK; before "
                "it, then patch again",
            )
            return
        edits.append((start, end, "", f"GRANT ... TO {s.account}"))
        c = created[-1]
        if c.clause is None and "ACCOUNT" not in raw[c.start : c.end].upper():
            edits.append((c.end, c.end, " ACCOUNT LOCK", f"CREATE USER {c.account} (locked until the oneshot)"))
    for start, end, new, what in edits:
        b.ed.add(
            fm,
            at(start),
            at(end),
            new,
            f"{what}: the literal password leaves services.mysql.initialScript (a file in the world-readable "
            + "Nix store)"
            + ("; the account stays locked until the oneshot sets its password" if new else ""),
        )
    # the live value's clause first: a move's `secret new --from FILE:LINE` takes the value kept from the first
    for s in sorted(ours, key=lambda s: s.clause is None or s.clause[2] != value):
        assert s.clause is not None
        b.masks.append((fm.name, at(s.clause[0]), at(s.clause[1])))
        # where the value is (a clause may begin at the end of the line before): `secret new --from` reads it there
        b.replaced.append(f"the IDENTIFIED BY of {s.account} at {fm.where(at(s.value_start))}")
        if s.read is not None:
            read_once_less(b, fm, holes[s.read][1])
    b.known.add(digest(value.encode()))
    b.taken_here.add(value.encode())  # its copies elsewhere (`artisan ... --password=VALUE`) are still it
    b.sql_file = fm
    _unit(b, fm, near, sorted({s.account for s in ours}), prefix)


def _unit(b: Builder, fm: FileModel, near: Node, accounts: list[str], prefix: NixPath = ()) -> None:
    """The oneshot that sets ``accounts``' password, in the system ``prefix`` is (the host's, or a declarative
    NixOS container's: there it reads the host's agenix file through a read-only bind mount)."""
    from nixmig.nixsrc.patch import credential_name
    from nixmig.nixsrc.shapes.container_store_file import MOUNT_DIR, bind_mount
    from nixmig.nixsrc.shapes.initial_script import _container_config, add_unit, unit_name

    spec = b.spec
    tpl = template("mysql-user-password.nix.j2")
    shown = ", ".join(accounts)
    container = _container(b, prefix) if prefix else None
    mount = f"{MOUNT_DIR}/{spec.secret}" if container is not None else None
    cfg = _container_config(b, container) if container is not None else "config"
    add_unit(
        b,
        fm,
        near,
        lambda attr: str(
            tpl.unit(
                attr,
                spec.secret,
                nix_attr(spec.secret),
                shown,
                accounts,
                credential_name(spec.secret),
                credential_path=mount,
                cfg=cfg,
            )
        ),
        f"the oneshot {unit_name(b)} sets the MySQL password of {shown} from "
        + (f"{mount} (the host's {spec.secret_on_host}, bind-mounted)" if mount else spec.secret_on_host)
        + " after mysql.service is up, at each boot and on a deploy that changes the unit or restarts the server, "
        "and unlocks the account (the value is read from the credential file by the shell and sent on the client's "
        "stdin: never in the store, an argv or the server's logs)"
        + (f"; inside the {container} container, beside the server it sets" if container is not None else ""),
        prefix,
    )
    if container is not None and mount is not None:
        bind_mount(b, fm, container, spec.secret, mount)


SHAPE = Shape(
    "mysql-initial-script",
    "services.mysql.initialScript with IDENTIFIED BY '...' (strategy move): the clause goes (the account locked), "
    "a oneshot sets the password from the agenix file",
    apply,
    (
        "native-mysql-initialscript-grant-identified",
        "native-mysql-initialscript-grant-creates-user",
        "native-mysql-initialscript-alter-before-ensureusers",
        "native-container-mysql-initialscript-move",
        "native-container-mysql-initialscript-private-users",
    ),
)
