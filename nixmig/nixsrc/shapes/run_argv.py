"""A URL with the password passed to a container on a unit's command line:
``ExecStart = "${pkgs.podman}/bin/podman run ... -e 'DATABASE_URL=postgresql://u:${dbPassword}@db/x' IMAGE ..."``,
or in the script ``ExecStart = pkgs.writeShellScript "name" '' exec docker run ... ''`` runs.

The command line is in the world-readable Nix store and, while it runs, in the process table. The
``-e 'VAR=URL'`` argument becomes ``--env-file /run/UNIT/SECRET.env``, and the unit renders that
file at each start from the agenix secret, handed to it as a systemd credential (the same renderer
as a unit's Environment, templates/systemd-credential.nix.j2); ``podman run`` / ``docker run`` read
the file on the host. Only a plain token is edited: ``-e``/``--env``, then ``VAR=URL`` bare or in
single quotes, in a Nix string whose escapes nixmig does not read (none in it), every interpolation in
the token a string patch can read (a let literal, an option's default: Builder.value_of), the URL this
migration's; the unit's name a literal or made of let literals. Anything else stays, and the verdict
says it (a password in a command line).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import unparen
from nixmig.nixsrc.render import EnvLine
from nixmig.nixsrc.shapes import Shape

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import FileModel
    from nixmig.nixsrc.patch import Builder, UrlParts

COMMAND_LINES = ("ExecStart", "ExecStartPre", "ExecStartPost")
# podman/docker [container] run|create: the command that takes -e for the new container
_RUN = re.compile(r"(?:^|[\s/])(?:podman|docker)\s+(?:container\s+)?(?:run|create)\s")
# -e 'VAR=value' | -e VAR=value | --env=VAR=value (value: no quote, no space)
_FLAG = re.compile(
    r"(?<![\w-])(?:-e|--env)(?:\s+|=)(?P<q>'?)(?P<var>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>[^'\s\"]+)(?P=q)(?=\s|$)"
)
# the script builders whose last argument is the script a unit's ExecStart runs
_SCRIPT_BUILDERS = ("writeShellScript", "writeScript")


def command_line(node: Node) -> tuple[Node, int] | None:
    """The string of an ExecStart (``"..."``, or the script of ``pkgs.writeShellScript "n" ''...''``) and
    where its text starts past the quotes; None for anything else or a string with escapes."""
    from nixmig.nixsrc.model import _apply_parts

    node = unparen(node)
    if node.type == "apply_expression":
        name, args = _apply_parts(node)
        if name not in _SCRIPT_BUILDERS or len(args) != 2:
            return None
        node = unparen(args[-1])
    if node.type == "string_expression":
        quote = 1
    elif node.type == "indented_string_expression":
        quote = 2
    else:
        return None
    if any(c.type in ("escape_sequence", "dollar_escape") for c in node.named_children):
        return None
    return node, quote


def _value(b: Builder, fm: FileModel, node: Node, start: int, end: int) -> str | None:
    """The text of bytes [start, end) of the string ``node``, each interpolation in it read (a let literal,
    an option's default); None when one is something patch cannot read, or crosses the range."""
    out: list[str] = []
    pos = start
    for c in node.named_children:
        if c.end_byte <= start or c.start_byte >= end or c.type != "interpolation":
            continue
        if c.start_byte < start or c.end_byte > end:
            return None
        inner = [x for x in c.named_children if x.type != "comment"]
        value = b.value_of(fm, inner[0]) if len(inner) == 1 else None
        if value is None:
            return None
        out.append(fm.source[pos : c.start_byte].decode())
        out.append(value)
        pos = c.end_byte
    out.append(fm.source[pos:end].decode())
    text = "".join(out)
    return None if "$" in fm.source[start:end].decode().replace("${", "").replace("}", "") else text


def apply(b: Builder, password: str | None) -> None:
    from nixmig.nixsrc.patch import _SAFE_URL_PART, split_url

    if password is None and not b.known:
        return  # the URL's password must be the one the plan (or a shape: SQL a unit runs) recognised
    for fm, bind in list(b.all_binds()):
        path = bind.path
        if not (bind.exact and len(path) == 5 and path[:2] == ("systemd", "services")):
            continue
        if path[3] != "serviceConfig" or path[4] not in COMMAND_LINES:
            continue
        found = command_line(bind.value)
        if found is None or (fm.name, found[0].start_byte) in b.handled:
            continue
        node, quote = found
        raw = fm.text(node)[quote:-quote]
        if ("\\" in raw and quote == 1) or not _RUN.search(raw):
            continue  # (in an indented string a backslash is a character: a shell's line continuation)
        unit = b.container_name(fm, path[2])  # a literal, or made of let literals
        if unit is None or not re.fullmatch(r"[\w.@-]+", unit):
            continue
        for m in _FLAG.finditer(raw):
            at = node.start_byte + quote + len(raw[: m.start("value")].encode())
            value = _value(b, fm, node, at, at + len(m.group("value").encode()))
            url = split_url(value, password, b.spec.url_schemes) if value is not None else None
            if url is None or url.embedded or not b._is_ours(url, password, b.db):
                continue
            if not (_SAFE_URL_PART.fullmatch(url.prefix) and _SAFE_URL_PART.fullmatch(url.suffix)):
                continue
            b.known.add(digest(unquote(url.password).encode()))
            _take(b, fm, node, quote, path[2], unit, m, url)


def _take(
    b: Builder, fm: FileModel, node: Node, quote: int, unit_seg: str, unit: str, m: re.Match[str], url: UrlParts
) -> None:
    from nixmig.nixsrc.patch import _Renderer

    raw = fm.text(node)[quote:-quote]
    if "${" not in m.group("value"):  # a literal password: masked in the diff
        at = node.start_byte + quote + len(raw[: m.start("value")].encode()) + len(url.prefix.encode())
        b.masks.append((fm.name, at, at + len(url.password.encode())))
    url = b.as_login_role(url)
    line = EnvLine(m.group("var"), url.prefix, url.suffix)
    key = ("systemd", fm.name, unit_seg)
    if key not in b.renderers:
        anchor = b._bind_containing(fm, ("systemd", "services", unit_seg, "serviceConfig"))
        b.renderers[key] = _Renderer(key, "systemd", fm, anchor, unit_seg, unit, unit)
    r = b.renderers[key]
    env_path = b.add_env_line(r, line)
    start = node.start_byte + quote + len(raw[: m.start()].encode())
    end = node.start_byte + quote + len(raw[: m.end()].encode())
    for child in node.named_children:  # the let variables the token read are used once less
        if child.type == "interpolation" and start <= child.start_byte and child.end_byte <= end:
            for expr in child.named_children:
                b.use_lets(fm, expr)
    b.ed.add(
        fm,
        start,
        end,
        f"--env-file {env_path}",
        f"replaces {m.group('var')} on the command line of {unit} (in the world-readable Nix store and in `ps`): "
        f"the container reads it from {env_path}, rendered by the unit at each start from the agenix secret",
    )
    b.handled.add((fm.name, node.start_byte))
    b.replaced.append(f"{line.var} at {fm.where(node)}")
    r.literals.append(f"{line.var} at {fm.where(node)}")


SHAPE = Shape(
    "run-argv",
    "a URL with the password in `podman|docker run -e 'VAR=URL'` on a unit's ExecStart: --env-file, rendered by "
    "the unit from the agenix secret",
    apply,
    ("oci-execstart-argv-password",),
)
