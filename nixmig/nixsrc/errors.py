"""PatchError, apart so that the modules `nixmig patch` is built from can raise it without importing patch."""

from __future__ import annotations

from nixmig.errors import NixmigError


class PatchError(NixmigError):
    """The Nix tree cannot be patched as asked (ambiguous, inconsistent, or an edit would not parse)."""
