"""``environment.etc."app-pass".text = "..."`` read by an option as ``"/etc/app-pass"``.

/etc files are links into the world-readable Nix store: the option names the agenix file
instead, and the /etc entry goes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nixmig.nixsrc.leftover import digest, uses_secret
from nixmig.nixsrc.model import unparen
from nixmig.nixsrc.quote import nix_attr
from nixmig.nixsrc.shapes import Shape
from nixmig.nixsrc.shapes.naming import named_by

if TYPE_CHECKING:
    from nixmig.nixsrc.model import Bind, FileModel
    from nixmig.nixsrc.patch import Builder


def apply(b: Builder, password: str | None) -> None:
    texts: dict[str, tuple[FileModel, Bind, str]] = {}
    for fm, bind in b.all_binds():
        if bind.exact and len(bind.path) == 4 and bind.path[:2] == ("environment", "etc") and bind.path[3] == "text":
            value = b.value_of(fm, unparen(bind.value))  # a literal, or a let-bound one (`.text = dbPass;`)
            if value is not None and (password is None or value == password):
                texts[bind.path[2]] = (fm, bind, value)
    users = [
        (fm, bind, texts[p.removeprefix("/etc/")])
        for fm, bind in b.all_binds()
        if bind.exact
        and len(bind.path) >= 2
        and (bind.path[-1].endswith("File") or file_setting(bind.path))
        and (p := b.value_of(fm, unparen(bind.value)) or "").startswith("/etc/")  # a literal, or let-bound
        and p.removeprefix("/etc/") in texts
    ]
    if password is None:  # a move of a service's own secret: another service's /etc file is another's (28/06)
        own = set(b.own_service([u[1].path for u in users]))
        users = [u for i, u in enumerate(users) if i in own or named_by(b, u[1].path)]
    shared = _shared(users)
    beside = _companions_beside(b, shared) if shared else None
    if beside is not None:  # the database's option and companions (nextcloud's adminpassFile) read one /etc file
        users, shared = [beside], []
    if shared:  # realcfg28/02: dbpassFile and adminpassFile read one /etc file; either edit breaks the other
        _fm, _bind, (efm, eb, value) = shared[0]
        b.known.add(digest(value.encode()))
        readers = ", ".join(f"{'.'.join(x[1].path)} ({x[0].where(x[1].value)})" for x in shared)
        b.manual_here(
            efm,
            unparen(eb.value),
            f"/etc/{eb.path[2]} holds the password and is read by {len(shared)} options ({readers}): nixmig moves "
            "a /etc file one option reads; give each option its own file first (the database's and the other "
            "credential's), then patch again",
            "",
        )
        b.mask_literal(efm, unparen(eb.value))
        return
    if password is None and uses_secret(b.models, b.spec.secret, b.spec.secret_on_host):
        # a tree patched already: another /etc file left is another credential's, unless named for the database
        users = [u for u in users if named_by(b, u[1].path)]
    elif len(users) > 1 and password is None:  # dbpassFile and adminpassFile each read one: the database's
        users = [u for u in users if named_by(b, u[1].path)] or users
    if len(users) != 1 or b.option_literal is not None or b.store_file is not None:
        return  # none, or several: the verdict lists each literal
    if password is None and b.spec.strategy != "move" and not named_by(b, users[0][1].path):
        return  # a rotation takes a database's file only (adminpassFile alone is another credential)
    fm, bind, (efm, eb, value) = users[0]
    b.known.add(digest(value.encode()))
    b.mask_literal(efm, unparen(eb.value))
    b.use_lets(efm, unparen(eb.value))  # a let-bound text: its binding goes with its last use
    text = unparen(eb.value)
    let = b.lets[efm.name].get(efm.text(text)) if text.type == "variable_expression" else None
    # where the value is written (a let's literal: `secret new --from FILE:LINE` reads it there)
    b.replaced.append(f"{'.'.join(eb.path)} at {efm.where(let.literal if let is not None else eb.value)}")
    b.ed.add(
        fm,
        bind.value.start_byte,
        bind.value.end_byte,
        f"config.age.secrets.{nix_attr(b.spec.secret)}.path",
        f"{'.'.join(bind.path)} read the password from {b.value_of(fm, unparen(bind.value))}, a file written into "
        f"the world-readable Nix store: it now names the file agenix decrypts {b.spec.secret} to",
    )
    whole = next((x for x in efm.binds if x.exact and x.path == eb.path[:3]), None)
    # the entry whole, or each of its dotted bindings (`.text` and `.mode` apart: an entry left with a mode and
    # no text or source does not evaluate, realcfg28/02)
    parts = [whole] if whole is not None else [x for x in efm.binds if x.exact and x.path[:3] == eb.path[:3]]
    for x in parts:
        b.ed.remove_binding(efm, x.node, f"removes /etc/{eb.path[2]}, which held the password in the Nix store")
    b.need(fm, ("config",))
    b.store_file = fm
    b.service_reads(bind.path, (fm, bind.value))


_User = tuple["FileModel", "Bind", tuple["FileModel", "Bind", str]]

# nixpkgs modules whose settings read VAR from the file a VAR_FILE setting names (checked in nixpkgs: the
# firefly-iii modules export every *_FILE setting as VAR="$(< path)" in their units, run as their user)
FILE_SETTINGS_SERVICES = frozenset({"firefly-iii", "firefly-iii-data-importer"})


def file_setting(path: tuple[str, ...]) -> bool:
    """``services.firefly-iii.settings.DB_PASSWORD_FILE``: a setting whose module reads the file it names."""
    return (
        len(path) == 4
        and path[0] == "services"
        and path[1] in FILE_SETTINGS_SERVICES
        and path[2] == "settings"
        and path[3].endswith("_FILE")
    )


def _companions_beside(b: Builder, shared: list[_User]) -> _User | None:
    """The database's reader of a /etc file other options read too, when each other reader is a companion
    nixmig moves (an option that takes a file, such as nextcloud's adminpassFile: its own secret, value kept):
    with every such option in nixmig.toml's also, the database's reader (its option names the agenix file, the
    entry goes whole; option_companion points each companion at its own). One not in also yet is a by-hand item
    naming it as a companion too (`nixmig patch` adds it to also and plans again; the engine's plan refuses).
    Else None: refused."""
    from nixmig.nixsrc.shapes import option_companion

    own = [u for u in shared if named_by(b, u[1].path)]  # the database's (dbpassFile), or the secret's namesake
    others = [u for u in shared if u not in own]
    if len(own) != 1 or not others:
        return None
    keys = [".".join(u[1].path) for u in others]
    candidates = {".".join(f.key) for f in option_companion.candidates(b)}
    if not all(option_companion.is_option_key(k) and k in candidates for k in keys):
        return None
    configured = {k for k, _ in b.spec.also}
    _fm, _bind, (efm, eb, _value) = own[0]
    for u, key in zip(others, keys, strict=True):
        if key in configured:
            continue
        b.manual_here(
            efm,
            unparen(eb.value),
            f"/etc/{eb.path[2]} holds the password and is read by {'.'.join(own[0][1].path)} and by {key} "
            f"({u[0].where(u[1].value)}), another credential with the database's value: it moves onto its own "
            f'secret, value kept (also = {{ "{key}" = "NAME" }} in [migrations.{b.spec.migration or "…"}]), and '
            "the database's option onto this migration's",
            "",
            key,
        )
    return own[0]


def _shared(users: list[_User]) -> list[_User]:
    """The readers of a /etc file that more than one option reads (the first such file's)."""
    by_file: dict[str, list[_User]] = {}
    for u in users:
        by_file.setdefault(u[2][1].path[2], []).append(u)
    return next((us for us in by_file.values() if len(us) > 1), [])


SHAPE = Shape(
    "etc-file",
    'environment.etc."x".text with the password, read by an option as "/etc/x": the option names the agenix '
    "file, the /etc entry goes",
    apply,
    ("native-etc-text-password-file", "native-etc-text-let-path"),
)
