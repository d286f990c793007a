"""A password bound once in a ``let`` and read by a systemd unit's script or command line.

The value is a ``let`` string (``uri = "postgresql://postgres:PW@localhost";``, ``pw = "PW";``) or a
field of a let-bound attrset (``statsConfig = { user = "stats"; password = "PW"; };``), interpolated
into ``systemd.services.U.{script,preStart,postStart}`` (run by bash) or ``serviceConfig.ExecStart``
(and ExecStartPre/ExecStartPost: a command line systemd itself splits):

- in a script, each ``${uri}`` becomes a shell variable, quoted for where it sits (``"$nixmig_uri"``
  as a bare word, ``${nixmig_uri}`` inside double quotes, ``'"$nixmig_uri"'`` inside single quotes;
  inside an SQL string ``'...'`` in double quotes: the value with its quotes doubled, and for a
  MySQL client its backslashes too). Lines at the top of the script set the variable at run time
  from the agenix file, which systemd hands to the unit as a credential (LoadCredential: the script
  reads ``$CREDENTIALS_DIRECTORY``; a URL's password is percent-encoded byte by byte);
- on a command line, each use becomes ``${VAR}``, which systemd substitutes from the unit's
  environment: an ExecStartPre renders ``VAR=...`` into an EnvironmentFile from the credential (the
  systemd renderer of patch.py; a bare password only when it needs no quoting, else the unit stops
  at start with one line).

The value is then in no file of the Nix store; while a command that takes it as an argument runs
(``psql URL``, ``mysql -e "... IDENTIFIED BY '...'"``) it is in that command's argv, as it was before:
the explain text says so. The binding goes when every use is replaced. A use nixmig cannot replace
(another attribute, a heredoc, a command substitution inside double quotes, a unit named by an
expression, a nested script) leaves the whole value as it is and is said, with its line: never part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.lets import binds_name
from nixmig.nixsrc.model import attr_names, decode_string, unparen
from nixmig.nixsrc.parse import descendants, text
from nixmig.nixsrc.quote import escape_indented, nix_attr, nix_escape, shell_quote
from nixmig.nixsrc.render import EnvLine, template
from nixmig.nixsrc.scan import classify_name, looks_like_crypt_hash
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.run_argv import _RUN

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import Bind, FileModel
    from nixmig.nixsrc.patch import Builder, UrlParts

SCRIPTS = (("script",), ("preStart",), ("postStart",))
COMMAND_LINES = (("serviceConfig", "ExecStart"), ("serviceConfig", "ExecStartPre"), ("serviceConfig", "ExecStartPost"))
_STRINGS = ("string_expression", "indented_string_expression")
_HOLE = "\x00"  # an interpolation in the decoded shell text (a word of its own, no quote in it)
_MYSQL = re.compile(r"(?:^|[\s/}])(?:mysql|mariadb)\b")
# ``podman|docker run -e 'VAR=...${x}...'`` on a command line is run_argv's (an --env-file, no argv)
FOREIGN = "a podman/docker run command line (the run-argv shape's)"
_CLAUSE_BEFORE = re.compile(r"(?i)(?:IDENTIFIED\s+BY|PASSWORD)\s*'$")


@dataclass(frozen=True)
class Bound:
    """A string a let binds once: ``name = "v";`` or the field ``name.field = "v";`` of a let attrset."""

    shown: str  # uri | statsConfig.password
    binding: Node  # what goes when no use is left
    literal: Node
    value: str
    uses: tuple[Node, ...]  # variable_expression (a let string) or select_expression (a field)
    whole: tuple[Node, ...]  # a field's attrset read as a whole (inherit (x) ..., x // ...): unknown reads
    # in a ``rec { }``: the sibling fields whose strings interpolate this one (``full-url`` reads
    # ``${password}``); a field built so has its value with those put in, and readers ()
    readers: tuple[str, ...] = ()
    # a string of a second plain .nix file the file imports (patch.Imported: ``${secrets.pw}``): binding and
    # literal are its first read here; its key leaves the plain file with its last read (Builder.drop_imported)
    imported: bool = False


@dataclass(frozen=True)
class Use:
    node: Node  # the interpolation
    unit: str  # systemd.services.<unit>
    bind: Bind  # the script or command line
    script: bool  # bash (True) or a command line systemd splits (False)
    context: str  # bare | dq | sq | sql (an SQL string in double quotes)
    mysql: bool  # the command is a MySQL/MariaDB client (backslashes escape in its strings)


def _walk_lets(root: Node) -> list[Node]:
    return [n for n in descendants(root) if n.type == "let_expression"]


def _let_bindings(root: Node) -> list[tuple[str, Node, Node]]:
    out: list[tuple[str, Node, Node]] = []
    for let in _walk_lets(root):
        for bset in (c for c in let.named_children if c.type == "binding_set"):
            for b in bset.named_children:
                ap, ex = b.child_by_field_name("attrpath"), b.child_by_field_name("expression")
                if b.type == "binding" and ap is not None and ex is not None and ap.named_child_count == 1:
                    out.append((attr_names(ap)[0], b, unparen(ex)))
    return out


def fields(fm: FileModel, shadowed: set[str]) -> list[Bound]:
    """Every string field of an attrset a let binds once (``cfg = { password = "..."; };``), with its
    reads ``cfg.password``; a read of the attrset as a whole is kept apart (it may read the field). In a
    ``rec { }``, a field whose string interpolates only sibling string fields (``full-url =
    "postgres://${user}:${password}@${host}/db";``) is a string too, its value with theirs put in; any
    other read of a field inside the rec is a read nixmig does not follow (kept apart like a whole read)."""
    lets = _let_bindings(fm.root)
    counts: dict[str, int] = {}
    for name, _, _ in lets:
        counts[name] = counts.get(name, 0) + 1
    variables: dict[str, list[Node]] = {}
    for n in descendants(fm.root):
        if n.type == "variable_expression":
            variables.setdefault(text(n), []).append(n)
    out: list[Bound] = []
    for name, _, value in lets:
        if counts[name] != 1 or name in shadowed or value.type not in ("attrset_expression", "rec_attrset_expression"):
            continue
        reads: dict[str, list[Node]] = {}
        whole: list[Node] = []
        deep: dict[str, list[Node]] = {}  # cfg.images.web: a read of another field (images), not the whole
        for v in variables.get(name, ()):
            inside = value.type == "rec_attrset_expression" and value.start_byte <= v.start_byte < value.end_byte
            if inside and binds_name(value, name):
                continue  # rec { database = "..."; url = "...${database}"; }: the field, not the let
            sel = v.parent
            ap = sel.child_by_field_name("attrpath") if sel is not None and sel.type == "select_expression" else None
            if sel is None or ap is None or sel.child_by_field_name("expression") != v:
                whole.append(v)
                continue
            if ap.named_child_count != 1:
                first = ap.named_children[0]
                if first.type != "identifier" or any(c.type == "or" for c in sel.children):
                    whole.append(v)  # cfg.${x}.y, or a default: nixmig cannot tell which field
                else:
                    deep.setdefault(fm.text(first), []).append(v)
                continue
            if any(c.type == "or" for c in sel.children):
                whole.append(v)  # `cfg.password or "..."`: a default nixmig would have to read too
                continue
            reads.setdefault(attr_names(ap)[0], []).append(sel)
        plain: dict[str, tuple[Node, Node, str]] = {}  # field: (binding, literal, value)
        others: dict[str, tuple[Node, Node]] = {}  # field: (binding, value) of every other single-name field
        for fb in value.named_children:
            if fb.type != "binding_set":
                continue
            for b in fb.named_children:
                ap, ex = b.child_by_field_name("attrpath"), b.child_by_field_name("expression")
                if b.type != "binding" or ap is None or ex is None or ap.named_child_count != 1:
                    continue
                lit = unparen(ex)
                got = decode_string(lit)
                if got:
                    plain[attr_names(ap)[0]] = (b, lit, got)
                else:
                    others[attr_names(ap)[0]] = (b, lit)
        built: dict[str, tuple[Node, Node, str]] = {}
        readers: dict[str, list[str]] = {}
        inner: dict[str, list[Node]] = {}
        if value.type == "rec_attrset_expression":
            built, readers, inner = _rec_fields(fm, value, plain, others)
        for field, (b, lit, got) in (*plain.items(), *built.items()):
            out.append(
                Bound(
                    f"{name}.{field}",
                    b,
                    lit,
                    got,
                    tuple(reads.get(field, ())),
                    (*whole, *deep.get(field, ()), *inner.get(field, ())),
                    tuple(f"{name}.{r}" for r in readers.get(field, ())),
                )
            )
    return out


def _rec_fields(
    fm: FileModel, rec: Node, plain: dict[str, tuple[Node, Node, str]], others: dict[str, tuple[Node, Node]]
) -> tuple[dict[str, tuple[Node, Node, str]], dict[str, list[str]], dict[str, list[Node]]]:
    """In ``rec``: the fields built from sibling strings (field: (binding, string, value)), which of
    them read each plain field (field: [readers]), and each field's other reads inside the rec (a built field
    read by another: ``url2 = "${url}/x"``; kept apart like a whole read, so it is never removed under them)."""
    built: dict[str, tuple[Node, Node, str]] = {}
    readers: dict[str, list[str]] = {}
    followed: set[int] = set()
    for field, (b, string) in others.items():
        if string.type != "string_expression":
            continue
        parts: list[str] = []
        names: list[Node] = []
        for c, t in decoded_parts(fm, string):
            if c.type != "interpolation":
                parts.append(t)
                continue
            held = [x for x in c.named_children if x.type != "comment"]
            if len(held) != 1 or held[0].type != "variable_expression" or fm.text(held[0]) not in plain:
                break
            parts.append(plain[fm.text(held[0])][2])
            names.append(held[0])
        else:
            if names:
                built[field] = (b, string, "".join(parts))
                for n in names:
                    followed.add(n.start_byte)
                    if field not in readers.setdefault(fm.text(n), []):
                        readers[fm.text(n)].append(field)
    inner: dict[str, list[Node]] = {}
    for n in descendants(rec):
        if (
            n.type == "variable_expression"
            and (fm.text(n) in plain or fm.text(n) in built)
            and n.start_byte not in followed
        ):
            inner.setdefault(fm.text(n), []).append(n)
    return built, readers, inner


def imported_values(b: Builder, fm: FileModel) -> list[Bound]:
    """The passwords (no URLs: url_variables has those) ``fm`` reads from a second plain .nix file, one per
    key, with every select of it in ``fm`` as its uses."""
    groups: dict[tuple[str, tuple[str, ...]], list[Node]] = {}
    values: dict[tuple[str, tuple[str, ...]], str] = {}
    for (name, start), imp in b.imported.items():
        if name != fm.name or "://" in imp.value:
            continue
        node = fm.root.descendant_for_byte_range(start, start)
        while node is not None and not (node.type == "select_expression" and node.start_byte == start):
            node = node.parent
        if node is not None:
            groups.setdefault((imp.file, imp.key), []).append(node)
            values[(imp.file, imp.key)] = imp.value
    out = []
    for key, uses in groups.items():
        uses.sort(key=lambda n: n.start_byte)
        shown = "".join(fm.text(uses[0]).split())
        out.append(Bound(shown, uses[0], uses[0], values[key], tuple(uses), (), imported=True))
    return out


def bound_values(fm: FileModel) -> list[Bound]:
    """The let strings of ``fm`` (nixsrc/lets.py) and the string fields of its let attrsets."""
    from nixmig.nixsrc.lets import _formal_names, let_literals

    strings = [Bound(n, x.binding, x.literal, x.value, x.uses, ()) for n, x in let_literals(fm.root).items()]
    return strings + fields(fm, _formal_names(fm.root))


# ------------------------------------------------ the shell text around a use


def decoded_parts(fm: FileModel, string: Node) -> list[tuple[Node, str]]:
    """Each child of the Nix string ``string`` with the text it evaluates to (an interpolation: one
    _HOLE; a dollar escape: nothing, the ``$`` it protects is the next fragment)."""
    out: list[tuple[Node, str]] = []
    indented = string.type == "indented_string_expression"
    plain = {"n": "\n", "r": "\r", "t": "\t"}
    for c in string.named_children:
        t = fm.text(c)
        if c.type == "interpolation":
            out.append((c, _HOLE))
        elif c.type == "string_fragment":
            out.append((c, t))
        elif c.type == "escape_sequence":
            if indented:
                out.append((c, "''" if t == "'''" else plain.get(t[3:], t[3:])))
            else:
                out.append((c, plain.get(t[1:], t[1:])))
    return out


def shell_text(fm: FileModel, string: Node) -> tuple[str, dict[int, int]]:
    """The text a Nix string evaluates to, each interpolation one _HOLE; the holes' offsets by the
    interpolation node's start byte."""
    out: list[str] = []
    holes: dict[int, int] = {}
    for c, t in decoded_parts(fm, string):
        if c.type == "interpolation":
            holes[c.start_byte] = len("".join(out))
        out.append(t)
    return "".join(out), holes


