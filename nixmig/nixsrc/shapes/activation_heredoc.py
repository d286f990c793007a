"""An env file written by an activation script's heredoc or as an /etc file, read by containers as an env file.

``system.activationScripts.X = '' ... cat > /run/app/env << EOF\\nDB_PASSWORD=...\\nEOF ... '';`` with
``environmentFiles = [ "/run/app/env" ];`` (oci-containers; arion's ``env_file``): the script is in
the world-readable Nix store. The ``VAR=value`` line holding the password leaves the heredoc, and
each container that reads that file gets VAR from the env file its unit renders at start from the
agenix file, listed after the activation script's file (a later env file wins). Only when the value
is a plain word (no ``$``, quotes or backslashes: the heredoc would expand them), every container
reading the file is one nixmig can give an env file, and the script is in the same file as they are;
else the verdict says the line (see :func:`nixmig.nixsrc.leftover.string_shape`).

The same for an env file that is an /etc entry: ``environment.etc."app/.env".text = ''\\n DB_PASSWORD=...\\n '';``
(a link into the store, whatever its ``mode``) read as ``environmentFiles = [ "/etc/app/.env" ]`` (a
string or a path literal): the whole text is the env file; the line leaves it the same way.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import DB_WORDS, digest
from nixmig.nixsrc.model import Lit, decode_string, unparen
from nixmig.nixsrc.parse import text
from nixmig.nixsrc.quote import nix_attr
from nixmig.nixsrc.render import EnvLine
from nixmig.nixsrc.scan import words
from nixmig.nixsrc.shapes import Shape

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tree_sitter import Node

    from nixmig.nixsrc.leftover import Leftover
    from nixmig.nixsrc.model import Bind, FileModel, NixPath
    from nixmig.nixsrc.patch import Builder

# `cat > PATH << EOF` / `cat <<'EOF' > PATH` / `tee PATH <<EOF`, its body, and the closing tag
_HEREDOC = re.compile(
    rb"(?m)^[ \t]*(?:cat\b[^\n<>]*>[ \t]*(?P<p1>/[^\s<>;|&'\"$]+)[ \t]*<<-?[ \t]*"
    rb"(?P<q1>['\"]?)(?P<t1>[A-Za-z_]+)(?P=q1)"
    rb"|cat[ \t]*<<-?[ \t]*(?P<q2>['\"]?)(?P<t2>[A-Za-z_]+)(?P=q2)[ \t]*>[ \t]*(?P<p2>/[^\s<>;|&'\"$]+)"
    rb"|tee[ \t]+(?P<p3>/[^\s<>;|&'\"$]+)[^\n<]*<<-?[ \t]*(?P<q3>['\"]?)(?P<t3>[A-Za-z_]+)(?P=q3))[^\n]*\n"
)
_LINE = re.compile(rb"(?m)^[ \t]*(?P<var>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>[A-Za-z0-9._~+/=:@,%-]+)[ \t]*$")
_ENV_FILES = {"oci": "environmentFiles", "arion": "env_file", "quadlet": "environmentFiles"}


def heredocs(raw: bytes) -> list[tuple[str, int, int]]:
    """(path, body start, body end) of each heredoc of a shell text that writes a file by a literal path."""
    out = []
    for m in _HEREDOC.finditer(raw):
        n = next(i for i in (1, 2, 3) if m.group(f"p{i}") is not None)
        tag = m.group(f"t{n}")
        end = re.compile(rb"(?m)^[ \t]*" + re.escape(tag) + rb"[ \t]*$").search(raw, m.end())
        if end is not None:
            out.append((m.group(f"p{n}").decode(), m.end(), end.start()))
    return out


def _texts(b: Builder) -> list[tuple[FileModel, Bind, str | None]]:
    """Activation scripts (None), and /etc entries' texts with the path they are at."""
    out: list[tuple[FileModel, Bind, str | None]] = []
    for fm, bind in b.all_binds():
        p = bind.path
        if not bind.exact or unparen(bind.value).type not in ("indented_string_expression", "string_expression"):
            continue
        if p[:2] == ("system", "activationScripts") and (len(p) == 3 or p[3:] == ("text",)):
            out.append((fm, bind, None))
        elif len(p) == 4 and p[:2] == ("environment", "etc") and p[3] == "text" and not p[2].startswith("/"):
            out.append((fm, bind, "/etc/" + p[2]))
    return out


