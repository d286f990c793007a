"""Clients of the database container that hold no password nixmig can see.

An app container that depends on the database container (``dependsOn``, compose's ``depends_on``)
and clearly talks to it (an environment variable about the database: ``PAPERLESS_DBHOST``,
``DB_HOST``) but is given no password (no password variable, no URL, no env file) logs in with one
nixmig never sees: its image's default, a file baked into the image, a value set elsewhere. A
rotation changes the database's password and not that one: the app stops. patch says so instead of
claiming the tree is patched.

Images whose default is known are named with the variable to set (:data:`IMAGE_DEFAULTS`): the
user binds it to today's value, and the next run moves it into the env file like any other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from nixmig.nixsrc.containers import KINDS, container_shape, env_words
from nixmig.nixsrc.model import Bind, FileModel, NixPath, decode_string, unparen

# image (its repository's last part, lower case) -> (the variable holding the database password, its
# default). paperless-ngx: docs.paperless-ngx.com/configuration, PAPERLESS_DBPASS "Defaults to paperless".
IMAGE_DEFAULTS: Final[dict[str, tuple[str, str]]] = {
    "paperless-ngx": ("PAPERLESS_DBPASS", "paperless"),
    "paperless-ng": ("PAPERLESS_DBPASS", "paperless"),
}
# image -> (the variable naming the role it logs in as, its default): PAPERLESS_DBUSER "Defaults to paperless"
IMAGE_USERS: Final[dict[str, tuple[str, str]]] = {
    "paperless-ngx": ("PAPERLESS_DBUSER", "paperless"),
    "paperless-ng": ("PAPERLESS_DBUSER", "paperless"),
}

_DEPENDS: Final = {"oci": "dependsOn", "quadlet": "dependsOn", "arion": "depends_on"}
_DB_WORDS: Final = {"db", "database", "pg", "postgres", "postgresql", "mysql", "mariadb", "sql"}
_PASSWORD: Final = re.compile(r"pass(word)?|passwd|pwd", re.IGNORECASE)
_DB_URL: Final = re.compile(r"(postgres(ql)?|mysql2?|mariadb)://", re.IGNORECASE)
# a settings file mounted into the container, where apps keep their database password (piped's
# config.properties, a config.php, an .env): SRC:DST[:ro] with a file name in SRC
_SETTINGS_FILE: Final = re.compile(
    r"^[^:]*?([\w.-]+\.(?:properties|conf|cfg|ini|env|ya?ml|json|toml|php|xml|pm|py|rb|js|lua|exs?))(?::[^:]*){1,2}$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Client:
    fm: FileModel
    name: str  # the container, as written
    depends: Bind  # its dependsOn / depends_on binding (where patch points)
    image: str | None
    default: tuple[str, str] | None  # (variable, default value) when the image's is known
    settings: str | None = None  # a settings file it mounts, when that is the only sign it logs in
    login: str | None = None  # the role it logs in as, when its image's user variable is known (a string)

    def what(self, db: str, password: str | None) -> str:
        head = (
            f"the {self.name} container depends on {db} and talks to its database, but no password is given to it here"
        )
        if self.default is not None:
            var, value = self.default
            today = "the password today" if password is not None and value == password else repr(value)
            return (
                f"{head}: its image ({self.image}) logs in with {var}, default {today}"
                f"; rotating would lock it out. Bind {var} in its environment to today's value, and run patch "
                f"again: it moves {var} into the env file with the rest"
            )
        if self.settings is not None:
            return (
                f"the {self.name} container depends on {db} and mounts {self.settings}, with no password in its "
                f"environment: if its database password is in {'one of them' if ', ' in self.settings else 'that file'}"
                ", nixmig cannot edit it and rotating would "
                f"lock it out. Give it the password through its environment (bind the variable to today's value, "
                f'then patch again), use strategy = "move", or list the containers that use the database in '
                f"app_services"
            )
        return (
            f"{head}: it logs in with a password nixmig does not see (its image's default, a file of its own); "
            f"rotating would lock it out. Bind its password variable in its environment to today's value and "
            f"run patch again, or list the containers that use the database in app_services"
        )


def silent_clients(models: Mapping[str, FileModel], db_kind: str, db_name: str) -> list[Client]:
    """The containers that depend on ``db_name`` and talk to a database with no credential in sight."""
    want = _bare(db_name)
    out: list[Client] = []
    for fm in models.values():
        for b in fm.binds:
            if not b.exact or not b.path:
                continue
            shape = container_shape(b.path[:-1])
            if shape is None or b.path[-1] != _DEPENDS.get(shape[0]):
                continue
            kind, name, prefix = shape
            if (kind == "arion") != (db_kind == "arion") or want not in _names(b):
                continue
            env = _env(fm, kind, prefix)
            if any(_credential(v, value) for v, value in env.items()) or _has_env_files(fm, kind, prefix):
                continue  # a credential nixmig sees: handled, or said, where it is
            image = _image(fm, kind, prefix)
            default = _default(image)
            settings = None
            if default is None and not any(env_words(v) & _DB_WORDS for v in env):
                settings = _settings_file(fm, kind, prefix)
                if settings is None:
                    continue  # no sign it logs in to the database (an admin UI, a proxy)
            out.append(Client(fm, name, b, image, default, settings, _login(image, env)))
    return out


def _bare(name: str) -> str:
    return name[1:-1] if len(name) >= 2 and name[0] == name[-1] == '"' else name


def _names(b: Bind) -> set[str]:
    """The container names a dependsOn list (or compose's depends_on list or attrset) holds."""
    value = unparen(b.value)
    if value.type == "list_expression":
        return {s for e in value.named_children if (s := decode_string(e)) is not None}
    if value.type in ("attrset_expression", "rec_attrset_expression"):
        out: set[str] = set()
        for child in value.named_children:
            if child.type == "binding_set":
                for bd in child.named_children:
                    ap = bd.child_by_field_name("attrpath")
                    if ap is not None and ap.named_children:
                        first = ap.named_children[0]
                        out.add(_bare((first.text or b"").decode()))
        return out
    return set()


def _env(fm: FileModel, kind: str, prefix: NixPath) -> dict[str, str | None]:
    """The container's environment: variable -> its value when a plain string (None: computed)."""
    env = (*prefix, *KINDS[kind].env)
    n = len(env)
    return {
        _bare(b.path[n]): decode_string(unparen(b.value)) for b in fm.binds if len(b.path) > n and b.path[:n] == env
    }


def _credential(var: str, value: str | None) -> bool:
    """A password variable, a database URL (by its name or its value): a credential patch sees."""
    if _PASSWORD.search(var):
        return True
    ws = env_words(var)
    if ws & {"url", "uri", "dsn"} and (ws & _DB_WORDS or value is None):
        return True  # DATABASE_URL, or a URL computed where nixmig cannot read it
    return value is not None and bool(_DB_URL.search(value))


def _settings_file(fm: FileModel, kind: str, prefix: NixPath) -> str | None:
    """The settings files the container mounts (their names, the first four), or None."""
    path = (*prefix, *KINDS[kind].volumes)
    names: list[str] = []
    for b in fm.binds:
        if b.path == path and unparen(b.value).type == "list_expression":
            for e in unparen(b.value).named_children:
                spec = fm.text(e).strip('"') if e.type in ("string_expression", "indented_string_expression") else ""
                m = _SETTINGS_FILE.match(spec)
                if m is not None and m.group(1) not in names:
                    names.append(m.group(1))
    if not names:
        return None
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _has_env_files(fm: FileModel, kind: str, prefix: NixPath) -> bool:
    path = (*prefix, *KINDS[kind].env_files)
    return any(b.path[: len(path)] == path for b in fm.binds)


def _image(fm: FileModel, kind: str, prefix: NixPath) -> str | None:
    path = (*prefix, *KINDS[kind].image)
    for b in fm.binds:
        if b.path == path:
            return decode_string(unparen(b.value))
    return None


def _login(image: str | None, env: Mapping[str, str | None]) -> str | None:
    """The role the image logs in as: its user variable's value here, else its default (None: not known,
    or computed)."""
    found = IMAGE_USERS.get(_repo(image)) if image is not None else None
    if found is None:
        return None
    var, default = found
    return env.get(var, default)


def _repo(image: str) -> str:
    return image.lower().split("@")[0].rsplit("/", 1)[-1].split(":")[0]  # ghcr.io/x/paperless-ngx:2 -> paperless-ngx


def _default(image: str | None) -> tuple[str, str] | None:
    if image is None:
        return None
    return IMAGE_DEFAULTS.get(_repo(image))