def shell_context(s: str, pos: int) -> str | None:
    """bare | dq | sq at offset ``pos`` of a bash script; None where nixmig does not follow the
    quoting (a heredoc, a backquote, ``$(`` inside double quotes)."""
    state = "bare"
    i = 0
    while i < pos:
        c = s[i]
        if state == "bare":
            if c == "\\":
                i += 2
                continue
            if c == "'":
                state = "sq"
            elif c == '"':
                state = "dq"
            elif c == "`" or s.startswith("<<", i):
                return None
            elif c == "#" and (i == 0 or s[i - 1] in " \t\n;|&("):
                end = s.find("\n", i)
                if end == -1 or end >= pos:
                    return "bare"  # a comment: the word is only text there
                i = end
                continue
        elif state == "sq":
            if c == "'":
                state = "bare"
        else:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                state = "bare"
            elif c == "`" or s.startswith("$(", i):
                return None
        i += 1
    return state


def _command_of(s: str, pos: int) -> str:
    """The line (continuations joined) that holds offset ``pos``."""
    start = s.rfind("\n", 0, pos) + 1
    while start > 1 and s[start - 2] == "\\":
        start = s.rfind("\n", 0, start - 2) + 1
    end = s.find("\n", pos)
    while end != -1 and end > 0 and s[end - 1] == "\\":
        end = s.find("\n", end + 1)
    return s[start : len(s) if end == -1 else end]


