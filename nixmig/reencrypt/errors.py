"""Errors of the re-encryption phase. Messages name tables, columns, key sources and
primary keys, never a value, a key or a token."""

from __future__ import annotations

from nixmig.errors import NixmigError


class ReencryptError(NixmigError):
    """Root of the re-encryption errors."""


class SpecError(ReencryptError):
    """The tables/columns to migrate do not match the spec file or the database."""


class KeyProviderError(ReencryptError):
    """A key cannot be loaded: missing file or variable, wrong length, undecryptable .age."""


class VaultError(KeyProviderError):
    """Vault transit refused or failed a request."""


class DatabaseError(ReencryptError):
    """PostgreSQL refused a connection or a statement."""


class IntegrityError(ReencryptError):
    """A check that must never fail did: stop before anything of the batch is written."""


class PlaintextError(ReencryptError):
    """A value without a scheme prefix in reencrypt mode, with the default --on-plaintext."""
