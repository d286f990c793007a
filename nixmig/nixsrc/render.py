"""The Jinja2 templates of `nixmig patch` (``templates/``) and the env-file renderer script.

jinja2 is imported only when something renders.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixmig.nixsrc.quote import Antiquote, comment_text, nix_attr, nix_escape, nix_indented, nix_string, shell_quote

if TYPE_CHECKING:
    from jinja2 import Environment

TEMPLATES = Path(__file__).parent / "templates"


@functools.cache
def environment() -> Environment:
    """The Jinja2 environment: autoescape off, strict undefined, our escaping as filters."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=False,  # noqa: S701 - Nix and shell, not HTML: escaping is explicit (nixstr, shq, comment)
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["nixstr"] = nix_string
    env.filters["nixesc"] = nix_escape
    env.filters["nixattr"] = nix_attr
    env.filters["shq"] = shell_quote
    env.filters["comment"] = comment_text  # every value in a `#` comment goes through it
    return env


class _Macros:
    """The macros of one template, loaded on first use (jinja2 is imported only when something renders)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, macro: str) -> Any:
        return getattr(environment().get_template(self.name).module, macro)


def template(name: str) -> Any:
    """The macros of one template (``template("arion-service.nix.j2").env_file(...)``)."""
    return _Macros(name)


# what a quoted line (EnvLine.quoted) cannot hold: single quotes are literal for systemd's EnvironmentFile= and
# bash's `source`, except a quote, a backslash (an escape inside quotes in some systemd versions), CR, LF, NUL
UNQUOTABLE = re.compile(r"['\\\n\r\x00]")


CONSTANT_VALUE = re.compile(r"[A-Za-z0-9._-]+")  # a constant line's value: read alike by every env file reader


@dataclass(frozen=True)
class EnvLine:
    var: str
    prefix: str  # the URL up to the password, as written (e.g. "postgres://postgres:")
    suffix: str  # the URL after the password (e.g. "@db:5432/default")
    # a bare password (DB_PASSWORD=...), not in a URL: written as it is, and the renderer refuses
    # at start a password that an env file line cannot hold unquoted (anything but A-Z a-z 0-9 - . _ ~)
    raw: bool = False
    # the value kept as it is, single-quoted (VAR='value'): for a file only systemd's EnvironmentFile= and
    # bash's `source` read (both take '...' literally; docker's --env-file does not, it keeps the quotes);
    # the renderer refuses at start a value holding ' or \\ (systemd reads \\ as an escape in quotes
    # in some versions), a newline or a carriage return
    quoted: bool = False
    # a companion credential (nixmig.toml's `also`): VAR=<the value of this agenix secret, kept as it
    # was>, read from that secret's own file; "" for the migration's password
    secret: str = ""
    # a fixed value beside the secret (keycloak's KC_BOOTSTRAP_ADMIN_USERNAME=admin, which its module sets
    # only with the option the move takes away): VAR=constant, no secret read; CONSTANT_VALUE characters only
    constant: str = ""

    def __post_init__(self) -> None:
        if self.constant and not CONSTANT_VALUE.fullmatch(self.constant):
            raise ValueError(f"a constant env line holds {self.constant!r}: only {CONSTANT_VALUE.pattern}")


@dataclass(frozen=True)
class EnvFile:
    path: str
    lines: tuple[EnvLine, ...]


PASSWORD_FILE_PLACEHOLDER = "\x00password_file\x00"  # noqa: S105 - a marker


def also_secrets(files: Sequence[EnvFile]) -> list[str]:
    """The companion secrets ``files`` read (EnvLine.secret), in order of first use."""
    return list(dict.fromkeys(line.secret for f in files for line in f.lines if line.secret))


def render_script(
    secret: str, password_file: str, files: Sequence[EnvFile], also: Sequence[tuple[str, str]] = ()
) -> str:
    """The env-file renderer (bash). ``password_file`` is a shell word, inserted as is; ``also``:
    (secret, shell word of its file) for each companion secret the lines read."""
    tpl = environment().get_template("env-file.sh.j2")
    raw = any(line.raw for f in files for line in f.lines)
    quoted = any(line.quoted for f in files for line in f.lines)
    encoded = any(not (line.quoted or line.secret or line.constant) for f in files for line in f.lines)
    index = {name: i for i, (name, _) in enumerate(also, start=1)}
    missing = [n for n in also_secrets(files) if n not in index]
    if missing:
        raise ValueError(f"no file given for the companion secret {missing[0]!r}")  # a caller's bug
    text = tpl.render(
        secret=secret,
        password_file=password_file,
        files=files,
        raw=raw,
        quoted=quoted,
        encoded=encoded,
        also=also,
        also_index=index,
    )
    return str(text).strip("\n") + "\n"


def script_in_nix(
    secret: str,
    password_file: str | Antiquote,
    files: Sequence[EnvFile],
    indent: str = "  ",
    also: Sequence[tuple[str, str | Antiquote]] = (),
) -> str:
    """The renderer as a Nix indented string.

    ``password_file`` (and each file of ``also``, see :func:`render_script`) is a shell word, or
    an :class:`Antiquote` of Nix code that evaluates to one (``lib.escapeShellArg
    config.age.secrets.NAME.path``).
    """
    words: list[str | Antiquote] = [password_file, *(w for _, w in also)]
    marks = [PASSWORD_FILE_PLACEHOLDER if i == 0 else f"\x00also_file_{i}\x00" for i in range(len(words))]
    shown = [m if isinstance(w, Antiquote) else w for w, m in zip(words, marks, strict=True)]
    script = render_script(secret, shown[0], files, [(n, w) for (n, _), w in zip(also, shown[1:], strict=True)])
    parts: list[str | Antiquote] = []
    for word, mark in zip(words, marks, strict=True):
        if isinstance(word, Antiquote):
            before, script = script.split(mark)
            parts += [before, word]
    return nix_indented([*parts, script], indent)
