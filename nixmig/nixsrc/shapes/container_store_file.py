"""``containers.NAME.config.services.nextcloud.config.dbpassFile = "${pkgs.writeText "p" "..."}"``: a
password written into the world-readable Nix store for a service inside a declarative NixOS container.

The agenix file is decrypted on the host (root, 0400); the container sees it through a read-only
``containers.NAME.bindMounts`` entry (``hostPath = config.age.secrets.X.path``, the host's
``config``). Who reads it inside: nixpkgs' nextcloud reads dbpassFile as the nextcloud user up to
24.11 (nextcloud-setup checks ``-r`` as nextcloud, config.php reads the path) and through systemd's
LoadCredential (root) from 25.05. The container's nextcloud user has no fixed uid (nixpkgs allocates
it), so the host cannot make the file its: a oneshot inside the container copies the mounted file,
as root, to ``/run/SECRET/SECRET`` owned by that user (0400, in a 0750 root:USER runtime directory)
before the service's units start, and the option names the copy. Works for both readers.

A database inside the same container (``containers.NAME.config.services.postgresql``) is refused
unless the migration's strategy is ``move``: apply's psql runs on the host, not in the container.

The option may also name ``/etc/X`` that the container's own ``environment.etc."X".text`` holds (read by
that option only): the /etc entry goes, the rest is the same. Another store file of the same service in
the same container (nextcloud's ``adminpassFile`` beside the moved ``dbpassFile``) is a companion the
verdict offers (:func:`key_at`) and ``also`` moves the same way onto its own secret, value kept
(:func:`move`; key ``containers.NAME.config.services.nextcloud.config.adminpassFile``).

Not handled (the verdict says the literal): ``privateUsers`` set (the container's root is not the
host's: it cannot read a root-only file of the host), a container whose attrset goes through a
function (``mkContainer cfg { ... }``: not an option path nixmig can prove), several such files.
A rotation reaches the container when it restarts (the bind mount pins the file agenix wrote).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import decode_string, unparen
from nixmig.nixsrc.quote import nix_attr, nix_indented, nix_string, shell_quote, store_name
from nixmig.nixsrc.render import template
from nixmig.nixsrc.scan import words
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.naming import named_by

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tree_sitter import Node

    from nixmig.nixsrc.leftover import Leftover
    from nixmig.nixsrc.model import Bind, FileModel
    from nixmig.nixsrc.patch import Builder

# services.X inside a container -> (the user that reads the file, the units that read it)
READERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "nextcloud": ("nextcloud", ("nextcloud-setup", "phpfpm-nextcloud", "nextcloud-cron")),
}
MOUNT_DIR = "/run/agenix-host"


def _named(b: Builder, inner: tuple[str, ...]) -> bool:
    return named_by(b, inner) or any(w.startswith(("db", "database")) for w in words(inner[-1]))


@dataclass(frozen=True)
class _File:
    """A file option of a service inside a container and the literal it reads."""

    fm: FileModel  # where the literal is
    bind: Bind  # containers.C.config.services.S.<x>File
    content: Node  # the literal (a store file's text, or the /etc text)
    value: str
    etc: Bind | None = None  # containers.C.config.environment.etc."NAME".text, when the option names /etc/NAME


def _store_files(b: Builder) -> list[_File]:
    """Every ``containers.C.config.services.S.*File`` (S in READERS) naming a store file with a literal, or
    ``/etc/NAME`` whose text the same container's ``environment.etc."NAME".text`` holds (realcfg22/12)."""
    from nixmig.nixsrc.patch import store_file_content

    out: list[_File] = []
    etc: dict[tuple[str, str], tuple[FileModel, Bind, Node, str]] = {}
    binds = list(b.all_binds())
    for fm, bind in binds:
        p = bind.path
        if bind.exact and len(p) == 7 and p[0] == "containers" and p[2:5] == ("config", "environment", "etc"):
            node = unparen(bind.value)
            value = decode_string(node)
            if p[6] == "text" and value:
                etc[(p[1], p[5].strip('"'))] = (fm, bind, node, value)
    for fm, bind in binds:
        path = bind.path
        if not bind.exact or len(path) < 6 or path[0] != "containers" or path[2] != "config":
            continue
        inner = path[3:]
        if inner[0] != "services" or inner[1] not in READERS or not inner[-1].endswith("File"):
            continue
        content = store_file_content(bind.value)
        value = decode_string(content) if content is not None else None
        if content is not None and value is not None:
            out.append(_File(fm, bind, content, value))
            continue
        named = decode_string(unparen(bind.value)) or ""
        text = etc.get((path[1], named.removeprefix("/etc/"))) if named.startswith("/etc/") else None
        if text is not None and _readers(binds, path[1], named) == 1:
            efm, ebind, node, value = text
            out.append(_File(efm, bind, node, value, ebind))
    return out


def _readers(binds: list[tuple[FileModel, Bind]], container: str, named: str) -> int:
    """How many options of the container name the path ``named`` (an /etc file read by one only)."""
    return sum(
        1
        for _, x in binds
        if x.exact and x.path[:2] == ("containers", container) and decode_string(unparen(x.value)) == named
    )


