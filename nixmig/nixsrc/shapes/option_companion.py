"""A native NixOS option holding another credential: a companion keyed by the option that takes its file.

nextcloud's admin password (``services.nextcloud.config.adminpassFile`` set to ``pkgs.writeText``, or
to an ``environment.etc`` text file), photoprism's (``services.photoprism.settings.PHOTOPRISM_ADMIN_PASSWORD``,
whose file option is ``services.photoprism.passwordFile``): a second secret in the Nix store, often with
the database's value. Like a container's companion variable (nixmig.toml's ``also``), it moves onto an
agenix secret of its own with its value kept; its ``also`` key is the file option's path::

    also = { "services.nextcloud.config.adminpassFile" = "nextcloud-adminpass" }

Where the literal is, and what the edit does:

- the option names a store file (``pkgs.writeText``/``builtins.toFile``, interpolated or not): it names
  the agenix file instead;
- the option names ``/etc/X`` and ``environment.etc."X".text`` holds the value: the option names the
  agenix file, the /etc entry goes (refused when another option reads that /etc file too);
- a literal option with a file sibling (:data:`LITERAL_SIBLINGS`, nixpkgs' ``adminpass``): the literal
  goes and the file option is set (refused when the file option is set already).

The agenix file is owned by the user that reads it (:data:`READERS`, else the service's user nixmig
knows, else root with a note). Pure: the builder's models in, edits out; :func:`key_at` tells the
verdict which leftover is such a companion, for `nixmig patch` to offer it (``auto_also``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixmig.config import OPTION_PATH
from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import decode_string, path_matches, unparen
from nixmig.nixsrc.quote import nix_attr
from nixmig.nixsrc.shapes.naming import database_password_named

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.leftover import Leftover
    from nixmig.nixsrc.model import Bind, FileModel, NixPath
    from nixmig.nixsrc.patch import Builder

# a literal option -> the option that takes a file instead, where the literal is no `<name>File` sibling
# (checked in nixpkgs: photoprism's module loads passwordFile as the credential PHOTOPRISM_ADMIN_PASSWORD)
LITERAL_SIBLINGS: dict[NixPath, NixPath] = {
    ("services", "photoprism", "settings", "PHOTOPRISM_ADMIN_PASSWORD"): ("services", "photoprism", "passwordFile"),
    ("services", "nextcloud", "config", "adminpass"): ("services", "nextcloud", "config", "adminpassFile"),
    # nixpkgs removed initialRootPassword (mkRemovedOptionModule: "Use services.mongodb.initialRootPasswordFile")
    ("services", "mongodb", "initialRootPassword"): ("services", "mongodb", "initialRootPasswordFile"),
}
# who reads the file (a Nix expression for agenix's owner; None: root, through systemd's LoadCredential),
# checked in nixpkgs. Not listed: the service's user from patch.NIXPKGS_READER, else root with a note.
READERS: dict[NixPath, str | None] = {
    ("services", "photoprism", "passwordFile"): None,  # LoadCredential=PHOTOPRISM_ADMIN_PASSWORD:<file>
    ("services", "photoprism", "databasePasswordFile"): None,  # LoadCredential=PHOTOPRISM_DATABASE_PASSWORD:<file>
    # nextcloud-setup reads it as nextcloud up to nixpkgs 24.11, through LoadCredential after
    ("services", "nextcloud", "config", "adminpassFile"): '"nextcloud"',
    # read in the mongodb unit's preStart/postStart, which run as root (PermissionsStartOnly = true)
    ("services", "mongodb", "initialRootPasswordFile"): None,
    ("services", "keycloak", "database", "passwordFile"): None,  # LoadCredential=db_password:<file>
    ("services", "castopod", "database", "passwordFile"): None,  # LoadCredential
    ("services", "miniflux", "adminCredentialsFile"): None,  # systemd reads it (EnvironmentFile / LoadCredential)
    ("services", "miniflux", "adminPasswordFile"): None,  # LoadCredential
    ("services", "redis", "servers", "*", "requirePassFile"): None,  # a "+" ExecStartPre (root) copies it
    ("services", "redis", "requirePassFile"): None,
    ("services", "immich", "secretsFile"): None,  # EnvironmentFile
    ("services", "paperless", "passwordFile"): None,  # LoadCredential=PAPERLESS_ADMIN_PASSWORD:<file>
}


def known_reader(path: NixPath) -> tuple[bool, str | None]:
    """(listed, owner) for a file option of :data:`READERS` ("*" in a key: any name); owner None: root."""
    for key, owner in READERS.items():
        if path_matches(key, path):
            return True, owner
    return False, None


def literal_sibling(path: NixPath) -> NixPath | None:
    """The file option that takes ``path``'s literal instead: :data:`LITERAL_SIBLINGS`, or nixpkgs'
    ``<name>File`` sibling of an option that holds no database's password (redis' ``requirePass``)."""
    from nixmig.nixsrc.patch import database_option, nixpkgs_file_sibling

    if path in LITERAL_SIBLINGS:
        return LITERAL_SIBLINGS[path]
    sibling = nixpkgs_file_sibling(path)
    return sibling if sibling is not None and not database_option(path) else None


def is_option_key(key: str) -> bool:
    """An ``also`` key that is an option path (``services.X.….fooFile``), not an environment variable."""
    return OPTION_PATH.fullmatch(key) is not None


@dataclass(eq=False)
class Found:
    """One companion literal and what moves it (see the module doc)."""

    key: NixPath  # the option that takes the file
    fm: FileModel  # where the literal is
    literal: Node  # the string holding the value (masked, replaced)
    value: str
    option: Bind | None  # the file option's binding, when set (store file, /etc path)
    etc: Bind | None = None  # environment.etc."X".text (or the whole "X" entry) the option reads
    etc_fm: FileModel | None = None
    sibling: Bind | None = None  # the literal option's binding (LITERAL_SIBLINGS)


def _etc_texts(b: Builder) -> dict[str, tuple[FileModel, Bind, Node, str]]:
    out: dict[str, tuple[FileModel, Bind, Node, str]] = {}
    for fm, bind in b.all_binds():
        if bind.exact and len(bind.path) == 4 and bind.path[:2] == ("environment", "etc") and bind.path[3] == "text":
            node = unparen(bind.value)
            value = decode_string(node)
            if value is not None:
                out[bind.path[2]] = (fm, bind, node, value)
    return out


def candidates(b: Builder) -> list[Found]:
    """Every file option of a service (``services.…*File``) that names a store or /etc file holding a
    literal, and every literal option of :data:`LITERAL_SIBLINGS`, with what each holds."""
    from nixmig.nixsrc.patch import store_file_content

    etc = _etc_texts(b)
    out: list[Found] = []
    for fm, bind in b.all_binds():
        path = bind.path
        if not bind.exact or len(path) < 3 or path[0] != "services":
            continue
        if (sibling := literal_sibling(path)) is not None:
            node = unparen(bind.value)
            value = b.value_of(fm, node)
            if value is not None and node.type == "string_expression":
                out.append(Found(sibling, fm, node, value, None, sibling=bind))
            continue
        if not path[-1].endswith("File"):
            continue
        content = store_file_content(bind.value)
        if content is not None:
            value = decode_string(content)
            if value is not None:
                out.append(Found(path, fm, content, value, bind))
            continue
        named = b.value_of(fm, unparen(bind.value)) or ""
        if named.startswith("/etc/") and named.removeprefix("/etc/") in etc:
            efm, eb, node, value = etc[named.removeprefix("/etc/")]
            out.append(Found(path, efm, node, value, bind, etc=eb, etc_fm=efm))
    return out


def _edited_services(b: Builder) -> set[str]:
    """The services.X whose options the plan edits (the migrated service, natively)."""
    out: set[str] = set()
    for e in b.ed.items:
        fm = b.models.get(e.file)
        if fm is None:
            continue
        out |= {
            x.path[1]
            for x in fm.binds
            if x.exact
            and len(x.path) >= 3
            and x.path[0] == "services"
            and x.value.start_byte <= e.start
            and e.end <= x.value.end_byte
        }
    return out


def key_at(b: Builder, left: Leftover) -> str:
    """The option key (``also``) that would move ``left``, when it is such a companion: it holds the
    database's value, or it is in a service the plan edits; "" otherwise."""
    found = [
        f for f in candidates(b) if f.fm.name == left.file and f.literal.start_byte <= left.start < f.literal.end_byte
    ]
    if len(found) != 1:
        return ""
    f = found[0]
    if f.key == _own_option(b) or (
        f.sibling is not None and any(x.exact and x.path == f.key for _, x in b.all_binds())
    ):
        return ""  # the migration's own, or a literal beside its file option set already: said, not offered
    if b.spec.strategy != "move" and digest(f.value.encode()) in b.known and database_password_named(f.key):
        # a client's database password file (nodebb's databasePasswordFile) holding the rotated value: kept
        # as a companion, it would keep the old value while the role's changes (a lockout): said, not offered
        return ""
    if digest(f.value.encode()) in b.known or f.key[1] in _edited_services(b):
        return ".".join(f.key)
    return ""


