"""``services.paperless.settings.PAPERLESS_DBPASS = "..."``: a nixpkgs service whose settings are its
environment, and that reads one more env file (``services.X.environmentFile``) in each of its units.

The settings land in the world-readable Nix store (the units' Environment=). The literal goes; a
oneshot of nixmig's renders ``VAR=<password>`` into ``/run/<secret>-env/<secret>.env`` from the
agenix secret (a systemd credential: root reads the agenix file, so it stays root-only) before any
of the service's units starts, as the user the service runs as (its ``paperless-manage`` sources the
file as that user); ``environmentFile`` names that file. nixpkgs' option holds one path: when the
configuration sets it already, the literal is refused with what to do (nixmig does not edit a file
it cannot see).

Checked against nixpkgs (nixos/modules/services/misc/paperless.nix): ``environmentFile`` is
``EnvironmentFile=`` of paperless-scheduler, -task-queue, -consumer and -web (no ``-``: it must exist
when they start) and is sourced by the ``paperless-manage`` wrapper (the exporter runs it as the
service's user while the other units are stopped).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest
from nixmig.nixsrc.model import decode_string, unparen
from nixmig.nixsrc.quote import nix_attr, nix_string, store_name
from nixmig.nixsrc.render import UNQUOTABLE, EnvFile, EnvLine, script_in_nix, template
from nixmig.nixsrc.scan import Kind, classify_name, is_placeholder
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.naming import best_named, named_by, others_note

if TYPE_CHECKING:
    from nixmig.nixsrc.model import FileModel, Lit, NixPath
    from nixmig.nixsrc.patch import Builder


@dataclass(frozen=True)
class EnvFileService:
    """How a nixpkgs service reads an env file: the settings attrs that are its environment, the
    variables there that hold the database password, the option naming the env file, the units that
    read it (the first restarts the renderer with it), and who else reads it (a Nix expression)."""

    variables: tuple[str, ...]
    user_variable: str  # the setting naming the database user, beside the password
    units: tuple[str, ...]
    user: str
    settings: str = "settings"
    option: str = "environmentFile"


SERVICES: dict[str, EnvFileService] = {
    "paperless": EnvFileService(
        ("PAPERLESS_DBPASS",),
        "PAPERLESS_DBUSER",
        ("paperless-scheduler", "paperless-task-queue", "paperless-consumer", "paperless-web"),
        "config.services.paperless.user",
    ),
}


def _ours(b: Builder, fm: FileModel, lit: Lit, svc: EnvFileService, value: str, password: str | None) -> bool:
    if password is not None:
        return value == password
    if digest(value.encode()) in b.known or named_by(b, lit.path):
        return True
    user = next((x for x in fm.binds if x.exact and x.path == (*lit.path[:-1], svc.user_variable)), None)
    return user is not None and decode_string(unparen(user.value)) == b.spec.role


def _moved_setting(b: Builder) -> list[tuple[FileModel, Lit, str, str, EnvFileService]]:
    """Under strategy move, with no database password found: the credential of a service's settings
    (``PAPERLESS_SECRET_KEY``, an admin password) this migration moves, the one its secret's name picks
    when there are several (``paperless-secret-key``: SECRET and KEY), else none (the verdict lists them)."""
    found: list[tuple[FileModel, Lit, str, str, EnvFileService, tuple[str, ...]]] = []
    for fm, lit in b.all_lits():
        path = lit.path
        if len(path) != 4 or path[0] != "services" or path[1] not in SERVICES:
            continue
        svc = SERVICES[path[1]]
        if path[2] != svc.settings or not lit.exact or lit.bind is None:
            continue
        named = classify_name(path[3])
        if named is None or named.kind is Kind.HASH or (fm.name, lit.node.start_byte) in b.handled:
            continue
        value = b.value_of(fm, lit.node)
        if value is None or is_placeholder(value):
            continue
        found.append((fm, lit, value, path[1], svc, named.words))
    picked = best_named(b.spec.secret, found[0][3] if found else "", [f[5] for f in found])
    if len(picked) == 1:
        others = [f"{'.'.join(f[1].path)} ({f[0].where(f[1].node)})" for i, f in enumerate(found) if i != picked[0]]
        others_note(b, found[picked[0]][1], others)
    return [found[i][:5] for i in picked]


def apply(b: Builder, password: str | None) -> None:
    found: list[tuple[FileModel, Lit, str, str, EnvFileService]] = []
    for fm, lit in b.all_lits():
        path = lit.path
        if len(path) != 4 or path[0] != "services" or path[1] not in SERVICES:
            continue
        svc = SERVICES[path[1]]
        if path[2] != svc.settings or path[3] not in svc.variables or not lit.exact or lit.bind is None:
            continue
        value = b.value_of(fm, lit.node)
        if value is None or (fm.name, lit.node.start_byte) in b.handled:
            continue
        if _ours(b, fm, lit, svc, value, password):
            found.append((fm, lit, value, path[1], svc))
    if not found and b.spec.strategy == "move" and password is None and not b.known:
        found = _moved_setting(b)
    if len(found) != 1:
        return  # several: the verdict lists each
    fm, lit, value, service, svc = found[0]
    quoted = b.spec.strategy == "move"  # the value kept as it was: any byte single quotes hold
    if quoted and UNQUOTABLE.search(value):
        b.refuse_kept(
            fm,
            lit,
            f"holds a quote, a backslash or a line break, which a line of services.{service}'s env file cannot "
            "hold for both systemd and bash: by hand, or rotate it first",
        )
        return
    assert lit.bind is not None
    option: NixPath = ("services", service, svc.option)
    b.mask_literal(fm, lit.node)
    b.known.add(digest(value.encode()))
    set_at = [(f, x) for f, x in b.all_binds() if x.exact and x.path == option]
    if set_at:
        f, x = set_at[0]
        b.handled.add((fm.name, lit.node.start_byte))
        b.manual_here(
            fm,
            lit.node,
            f"{'.'.join(lit.path)} holds the hardcoded password, and {'.'.join(option)} is set already "
            f"({f.where(x.node)}): nixpkgs' services.{service} takes one env file, and nixmig does not edit one "
            f"it cannot see: put {lit.path[-1]}=... in that file from the agenix secret {b.spec.secret}, then "
            f"remove the literal",
            "",
        )
        return
    root = fm.root_of(lit.node)
    if root is None:
        return  # the verdict says it
    unit = store_name(f"{b.spec.secret}-env")
    env_path = b.spec.env_file or f"/run/{unit}/{b.spec.secret}.env"
    runtime_dir = posixpath.dirname(env_path).removeprefix("/run/")
    if posixpath.dirname(env_path) != f"/run/{runtime_dir}" or "/" in runtime_dir or not runtime_dir:
        return  # env_file outside a directory of its own under /run: the verdict says the literal
    b.handled.add((fm.name, lit.node.start_byte))
    b.use_lets(fm, lit.node)
    where = fm.where(lit.node)
    b.replaced.append(f"{lit.path[-1]} at {where}")
    b.ed.remove_binding(
        fm,
        lit.bind.node,
        f"removes {lit.path[-1]} ({'the hardcoded value' if quoted else 'the password'}) from "
        f"services.{service}.{svc.settings}, which the units' Environment= puts in the world-readable Nix store: "
        f"they read it from {env_path} instead",
    )
    attrset, _ = root
    b.insert_path(
        fm,
        attrset,
        option,
        lambda attr: f"{attr} = {nix_string(env_path)};",
        f"services.{service} reads {env_path} in each of its units (EnvironmentFile=) and in its manage "
        f"script: nixmig's {unit} unit renders it from the agenix secret {b.spec.secret}",
    )
    from nixmig.nixsrc.patch import credential_name, credential_word

    credential = credential_name(b.spec.secret)
    line = EnvLine(lit.path[-1], "", "", quoted=True) if quoted else EnvLine(lit.path[-1], "", "", raw=True)
    files = [EnvFile(env_path, (line,))]
    script = script_in_nix(b.spec.secret, credential_word(credential), files)
    tpl = template("env-file-unit.nix.j2")
    secret_attr = nix_attr(b.spec.secret)
    b.insert_path(
        fm,
        attrset,
        ("systemd", "services", unit),
        lambda attr: str(
            tpl.unit(
                attr,
                service,
                unit,
                svc.units,
                svc.user,
                credential,
                secret_attr,
                runtime_dir,
                env_path,
                store_name(f"{unit}-render"),
                script,
            )
        ),
        f"{unit}: a oneshot renders {env_path} from {b.spec.secret_on_host} (a systemd credential) before "
        f"{', '.join(svc.units)} start, and again when {svc.units[0]} restarts; it replaces {lit.path[-1]} "
        f"at {where}",
    )
    b.need(fm, ("config", "pkgs"))
    b.store_file = b.store_file or fm


SHAPE = Shape(
    "env-file-option",
    "services.paperless.settings.PAPERLESS_DBPASS: the password goes into an env file nixmig renders from "
    "the agenix secret, named by services.paperless.environmentFile",
    apply,
    ("native-paperless-settings-dbpass", "native-paperless-settings-dbpass-envfile-set"),
)