def _resolved(
    values: dict[str, str], fm: FileModel, string: Node, s: str, holes: dict[int, int], pos: int
) -> tuple[str, int]:
    """``s`` with the holes of let strings and let fields (``values``) put back (a role name read as
    ``cfg.user``), and where offset ``pos`` of ``s`` is in it."""
    out = list(s)
    for c in string.named_children:
        if c.type == "interpolation" and c.start_byte in holes:
            inner = [x for x in c.named_children if x.type != "comment"]
            got = values.get(fm.text(inner[0])) if len(inner) == 1 else None
            if got is not None:
                out[holes[c.start_byte]] = got
    return "".join(out), len("".join(out[:pos]))


# ------------------------------------------------ detect


def _environment_binding(fm: FileModel, use: Node) -> bool:
    """``use`` is the whole value of a container's or a unit's environment variable (``DATABASE_URL = dsn;``)."""
    from nixmig.nixsrc.patch import environment_variable

    if use.parent is None or use.parent.type != "binding":
        return False
    bind = next((x for x in fm.binds if x.exact and unparen(x.value) == use), None)
    return bind is not None and environment_variable(bind.path)


def _uses(values: dict[str, str], fm: FileModel, bound: Bound) -> tuple[list[Use], list[tuple[Node, str]]]:
    """Each read of ``bound``: a use in a unit's script or command line nixmig can replace, or (node,
    why) for one it cannot."""
    ok: list[Use] = []
    left: list[tuple[Node, str]] = []
    for w in bound.whole:
        left.append((w, f"{text(w)} is read as a whole there (it may read {bound.shown})"))
    for u in bound.uses:
        hole = u.parent
        if _environment_binding(fm, u) and "://" in bound.value and "." not in bound.shown:
            continue  # DATABASE_URL = dsn: a URL the pipeline edits where it is (Builder.url_variables)
        string = hole.parent if hole is not None and hole.type == "interpolation" else None
        bind = next((x for x in fm.binds if x.exact and unparen(x.value) == string), None) if string else None
        if hole is None or string is None or bind is None or string.type not in _STRINGS:
            left.append((u, "not in a systemd unit's script or command line nixmig edits"))
            continue
        path = bind.path
        if len(path) < 4 or path[:2] != ("systemd", "services") or path[3:] not in SCRIPTS + COMMAND_LINES:
            left.append((u, f"in {'.'.join(path)}, not a unit's script or command line"))
            continue
        unit = path[2]
        if "${" in unit or not re.fullmatch(r"[\w.@-]+", unit.strip('"')):
            left.append((u, f"in the unit {unit}, named by an expression"))
            continue
        s, holes = shell_text(fm, string)
        pos = holes[hole.start_byte]
        script = path[3:] in SCRIPTS
        ctx = shell_context(s, pos) if script else "bare"
        if ctx is None:
            left.append((u, f"in {'.'.join(path)}, inside a heredoc or a command substitution nixmig does not quote"))
            continue
        if script and ctx == "dq" and s[pos - 1 : pos] == "'" and s[pos + 1 : pos + 2] == "'":
            ctx = "sql"
        two = fm.source[max(0, hole.start_byte - 2) : hole.start_byte]
        if ctx == "sq" and string.type == "indented_string_expression" and two[1:] == b"'" and two[:1] in b"'\\":
            left.append((u, f"in {'.'.join(path)}, in single quotes right after an escaped quote"))
            continue
        command = _command_of(*_resolved(values, fm, string, s, holes, pos))
        if not script and _RUN.search(command):
            left.append((u, FOREIGN))  # run_argv gives the container an --env-file: no value in argv
            continue
        ok.append(Use(hole, unit.strip('"'), bind, script, ctx, bool(_MYSQL.search(command))))
    return ok, left