def _edited(b: Builder, fm: FileModel, node: Node) -> bool:
    """An edit of the plan covers ``node`` (or lies inside it: a removal of the entry that holds it)."""
    return any(
        e.file == fm.name
        and e.start < e.end
        and (e.start <= node.start_byte < e.end or node.start_byte <= e.start < node.end_byte)
        for e in b.ed.items
    )


def _own_option(b: Builder) -> NixPath | None:
    return tuple(b.spec.password_option.split(".")) if b.spec.password_option else None


def _done(b: Builder, key: NixPath, secret: str) -> bool:
    reads = f"config.age.secrets.{nix_attr(secret)}.path"
    return any(bind.exact and bind.path == key and fm.text(unparen(bind.value)) == reads for fm, bind in b.all_binds())


def _reader(b: Builder, key: NixPath) -> tuple[str | None, str]:
    from nixmig.nixsrc.patch import NIXPKGS_READER

    listed, owner = known_reader(key)
    if listed:
        return owner, (f"owned by {owner.strip(chr(34))}, who reads it" if owner else "")
    owner = NIXPKGS_READER.get(key[1])
    if owner is None:
        b.notes.append(
            f"{'.'.join(key)}: agenix makes the file root-only (0400); if services.{key[1]} reads it as another "
            f"user, set that secret's owner to that user"
        )
        return None, ""
    return owner, f"owned by the user services.{key[1]} runs as, who reads it"


