"""The choices of `nixmig reencrypt`, apart from the runner so `--help` stays light."""

from __future__ import annotations

import enum


class Mode(enum.StrEnum):
    REENCRYPT = "reencrypt"
    ENCRYPT_PLAINTEXT = "encrypt-plaintext"
    VERIFY = "verify"


class OnPlaintext(enum.StrEnum):
    ERROR = "error"
    ENCRYPT = "encrypt"
    SKIP = "skip"
    FAIL = "fail"