def _ours(b: Builder, fm: FileModel, bound: Bound, uses: list[Use], password: str | None) -> UrlParts | str | None:
    """The URL (split around the password) or the bare password ``bound`` holds, when it is this
    migration's; None when it is not."""
    from nixmig.nixsrc.patch import split_url

    url = split_url(bound.value, password, b.spec.url_schemes)
    if url is not None and not url.embedded and b._is_ours(url, password, b.db):
        return url
    if url is not None:
        return None
    if password is not None:
        return bound.value if bound.value == password else None
    # nothing recognised yet (strategy move, no database in the repo): a credential's name, read only
    # in SQL that gives the role its password (IDENTIFIED BY '...', PASSWORD '...')
    account = _account(values_of(fm), fm, bound, uses)
    return bound.value if account is not None and account.user == b.spec.role else None


@dataclass(frozen=True)
class SqlAccount:
    user: str  # the account (MySQL) or role (PostgreSQL) the SQL gives the value as its password
    database: str | None  # GRANT ... ON db.*
    unit: str
    mysql: bool
    where: str  # file:line of the first use


_ACCOUNT = r"['`\"]?([A-Za-z0-9_.-]+)['`\"]?(?:\s*@\s*\S+)?"
_SQL_ACCOUNT = (
    re.compile(rf"(?is)\bTO\s+{_ACCOUNT}\s+IDENTIFIED\s+BY\s*'$"),
    re.compile(rf"(?is)\b(?:CREATE|ALTER)\s+USER\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?{_ACCOUNT}\s+IDENTIFIED\s+BY\s*'$"),
    re.compile(rf"(?is)\b(?:CREATE|ALTER)\s+(?:ROLE|USER)\s+{_ACCOUNT}\b.*\bPASSWORD\s*'$"),
)
_ON_DB = re.compile(r"(?is)\bON\s+['`]?([A-Za-z0-9_-]+)['`]?\.\*")