def apply(b: Builder, password: str | None) -> None:
    found: list[_File] = []
    for f in _store_files(b):
        if (f.fm.name, f.content.start_byte) in b.handled:
            continue
        if password is not None and f.value != password:
            continue
        if password is None and digest(f.value.encode()) not in b.known and not _named(b, f.bind.path[3:]):
            continue
        found.append(f)
    if len(found) > 1:  # the database's and another with its value (an admin password): the database's
        found = [x for x in found if _named(b, x.bind.path[3:])] or found
    if len(found) != 1 or b.option_literal is not None:
        return  # several: the verdict lists each
    f = found[0]
    fm, bind, content, value = f.fm, f.bind, f.content, f.value
    container, inner = bind.path[1], bind.path[3:]
    prefix = ("containers", container)
    user, _ = READERS[inner[1]]
    secret = b.spec.secret
    private = next((x for x in fm.binds if x.exact and x.path == (*prefix, "privateUsers")), None)
    if private is not None:
        _refuse(
            b,
            fm,
            content,
            value,
            f"{'.'.join(bind.path)} holds the hardcoded password in a store file, and containers.{container}."
            f"privateUsers is set ({fm.where(private.node)}): the container's root is not the host's and cannot "
            f"read the host's root-only agenix file through a bind mount. By hand: give age.secrets.{secret} "
            f"owner the host uid that {user} of the container maps to, bind-mount it read-only and point "
            f"{inner[-1]} at the mount",
            "",
        )
        return
    local_db = database_server(b.models, container)
    if local_db is not None and b.spec.strategy != "move":
        _refuse(
            b,
            fm,
            content,
            value,
            f"{'.'.join(bind.path)}: the database runs inside the declarative NixOS container {container} "
            f"(services.{local_db.path[4]} at {fm.where(local_db.node) if local_db in fm.binds else 'its config'}), "
            f"and nixmig's database phases run on the host: a rotation would reach the host's server, not the "
            f'container\'s. Set strategy = "move" for this migration (the value is kept, no database is '
            f"touched; `nixmig secret new {secret} --from FILE:LINE`), then patch again",
            "",
        )
        return
    b.known.add(digest(value.encode()))
    b.replaced.append(f"{'.'.join(bind.path)} at {fm.where(content)}")
    _move(b, f, secret, b.spec.secret_on_host, "")
    b.store_file = b.store_file or fm


def _move(b: Builder, f: _File, secret: str, on_host: str, kept: str) -> None:
    """The edits that give the container's service ``secret`` instead of the store file (or /etc text):
    the option names a copy inside the container, made from a read-only bind mount of the host's agenix
    file; the /etc entry goes."""
    fm, bind, content = f.fm, f.bind, f.content
    container, inner = bind.path[1], bind.path[3:]
    prefix = ("containers", container)
    user, units = READERS[inner[1]]
    ofm = next(m for m, x in b.all_binds() if x is bind)
    if f.etc is not None:
        whole = next((x for x in fm.binds if x.exact and x.path == f.etc.path[:6]), None)
        b.ed.remove_binding(
            fm,
            f.etc.node if whole is None else whole.node,
            f"removes /etc/{f.etc.path[5].strip(chr(34))} of the {container} container, which held the password "
            f"in the Nix store for {'.'.join(inner)}",
        )
    mount = f"{MOUNT_DIR}/{secret}"
    runtime_dir = store_name(secret)
    dest = f"/run/{runtime_dir}/{secret}"
    b.mask_literal(fm, content)
    b.handled.add((fm.name, content.start_byte))
    b.ed.add(
        ofm,
        bind.value.start_byte,
        bind.value.end_byte,
        nix_string(dest),
        f"{'.'.join(inner)} in the {container} container pointed at a file written into the world-readable Nix "
        f"store with the password: it now names {dest}, the copy of the agenix secret {secret} that the "
        f"{user} user owns{kept}",
    )
    tpl = template("container-secret.nix.j2")
    b.insert_path(
        ofm,
        None,
        (*prefix, "bindMounts", mount),
        lambda attr: str(tpl.bind_mount(attr, nix_attr(secret))),
        f"the {container} container sees the host's agenix file {on_host} at {mount} (read-only "
        f"bind mount; the host's root-only file)",
    )
    script = nix_indented(
        [f"install -o {shell_quote(user)} -g {shell_quote(user)} -m 0400 -- {shell_quote(mount)} {shell_quote(dest)}\n"]
    )
    unit = store_name(f"{secret}-copy")
    b.insert_path(
        ofm,
        None,
        (*prefix, "config", "systemd", "services", unit),
        lambda attr: str(tpl.copy_unit(attr, secret, runtime_dir, dest, user, units, script)),
        f"inside the {container} container, {unit} copies {mount} to {dest} (owned by {user}, 0400) before "
        f"{', '.join(units)} start: {user} has no fixed uid the host could give the agenix file",
    )
    b.need(ofm, ("config",))


