"""``services.atticd.settings.database.url = "postgres://u:pw@h/db"``: a database URL in a service's
structured settings (rendered into a config file in the Nix store), where the service reads an
environment variable instead only in a case nixmig cannot arrange by an edit. Refused, with what
was seen and what to do, instead of "no template for this shape".

atticd (checked against attic's server/src/config.rs and the nixos/atticd.nix of both nixpkgs and
attic's flake): ``ATTIC_SERVER_DATABASE_URL`` is read only when the TOML has no ``database.url``
(serde's default), and both modules set ``database.url = lib.mkDefault "sqlite:///..."``: dropping
the literal would move atticd onto an empty SQLite database. Its ``environmentFile`` is one path,
and the module asserts it is set (the JWT secret), so it is the user's file already: nixmig
neither replaces it nor edits a file it cannot see; a second ``EnvironmentFile=`` beside the
module's string merges only in newer nixpkgs (older ones throw on a string and a list).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import decode_string
from nixmig.nixsrc.shapes import Shape

if TYPE_CHECKING:
    from nixmig.nixsrc.patch import Builder

# services.X -> (the settings path of the URL, the variable the service reads, why nixmig refuses)
REFUSED: dict[str, tuple[tuple[str, ...], str, str]] = {
    "atticd": (
        ("settings", "database", "url"),
        "ATTIC_SERVER_DATABASE_URL",
        "atticd reads ATTIC_SERVER_DATABASE_URL only when its TOML has no database.url, and the module sets "
        'database.url = lib.mkDefault "sqlite:..." (removing the literal would move atticd onto SQLite); its '
        "environmentFile (one path) is yours already. By hand: put ATTIC_SERVER_DATABASE_URL=<the URL, "
        "password percent-encoded, from the agenix secret> into the file environmentFile names, set "
        "services.atticd.settings.database = lib.mkForce { }, then remove the literal",
    ),
}


def apply(b: Builder, password: str | None) -> None:
    from nixmig.nixsrc.patch import split_url

    for fm, lit in list(b.all_lits()):
        path = lit.path
        if len(path) < 3 or path[0] != "services" or path[1] not in REFUSED:
            continue
        where, _var, why = REFUSED[path[1]]
        if path[2:] != where or (fm.name, lit.node.start_byte) in b.handled:
            continue
        value = decode_string(lit.node)  # a literal: the mask covers its password
        url = split_url(value, password, b.spec.url_schemes) if value is not None else None
        if value is None or url is None or unquote(url.user) != b.spec.role:
            continue
        if password is not None and unquote(url.password) != password:
            continue
        b.mask_url(fm, lit.node, value, url)
        b.known |= {digest(url.password.encode()), digest(unquote(url.password).encode())}
        b.handled.add((fm.name, lit.node.start_byte))
        b.manual_here(fm, lit.node, f"a {url.scheme}:// URL with the hardcoded password in {'.'.join(path)}: {why}", "")


SHAPE = Shape(
    "settings-url-refused",
    "services.atticd.settings.database.url with the password: refused, saying why an env file cannot replace it "
    "and what to do",
    apply,
    ("native-atticd-settings-database-url",),
)
