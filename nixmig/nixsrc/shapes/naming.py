"""Does an option name the migration's credential? For shapes that find a literal with no password
recognised yet (a native service, no database container): the option must say so itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from nixmig.nixsrc.scan import words

if TYPE_CHECKING:
    from nixmig.nixsrc.model import Lit
    from nixmig.nixsrc.patch import Builder

_PLAIN = frozenset({"password", "passwd", "pass", "file", "secret", "path"})
_PASSWORD = frozenset({"password", "passwd", "pass", "pw", "pwd"})


def named_by(b: Builder, option: tuple[str, ...]) -> bool:
    """password_option names it, a database's (``database.passwordFile``), or one named like the secret
    or the role (``adminpassFile`` for a secret ``cloud-admin-pass``)."""
    if b.spec.password_option and tuple(b.spec.password_option.split(".")) == option:
        return True
    if database_password_named(option):
        return True
    names = option[2:] if option[:1] == ("services",) else option
    have = {w.lower() for n in names for w in words(n)} - _PLAIN
    wanted = {w for w in (*words(b.spec.secret), b.spec.role) if len(w) >= 3} - _PLAIN
    return any(w in h for w in wanted for h in have)  # "admin" in adminpassFile


def database_password_named(option: tuple[str, ...]) -> bool:
    """The option's name says a database's password (``databasePasswordFile``, ``database.passwordFile``,
    ``dbpassFile``): the file a client logs in to the database with, never another credential."""
    names = option[2:] if option[:1] == ("services",) else option  # services.keycloak.database.passwordFile
    every = {w.lower() for n in names for w in words(n)}
    have = every - _PLAIN
    # not gitlab's secrets.dbFile (a key, no password)
    says_password = bool(every & _PASSWORD) or any("pass" in h for h in have)
    return says_password and any(h.startswith(("db", "database")) for h in have)


def password_named(option: tuple[str, ...]) -> bool:
    """The option's name says password (``databasePasswordFile``), not only database (gitlab's
    ``secrets.dbFile``, the key its database columns are encrypted with)."""
    return any(w.lower() in _PASSWORD for w in words(option[-1]))


def best_named(secret: str, service: str, names: Sequence[Sequence[str]]) -> list[int]:
    """Which of several credentials (each given by its name's words) a move's secret names: the ones
    sharing the most words with it, the service's own name left out (``paperless-secret-key`` picks
    PAPERLESS_SECRET_KEY over PAPERLESS_ADMIN_PASSWORD); all of them when there is one; none when no
    name shares a word (the verdict lists them)."""
    if len(names) <= 1:
        return list(range(len(names)))
    wanted = {w.lower() for w in words(secret)} - {w.lower() for w in words(service)}
    scores = [len(wanted & {w.lower() for w in n}) for n in names]
    best = max(scores)
    return [i for i, s in enumerate(scores) if s == best] if best else []


def others_note(b: Builder, lit: Lit, others: Sequence[str]) -> None:
    """The credentials of the same settings a move leaves (another one's secret): said in a note, so the
    user gives each a migration of its own (scan lists them too)."""
    if others:
        b.notes.append(
            f"{', '.join(others)}: another hardcoded credential beside {'.'.join(lit.path)}, which this migration "
            f"moves (its secret {b.spec.secret} names it); each needs a migration of its own (strategy move)"
        )
