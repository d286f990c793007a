"""``services.vaultwarden.config.ADMIN_TOKEN = "..."`` under strategy move: a credential in the settings of a
nixpkgs service whose settings are one unit's environment (patch.NIXPKGS_ENV_CONFIG: vaultwarden's
``config``, n8n's ``environment``), that is no database's password (an admin token, an SMTP password, an
encryption key). nixmig cannot rotate it; move keeps the value and takes it out of the Nix store.

The literal goes; the unit gets the agenix secret as a systemd credential and renders
``VAR='<value>'`` into an EnvironmentFile in its runtime directory before it starts (Builder.url_in_systemd,
a quoted line: systemd reads single quotes literally). vaultwarden's camelCase keys become the
variable its module writes (nixpkgs' nameToEnvVar: ``adminToken`` -> ``ADMIN_TOKEN``). Which credential:
the only one of the migration's service, or the one the secret's name picks (``vaultwarden-admin-token``);
several and none picked: left to the verdict, which lists each. A hash (an argon2 ADMIN_TOKEN) is no
secret to move (scan reads none). A value single quotes cannot hold for systemd (a quote, a backslash, a
line break) is left by hand, said.

Checked against nixpkgs (nixos/modules/services/security/vaultwarden/default.nix): the module writes
``config`` into a store env file (``EnvironmentFile = [ configFile ] ++ environmentFile``); systemd reads
every EnvironmentFile= in order, the later one wins: nixmig's comes after the module's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.render import UNQUOTABLE, EnvLine
from nixmig.nixsrc.scan import Kind, classify_name, is_placeholder, looks_like_crypt_hash
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.naming import best_named, others_note

if TYPE_CHECKING:
    from nixmig.nixsrc.model import FileModel, Lit
    from nixmig.nixsrc.patch import Builder

_UPPER = re.compile(r"[A-Z0-9_]+")
_RUNS = re.compile(r"([A-Z0-9]+)")


def env_var_name(service: str, name: str) -> str:
    """The variable a setting becomes: vaultwarden converts camelCase (nixpkgs' nameToEnvVar, ported:
    ``disable2FARemember`` -> ``DISABLE_2FA_REMEMBER``; a name already upper case stays), others keep it."""
    if service != "vaultwarden" or _UPPER.fullmatch(name):
        return name
    key = ""
    for i, part in enumerate(_RUNS.split(name)):
        if i % 2:  # a run of capitals or digits
            key += ("_" if key and not key.endswith("_") else "") + part
        elif key and part[:1].islower():  # the run's last capital starts this word
            last = key[-1]
            key = key[:-1] + ("_" if len(key) > 1 and key[-2] != "_" else "") + last + part.upper()
        else:
            key += part.upper()
    return key


def _password_lines(var: str) -> tuple[EnvLine, ...]:
    return (EnvLine(var, "", "", quoted=True),)


# a nixpkgs option with no file twin that its module writes into one unit's Environment= (checked in
# nixpkgs): the option -> (unit, the lines nixmig's env file holds instead). EnvironmentFile= overrides
# Environment=, so these win over what the module writes from the option's default.
OPTION_ENV: dict[tuple[str, ...], tuple[str, tuple[EnvLine, ...]]] = {
    # keycloak's module: KC_BOOTSTRAP_ADMIN_USERNAME = "admin" and KC_BOOTSTRAP_ADMIN_PASSWORD only when
    # the option is set (older modules: KEYCLOAK_ADMIN / KEYCLOAK_ADMIN_PASSWORD, which keycloak 26 still
    # reads, deprecated): both pairs, so the first start creates the admin on either. Read at first start only.
    ("services", "keycloak", "initialAdminPassword"): (
        "keycloak",
        (
            EnvLine("KC_BOOTSTRAP_ADMIN_USERNAME", "", "", constant="admin"),
            EnvLine("KC_BOOTSTRAP_ADMIN_PASSWORD", "", "", quoted=True),
            EnvLine("KEYCLOAK_ADMIN", "", "", constant="admin"),
            EnvLine("KEYCLOAK_ADMIN_PASSWORD", "", "", quoted=True),
        ),
    ),
}


def apply(b: Builder, password: str | None) -> None:
    from nixmig.nixsrc.patch import NIXPKGS_ENV_CONFIG

    if b.spec.strategy != "move" or password is not None or b.known or b.db is not None:
        return
    from nixmig.nixsrc.leftover import uses_secret

    if uses_secret(b.models, b.spec.secret, b.spec.secret_on_host):
        # moved already (an /etc text of keycloak's database password, 12L/04 with init's draft): what is left is
        # another credential, never this one's (a second --write rendered keycloak's initialAdminPassword from it)
        return
    found: list[tuple[FileModel, Lit, str, str, tuple[str, ...], tuple[EnvLine, ...]]] = []
    for fm, lit in b.all_lits():
        path = lit.path
        env_config = len(path) == 4 and path[0] == "services" and (path[1], path[2]) in NIXPKGS_ENV_CONFIG
        if not env_config and path not in OPTION_ENV:
            continue
        if not lit.exact or lit.bind is None or (fm.name, lit.node.start_byte) in b.handled:
            continue
        named = classify_name(path[-1])
        if named is None or named.kind is Kind.HASH:
            continue
        value = b.value_of(fm, lit.node)
        if value is None or is_placeholder(value) or looks_like_crypt_hash(value):
            continue
        if env_config:
            var = env_var_name(path[1], path[3])
            found.append((fm, lit, value, NIXPKGS_ENV_CONFIG[(path[1], path[2])], named.words, _password_lines(var)))
        else:
            found.append((fm, lit, value, *OPTION_ENV[path][:1], named.words, OPTION_ENV[path][1]))
    found = [found[i] for i in b.own_service([f[1].path for f in found])]
    picked = best_named(b.spec.secret, found[0][1].path[1] if found else "", [f[4] for f in found])
    if len(picked) != 1:
        return  # several, none named by the secret: the verdict lists each
    fm, lit, value, unit, _, lines = found[picked[0]]
    others = [f"{'.'.join(f[1].path)} ({f[0].where(f[1].node)})" for i, f in enumerate(found) if i != picked[0]]
    others_note(b, lit, others)
    if UNQUOTABLE.search(value):
        b.refuse_kept(
            fm,
            lit,
            f"holds a quote, a backslash or a line break, which a line of the {unit} unit's env file cannot hold: "
            "by hand, or rotate it first",
        )
        return
    b.mask_literal(fm, lit.node)
    b.known.add(digest(value.encode()))
    first = next(line for line in lines if line.quoted)
    b.url_in_systemd(fm, lit, unit, first)
    for line in lines:
        b.add_env_line(b.renderers[("systemd", fm.name, unit)], line)
    b.need(fm, ("config", "lib", "pkgs"))


SHAPE = Shape(
    "env-setting-move",
    "services.vaultwarden.config.ADMIN_TOKEN (or keycloak's initialAdminPassword) under strategy move: the value, "
    "kept, goes into an env file the unit renders from the agenix secret",
    apply,
    ("native-vaultwarden-admin-token-move", "native-keycloak-initial-admin-password-move"),
)
