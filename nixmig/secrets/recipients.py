"""Recipient keys as agenix understands them: ssh-ed25519, ssh-rsa and age1 (X25519).

Pure: parses and validates the text form, and computes the 4-byte tag that
age's ssh stanzas carry, so we can tell from a file's header which ssh keys it
was encrypted to.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Literal

from nixmig.errors import RecipientError

Kind = Literal["ssh-ed25519", "ssh-rsa", "age"]

_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_AGE_RE = re.compile(r"^age1[" + _BECH32 + r"]{58}$")


@dataclass(frozen=True)
class Recipient:
    kind: Kind
    text: str  # canonical form: "ssh-ed25519 AAAA..." (no comment) or "age1..."
    blob: bytes = b""  # ssh wire-format public key (empty for age)

    @property
    def tag(self) -> str | None:
        """The stanza argument age writes for this ssh key (None for X25519)."""
        if self.kind == "age":
            return None
        digest = hashlib.sha256(self.blob).digest()[:4]
        return base64.b64encode(digest).decode().rstrip("=")

    def short(self) -> str:
        body = self.text.split(" ", 1)[-1]
        return f"{self.kind} {body[:12]}…{body[-6:]}" if self.kind != "age" else body[:16] + "…"


def parse(text: str, *, where: str | None = None) -> Recipient:
    """Parse one recipient; raise RecipientError naming it (shortened) and ``where``."""
    stripped = text.strip()
    if stripped.startswith("age1"):
        if not _AGE_RE.match(stripped):
            raise RecipientError(
                f"not a valid age recipient: {_short(stripped)}",
                where=where,
                hint="an age recipient is age1 followed by 58 bech32 characters (age-keygen -y)",
            )
        return Recipient("age", stripped)
    parts = stripped.split()
    if len(parts) < 2:
        raise RecipientError(
            f"not a public key: {_short(stripped)!r}",
            where=where,
            hint="use an ssh-ed25519 / ssh-rsa public key line or an age1… recipient",
        )
    kind, b64 = parts[0], parts[1]
    if kind not in ("ssh-ed25519", "ssh-rsa"):
        raise RecipientError(
            f"unsupported key type {kind!r}",
            where=where,
            hint="age (and agenix) accept only ssh-ed25519, ssh-rsa and age1… recipients",
        )
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise RecipientError(f"{kind} key is not valid base64: {_short(stripped)}", where=where) from None
    inner = _ssh_string(blob, 0)
    if inner is None or inner[0] != kind.encode():
        raise RecipientError(f"{kind} key blob does not hold a {kind} key: {_short(stripped)}", where=where)
    if kind == "ssh-ed25519":
        key = _ssh_string(blob, inner[1])
        if key is None or len(key[0]) != 32:
            raise RecipientError(f"truncated ssh-ed25519 key: {_short(stripped)}", where=where)
    return Recipient(kind, f"{kind} {b64}", blob)  # type: ignore[arg-type]


def _ssh_string(blob: bytes, offset: int) -> tuple[bytes, int] | None:
    if len(blob) < offset + 4:
        return None
    (n,) = struct.unpack(">I", blob[offset : offset + 4])
    end = offset + 4 + n
    if len(blob) < end:
        return None
    return blob[offset + 4 : end], end


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:28] + "…" + text[-8:]