# where a shell script or a command line takes a password: an SQL clause, a client's flag or variable, a URL's userinfo
_CREDENTIAL_BEFORE = re.compile(
    r"(?i)(?:IDENTIFIED\s+BY|PASSWORD)\s*['\"]?$"
    r"|(?:(?:^|\s)--?[\w-]*pass(?:word|wd)?[= ]|-p|PGPASSWORD=|MYSQL_PWD=|[A-Z_]*PASS(?:WORD|WD)?=)['\"]?$"
    r"|://[^:@/\s'\"]*:$"
)


def _read_as_a_credential(fm: FileModel, bound: Bound, uses: list[Use]) -> bool:
    """``bound``'s name says it is a secret (``dbPassword``, ``pw``, ``secret``), or a use reads it where a
    password goes; a string that only equals the password (a network's name, a role's, a database's) is none."""
    if classify_name(bound.shown.rsplit(".", 1)[-1]) is not None:
        return True
    for u in uses:
        before = fm.source[max(0, u.node.start_byte - 40) : u.node.start_byte].decode("utf-8", "replace")
        if _CREDENTIAL_BEFORE.search(before):
            return True
    return False


def values_of(fm: FileModel) -> dict[str, str]:
    return {x.shown: x.value for x in bound_values(fm)}


def _account(values: dict[str, str], fm: FileModel, bound: Bound, uses: list[Use]) -> SqlAccount | None:
    """The one account whose password SQL in a unit sets to ``bound`` at every use of it; None when a
    use is anything else, or the uses name different accounts. (Its name may say nothing, ``albumsDb``: read
    right inside ``PASSWORD '...'`` / ``IDENTIFIED BY '...'`` at every use, it is that account's password.)"""
    if not uses or bound.whole:
        return None
    found: set[tuple[str, str | None, str, bool]] = set()
    for use in uses:
        string = use.node.parent
        assert string is not None
        s, holes = shell_text(fm, string)
        whole, at = _resolved(values, fm, string, s, holes, holes[use.node.start_byte])
        before = whole[:at]
        statement = before[before.rfind(";") + 1 :]
        m = next((m for r in _SQL_ACCOUNT if (m := r.search(statement)) is not None), None)
        if m is None or not _CLAUSE_BEFORE.search(statement):
            return None
        db = _ON_DB.search(statement)
        found.add((m.group(1), db.group(1) if db else None, use.unit, use.mysql))
    if len({(u, m) for u, _, _, m in found}) != 1:
        return None
    user, database, unit, mysql = sorted(found, key=lambda x: (x[1] is None, x))[0]
    return SqlAccount(user, database, unit, mysql, f"{fm.name}:{fm.line_col(uses[0].node.start_byte)[0]}")


def sql_account(fm: FileModel, byte: int) -> SqlAccount | None:
    """For init's draft: the account whose password the let-bound literal at ``byte`` is, when every
    read of it is in SQL a systemd unit runs (``IDENTIFIED BY '${x}'``, ``PASSWORD '${x}'``)."""
    values = values_of(fm)
    for bound in bound_values(fm):
        if bound.literal.start_byte <= byte < bound.literal.end_byte:
            uses, left = _uses(values, fm, bound)
            return _account(values, fm, bound, uses) if not left else None
    return None


def imported_sql_account(fm: FileModel, start: int, value: str) -> SqlAccount | None:
    """For init's draft: the account whose password a string of a plain .nix file is, read by the select at
    ``start`` of ``fm`` inside SQL a systemd unit runs (``PASSWORD '${private.db}'``); the file's other reads
    of the key (an app's URL) aside: they are the app's."""
    node: Node | None = fm.root.descendant_for_byte_range(start, start)
    while node is not None and not (node.type == "select_expression" and node.start_byte == start):
        node = node.parent
    if node is None:
        return None
    key = "".join(fm.text(node).split())
    reads = tuple(
        n for n in descendants(fm.root) if n.type == "select_expression" and "".join(fm.text(n).split()) == key
    )
    bound = Bound(key, node, node, value, reads, (), imported=True)
    values = values_of(fm)
    uses, _ = _uses(values, fm, bound)
    return _account(values, fm, bound, uses) if uses else None


# ------------------------------------------------ edits


def _var(bound: Bound) -> str:
    return "nixmig_" + re.sub(r"[^A-Za-z0-9_]", "_", bound.shown)


