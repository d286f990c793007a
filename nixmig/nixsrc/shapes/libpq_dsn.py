"""``services.miniflux.config.DATABASE_URL = lib.mkForce "host=h user=u password=pw dbname=d"``: a libpq
keyword DSN (not a URL) in a nixpkgs service's environment (the unit's Environment=, in the Nix store).

The ``password=...`` token leaves the DSN (the rest stays, so the option keeps a value: miniflux's
DATABASE_URL has none of its own without createDatabaseLocally); the unit's own ExecStartPre writes
``*:*:*:*:PASSWORD`` (0400) into the runtime directory the module gives it, from the agenix secret as a
systemd credential (root reads the agenix file; the unit runs with DynamicUser), and the service's
``PGPASSFILE`` names that file. lib/pq and pgx read PGPASSFILE when the DSN has no password. Nothing
is added to EnvironmentFile= (older nixpkgs cannot merge a list with the module's string there).

Checked against nixpkgs (nixos/modules/services/web-apps/miniflux.nix): ``config`` is the unit's
environment, the unit has ``RuntimeDirectory = "miniflux"`` (0750), ``UMask = "0077"``, no
ExecStartPre or LoadCredential of its own. A password the pgpass line cannot hold unescaped (``:``,
``\\``, anything but A-Z a-z 0-9 - . _ ~) stops the unit at start with one line, nothing written.
A quoted value (``password='...'``) is left to the verdict.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import _apply_parts, decode_string, unparen
from nixmig.nixsrc.quote import nix_attr, nix_indented, nix_string, shell_quote, store_name
from nixmig.nixsrc.render import template
from nixmig.nixsrc.shapes import Shape

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import FileModel
    from nixmig.nixsrc.patch import Builder

# services.X -> (the option path under services.X, its unit, the unit's runtime directory)
SERVICES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "miniflux": (("config", "DATABASE_URL"), "miniflux", "miniflux"),
}
_TOKEN = re.compile(r"(?:^|(?<=\s))password=(?P<pw>[^\s'\\]+)(?=\s|$)")
_USER = re.compile(r"(?:^|(?<=\s))user=(?P<user>[^\s'\\]+)(?=\s|$)")
_SAFE = re.compile(r"[A-Za-z0-9._~=/@:,+%-]*")  # what stays in the DSN needs no Nix or shell care


def _script(secret: str, credential: str, path: str) -> str:
    from nixmig.nixsrc.patch import credential_word

    fix = f"regenerate it: nixmig secret new {secret} --force --charset urlsafe"
    lines = [
        f"# nixmig: writes {path} (a pgpass line)",
        f"# from the {secret} secret at start; the password is never in the Nix store, an argv or a log.",
        "set -euo pipefail",
        "umask 0077",
        f"password_file={credential_word(credential)}",
        'if [ ! -s "$password_file" ]; then',
        '  echo "nixmig: $password_file is missing or empty:" '
        + shell_quote(f"is the agenix secret {secret} deployed?")
        + " >&2",
        "  exit 1",
        "fi",
        "password=",
        "IFS= read -r -d '' password <\"$password_file\" || true",
        str(template("percent-encode.sh.j2").drop_final_newlines("password")),
        "case $password in",
        '  "" | *[!A-Za-z0-9._~-]*)',
        '    echo "nixmig: the secret in $password_file has characters a pgpass line cannot hold unescaped"'
        f" {shell_quote('(only A-Z a-z 0-9 - . _ ~): ' + fix)} >&2",
        "    exit 1",
        "    ;;",
        "esac",
        "tmp=",
        'trap \'[ -z "$tmp" ] || rm -f -- "$tmp"\' EXIT',
        f"tmp=$(mktemp -- {shell_quote(path + '.XXXXXX')})",
        'printf \'*:*:*:*:%s\\n\' "$password" >"$tmp"',
        'chmod 0400 -- "$tmp"',
        f'mv -f -- "$tmp" {shell_quote(path)}',
        "tmp=",
    ]
    return nix_indented(["\n".join(lines) + "\n"])


def _wrapped(fm: FileModel, node: Node, path: tuple[str, ...]) -> bool:
    """``VAR = lib.mkForce "..."`` (mkDefault, mkOverride N): the string is the value, under a priority."""
    for bind in fm.binds:
        if not bind.exact or bind.path != path:
            continue
        name, args = _apply_parts(unparen(bind.value)) if unparen(bind.value).type == "apply_expression" else ("", [])
        if name in ("mkForce", "mkDefault", "mkOverride") and args and unparen(args[-1]) == node:
            return True
    return False


def _patch(b: Builder, fm: FileModel, node: Node, path: tuple[str, ...], pw: str, dsn: str) -> None:
    from nixmig.nixsrc.patch import credential_name

    option, unit, runtime_dir = SERVICES[path[1]]
    secret = b.spec.secret
    pgpass = f"/run/{runtime_dir}/{secret}.pgpass"
    credential = credential_name(secret)
    where = fm.where(node)
    b.mask_literal(fm, node)
    b.known.add(digest(pw.encode()))
    b.handled.add((fm.name, node.start_byte))
    b.replaced.append(f"{'.'.join(path)} at {where}")
    b.ed.replace_node(
        fm,
        node,
        nix_string(dsn),
        f"{'.'.join(path)}: the password leaves the DSN (the unit's Environment=, in the world-readable Nix "
        f"store); the service reads it from {pgpass} (PGPASSFILE)",
    )
    b.insert_path(
        fm,
        None,
        ("services", path[1], *option[:-1], "PGPASSFILE"),
        lambda attr: f"{attr} = {nix_string(pgpass)};",
        f"services.{path[1]}: libpq reads the password from {pgpass} when the DSN has none",
    )
    script = _script(secret, credential, pgpass)
    tpl = template("pgpass-unit.nix.j2")
    script_name = store_name(f"{unit}-{secret}-pgpass")
    b.insert_path(
        fm,
        None,
        ("systemd", "services", unit, "serviceConfig"),
        lambda attr: str(tpl.unit(attr, unit, credential, nix_attr(secret), pgpass, script_name, script)),
        f"{unit}: an ExecStartPre writes {pgpass} from {b.spec.secret_on_host} (a systemd credential) at each "
        f"start; it replaces the password in {'.'.join(path)} at {where}",
    )
    b.need(fm, ("config", "pkgs"))
    b.store_file = b.store_file or fm


def apply(b: Builder, password: str | None) -> None:
    for fm, lit in list(b.all_lits()):
        path = lit.path
        if len(path) < 3 or path[0] != "services" or path[1] not in SERVICES or not lit.exact:
            continue
        if lit.bind is None and not _wrapped(fm, lit.node, path):
            continue
        if path[2:] != SERVICES[path[1]][0] or (fm.name, lit.node.start_byte) in b.handled:
            continue
        value = decode_string(lit.node)
        m = _TOKEN.search(value or "")
        user = _USER.search(value or "")
        if value is None or m is None or user is None or user.group("user") != b.spec.role:
            continue
        if password is not None and m.group("pw") != password:
            continue
        rest = (value[: m.start()] + value[m.end() :]).split()
        if not all(_SAFE.fullmatch(t) for t in rest):
            continue  # the verdict says it
        _patch(b, fm, lit.node, path, m.group("pw"), " ".join(rest))
        return


SHAPE = Shape(
    "libpq-dsn",
    "services.miniflux.config.DATABASE_URL, a libpq keyword DSN with password=: the password goes into a pgpass "
    "file the unit writes from the agenix secret (PGPASSFILE)",
    apply,
    ("native-miniflux-libpq-dsn",),
)
