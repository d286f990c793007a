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

if TYPE_CHECKING:
    from nixmig.nixsrc.model import FileModel, Lit
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


def apply(b: Builder, password: str | None) -> None:
    for fm, lit in list(b.all_lits()):
        if lit.path not in LIBPQ_ARGS or not lit.exact or lit.bind is None:
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
            ours = (_user(b, fm, lit) or DEFAULT_USERS[lit.path]) == b.spec.role
        if not ours:
            continue
        unit, more = LIBPQ_ARGS[lit.path]
        workers = next(((wfm, x) for wfm, x in b.all_binds() if more and x.path[: len(more)] == more), None)
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
        r = b.url_in_systemd(
            fm,
            lit,
            unit,
            EnvLine("PGPASSWORD", "", "", quoted=True),
            f"{'.'.join(lit.path)} (a config file's key; libpq reads PGPASSWORD when the arguments hold none)",
        )
        if unit == "matrix-synapse":
            r.dir_mode = None  # /run/matrix-synapse holds synapse's unix sockets (nginx reads them): its mode stays
        b.need(fm, ("config", "lib", "pkgs"))


SHAPE = Shape(
    "libpq-env",
    "services.matrix-synapse.settings.database.args.password, services.odoo.settings.options.db_password: the key "
    "goes, the unit renders PGPASSWORD (which libpq reads when the arguments hold no password) from the agenix secret",
    apply,
    ("native-synapse-database-args-password", "native-synapse-workers-refused", "native-odoo-settings-db-password"),
)