def _names_path(node: Node, path: str) -> bool:
    """An env-file list element naming ``path``: a string, or a path literal (``toString``: not copied)."""
    return decode_string(node) == path or (node.type == "path_expression" and text(node) == path)


def _readers(b: Builder, fm: FileModel, path: str) -> list[tuple[str, str, NixPath]] | None:
    """The containers whose env files list ``path`` (None: one nixmig cannot give an env file)."""
    from nixmig.nixsrc.patch import _container_shape

    out: list[tuple[str, str, NixPath]] = []
    for other, bind in b.all_binds():
        node = unparen(bind.value)
        if (
            not bind.exact
            or node.type != "list_expression"
            or bind.path[-1:] not in (("environmentFiles",), ("env_file",))
        ):
            continue
        if not any(_names_path(e, path) for e in node.named_children):
            continue
        shape = _container_shape(bind.path[:-1])
        if other is not fm or shape is None or _ENV_FILES.get(shape[0]) != bind.path[-1]:
            return None
        if b.container_name(fm, shape[1]) is None:
            return None
        out.append(shape)
    return out


Line = tuple["FileModel", "Bind", int, "re.Match[bytes]", str]  # (file, text, its start, VAR=value, the path)


def _lines(b: Builder) -> Iterator[Line]:
    """Every plain ``VAR=value`` line of a heredoc an activation script writes to a literal path, and of an
    /etc entry's text."""
    for fm, bind, etc in _texts(b):
        node = unparen(bind.value)
        raw = fm.source[node.start_byte : node.end_byte]
        bodies = heredocs(raw) if etc is None else [(etc, 0, len(raw))]
        for path, start, end in bodies:
            for m in _LINE.finditer(raw, start, end):
                yield fm, bind, node.start_byte, m, path


def apply(b: Builder, password: str | None) -> None:
    lines = list(_lines(b))
    if password is None and not b.known:
        # no value seen elsewhere (the database is not in the repo, or reads a file already): a line
        # named for the database's password is the password, when every such line holds one value
        named = {m.group("value").decode() for _, _, _, m, _ in lines if _database_password(m.group("var").decode())}
        users = {m.group("value").decode() for _, _, _, m, _ in lines if _database_user(m.group("var").decode())}
        if len(named) != 1 or users - {b.spec.role}:
            return  # several values, or the text logs in as another role (DB_USERNAME=postgres): not this one's
        password = named.pop()
    for fm, bind, base, m, path in lines:
        value = m.group("value").decode()
        if value != password if password is not None else digest(value.encode()) not in b.known:
            continue
        if not _database_variable(m.group("var").decode()):
            continue  # the database's value under another credential's name: a companion (companion_at)
        if _database_user(m.group("var").decode()):
            continue  # DB_USERNAME=postgres when the password is "postgres" too: a name, not the password
        readers = _readers(b, fm, path)
        if not readers:
            continue  # read by nothing nixmig sees, or by something it cannot edit: the verdict says it
        _move(b, fm, bind, base, m, path, readers)


def _database_password(var: str) -> bool:
    """DB_PASSWORD, POSTGRES_PASS: a database's password by its name (not DB_USERNAME)."""
    from nixmig.nixsrc.patch import _PASSWORD_SUFFIX

    return _database_variable(var) and _PASSWORD_SUFFIX.search(var) is not None


def _database_user(var: str) -> bool:
    """DB_USERNAME, POSTGRES_USER: the role a database variable names."""
    ws = [w.lower() for w in words(var)]
    return _database_variable(var) and bool(ws) and ws[-1] in ("user", "username")


