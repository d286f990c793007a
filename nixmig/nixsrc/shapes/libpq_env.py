"""``services.matrix-synapse.settings.database.args.password = "..."``, ``services.odoo.settings.options.
db_password = "..."``: a database password among the settings a nixpkgs service hands to libpq, which
reads ``PGPASSWORD`` from its environment when they hold none.

The key goes (the rest of ``args`` stays: user, database, host); the unit renders ``PGPASSWORD='...'``
into an EnvironmentFile in its runtime directory from the agenix secret (a systemd credential) before it
starts (Builder.url_in_systemd, the renderer every unit shape uses).

Checked: synapse passes ``database.args`` (but its own cp_min/cp_max) to ``psycopg2.connect``, which is
libpq: a missing password is taken from PGPASSWORD. nixpkgs' matrix-synapse unit (User matrix-synapse)
sets no EnvironmentFile or LoadCredential of its own; its ExecStartPre is a list (ours merges before it).
The env file goes into /run/matrix-synapse (``RuntimeDirectory = "matrix-synapse"``, equal to the
module's where it sets one) with no RuntimeDirectoryMode: newer modules keep synapse's unix sockets
there for nginx, so its mode stays; the file itself is 0400, owned by matrix-synapse. Synapse's workers
(``services.matrix-synapse.workers``) are units of their own that log in with the same settings: with
workers configured, refused (each worker would need the line too).

Inside a declarative NixOS container (``containers.NAME.config.services.matrix-synapse...``, synapse logging
in to the host's server over the container's network, realcfg22/02): the host's agenix file (root, 0400) is
bind-mounted read-only at /run/agenix-host/SECRET and the container's unit reads it through LoadCredential,
which the container's PID 1 reads as root, the host's root when ``privateUsers`` is not set (set: refused).
A container that runs its own database server is refused under rotate (apply's psql runs on the host). The
bind mount holds the file agenix wrote when the container started: a later rotation of the same secret
reaches the unit when the container restarts (a config change restarts it, as the first migration's does).

Checked for odoo: it passes ``db_password`` to psycopg2 only when set (``sql_db.connection_info_for``
copies each ``db_*`` option that is not false), so without the key libpq reads PGPASSWORD; its workers
are processes forked by the one ``odoo`` unit (DynamicUser, User odoo), which inherit its environment.
nixpkgs' odoo unit sets ``Environment = [ "ODOO_RC=..." ]`` and, in newer modules, a single
``ExecStartPre`` script (its auto-init runs ``odoo --db_user=odoo``): a list definition merges with
it, ours first, so the auto-init has PGPASSWORD too. Its default user is libpq's: the OS user, odoo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.render import UNQUOTABLE, EnvLine
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.container_store_file import MOUNT_DIR, bind_mount, database_server
from nixmig.nixsrc.shapes.initial_script import container_of, private_users

if TYPE_CHECKING:
    from nixmig.nixsrc.model import FileModel, Lit, NixPath
    from nixmig.nixsrc.patch import Builder

# the option -> (the unit that reads it, the option that starts more units reading the same settings)
LIBPQ_ARGS: dict[tuple[str, ...], tuple[str, tuple[str, ...] | None]] = {
    ("services", "matrix-synapse", "settings", "database", "args", "password"): (
        "matrix-synapse",
        ("services", "matrix-synapse", "workers"),
    ),
    ("services", "odoo", "settings", "options", "db_password"): ("odoo", None),
}

# nixpkgs' default of the user beside it (matrix-synapse's settings.database.args.user)
DEFAULT_USERS: dict[tuple[str, ...], str] = {
    ("services", "matrix-synapse", "settings", "database", "args", "password"): "matrix-synapse",
    ("services", "odoo", "settings", "options", "db_password"): "odoo",
}
# the key beside the password that names the role, where it is no ``user``
USER_KEYS: dict[tuple[str, ...], str] = {("services", "odoo", "settings", "options", "db_password"): "db_user"}


def _user(b: Builder, fm: FileModel, lit: Lit) -> str | None:
    """The ``user`` beside the password in the same ``args``."""
    want = (*lit.path[:-1], USER_KEYS.get(lit.path, "user"))
    return next((b.value_of(fm, x.value) for x in fm.binds if x.exact and x.path == want), None)


def _key(path: NixPath) -> tuple[NixPath, NixPath]:
    """(the LIBPQ_ARGS option ``path`` binds, the system it is in: () for the host, ``containers.NAME.config``
    for a declarative NixOS container's); ``((), ())`` for another path."""
    if path in LIBPQ_ARGS:
        return path, ()
    if container_of(path[:3]) is not None and path[3:] in LIBPQ_ARGS:
        return path[3:], path[:3]
    return (), ()


def apply(b: Builder, password: str | None) -> None:
    for fm, lit in list(b.all_lits()):
        key, prefix = _key(lit.path)
        if not key or not lit.exact or lit.bind is None:
            continue
        if (fm.name, lit.node.start_byte) in b.handled:
            continue
        value = b.value_of(fm, lit.node)
        if value is None:
            continue
        if password is not None:
            ours = value == password
        elif b.known:
            ours = digest(value.encode()) in b.known
        else:  # no password recognised elsewhere: the role logging in says whose it is
            ours = (_user(b, fm, lit) or DEFAULT_USERS[key]) == b.spec.role
        if not ours:
            continue
        unit, more = LIBPQ_ARGS[key]
        more = (*prefix, *more) if more else None
        workers = next(((wfm, x) for wfm, x in b.all_binds() if more and x.path[: len(more)] == more), None)
        if prefix and _refused_in_container(b, fm, lit, prefix[1], unit):
            continue
        if workers is not None and more is not None:
            b.mask_literal(fm, lit.node)
            b.handled.add((fm.name, lit.node.start_byte))
            b.manual_here(
                fm,
                lit.node,
                f"{'.'.join(lit.path)}: {'.'.join(more)} is set ({workers[0].where(workers[1].node)}): each worker "
                f"is a unit of its own that logs in with these settings, and nixmig renders the password for "
                f"the {unit} unit only; by hand: remove the key and give every unit of synapse PGPASSWORD from "
                "the agenix file (an EnvironmentFile rendered at start)",
                "",
            )
            continue
        if b.spec.strategy == "move" and UNQUOTABLE.search(value):  # a rotation writes a new one
            b.refuse_kept(fm, lit, "holds a quote, a backslash or a line break, which PGPASSWORD='...' cannot hold")
            continue
        b.mask_literal(fm, lit.node)
        b.known.add(digest(value.encode()))
        mount = f"{MOUNT_DIR}/{b.spec.secret}" if prefix else None
        r = b.url_in_systemd(
            fm,
            lit,
            unit,
            EnvLine("PGPASSWORD", "", "", quoted=True),
            f"{'.'.join(lit.path)} (a config file's key; libpq reads PGPASSWORD when the arguments hold none)",
            prefix=prefix,
            credential_path=mount,
        )
        if unit == "matrix-synapse":
            r.dir_mode = None  # /run/matrix-synapse holds synapse's unix sockets (nginx reads them): its mode stays
        if prefix and mount is not None:
            bind_mount(b, fm, prefix[1], b.spec.secret, mount)
        b.need(fm, ("config", "lib", "pkgs"))


def _refused_in_container(b: Builder, fm: FileModel, lit: Lit, container: str, unit: str) -> bool:
    """Said by hand (True) when the container's unit cannot be given the host's agenix file: ``privateUsers``
    (its root, which LoadCredential reads as, is not the host's), or the database server runs inside it
    and the migration would rotate it (apply's psql runs on the host)."""
    private = private_users(b, container)
    local_db = database_server(b.models, container)
    if private is not None:
        why = (
            f"containers.{container}.privateUsers is set: the container's root, which reads the {unit} unit's "
            "credential, is not the host's and cannot read the host's root-only agenix file through a bind mount. "
            f"By hand: give age.secrets.{b.spec.secret} the owner the container's root maps to on the host, "
            "bind-mount it read-only, and have the unit render PGPASSWORD from it"
        )
    elif local_db is not None and b.spec.strategy != "move":
        why = (
            f"the database server runs inside the declarative NixOS container {container}, and nixmig's database "
            "phases run on the host: a rotation would reach the host's server, not the container's. Set strategy "
            f'= "move" for this migration (the value kept; `nixmig secret new {b.spec.secret} --from FILE:LINE`), '
            "then patch again"
        )
    else:
        return False
    b.mask_literal(fm, lit.node)
    b.handled.add((fm.name, lit.node.start_byte))
    b.manual_here(fm, lit.node, f"{'.'.join(lit.path)}: {why}", "")
    return True


SHAPE = Shape(
    "libpq-env",
    "services.matrix-synapse.settings.database.args.password, services.odoo.settings.options.db_password: the key "
    "goes, the unit renders PGPASSWORD (which libpq reads when the arguments hold no password) from the agenix secret; "
    "inside a declarative NixOS container, from the host's agenix file bind-mounted read-only",
    apply,
    (
        "native-synapse-database-args-password",
        "native-synapse-workers-refused",
        "native-odoo-settings-db-password",
        "native-container-synapse-args-password",
        "native-container-synapse-private-users",
        "native-container-synapse-db-inside-rotate",
    ),
)
