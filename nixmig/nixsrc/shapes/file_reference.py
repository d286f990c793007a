"""A setting whose string value may name a file instead of holding the secret: Grafana reads
``$__file{PATH}`` in any of its settings (``services.grafana.settings.security.admin_password``,
``settings.database.password``, the older ``services.grafana.security.adminPassword``), and in its
provisioning files: a provisioned datasource's password
(``services.grafana.provision.datasources.settings.datasources = [ { ...; secureJsonData.password = ...; } ]``:
grafana's provisioning ``interpolateValue`` runs ``setting.ExpandVar`` on every string value). grafana
reads the file and trims its whitespace.

The literal becomes ``"$__file{${config.age.secrets.NAME.path}}"``: the Nix store holds the path
only, the agenix file is owned by the user the service runs as. Which literal: the password the
plan recognised, else one the option names (:func:`nixmig.nixsrc.shapes.naming.named_by`), or a
provisioned datasource's whose ``user`` is the migration's role (grafana is a client of that database).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import decode_string, unparen
from nixmig.nixsrc.quote import nix_attr
from nixmig.nixsrc.scan import Kind, classify_name
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.naming import named_by

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import FileModel, NixPath
    from nixmig.nixsrc.patch import Builder

# services.X -> how a value names a file instead: (before the path, after it)
READS_FILE_REFERENCE: dict[str, tuple[str, str]] = {"grafana": ("$__file{", "}")}

DATASOURCES = ("services", "grafana", "provision", "datasources", "settings", "datasources")
# a datasource's keys that hold its password (grafana's provisioning format), directly or in jsonData /
# secureJsonData (where grafana wants it; jsonData.password is what some configurations write)
_DATASOURCE_KEYS = frozenset({"password", "basicAuthPassword"})
_DATASOURCE_NESTS = frozenset({"jsonData", "secureJsonData"})


def grafana_datasource(path: NixPath) -> bool:
    """``path`` is a provisioned datasource's password (a client's copy of a database's password)."""
    if path[: len(DATASOURCES)] != DATASOURCES:
        return False
    rest = path[len(DATASOURCES) :]
    return (len(rest) == 1 and rest[0] in _DATASOURCE_KEYS) or (
        len(rest) == 2 and rest[0] in _DATASOURCE_NESTS and rest[1] in _DATASOURCE_KEYS
    )


def datasource_fields(fm: FileModel, node: Node) -> dict[str, str]:
    """The literal fields (``user``, ``type``, ``jsonData.database``) of the provisioned datasource (a list
    element under DATASOURCES) that holds ``node``; empty when ``node`` is in none."""
    at: Node | None = node.parent
    while at is not None and not (
        at.type in ("attrset_expression", "rec_attrset_expression")
        and at.parent is not None
        and at.parent.type == "list_expression"
    ):
        at = at.parent
    if at is None:
        return {}
    out: dict[str, str] = {}
    for bind in fm.binds:
        inside = at.start_byte <= bind.node.start_byte and bind.node.end_byte <= at.end_byte
        value = decode_string(unparen(bind.value)) if inside and bind.path[: len(DATASOURCES)] == DATASOURCES else None
        if value is not None:
            out.setdefault(".".join(bind.path[len(DATASOURCES) :]), value)
    return out


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
        if (
            password is None
            and digest(value.encode()) not in b.known
            and not named_by(b, path)
            and not (grafana_datasource(path) and datasource_fields(fm, lit.node).get("user") == b.spec.role)
        ):
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


def move_datasources(b: Builder, role: str, value: str, secret: str) -> None:
    """A companion role's clients among grafana's provisioned datasources (``user`` is ``role``, the password
    its kept ``value``): each reads ``$__file{}`` of the companion's secret, owned by grafana (also_owner)."""
    for fm, lit in list(b.all_lits()):
        if not grafana_datasource(lit.path) or not lit.exact or lit.bind is None:
            continue
        if (fm.name, lit.node.start_byte) in b.handled or decode_string(lit.node) != value:
            continue
        if datasource_fields(fm, lit.node).get("user") != role:
            continue
        b.mask_literal(fm, lit.node)
        b.handled.add((fm.name, lit.node.start_byte))
        b.also_replaced.setdefault(secret, []).append(f"{'.'.join(lit.path)} at {fm.where(lit.node)}")
        b.ed.replace_node(
            fm,
            lit.node,
            f'"$__file{{${{config.age.secrets.{nix_attr(secret)}.path}}}}"',
            f"{'.'.join(lit.path)} held role {role}'s password in the world-readable Nix store: grafana reads "
            f"$__file{{PATH}} from the file agenix decrypts {secret} to (a companion: its value kept)",
        )
        b.need(fm, ("config",))
        b.also_owner[secret] = ('"grafana"', None, "owned by grafana, which reads it through $__file{}")


SHAPE = Shape(
    "file-reference",
    'a setting of a service that reads "$__file{PATH}" (grafana): the literal becomes a reference to the agenix file',
    apply,
    (
        "native-grafana-file-reference",
        "native-grafana-settings-database-password",
        "native-grafana-datasource-password",
        "native-grafana-datasource-owned-by-gitea",
    ),
)
