"""An env file written by an activation script's heredoc, read by containers as an env file.

``system.activationScripts.X = '' ... cat > /run/app/env << EOF\\nDB_PASSWORD=...\\nEOF ... '';`` with
``environmentFiles = [ "/run/app/env" ];`` (oci-containers; arion's ``env_file``): the script is in
the world-readable Nix store. The ``VAR=value`` line holding the password leaves the heredoc, and
each container that reads that file gets VAR from the env file its unit renders at start from the
agenix file, listed after the activation script's file (a later env file wins). Only when the value
is a plain word (no ``$``, quotes or backslashes: the heredoc would expand them), every container
reading the file is one nixmig can give an env file, and the script is in the same file as they are;
else the verdict says the line (see :func:`nixmig.nixsrc.leftover.string_shape`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import Lit, decode_string, unparen
from nixmig.nixsrc.render import EnvLine
from nixmig.nixsrc.shapes import Shape

if TYPE_CHECKING:
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


def _scripts(b: Builder) -> list[tuple[FileModel, Bind]]:
    out = []
    for fm, bind in b.all_binds():
        p = bind.path
        script = p[:2] == ("system", "activationScripts") and (len(p) == 3 or p[3:] == ("text",))
        if bind.exact and script and unparen(bind.value).type in ("indented_string_expression", "string_expression"):
            out.append((fm, bind))
    return out


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
        if not any(decode_string(e) == path for e in node.named_children):
            continue
        shape = _container_shape(bind.path[:-1])
        if other is not fm or shape is None or _ENV_FILES.get(shape[0]) != bind.path[-1]:
            return None
        if b.container_name(fm, shape[1]) is None:
            return None
        out.append(shape)
    return out


def apply(b: Builder, password: str | None) -> None:
    if password is None and not b.known:
        return
    for fm, bind in _scripts(b):
        node = unparen(bind.value)
        raw = fm.source[node.start_byte : node.end_byte]
        for path, start, end in heredocs(raw):
            for m in _LINE.finditer(raw, start, end):
                value = m.group("value").decode()
                if value != password if password is not None else digest(value.encode()) not in b.known:
                    continue
                readers = _readers(b, fm, path)
                if not readers:
                    continue  # read by nothing nixmig sees, or by something it cannot edit: the verdict says it
                _move(b, fm, bind, node.start_byte, m, path, readers)


def _move(
    b: Builder,
    fm: FileModel,
    bind: Bind,
    base: int,
    m: re.Match[bytes],
    path: str,
    readers: list[tuple[str, str, NixPath]],
) -> None:
    var, value = m.group("var").decode(), m.group("value").decode()
    at = base + m.start("value")
    renderers = []
    for kind, name, prefix in readers:
        r = b.renderer_for_container(fm, kind, name, prefix)
        if r is None:
            return
        renderers.append((r, kind, name, prefix))
    lit = Lit((*bind.path, var), unparen(bind.value), False, None)
    line = EnvLine(var, "", "", raw=True)
    for r, kind, name, prefix in renderers:
        env_path = b.add_env_line(r, line)
        r.literals.append(f"{var} at {fm.where(at)}")
        b.ensure_env_file(fm, kind, name, prefix, env_path, lit)
    names = ", ".join(r.container or r.unit for r, _, _, _ in renderers)
    line_start, line_end = base + m.start(), base + m.end()
    if fm.source[line_end : line_end + 1] == b"\n":
        line_end += 1
    b.ed.add(
        fm,
        line_start,
        line_end,
        "",
        f"removes {var} (the hardcoded password) from the heredoc of system.activationScripts.{bind.path[2]} that "
        f"writes {path} (the script is in the world-readable Nix store): the {names} container(s) read it from "
        "their own env file, rendered at each start from the agenix file and listed after it",
    )
    b.masks.append((fm.name, at, base + m.end("value")))
    b.known.add(digest(value.encode()))
    b.handled.add((fm.name, at))
    b.replaced.append(f"{var} at {fm.where(at)}")


SHAPE = Shape(
    "activation-heredoc",
    "an env file written by an activation script's heredoc (cat > PATH << EOF ... VAR=... EOF) and read by "
    "containers: the line leaves the heredoc, each container gets VAR from its rendered env file",
    apply,
    ("activation-script-env-file",),
)