def is_key(key: str) -> bool:
    """An ``also`` key naming a file option of a service inside a declarative NixOS container
    (``containers.cloud.config.services.nextcloud.config.adminpassFile``)."""
    parts = key.split(".")
    return len(parts) >= 6 and parts[0] == "containers" and parts[2:4] == ["config", "services"] and parts[4] in READERS


def key_at(b: Builder, left: Leftover) -> str:
    """The ``also`` key that would move ``left`` onto a secret of its own (value kept): another store file
    of the same service in a container whose database password this shape moved (nextcloud's adminpassFile
    beside its dbpassFile, realcfg20/22 and realcfg21/07); "" otherwise."""
    moved = {x.path[:5] for fm, x in b.all_binds() if x.exact and is_key(".".join(x.path)) and _reads_copy(x, fm, b)}
    for f in _store_files(b):
        if f.fm.name == left.file and f.content.start_byte <= left.start < f.content.end_byte:
            return ".".join(f.bind.path) if f.bind.path[:5] in moved else ""
    return ""


def _reads_copy(bind: Bind, fm: FileModel, b: Builder) -> bool:
    """``bind`` names the copy this shape makes of the migration's secret, or is the one it edits now."""
    dest = f"/run/{store_name(b.spec.secret)}/{b.spec.secret}"
    return decode_string(bind.value) == dest or any(
        e.file == fm.name and e.start == bind.value.start_byte for e in b.ed.items
    )


def move(b: Builder, key: str, secret: str) -> None:
    """``also = { "containers.C.config.services.S.<x>File" = "<secret>" }``: that store file's literal moves
    onto ``secret`` the same way, its value kept; a tree moved already is checked; nothing found is said."""
    from nixmig.nixsrc.patch import Manual

    path = tuple(key.split("."))
    dest = f"/run/{store_name(secret)}/{secret}"
    if any(x.exact and x.path == path and decode_string(x.value) == dest for _, x in b.all_binds()):
        b.also_replaced.setdefault(secret, [])
        return
    found = [x for x in _store_files(b) if x.bind.path == path and (x.fm.name, x.content.start_byte) not in b.handled]
    if len(found) != 1:
        b.manual.append(
            Manual(
                "",
                0,
                0,
                f"also names the option {key} (secret {secret!r}), but nixmig finds "
                + ("no store file it reads" if not found else f"{len(found)} store files it could read")
                + f": remove it from also in [migrations.{b.spec.migration or '…'}], or check its name",
                "",
            )
        )
        return
    f = found[0]
    _move(b, f, secret, f"/run/agenix/{secret}", " (also: a companion credential, value kept)")
    b.also_known.add(digest(f.value.encode()))
    b.also_replaced.setdefault(secret, []).append(f"{key} at {f.fm.where(f.content)}")


def database_server(models: Mapping[str, FileModel], container: str) -> Bind | None:
    """A binding of ``containers.CONTAINER.config.services.postgresql`` (or mysql): the declarative NixOS
    container runs its own database server, which apply's psql on the host cannot reach."""
    server = ("containers", container, "config", "services")
    return next(
        (
            x
            for m in models.values()
            for x in m.binds
            if x.path[:4] == server and x.path[4:5] in (("postgresql",), ("mysql",))
        ),
        None,
    )


def bind_mount(b: Builder, fm: FileModel, container: str, secret: str, mount: str) -> None:
    """``containers.NAME.bindMounts."/run/agenix-host/SECRET"``: the host's agenix file, read-only (once)."""
    path = ("containers", container, "bindMounts", mount)
    if any(x.path[: len(path)] == path for _, x in b.all_binds()) or (fm.name, path) in b.bind_mounts_added:
        return
    b.bind_mounts_added.add((fm.name, path))
    tpl = template("container-secret.nix.j2")
    b.insert_path(
        fm,
        None,
        path,
        lambda attr: str(tpl.bind_mount(attr, nix_attr(secret))),
        f"the {container} container sees the host's agenix file {b.spec.secret_on_host} at {mount} (read-only "
        "bind mount; root inside the container reads it, as the host's root: no privateUsers)",
    )


def _refuse(b: Builder, fm: FileModel, content: Node, value: str, what: str, snippet: str) -> None:
    """The literal is this migration's password, said by hand (masked, known, never taken by another rule)."""
    b.mask_literal(fm, content)
    b.known.add(digest(value.encode()))
    b.handled.add((fm.name, content.start_byte))
    b.manual_here(fm, content, what, snippet)


SHAPE = Shape(
    "container-store-file",
    "containers.X.config.services.nextcloud.config.dbpassFile = pkgs.writeText ... (or /etc text of the "
    "container): a read-only bind mount of the host's agenix file, copied inside the container for the nextcloud "
    "user; adminpassFile beside it a companion",
    apply,
    (
        "native-container-nextcloud-writetext",
        "native-container-nextcloud-private-users",
        "native-container-nextcloud-etc-text",
        "native-container-nextcloud-adminpass-companion",
    ),
)
