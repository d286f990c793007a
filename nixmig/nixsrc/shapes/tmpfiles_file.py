"""``systemd.tmpfiles.rules = [ "f /var/lib/x/pw 0600 u g - PASSWORD" ]`` read by an option as ``"/var/lib/x/pw"``.

A tmpfiles rule's argument is its text: the rule is in the world-readable Nix store (tmpfiles.d), so the
password is too, whatever the file's mode on the host. The option names the agenix file instead, and the
rule goes (the password may be a let string the rule interpolates: its binding goes with its last use).

Taken only when the rule writes a file (``f``, ``f+``, ``F``, ``w``, ``w+``) whose whole argument is the
password, exactly one service option (``services.…*File``) names that path, and nothing else in the
repository names it (a script that cats it would lose its file). The file a rule wrote stays on the host
with the old value (systemd-tmpfiles never removes what ``f`` created): a note says to delete it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import unparen
from nixmig.nixsrc.quote import nix_attr
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.naming import named_by

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import Bind, FileModel
    from nixmig.nixsrc.patch import Builder

RULES = ("systemd", "tmpfiles", "rules")
# tmpfiles.d(5): Type Path Mode User Group Age Argument; the types that write the argument into a file
_RULE = re.compile(r"(?P<type>[fFw]\+?)\s+(?P<path>/\S+)\s+\S+\s+\S+\s+\S+\s+\S+\s+(?P<arg>\S.*)")


def _rules(b: Builder, password: str | None) -> list[tuple[FileModel, Node, str, str]]:
    """(file, the rule's string, the path it writes, its argument) of each file-writing rule whose argument
    is the password (any single-word argument when ``password`` is None)."""
    out: list[tuple[FileModel, Node, str, str]] = []
    for fm, bind in b.all_binds():
        if not bind.exact or bind.path != RULES:
            continue
        lst = unparen(bind.value)
        if lst.type != "list_expression":
            continue
        for el in lst.named_children:
            if el.type != "string_expression":
                continue
            text = b.value_of(fm, el)  # a literal, or one whose interpolations are let strings
            m = _RULE.fullmatch(text.strip()) if text is not None else None
            if m is None:
                continue
            arg = m["arg"].strip()
            if (password is None and " " not in arg) or arg == password:
                out.append((fm, el, m["path"], arg))
    return out


def _readers(b: Builder, path: str) -> list[tuple[FileModel, Bind]]:
    return [
        (fm, x)
        for fm, x in b.all_binds()
        if x.exact
        and len(x.path) >= 3
        and x.path[0] == "services"
        and x.path[-1].endswith("File")
        and b.value_of(fm, unparen(x.value)) == path
    ]


def apply(b: Builder, password: str | None) -> None:
    for fm, el, path, value in _rules(b, password):
        readers = _readers(b, path)
        if len(readers) != 1 or _strings_naming(b, path) != 2:  # the rule and its reader: nothing else names it
            continue
        ofm, option = readers[0]
        if password is None and not (named_by(b, option.path) or b.own_service([option.path])):
            continue  # a move with nothing recognised: only an option that names the migration
        if b.option_literal is not None or b.store_file is not None:
            continue  # the migration's file option is taken already: the verdict lists this literal
        b.known.add(digest(value.encode()))
        raw = fm.source.find(value.encode(), el.start_byte, el.end_byte)
        if raw != -1:  # the value written in the rule itself (an interpolated let's is masked at the let)
            b.masks.append((fm.name, raw, raw + len(value.encode())))
        b.use_lets(fm, el)  # `${devRootPassword}`: the let goes with its last use
        b.replaced.append(f"{'.'.join(RULES)} at {fm.where(el)}")
        b.ed.add(
            ofm,
            option.value.start_byte,
            option.value.end_byte,
            f"config.age.secrets.{nix_attr(b.spec.secret)}.path",
            f"{'.'.join(option.path)} read the password from {path}, which a systemd-tmpfiles rule wrote from its "
            "text in the world-readable Nix store: it now names the file agenix decrypts "
            f"{b.spec.secret} to",
        )
        start, end = _element_span(fm, el)
        b.ed.add(fm, start, end, "", f"removes the tmpfiles rule that wrote the password to {path}")
        b.notes.append(
            f"{fm.name}: {path} stays on the host with the old value (systemd-tmpfiles never removes what its "
            "`f` rule created): delete it once the service reads the agenix secret"
        )
        b.need(ofm, ("config",))
        b.store_file = ofm
        b.service_reads(option.path, (ofm, option.value))
        return


def _strings_naming(b: Builder, path: str) -> int:
    """How many strings of the repository's .nix files hold ``path`` (comments aside)."""
    from nixmig.nixsrc.parse import descendants

    return sum(
        1
        for fm in b.models.values()
        for n in descendants(fm.root)
        if n.type in ("string_expression", "indented_string_expression")
        and path.encode() in fm.source[n.start_byte : n.end_byte]
    )


def _element_span(fm: FileModel, el: Node) -> tuple[int, int]:
    """The list element with its line, when it is alone on it; else the element and one blank after it."""
    src = fm.source
    line_start = src.rfind(b"\n", 0, el.start_byte) + 1
    line_end = src.find(b"\n", el.end_byte)
    line_end = len(src) if line_end == -1 else line_end
    if not src[line_start : el.start_byte].strip() and not src[el.end_byte : line_end].strip():
        return line_start, min(line_end + 1, len(src))
    end = el.end_byte + 1 if src[el.end_byte : el.end_byte + 1] == b" " else el.end_byte
    return el.start_byte, end


SHAPE = Shape(
    "tmpfiles-file",
    'a systemd.tmpfiles rule "f PATH … PASSWORD" read by an option as "PATH": the option names the agenix '
    "file, the rule goes",
    apply,
    ("native-tmpfiles-rule-password-file",),
)
