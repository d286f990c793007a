"""The password written straight into a systemd unit's script: ``PGPASSWORD=PW pg_dump ...``,
``psql "postgres://app:PW@localhost/app"``, ``mysql -u app -pPW``.

The same edit as a let-bound value's (shapes/let_script.py), for a literal that is no binding of its
own: each copy of the password in ``systemd.services.U.{script,preStart,postStart}`` becomes a shell
variable, quoted for where it sits (a bare word, double or single quotes, an SQL string in double
quotes), set at the script's top from the agenix file, which systemd hands to the unit as a credential
(``LoadCredential``); inside a URL's userinfo (``scheme://user:PW@``) the variable holds the password
percent-encoded. The script in the Nix store then holds no password; while a command that takes it as
an argument runs (``psql URL``, ``mysql -pPW``) it is in that command's argv, as before.

Only a password the plan recognised (the database's, or the one the apps hold for the role), and only
where every copy in the script can be replaced: a copy inside a heredoc, a command substitution in
double quotes, a backquote, a Nix escape, or SQL that sets the password (``PASSWORD '...'``: the
unit-sql shape's) leaves the script as it is, for the verdict to say with its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import unparen
from nixmig.nixsrc.render import template
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.let_script import (
    _CLAUSE_BEFORE,
    _MYSQL,
    _STRINGS,
    SCRIPTS,
    _command_of,
    _insert_prologue,
    _load_credential,
    _loads_credentials,
    decoded_parts,
    replacement,
    shell_context,
    shell_text,
    span,
)

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import Bind, FileModel
    from nixmig.nixsrc.patch import Builder

_UNIT = re.compile(r"[\w.@-]+")
_WORD = rb"[A-Za-z0-9_]"


@dataclass(frozen=True)
class Copy:
    start: int  # bytes of the password in the file
    end: int
    context: str  # bare | dq | sq | sql
    url: bool  # inside a URL's userinfo: the percent-encoded value
    mysql: bool


def _copies(fm: FileModel, string: Node, password: str) -> list[Copy] | None:
    """Every copy of ``password`` in the script ``string``; None when one of them is where nixmig does
    not follow the quoting, or there is none."""
    raw = password.encode()
    s, _holes = shell_text(fm, string)
    out: list[Copy] = []
    offset = 0  # where each child starts in the decoded text
    for c, t in decoded_parts(fm, string):
        if c.type != "string_fragment":
            offset += len(t)
            if raw in fm.source[c.start_byte : c.end_byte]:
                return None  # the password partly written with an escape or inside ${...}
            continue
        frag = fm.source[c.start_byte : c.end_byte]
        for m in re.finditer(rb"(?:(?<!" + _WORD + rb")|(?<=\s-p))" + re.escape(raw) + rb"(?!" + _WORD + rb")", frag):
            pos = offset + len(frag[: m.start()].decode("utf-8", "replace"))
            ctx = shell_context(s, pos)
            if ctx is None:
                return None
            after = pos + len(password)
            if s[pos - 1 : pos] in ("/", ".") or s[after : after + 1] in ("/", "."):
                return None  # part of a path or a host name (`${package}/bin/NAME`): a name, not the password
            if ctx == "dq" and s[pos - 1 : pos] == "'" and s[after : after + 1] == "'":
                ctx = "sql"
                if _CLAUSE_BEFORE.search(s[:pos]):
                    return None  # SQL that sets the password: the unit-sql shape's, or said
            start = c.start_byte + m.start()
            two = fm.source[start - 2 : start]
            if ctx == "sq" and string.type == "indented_string_expression" and two[1:] == b"'" and two[:1] in b"'\\":
                return None  # right after an escaped quote
            url = s[pos - 1 : pos] == ":" and s[after : after + 1] == "@" and "://" in _token_before(s, pos)
            command = _command_of(s, pos)
            out.append(Copy(start, start + len(raw), ctx, url, bool(_MYSQL.search(command))))
        offset += len(t)
    if len(out) != fm.source[string.start_byte : string.end_byte].count(raw):
        return None  # a copy inside a longer word: every copy or none
    return out or None


def _token_before(s: str, pos: int) -> str:
    start = max(s.rfind(c, 0, pos) for c in " \t\n\"'=")
    return s[start + 1 : pos]


def _scripts(fm: FileModel) -> list[tuple[Bind, Node, str]]:
    out: list[tuple[Bind, Node, str]] = []
    for bind in fm.binds:
        path = bind.path
        if not bind.exact or len(path) != 4 or path[:2] != ("systemd", "services") or path[3:] not in SCRIPTS:
            continue
        unit = path[2].strip('"')
        string = unparen(bind.value)
        if string.type in _STRINGS and "${" not in path[2] and _UNIT.fullmatch(unit):
            out.append((bind, string, unit))
    return out


def _prologue(b: Builder, var: str, copies: list[Copy], credential: str) -> list[str]:
    from nixmig.nixsrc.patch import credential_word

    word = credential_word(credential)
    lines = [
        f"# nixmig: {var} is read at run time from the agenix secret {b.spec.secret} (a systemd credential);",
        "# the password was a literal in this script, in the Nix store",
        f'[ -s {word} ] || {{ echo "nixmig: the credential {credential} is missing or empty" >&2; exit 1; }}',
        f"{var}=$(< {word})",  # $(<): the file less its final line breaks, as secret_hex below
        f'[ -n "${var}" ] || {{ echo "nixmig: the credential {credential} holds only line breaks" >&2; exit 1; }}',
    ]
    if any(c.context == "sql" and not c.mysql for c in copies):  # standard SQL: '' is a quote
        lines.append(f"{var}_sql=${{{var}//\\'/\\'\\'}}")
    if any(c.context == "sql" and c.mysql for c in copies):  # MySQL: a backslash escapes too
        lines.append(f"{var}_mysql=${{{var}//\\\\/\\\\\\\\}}")
        lines.append(f"{var}_mysql=${{{var}_mysql//\\'/\\'\\'}}")
    if any(c.url for c in copies):
        macros = template("percent-encode.sh.j2")
        encode = macros.percent_encode(f"{var}_url", f"${var}_hex", "nixmig_h", "nixmig_c")
        lines += [*str(macros.secret_hex(f"{var}_hex", word)).splitlines(), f"{var}_url=", *str(encode).splitlines()]
    return lines


def apply(b: Builder, password: str | None) -> None:
    from nixmig.nixsrc.patch import credential_name

    if not password:
        return  # only the value the plan recognised: a string in a script is no credential by its name
    names = {n for n in (b.spec.role, b.spec.container, b.spec.db_service, b.spec.unit) if n}
    if password in names:
        return  # the password is a name too (role educator_aaa, password educator_aaa): which copy is which
        # is not for nixmig to guess (a program's path, `psql -U NAME`); the verdict says each copy
    credential = credential_name(b.spec.secret)
    var = "nixmig_" + re.sub(r"[^A-Za-z0-9_]", "_", b.spec.secret)
    for fm in list(b.models.values()):
        for bind, string, unit in _scripts(fm):
            if (fm.name, string.start_byte) in b.handled or password == unit:
                continue  # another shape's edit of this script (let-script, unit-sql); a unit named like it
            copies = _copies(fm, string, password)
            if copies is None:
                continue
            indented = string.type == "indented_string_expression"
            if indented:
                line_end = fm.source.find(b"\n", string.start_byte + 2)
                if line_end == -1 or fm.source[string.start_byte + 2 : line_end].strip():
                    continue  # the script starts on the line of its quotes: the verdict says it
            ours = ("systemd", fm.name, bind.path[2]) in b.renderers or (fm.name, bind.path[2]) in b.credential_units
            if _loads_credentials(fm, bind) and not ours:
                continue  # LoadCredential set already (nixmig does not merge it): the verdict says it
            where = ".".join(bind.path)
            if not ours:
                _load_credential(b, fm, unit, bind, credential)
            _insert_prologue(
                b, fm, string, _prologue(b, var, copies, credential), f"{where} sets {var} from the credential"
            )
            for c in copies:
                name = f"{var}_url" if c.url else var
                start, end, text = span(
                    fm,
                    c.start,
                    c.end,
                    c.context == "sq",
                    replacement(True, c.context, c.mysql, name, indented),
                    indented,
                )
                b.masks.append((fm.name, c.start, c.end))
                b.ed.add(
                    fm,
                    start,
                    end,
                    text,
                    f"{where} reads the password from the agenix secret {b.spec.secret} at run time, not from the "
                    "Nix store; while the command runs, the value is in its argv (as before)",
                )
                b.replaced.append(f"{where} at {fm.where(c.start)}")
            b.known.add(digest(password.encode()))
            b.handled.add((fm.name, string.start_byte))
            b.need(fm, ("config",))
            b.sql_file = b.sql_file or fm


SHAPE = Shape(
    "script-literal",
    "the password written straight into a unit's script (PGPASSWORD=..., a URL, mysql -p...): each copy "
    "becomes a shell variable read at run time from a systemd credential (percent-encoded inside a URL)",
    apply,
    ("native-script-literal-pgpassword",),
)
