"""``passwordFile = pkgs.writeText "pw" "..."`` (also through ``toString``, ``builtins.toFile``).

A file with the password in the world-readable Nix store, where the option wants a path: the
whole value becomes the agenix path (the database's password or, with none found, the one such
file), owned by the user the service runs as where nixmig knows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixmig.nixsrc.indented import decode_any
from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.lets import let_binding_at
from nixmig.nixsrc.parse import descendants, text
from nixmig.nixsrc.quote import nix_attr
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.naming import database_password_named, named_by, password_named

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import Bind, FileModel
    from nixmig.nixsrc.patch import Builder


# nixpkgs file options whose file is no bare password (checked in nixpkgs): roundcube's database.passwordFile
# is one .pgpass line (host:port:db:user:password) or a MySQL option file, miniflux' pgpassFile a .pgpass
# line. Under move the file's whole text is kept; a rotation, which writes a bare password, leaves them.
NOT_A_BARE_PASSWORD: frozenset[tuple[str, ...]] = frozenset(
    {("services", "roundcube", "database", "passwordFile"), ("services", "miniflux", "pgpassFile")}
)


def apply(b: Builder, password: str | None) -> None:
    from nixmig.nixsrc.patch import store_file_content

    found: list[tuple[FileModel, Bind, Node, str]] = []
    for fm, bind in b.all_binds():
        if not bind.exact or len(bind.path) < 2 or not bind.path[-1].endswith("File"):
            continue
        if bind.path[0] == "containers" and bind.path[2:3] == ("config",):
            continue  # inside a NixOS container `config` is the container's, with no age.secrets: container_store_file
        # under move the whole text may be the secret (miniflux' adminCredentialsFile: USERNAME=, PASSWORD=),
        # kept byte for byte; a rotation writes a bare password, which only a bare one may be replaced by
        content = store_file_content(bind.value, indented=True)
        if content is None:  # pkgs.writeText "pw" dbPass, a let string of the file read there only
            content = store_file_content(bind.value, indented=True, root=fm.root)
        value = decode_any(content) if content is not None else None
        if value is not None and content is not None and content.type == "indented_string_expression":
            # a rotation replaces one bare password: an indented string that holds one line (`''pw''`, or
            # its line and the newline after it: 18G/03) is that; a longer text is not
            line = value.removesuffix("\n")
            value = value if b.spec.strategy == "move" else (line if line and "\n" not in line else None)
        if content is None or value is None or (password is not None and value != password):
            continue
        if bind.path in NOT_A_BARE_PASSWORD and b.spec.strategy != "move":
            continue  # a rotation would write a bare password where the module wants a .pgpass line
        found.append((fm, bind, content, value))
    found = [found[i] for i in b.own_service([f[1].path for f in found])]
    if password is None:  # the one holding the password an earlier shape recognised (the role's, in SQL),
        # else one the migration names: a database's, or one named like the secret (not gitlab's
        # initialRootPasswordFile for a secret gitlab-db-password, on this run or the next)
        known = [f for f in found if digest(f[3].encode()) in b.known]
        own = found
        found = known or [f for f in found if named_by(b, f[1].path)]
        if not found and _the_services_one(b, own):
            found = own  # a move of the service's one store file (paperless' admin passwordFile)
        if len(found) > 1:  # gitlab's databasePasswordFile beside secrets.dbFile (a key): the password's
            found = [f for f in found if password_named(f[1].path)] or found
        if len(found) > 1:  # nodebb's databasePasswordFile beside admin.passwordFile, one value: the database's
            found = [f for f in found if database_password_named(f[1].path)] or found
    if len(found) != 1 or b.option_literal is not None:
        return  # several: the verdict lists each, password_option cannot pick a store file
    fm, bind, content, value = found[0]
    b.mask_literal(fm, content)
    b.known.add(digest(value.encode()))
    b.handled.add((fm.name, content.start_byte))
    b.replaced.append(f"{'.'.join(bind.path)} at {fm.where(content)}")
    b.ed.add(
        fm,
        bind.value.start_byte,
        bind.value.end_byte,
        f"config.age.secrets.{nix_attr(b.spec.secret)}.path",
        f"{'.'.join(bind.path)} pointed at a file written into the world-readable Nix store with the password "
        f"in it: it now names the file agenix decrypts {b.spec.secret} to at activation",
    )
    b.need(fm, ("config",))
    b.store_file = fm
    b.service_reads(bind.path, (fm, bind.value))
    bound = let_binding_at(fm.root, content.start_byte) if not _within(content, bind.value) else None
    if bound is not None:  # the let's one read is replaced: its binding goes with it (Builder.drop_lets)
        for n in descendants(bind.value):
            if n.type == "variable_expression" and text(n) == bound[0]:
                b.use_lets(fm, n)


def _within(node: Node, outer: Node) -> bool:
    return outer.start_byte <= node.start_byte and node.end_byte <= outer.end_byte


def _the_services_one(b: Builder, found: list[tuple[FileModel, Bind, Node, str]]) -> bool:
    """Under strategy move, the only store file the migration's service (nixmig.toml's ``service``, a
    nixpkgs service's name) sets: that service's credential, whatever the option's name says."""
    from nixmig.nixsrc.leftover import uses_secret

    service = b.spec.service
    if uses_secret(b.models, b.spec.secret, b.spec.secret_on_host):
        # moved already (the service's other file reads the secret): what is left is another credential, never
        # this one's (a blind case's second --write moved gitlab's initialRootPasswordFile onto the database's)
        return False
    return (
        b.spec.strategy == "move"
        and bool(service)
        and len(found) == 1
        and found[0][1].path[:2] == ("services", service)
    )


SHAPE = Shape(
    "store-file",
    "a *File option set to pkgs.writeText/builtins.toFile with the password: it names the agenix file",
    apply,
    (
        "native-writetext-passwordfile",
        "native-interpolated-writetext",
        "native-initialscript-and-two-store-files",
        "native-writetext-passwordfile-let-bound",
    ),
)