def move(b: Builder, key_text: str, secret: str) -> None:
    """``also = { "<option>" = "<secret>" }``: the literal the option reads moves onto ``secret``, its
    value kept (see the module doc); a tree moved already is checked; nothing found is said."""
    from nixmig.nixsrc.patch import Manual

    key = tuple(key_text.split("."))
    owner, why = _reader(b, key)
    if _done(b, key, secret):
        b.also_replaced.setdefault(secret, [])
        if owner is not None:
            b.also_owner[secret] = (owner, None, why)
        return
    found = [f for f in candidates(b) if f.key == key and (f.fm.name, f.literal.start_byte) not in b.handled]
    if len(found) != 1:
        b.manual.append(
            Manual(
                "",
                0,
                0,
                f"also names the option {key_text} (secret {secret!r}), but "
                + (
                    "nixmig finds no store file, /etc text or literal that it reads"
                    if not found
                    else f"{len(found)} literals could be the one it reads"
                )
                + f": remove it from also in [migrations.{b.spec.migration or '…'}], or check its name",
                "",
            )
        )
        return
    f = found[0]
    agenix = f"config.age.secrets.{nix_attr(secret)}.path"
    where = f"{key_text} at {f.fm.where(f.literal)}"
    if f.sibling is not None:
        taken = [(fm, x) for fm, x in b.all_binds() if x.exact and x.path == key]
        if taken:
            fm, x = taken[0]
            b.manual_here(
                fm,
                x.value,
                f"{key_text} is set already, and {'.'.join(f.sibling.path)} holds a literal too: by hand",
                "",
            )
            return
        b.ed.remove_binding(
            f.fm,
            f.sibling.node,
            f"removes {'.'.join(f.sibling.path)}, a credential in the world-readable Nix store (also): "
            f"services.{key[1]} reads it from {key_text}, the agenix secret {secret} (its value kept)",
        )
        b.insert_path(
            f.fm,
            None,
            key,
            lambda attr: f"{attr} = {agenix};",
            f"{key_text} names the file agenix decrypts {secret} to (also: a companion credential, value kept)",
        )
        b.need(f.fm, ("config",))
    else:
        assert f.option is not None
        ofm = next(fm for fm, x in b.all_binds() if x is f.option)
        if f.etc is not None and f.etc_fm is not None:
            etc_name = f.etc.path[2]
            readers = [
                x
                for fm, x in b.all_binds()
                if x.exact
                and x.path[-1:] != ("text",)
                and (b.value_of(fm, unparen(x.value)) or "") == f"/etc/{etc_name}"
                and not _edited(b, fm, x.value)  # the database's option, which etc_file points at this migration's
            ]
            if len(readers) != 1:
                b.manual_here(
                    f.etc_fm,
                    f.literal,
                    f"/etc/{etc_name} holds {key_text}'s credential and is read by {len(readers)} options: by hand",
                    "",
                )
                return
            whole = next((x for x in f.etc_fm.binds if x.exact and x.path == f.etc.path[:3]), None)
            entry = f.etc.node if whole is None else whole.node
            if not _edited(b, f.etc_fm, entry):  # etc_file removed it whole already (the database's reader)
                b.ed.remove_binding(
                    f.etc_fm, entry, f"removes /etc/{etc_name}, which held {key_text}'s credential in the Nix store"
                )
        b.ed.add(
            ofm,
            f.option.value.start_byte,
            f.option.value.end_byte,
            agenix,
            f"{key_text} read a file in the world-readable Nix store: it names the file agenix decrypts {secret} "
            f"to (also: a companion credential, value kept)",
        )
        b.need(ofm, ("config",))
    b.mask_literal(f.fm, f.literal)
    b.also_known.add(digest(f.value.encode()))
    b.handled.add((f.fm.name, f.literal.start_byte))
    b.also_replaced.setdefault(secret, []).append(where)
    if owner is not None:
        b.also_owner[secret] = (owner, None, why)