def _prologue(b: Builder, bound: Bound, value: UrlParts | str, uses: list[Use], credential: str) -> list[str]:
    """The lines (shell) that set the script's variables from the credential."""
    from nixmig.nixsrc.patch import credential_word

    word = credential_word(credential)
    var = _var(bound)
    lines = [
        f"# nixmig: {var} is read at run time from the agenix secret {b.spec.secret} (a systemd credential);",
        f"# {bound.shown} was a literal in the Nix store",
        f'[ -s {word} ] || {{ echo "nixmig: the credential {credential} is missing or empty" >&2; exit 1; }}',
    ]
    empty = f'{{ echo "nixmig: the credential {credential} holds only line breaks" >&2; exit 1; }}'
    if isinstance(value, str):
        lines += [f"{var}=$(< {word})", f'[ -n "${var}" ] || {empty}']  # $(<): less the final line breaks
        if any(u.context == "sql" and not u.mysql for u in uses):  # standard SQL: '' is a quote
            lines.append(f"{var}_sql=${{{var}//\\'/\\'\\'}}")
        if any(u.context == "sql" and u.mysql for u in uses):  # MySQL: a backslash escapes too
            lines.append(f"{var}_mysql=${{{var}//\\\\/\\\\\\\\}}")
            lines.append(f"{var}_mysql=${{{var}_mysql//\\'/\\'\\'}}")
        return lines
    macros = template("percent-encode.sh.j2")
    encode = macros.percent_encode(f"{var}_pw", f"${var}_hex", "nixmig_h", "nixmig_c")
    lines += [
        *str(macros.secret_hex(f"{var}_hex", word)).splitlines(),
        f'[ -n "${var}_hex" ] || {empty}',
        f"{var}_pw=",
        *str(encode).splitlines(),
        f'{var}={shell_quote(value.prefix)}"${var}_pw"{shell_quote(value.suffix)}',
    ]
    return lines


def _replacement(use: Use, var: str, indented: bool) -> str:
    """The Nix source that replaces the interpolation."""
    return replacement(use.script, use.context, use.mysql, var, indented)


def replacement(script: bool, context: str, mysql: bool, var: str, indented: bool) -> str:
    """The Nix source that reads the shell variable ``var`` where a value sat in a script (``context``:
    bare | dq | sq | sql) or a command line (``script`` False: systemd's ``${VAR}``)."""
    if not script:
        return ("''${" if indented else "\\${") + var + "}"
    dollar = "''${" if indented else "\\${"
    dq = '"' if indented else '\\"'  # a shell double quote, in an indented or a double-quoted Nix string
    if context == "bare":
        return f"{dq}{dollar}{var}}}{dq}"
    if context == "sq":
        return f"'{dq}{dollar}{var}}}{dq}'"
    if context == "sql":
        return f"{dollar}{var}_{'mysql' if mysql else 'sql'}}}"
    return f"{dollar}{var}}}"


def _span(fm: FileModel, use: Use, replacement: str, indented: bool) -> tuple[int, int, str]:
    return span(fm, use.node.start_byte, use.node.end_byte, use.script and use.context == "sq", replacement, indented)


def span(fm: FileModel, start: int, end: int, single: bool, replacement: str, indented: bool) -> tuple[int, int, str]:
    """Where the replacement of bytes ``start``..``end`` goes (``single``: in a script's single quotes).
    In single quotes inside an indented string, a quote of the script right before or after it must
    not make two quotes with the replacement's own (that ends the string): a quote that opens right
    before it is taken in, one right after is written escaped."""
    src = fm.source
    lone = src[start - 1 : start] == b"'" and src[start - 2 : start - 1] not in (b"'", b"\\")
    if indented and replacement.startswith("''") and lone:  # with ''${ a lone quote would read '''
        return start - 1, end, "''\\'" + replacement
    if not (single and indented):
        return start, end, replacement
    if src[start - 1 : start] == b"'":  # `'${x}`: the single quotes open right there (_uses checked it)
        start, replacement = start - 1, replacement[1:]
    if src[end : end + 1] == b"'":
        replacement = replacement[:-1] + "''\\'"
    return start, end, replacement


def _insert_prologue(b: Builder, fm: FileModel, string: Node, lines: list[str], why: str) -> None:
    indented = string.type == "indented_string_expression"
    src = fm.source
    if indented:
        after_open = string.start_byte + 2
        nl = src.find(b"\n", after_open)
        assert nl != -1 and not src[after_open:nl].strip()  # (_blocked: text on the opening line)
        body = [ln for ln in src[nl + 1 : string.end_byte - 2].split(b"\n") if ln.strip()]
        indent = min((len(ln) - len(ln.lstrip(b" ")) for ln in body), default=0)
        pad = " " * indent
        chunk = "".join(pad + escape_indented(ln, before_antiquote=False) + "\n" for ln in lines)
        b.ed.add(fm, nl + 1, nl + 1, chunk, why)
        return
    at = string.start_byte + 1
    b.ed.add(fm, at, at, nix_escape("".join(ln + "\n" for ln in lines)), why)


