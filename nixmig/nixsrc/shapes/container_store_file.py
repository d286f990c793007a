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

Not handled (the verdict says the literal): ``privateUsers`` set (the container's root is not the
host's: it cannot read a root-only file of the host), a container whose attrset goes through a
function (``mkContainer cfg { ... }``: not an option path nixmig can prove), several such files.
A rotation reaches the container when it restarts (the bind mount pins the file agenix wrote).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import decode_string
from nixmig.nixsrc.quote import nix_attr, nix_indented, nix_string, shell_quote, store_name
from nixmig.nixsrc.render import template
from nixmig.nixsrc.scan import words
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.naming import named_by

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tree_sitter import Node

    from nixmig.nixsrc.model import Bind, FileModel
    from nixmig.nixsrc.patch import Builder

# services.X inside a container -> (the user that reads the file, the units that read it)
READERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "nextcloud": ("nextcloud", ("nextcloud-setup", "phpfpm-nextcloud", "nextcloud-cron")),
}
MOUNT_DIR = "/run/agenix-host"


def _named(b: Builder, inner: tuple[str, ...]) -> bool:
    return named_by(b, inner) or any(w.startswith(("db", "database")) for w in words(inner[-1]))


def apply(b: Builder, password: str | None) -> None:
    from nixmig.nixsrc.patch import store_file_content

    found: list[tuple[FileModel, Bind, Node, str]] = []
    for fm, bind in b.all_binds():
        path = bind.path
        if not bind.exact or len(path) < 6 or path[0] != "containers" or path[2] != "config":
            continue
        inner = path[3:]
        if inner[0] != "services" or inner[1] not in READERS or not inner[-1].endswith("File"):
            continue
        content = store_file_content(bind.value)
        value = decode_string(content) if content is not None else None
        if content is None or value is None or (fm.name, content.start_byte) in b.handled:
            continue
        if password is not None and value != password:
            continue
        if password is None and digest(value.encode()) not in b.known and not _named(b, inner):
            continue
        found.append((fm, bind, content, value))
    if len(found) != 1 or b.option_literal is not None:
        return  # several: the verdict lists each
    fm, bind, content, value = found[0]
    container, inner = bind.path[1], bind.path[3:]
    prefix = ("containers", container)
    user, units = READERS[inner[1]]
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
    mount = f"{MOUNT_DIR}/{secret}"
    runtime_dir = store_name(secret)
    dest = f"/run/{runtime_dir}/{secret}"
    b.mask_literal(fm, content)
    b.known.add(digest(value.encode()))
    b.handled.add((fm.name, content.start_byte))
    where = fm.where(content)
    b.replaced.append(f"{'.'.join(bind.path)} at {where}")
    b.ed.add(
        fm,
        bind.value.start_byte,
        bind.value.end_byte,
        nix_string(dest),
        f"{'.'.join(inner)} in the {container} container pointed at a file written into the world-readable Nix "
        f"store with the password: it now names {dest}, the copy of the agenix secret {secret} that the "
        f"{user} user owns",
    )
    tpl = template("container-secret.nix.j2")
    b.insert_path(
        fm,
        None,
        (*prefix, "bindMounts", mount),
        lambda attr: str(tpl.bind_mount(attr, nix_attr(secret))),
        f"the {container} container sees the host's agenix file {b.spec.secret_on_host} at {mount} (read-only "
        f"bind mount; the host's root-only file)",
    )
    script = nix_indented(
        [f"install -o {shell_quote(user)} -g {shell_quote(user)} -m 0400 -- {shell_quote(mount)} {shell_quote(dest)}\n"]
    )
    unit = store_name(f"{secret}-copy")
    b.insert_path(
        fm,
        None,
        (*prefix, "config", "systemd", "services", unit),
        lambda attr: str(tpl.copy_unit(attr, secret, runtime_dir, dest, user, units, script)),
        f"inside the {container} container, {unit} copies {mount} to {dest} (owned by {user}, 0400) before "
        f"{', '.join(units)} start: {user} has no fixed uid the host could give the agenix file",
    )
    b.need(fm, ("config",))
    b.store_file = b.store_file or fm


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


def _refuse(b: Builder, fm: FileModel, content: Node, value: str, what: str, snippet: str) -> None:
    """The literal is this migration's password, said by hand (masked, known, never taken by another rule)."""
    b.mask_literal(fm, content)
    b.known.add(digest(value.encode()))
    b.handled.add((fm.name, content.start_byte))
    b.manual_here(fm, content, what, snippet)


SHAPE = Shape(
    "container-store-file",
    "containers.X.config.services.nextcloud.config.dbpassFile = pkgs.writeText ...: a read-only bind mount of "
    "the host's agenix file, copied inside the container for the nextcloud user",
    apply,
    ("native-container-nextcloud-writetext", "native-container-nextcloud-private-users"),
)
