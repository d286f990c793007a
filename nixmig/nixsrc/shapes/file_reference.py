"""A setting whose string value may name a file instead of holding the secret: Grafana reads
``$__file{PATH}`` in any of its settings (``services.grafana.settings.security.admin_password``,
``settings.database.password``, the older ``services.grafana.security.adminPassword``).

The literal becomes ``"$__file{${config.age.secrets.NAME.path}}"``: the Nix store holds the path
only, the agenix file is owned by the user the service runs as. Which literal: the password the
plan recognised, else one the option names (:func:`nixmig.nixsrc.shapes.naming.named_by`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import decode_string
from nixmig.nixsrc.quote import nix_attr
from nixmig.nixsrc.scan import Kind, classify_name
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.naming import named_by

if TYPE_CHECKING:
    from nixmig.nixsrc.patch import Builder

# services.X -> how a value names a file instead: (before the path, after it)
READS_FILE_REFERENCE: dict[str, tuple[str, str]] = {"grafana": ("$__file{", "}")}


def apply(b: Builder, password: str | None) -> None:
    for fm, lit in list(b.all_lits()):
        path = lit.path
        if len(path) < 3 or path[0] != "services" or path[1] not in READS_FILE_REFERENCE:
            continue
        if not lit.exact or lit.bind is None or (fm.name, lit.node.start_byte) in b.handled:
            continue
        cls = classify_name(path[-1])
        value = decode_string(lit.node)
        if cls is None or cls.kind is not Kind.PASSWORD or value is None:
            continue
        before, after = READS_FILE_REFERENCE[path[1]]
        if value.startswith(before):
            continue  # already a reference
        if password is not None and value != password:
            continue
        if password is None and digest(value.encode()) not in b.known and not named_by(b, path):
            continue
        b.mask_literal(fm, lit.node)
        b.known.add(digest(value.encode()))
        b.handled.add((fm.name, lit.node.start_byte))
        b.replaced.append(f"{'.'.join(path)} at {fm.where(lit.node)}")
        b.ed.replace_node(
            fm,
            lit.node,
            f'"{before}${{config.age.secrets.{nix_attr(b.spec.secret)}.path}}{after}"',
            f"{'.'.join(path)} held the password in the world-readable Nix store: services.{path[1]} reads "
            f"{before}PATH{after} from the file agenix decrypts {b.spec.secret} to",
        )
        b.need(fm, ("config",))
        b.store_file = b.store_file or fm
        b.service_reads(path, (fm, lit.node))


SHAPE = Shape(
    "file-reference",
    'a setting of a service that reads "$__file{PATH}" (grafana): the literal becomes a reference to the agenix file',
    apply,
    ("native-grafana-file-reference",),
)
