"""Password generation and stdin intake. No trailing newline, ever."""

from __future__ import annotations

import secrets
import string
from typing import Literal

from nixmig.errors import UsageError
from nixmig.sensitive import Secret

Charset = Literal["urlsafe", "alnum", "hex", "base64"]

ALPHABETS: dict[str, str] = {
    # Safe inside a postgres:// URL, a shell word and an env file without escaping.
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "alnum": string.ascii_letters + string.digits,
    "hex": "0123456789abcdef",
    # Needs percent-encoding in URLs ('+' and '/'): only when the consumer wants it.
    "base64": string.ascii_letters + string.digits + "+/",
}

MIN_LENGTH = 16
MAX_LENGTH = 4096


def generate(length: int = 32, charset: Charset = "urlsafe") -> Secret:
    """A password of ``length`` characters drawn uniformly from the charset."""
    if charset not in ALPHABETS:
        raise UsageError(f"unknown charset {charset!r}", hint="use one of: " + ", ".join(ALPHABETS))
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise UsageError(
            f"--length {length} is out of range",
            hint=f"use {MIN_LENGTH}..{MAX_LENGTH} characters",
        )
    alphabet = ALPHABETS[charset]
    return Secret("".join(secrets.choice(alphabet) for _ in range(length)))


def from_stdin(data: bytes) -> Secret:
    """A secret piped in: exactly one trailing newline (\\n or \\r\\n) is removed."""
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise UsageError("stdin is empty", hint='pipe the secret in, e.g. printf %s "$PW" | nixmig ...')
    return Secret(data)