def _loads_credentials(fm: FileModel, bind: Bind) -> bool:
    return any(x.exact and x.path == (*bind.path[:3], "serviceConfig", "LoadCredential") for x in fm.binds)


def _blocked(b: Builder, fm: FileModel, groups: list[list[Use]], credential_added: set[str]) -> list[tuple[Node, str]]:
    """Why the uses (grouped by string) cannot all be replaced, checked before any edit (none or all)."""
    out: list[tuple[Node, str]] = []
    scripts = credential_added | {u.unit for its in groups for u in its if u.script}
    for its in groups:
        use = its[0]
        string = use.node.parent
        assert string is not None
        where = ".".join(use.bind.path)
        renders = ("systemd", fm.name, use.bind.path[2]) in b.renderers
        if _loads_credentials(fm, use.bind) and use.unit not in credential_added and not renders:
            out.append((use.node, f"in {where}, a unit that sets LoadCredential already (nixmig does not merge it)"))
        elif use.script and string.type == "indented_string_expression":
            line_end = fm.source.find(b"\n", string.start_byte + 2)
            if line_end == -1 or fm.source[string.start_byte + 2 : line_end].strip():
                out.append((use.node, f"in {where}, a script that starts on the line of its opening quotes"))
        elif not use.script and use.unit in scripts:
            out.append((use.node, f"in {where}, beside a script of the same unit (one LoadCredential for both)"))
    return out


def _load_credential(b: Builder, fm: FileModel, unit: str, bind: Bind, credential: str) -> None:
    """``LoadCredential`` for the unit (_blocked checked it sets none)."""
    b.credential_units.add((fm.name, bind.path[2]))
    entry = f'[ "{credential}:${{config.age.secrets.{nix_attr(b.spec.secret)}.path}}" ]'
    b.insert_path(
        fm,
        root[0] if (root := fm.root_of(bind.node)) is not None else None,
        ("systemd", "services", bind.path[2], "serviceConfig", "LoadCredential"),
        lambda attr: f"{attr} = {entry};",
        f"hands the agenix secret {b.spec.secret} to {unit} as the credential {credential} "
        f"(its scripts read it from $CREDENTIALS_DIRECTORY)",
        after=bind.node,
    )


