"""A password in the settings of a nixpkgs service that puts environment variables into its config at
start: the literal's password becomes a variable reference, and the service's unit renders the variable
into an EnvironmentFile of its own from a systemd credential.

- dendrite (checked in nixpkgs' matrix/dendrite.nix): its ExecStartPre runs ``envsubst`` over the YAML
  made from ``settings`` into /run/dendrite/dendrite.yaml, with the unit's environment, so
  ``connection_string = "postgres://dendrite:$DENDRITE_DB_PASSWORD@db/dendrite"`` reads the variable
  (its ``environmentFile`` documents it). A let-bound URL the settings read (one per database, the same
  string nine times) is edited once, in the let.
- telegraf (checked in nixpkgs' monitoring/telegraf.nix): telegraf itself replaces ``${VAR}`` in its
  config with the environment (and the module's envsubst, run when ``environmentFiles`` is set, does the
  same): ``extraConfig.outputs.influxdb.password = "${INFLUXDB_TELEGRAF_PASSWORD}"``.

The variable holds the password percent-encoded inside a URL, or as it is (the renderer refuses at start a
password with a character an env line cannot hold unquoted, which also keeps YAML and TOML quoting
intact). The value is then in no file of the Nix store; the config file the service renders at start
(in its runtime directory) holds it, as the service's own environment file would.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import decode_string, unparen
from nixmig.nixsrc.quote import nix_string
from nixmig.nixsrc.render import EnvLine
from nixmig.nixsrc.scan import Kind, classify_name, is_placeholder
from nixmig.nixsrc.shapes import Shape

if TYPE_CHECKING:
    from tree_sitter import Node

    from nixmig.nixsrc.model import FileModel, Lit, NixPath
    from nixmig.nixsrc.patch import Builder, UrlParts

# services.X -> (the settings option, how a variable is written there)
ENVSUBST: dict[str, tuple[str, str]] = {
    "dendrite": ("settings", "$"),  # "$VAR" (envsubst)
    "telegraf": ("extraConfig", "${}"),  # "${VAR}" (telegraf's own substitution)
    # wiki-js (checked in nixpkgs' web-apps/wiki-js.nix): "setting sensitive values to `$(ENVIRONMENT_VAR)`
    # with this value defined in the environment-file"; wiki-js replaces $(VAR) in its config at start
    "wiki-js": ("settings", "$()"),
    # hedgedoc (checked in nixpkgs' web-apps/hedgedoc.nix): its preStart runs envsubst over the JSON made from
    # `settings` into /run/hedgedoc/config.json, with the unit's environment (its environmentFile documents
    # `dbURL = "postgres://hedgedoc:\${DB_PASSWORD}@..."`)
    "hedgedoc": ("settings", "$"),
}
# the runtime directory (and its mode) the renderer uses, where the module's own is a list nixmig's entry
# would repeat (hedgedoc's RuntimeDirectory = [ "hedgedoc" ]; its WorkingDirectory, the mode left as systemd's)
RUNTIME_DIRS: dict[str, tuple[str, str | None]] = {"hedgedoc": ("hedgedoc-env", None)}
_USERS = ("username", "user", "login")


def handles(path: NixPath) -> bool:
    """``path`` is inside the settings of a service in ENVSUBST: this shape's, not on_url's."""
    return len(path) >= 4 and path[0] == "services" and path[1] in ENVSUBST and path[2] == ENVSUBST[path[1]][0]


def variable(b: Builder) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", b.spec.secret).strip("_").upper()


def _reference(service: str, var: str) -> str:
    syntax = ENVSUBST[service][1]
    return "${" + var + "}" if syntax == "${}" else "$(" + var + ")" if syntax == "$()" else "$" + var


def _service_of_uses(b: Builder, fm: FileModel, lit: Lit) -> tuple[str, Node] | None:
    """The service whose settings read a let-bound string at every use (dendrite's nine connection_string
    keys reading one ``connectionString``), and the first reading binding; None when a use is anything
    else."""
    if len(lit.path) != 2 or lit.path[0] != "<let>":
        return None
    let = b.lets[fm.name].get(lit.path[1])
    if let is None or let.literal.start_byte != lit.node.start_byte or not let.uses:
        return None
    services = set()
    first = None
    for u in let.uses:
        bind = next((x for x in fm.binds if x.exact and unparen(x.value).start_byte == u.start_byte), None)
        if bind is None or not handles(bind.path):
            return None
        services.add(bind.path[1])
        first = first or bind.node
    return (services.pop(), first) if len(services) == 1 and first is not None else None


def _user_beside(fm: FileModel, lit: Lit) -> str | None:
    """The user the attrset holding a bare password names (``username = "telegraf";``)."""
    for x in fm.binds:
        if x.exact and x.path[:-1] == lit.path[:-1] and x.path[-1] in _USERS:
            return decode_string(unparen(x.value))
    return None


def apply(b: Builder, password: str | None) -> None:
    from nixmig.nixsrc.patch import split_url

    var = variable(b)
    for fm, lit in list(b.all_lits()):
        if (fm.name, lit.node.start_byte) in b.handled:
            continue
        direct = lit.exact and lit.bind is not None and handles(lit.path)
        via = None if direct else _service_of_uses(b, fm, lit)
        service = lit.path[1] if direct else via[0] if via is not None else None
        anchor = lit.bind.node if direct and lit.bind is not None else via[1] if via is not None else None
        value = decode_string(lit.node)  # a literal only: its text is what is edited
        if service is None or anchor is None or value is None:
            continue
        url: UrlParts | None = split_url(value, password, b.spec.url_schemes)
        if is_placeholder(url.password if url is not None else value):
            continue  # "$VAR" / "${VAR}": a reference (this shape's own edit, on a second run), no password
        if url is not None:
            if url.embedded or not b._is_ours(url, password, b.db):
                continue
            new = url.prefix + _reference(service, var) + url.suffix
            b.mask_url(fm, lit.node, value, url)
            b.known.add(digest(url.password.encode()))
        elif direct and _ours_bare(b, fm, lit, value, password):
            new = _reference(service, var)
            b.mask_literal(fm, lit.node)
            b.known.add(digest(value.encode()))
        else:
            continue
        b.ed.add(
            fm,
            lit.node.start_byte,
            lit.node.end_byte,
            nix_string(new),
            f"{'.'.join(lit.path)} reads the {'URL' if url else 'password'} from the variable {var} at start ("
            + {"$": "envsubst in the unit's ExecStartPre", "${}": "telegraf's own substitution of ${VAR}",
               "$()": "wiki-js' own substitution of $(VAR) in its config"}[ENVSUBST[service][1]]
            + f"), which the {service} unit renders into its EnvironmentFile from the agenix secret {b.spec.secret}",
        )  # fmt: skip
        b.handled.add((fm.name, lit.node.start_byte))
        b.replaced.append(f"{'.'.join(lit.path)} at {fm.where(lit.node)}")
        _render(b, fm, lit, anchor, service, EnvLine(var, "", "", raw=url is None))


def _ours_bare(b: Builder, fm: FileModel, lit: Lit, value: str, password: str | None) -> bool:
    if password is not None:
        return value == password
    if digest(value.encode()) in b.known:
        return True
    named = classify_name(lit.path[-1])
    return named is not None and named.kind is Kind.PASSWORD and _user_beside(fm, lit) == b.spec.role


def _render(b: Builder, fm: FileModel, lit: Lit, near: Node, unit: str, line: EnvLine) -> None:
    from nixmig.nixsrc.errors import PatchError
    from nixmig.nixsrc.patch import _Renderer

    key = ("systemd", fm.name, unit)
    if key not in b.renderers:
        try:
            anchor = b._bind_containing(fm, ("systemd", "services", unit))
        except PatchError:  # the unit is the module's: its bindings go after the settings' binding
            anchor = near
        runtime_dir, mode = RUNTIME_DIRS.get(unit, (unit, "0700"))
        b.renderers[key] = _Renderer(key, "systemd", fm, anchor, unit, unit, runtime_dir, dir_mode=mode)
    r = b.renderers[key]
    b.add_env_line(r, line)
    r.literals.append(f"{line.var} at {fm.where(lit.node)}")


SHAPE = Shape(
    "env-subst",
    "a password (or a URL holding one) in the settings of a service that substitutes environment variables "
    "into its config at start (dendrite's envsubst, telegraf's ${VAR}): the literal reads a variable the "
    "service's unit renders into its EnvironmentFile from the agenix secret",
    apply,
    (
        "native-dendrite-let-url-envsubst",
        "native-telegraf-influxdb-password-envsubst",
        "native-wiki-js-settings-db-pass",
        "native-hedgedoc-settings-db-password-envsubst",
    ),
)
