"""A password in an option whose value the service expands itself: grafana's ``$__file{PATH}``.

grafana has no ``passwordFile`` options: nixpkgs removed them ("use services.grafana.settings.database.password
with the file provider") and documents ``$__file{/path}`` in their place. grafana expands it at start in its
ini settings (``services.grafana.settings.<section>.<key>``) and in its provisioning files
(``services.grafana.provision.datasources.settings.datasources = [ { ...; secureJsonData.password = ...; } ]``:
grafana's provisioning ``interpolateValue`` runs ``setting.ExpandVar`` on every string value), reading the
file and trimming its whitespace. So the literal becomes::

    password = "$__file{${config.age.secrets.NAME.path}}";

and the agenix file is owned by grafana, who reads it (only the path is in the Nix store).

Which literal: the password the plan recognised (the database's, from SQL or a container); with none, one
that says whose it is: ``settings.database.password`` (or one named like the secret), or a provisioned
datasource whose ``user`` is the migration's role. A literal that only looks like one is left to the verdict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import decode_string, unparen
from nixmig.nixsrc.quote import nix_attr
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.naming import named_by, password_named

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import FileModel, Lit, NixPath
    from nixmig.nixsrc.patch import Builder

GRAFANA = ("services", "grafana")
SETTINGS = (*GRAFANA, "settings")
DATASOURCES = (*GRAFANA, "provision", "datasources", "settings", "datasources")
# a datasource's keys that hold its password (grafana's provisioning format), directly or in jsonData /
# secureJsonData (where grafana wants it; jsonData.password is what some configurations write)
_DATASOURCE_KEYS = frozenset({"password", "basicAuthPassword"})
_DATASOURCE_NESTS = frozenset({"jsonData", "secureJsonData"})


def expanded(path: NixPath) -> bool:
    """grafana expands ``$__file{}`` in the value at ``path``: an ini setting or a datasource's password."""
    if path[: len(SETTINGS)] == SETTINGS:
        return len(path) == len(SETTINGS) + 2
    if path[: len(DATASOURCES)] != DATASOURCES:
        return False
    rest = path[len(DATASOURCES) :]
    return (len(rest) == 1 and rest[0] in _DATASOURCE_KEYS) or (
        len(rest) == 2 and rest[0] in _DATASOURCE_NESTS and rest[1] in _DATASOURCE_KEYS
    )


def grafana_datasource(path: NixPath) -> bool:
    """``path`` is a provisioned datasource's password (a client's copy of a database's password)."""
    return path[: len(DATASOURCES)] == DATASOURCES and expanded(path)


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


def _ours(b: Builder, fm: FileModel, lit: Lit, value: str, password: str | None) -> bool:
    if password is not None:
        return value == password
    if b.known:
        return digest(value.encode()) in b.known
    if lit.path[: len(DATASOURCES)] == DATASOURCES:
        return bool(b.spec.role) and datasource_fields(fm, lit.node).get("user") == b.spec.role
    return password_named(lit.path) and named_by(b, lit.path)


def apply(b: Builder, password: str | None) -> None:
    found: list[tuple[FileModel, Lit, Node, str]] = []
    for fm, lit in b.all_lits():
        if not lit.exact or lit.bind is None or not expanded(lit.path) or (fm.name, lit.node.start_byte) in b.handled:
            continue
        node = unparen(lit.bind.value)
        if node.start_byte != lit.node.start_byte:
            continue  # the literal is part of the value (a URL, a command line): not the bare password
        value = decode_string(lit.node)
        if value is not None and _ours(b, fm, lit, value, password):
            found.append((fm, lit, node, value))
    if not found:
        return
    reads = f'"$__file{{${{config.age.secrets.{nix_attr(b.spec.secret)}.path}}}}"'
    for fm, lit, node, value in found:
        b.mask_literal(fm, lit.node)
        b.known.add(digest(value.encode()))
        b.handled.add((fm.name, lit.node.start_byte))
        b.replaced.append(f"{'.'.join(lit.path)} at {fm.where(lit.node)}")
        b.ed.add(
            fm,
            node.start_byte,
            node.end_byte,
            reads,
            f"{'.'.join(lit.path)} held the password in the world-readable Nix store: it is now grafana's file "
            f"provider $__file{{...}}, which grafana expands at start to the file agenix decrypts {b.spec.secret} to",
        )
        b.need(fm, ("config",))
        b.store_file = b.store_file or fm  # age.secrets goes into this module when nothing else is edited
    first = found[0]
    b.claim_owner('"grafana"', None, "owned by grafana, which reads it through $__file{}", (first[0], first[1].node))


SHAPE = Shape(
    "file-provider",
    "grafana's settings or a provisioned datasource holding the password: $__file{agenix path}, owned by grafana",
    apply,
    ("native-grafana-datasource-password", "native-grafana-settings-database-password"),
)