def apply(b: Builder, password: str | None) -> None:
    from nixmig.nixsrc.patch import _Renderer, credential_name

    credential = credential_name(b.spec.secret)
    for fm in list(b.models.values()):
        units_with_credential: set[str] = set()
        values = values_of(fm)
        gone: dict[str, str] = {}  # a rec field built from the password, removed: the password it held
        bounds = sorted(bound_values(fm), key=lambda x: bool(x.readers)) + imported_values(b, fm)
        for bound in bounds:  # a rec's built fields first
            if (fm.name, bound.literal.start_byte) in b.handled and not bound.imported:
                continue
            if bound.readers:
                if classify_name(bound.shown.rsplit(".", 1)[-1]) is None or not all(r in gone for r in bound.readers):
                    continue  # a role name or a host a URL reads, or a reader left: not this shape's
                if bound.value not in {gone[r] for r in bound.readers}:
                    continue
                if not (bound.uses or bound.whole):
                    _drop_field(b, fm, bound, [r for r in bound.readers])
                    continue
            if not (bound.uses or bound.whole):
                continue
            uses, left = _uses(values, fm, bound)
            if not uses:
                continue  # not read by a unit: the rest of the pipeline (or the verdict) has it
            value = _ours(b, fm, bound, uses, password)
            if value is None:
                continue
            if isinstance(value, str) and not _read_as_a_credential(fm, bound, uses):
                continue  # `net = "vikunja"` read as a network's name: the same text, no password (realcfg33/02)
            if isinstance(value, str) and looks_like_crypt_hash(value):
                continue  # a SCRAM verifier or a crypt hash, not a password: the verdict says so (realcfg25/05)
            is_field = "." in bound.shown and not bound.imported
            is_url = not isinstance(value, str)
            if (is_url or is_field) and any(why == FOREIGN for _, why in left):
                continue  # run_argv's use, and the pipeline's for the rest (as before this shape)
            left = [x for x in left if x[1] != FOREIGN]
            b.known.add(digest((value if isinstance(value, str) else value.password).encode()))
            bad = [(u.node, "a URL inside an SQL string") for u in uses if is_url and u.context == "sql"]
            if not is_url and not is_field:
                left = []  # a let password's other uses are the pipeline's; drop_lets says any left
            strings: dict[int, tuple[Node, list[Use]]] = {}
            for u in uses:
                s = u.node.parent
                assert s is not None
                strings.setdefault(s.start_byte, (s, []))[1].append(u)
            if not left and not bad:
                bad = _blocked(b, fm, [its for _, its in strings.values()], units_with_credential)
            if left or bad:
                node, why = (left + bad)[0]
                if not bound.imported:
                    b.handled.add((fm.name, bound.literal.start_byte))
                b.let_kept.add((fm.name, fm.line_col(bound.literal.start_byte)[0]))  # said here, not again
                b.mask_literal(fm, bound.literal)
                b.manual_here(
                    fm,
                    node,
                    f"{bound.shown} (the hardcoded password, bound at {fm.where(bound.binding)}) is used here, "
                    f"{why}: nixmig replaces every use or none; this use must read the agenix secret "
                    f"{b.spec.secret} first",
                    "",
                )
                continue
            if not isinstance(value, str):
                value = b.as_login_role(value)
            var = _var(bound)
            done: list[str] = []
            for string, its in strings.values():
                use = its[0]
                indented = string.type == "indented_string_expression"
                where = ".".join(use.bind.path)
                if use.script:
                    renders = ("systemd", fm.name, use.bind.path[2]) in b.renderers  # its LoadCredential is ours
                    if use.unit not in units_with_credential and not renders:
                        _load_credential(b, fm, use.unit, use.bind, credential)
                    units_with_credential.add(use.unit)
                    lines = _prologue(b, bound, value, its, credential)
                    _insert_prologue(b, fm, string, lines, f"{where} sets {var} from the credential")
                else:
                    key = ("systemd", fm.name, use.bind.path[2])
                    if key not in b.renderers:
                        anchor = b._bind_containing(fm, ("systemd", "services", use.bind.path[2], "serviceConfig"))
                        b.renderers[key] = _Renderer(key, "systemd", fm, anchor, use.bind.path[2], use.unit, use.unit)
                    r = b.renderers[key]
                    line = (
                        EnvLine(var.upper(), "", "", raw=True)
                        if isinstance(value, str)
                        else EnvLine(var.upper(), value.prefix, value.suffix)
                    )
                    b.add_env_line(r, line)
                    r.literals.append(f"{bound.shown} at {fm.where(string)}")
                for u in its:
                    name = var.upper() if not u.script else var
                    start, end, replacement = _span(fm, u, _replacement(u, name, indented), indented)
                    b.ed.add(
                        fm,
                        start,
                        end,
                        replacement,
                        f"{where} reads {bound.shown} from the agenix secret {b.spec.secret} at run time, not from "
                        f"the Nix store"
                        + (
                            "; while the command runs, the value is in its argv (as before)"
                            if u.script
                            else f" (systemd substitutes ${{{name}}} from the unit's EnvironmentFile; the value is "
                            "in the command's argv while it runs, as before)"
                        ),
                    )
                    done.append(f"{bound.shown} at {fm.where(u.node)}")
                    b.let_used.add((fm.name, u.node.named_children[0].start_byte))
                b.handled.add((fm.name, string.start_byte))  # the script is no URL left for on_url
                b.sql_file = b.sql_file or fm
                b.need(fm, ("config", "lib", "pkgs") if not use.script else ("config",))
            if not bound.imported:
                b.handled.add((fm.name, bound.literal.start_byte))
            b.replaced.append(f"{bound.shown} at {fm.where(bound.literal)}")
            if bound.imported:
                continue  # the plain file's key: Builder.drop_imported, once every read is replaced
            if is_url and any(_environment_binding(fm, u) for u in bound.uses):
                b.url_lets.add((fm.name, bound.shown))  # its environment uses are url_variables': drop_lets' then
            elif is_url or is_field:  # a let password's binding is drop_lets' (it knows every use)
                if is_url and is_field and not isinstance(value, str):
                    gone[bound.shown] = value.password
                b.mask_literal(fm, bound.literal)
                b.ed.remove_binding(
                    fm,
                    bound.binding,
                    f"removes {bound.shown}, the {'URL with the ' if is_url else ''}hardcoded password every use "
                    f"of which now reads the agenix secret {b.spec.secret}: {', '.join(done)}",
                )


def _drop_field(b: Builder, fm: FileModel, bound: Bound, readers: list[str]) -> None:
    """Removes the password field of a ``rec { }`` that nothing reads now its readers are gone."""
    b.known.add(digest(bound.value.encode()))
    b.handled.add((fm.name, bound.literal.start_byte))
    b.replaced.append(f"{bound.shown} at {fm.where(bound.literal)}")
    b.mask_literal(fm, bound.literal)
    b.ed.remove_binding(
        fm,
        bound.binding,
        f"removes {bound.shown}, the hardcoded password, read only by {', '.join(readers)} in the same rec "
        f"attrset, which now reads the agenix secret {b.spec.secret} at run time",
    )


SHAPE = Shape(
    "let-script",
    "a let-bound password or URL (or a field of a let attrset) interpolated into a unit's script or command "
    "line: the script reads it from a systemd credential at run time (quoted for where it sits), a command "
    "line from an EnvironmentFile rendered at start; the binding goes",
    apply,
    (
        "oci-let-uri-in-unit-script",
        "native-mysql-let-attrset-execstart",
        "oci-let-uri-in-unit-script-and-app-env",
        "native-let-rec-url-script-and-execstart",
    ),
)
