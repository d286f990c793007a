"""One root exception. Subclasses carry data; only the CLI maps them to exit codes.

Every message is one line: what went wrong, where, and what to do. A message
never contains a secret value: callers pass names and paths, not contents.
"""

from __future__ import annotations

from pathlib import Path


class NixmigError(Exception):
    """Root of every error nixmig reports to the user."""

    def __init__(self, what: str, *, where: str | Path | None = None, hint: str | None = None):
        self.what = what
        self.where = str(where) if where is not None else None
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.hint:
            parts.append(self.hint)
        return " — ".join(parts)


class UsageError(NixmigError):
    """Bad arguments or a combination of flags that cannot work (exit code 2)."""


class ConfigError(NixmigError):
    """nixmig.toml is missing, malformed, or has an unknown key or a wrong type."""


class NixSyntaxError(NixmigError):
    """A Nix file does not parse."""


class NixEvalError(NixmigError):
    """A Nix file parses but cannot be evaluated into what nixmig needs."""


class RecipientError(NixmigError):
    """A public key that is not an age recipient nixmig supports."""


class IdentityError(NixmigError):
    """A private key / identity file that is missing, unreadable or does not match."""


class SecretsError(NixmigError):
    """An agenix secret set is inconsistent (missing file, missing entry, existing name ...)."""


class ToolMissingError(NixmigError):
    """An external program nixmig needs is not on PATH."""
