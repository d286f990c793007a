"""SCRAM-SHA-256 verifiers, computed here so the clear password never reaches the server.

``ALTER ROLE r PASSWORD 'SCRAM-SHA-256$...'`` stores exactly what PostgreSQL
would store for the clear password (RFC 7677 / PostgreSQL's scram-common.c),
so a statement log or pg_stat_activity shows a verifier, never the password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from nixmig.sensitive import Secret

ITERATIONS = 4096


def verifier(password: Secret, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.reveal(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