def _database_variable(var: str) -> bool:
    """A variable named for a database (AUTHENTIK_POSTGRESQL__PASSWORD, WIKI_DB__PASSWORD): the password's;
    any other (a bootstrap password, a token) holding the same value is another credential."""
    return bool({w.lower() for w in words(var)} & DB_WORDS)


def companion_at(b: Builder, left: Leftover) -> str:
    """The variable (nixmig.toml's ``also``) that would move ``left`` when it is a heredoc line holding the
    database's value under another credential's name, read by containers nixmig can give an env file."""
    for fm, _bind, base, m, path in _lines(b):
        if fm.name != left.file or not (base + m.start("value") <= left.start < base + m.end("value")):
            continue
        value = m.group("value").decode()
        if digest(value.encode()) in b.known and _readers(b, fm, path):
            return m.group("var").decode()
    return ""


def move_companion(b: Builder, var: str, secret: str) -> bool:
    """``also = { VAR = "secret" }`` for a heredoc line (see :func:`companion_at`): moved like the password's
    line, onto ``secret`` (its value kept); False when no heredoc line sets VAR."""
    found = [
        x
        for x in _lines(b)
        if x[3].group("var").decode() == var and (x[0].name, x[2] + x[3].start("value")) not in b.handled
    ]
    moved = False
    for fm, bind, base, m, path in found:
        readers = _readers(b, fm, path)
        if readers:
            _move(b, fm, bind, base, m, path, readers, secret)
            moved = True
    return moved


def _move(
    b: Builder,
    fm: FileModel,
    bind: Bind,
    base: int,
    m: re.Match[bytes],
    path: str,
    readers: list[tuple[str, str, NixPath]],
    secret: str = "",
) -> None:
    var, value = m.group("var").decode(), m.group("value").decode()
    at = base + m.start("value")
    kept = f" (also: the agenix secret {secret}, its value kept)" if secret else " (the hardcoded password)"
    renderers = []
    for kind, name, prefix in readers:
        r = b.renderer_for_container(fm, kind, name, prefix)
        if r is None:
            return
        renderers.append((r, kind, name, prefix))
    lit = Lit((*bind.path, var), unparen(bind.value), False, None)
    line = EnvLine(var, "", "", raw=not secret, secret=secret)
    for r, kind, name, prefix in renderers:
        env_path = b.add_env_line(r, line)
        r.literals.append(f"{var} at {fm.where(at)}")
        b.ensure_env_file(fm, kind, name, prefix, env_path, lit)
    names = ", ".join(r.container or r.unit for r, _, _, _ in renderers)
    line_start, line_end = base + m.start(), base + m.end()
    if fm.source[line_end : line_end + 1] == b"\n":
        line_end += 1
    where = (
        f"the heredoc of system.activationScripts.{bind.path[2]} that writes {path} (the script is in"
        if bind.path[0] == "system"
        else f"environment.etc.{nix_attr(bind.path[2])}.text (an /etc entry is a link into"
    )
    b.ed.add(
        fm,
        line_start,
        line_end,
        "",
        f"removes {var}{kept} from {where} the world-readable Nix store): the {names} container(s) read it "
        "from their own env file, rendered at each start from the agenix file and listed after it",
    )
    b.masks.append((fm.name, at, base + m.end("value")))
    b.handled.add((fm.name, at))
    if secret:
        b.also_known.add(digest(value.encode()))
        b.also_replaced.setdefault(secret, []).append(f"{var} at {fm.where(at)}")
    else:
        b.known.add(digest(value.encode()))
        b.replaced.append(f"{var} at {fm.where(at)}")


SHAPE = Shape(
    "activation-heredoc",
    "an env file written by an activation script's heredoc (cat > PATH << EOF ... VAR=... EOF) or as an /etc "
    "entry, read by containers: the line leaves it, each container gets VAR from its rendered env file",
    apply,
    ("activation-script-env-file", "oci-etc-env-file-text"),
)
