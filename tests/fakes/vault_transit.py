"""FAKE Vault transit server, for the UNIT tier only (tests/unit/test_reencrypt_keys.py).

A real Vault-compatible server does run here: OpenBao (tests/harness/openbao.py), and
every behaviour it can show is tested against it in the integration tier
(tests/integration/test_vault_openbao.py, test_reencrypt.py): request limits and splitting,
derived convergent keys, key versions and min_decryption_version, tokens without a
capability, missing keys, a server restart. This fake is kept for what the real one cannot
give the unit tier: an in-process server answering in milliseconds with no binary to start,
for the provider's error mapping and request shapes.

It speaks the subset of Vault's HTTP API that nixmig's Vault key provider uses,
with Vault's request and response shapes, so that the real ``hvac`` client runs
against it unchanged:

- ``GET  /v1/<mount>/keys/<name>``      key info (derived, convergent_encryption, latest_version, keys)
- ``POST /v1/<mount>/encrypt/<name>``   ``plaintext``/``context``/``key_version`` or ``batch_input``
- ``POST /v1/<mount>/decrypt/<name>``   ``ciphertext``/``context`` or ``batch_input``

What it reproduces from Vault, because nixmig depends on it:

- ciphertexts ``vault:vN:<base64>``, key versions (:meth:`FakeVaultTransit.rotate`);
- derived keys need a context and fail with Vault's message
  ``missing 'context' for key derivation; ...``;
- convergent encryption is deterministic for equal (context, plaintext);
- a token without a capability gets 403 ``{"errors": ["1 error occurred:\\n\\t* permission denied\\n\\n"]}``;
- a batch whose every item failed answers 400, the per-item errors still in
  ``data.batch_results`` (``partial_failure_response_code`` is honoured);
- a missing key answers 404 with an empty ``errors`` list.

What it is NOT: Vault's crypto. Keys are derived here with HKDF-SHA256 and
ciphertexts are AES-256-GCM with a 12-byte nonce, which is close to but not
byte-compatible with Vault's own derivation. Tests must not compare its
ciphertexts with a real Vault's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MISSING_CONTEXT = (
    "missing 'context' for key derivation; the key was created using a derived key, which means "
    "additional, per-request information must be included in order to perform operations with the key"
)
PERMISSION_DENIED = "1 error occurred:\n\t* permission denied\n\n"
ROOT_TOKEN = "fake-root-token"  # TEST ONLY


@dataclass
class FakeKey:
    derived: bool = False
    convergent: bool = False
    versions: list[bytes] = field(default_factory=lambda: [os.urandom(32)])


class _ItemError(Exception):
    pass


class FakeVaultTransit:
    """A FAKE transit engine over HTTP on 127.0.0.1 (see the module docstring).

    Use as a context manager; ``url`` is the address to give as ``--vault-addr``.
    Tokens: :data:`ROOT_TOKEN` may do everything; :meth:`add_token` adds one that
    may do only the listed ``(operation, key)`` pairs, operation being
    ``read``, ``encrypt`` or ``decrypt``.
    """

    def __init__(self, mount: str = "transit") -> None:
        self.mount = mount
        self.keys: dict[str, FakeKey] = {}
        self.tokens: dict[str, set[tuple[str, str]] | None] = {ROOT_TOKEN: None}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, number of batch items)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up ----------------------------------------------------------------------------

    def create_key(self, name: str, *, derived: bool = False, convergent: bool = False) -> None:
        if convergent and not derived:
            raise ValueError("Vault requires derived=true for convergent_encryption")
        self.keys[name] = FakeKey(derived=derived, convergent=convergent)

    def rotate(self, name: str) -> int:
        self.keys[name].versions.append(os.urandom(32))
        return len(self.keys[name].versions)

    def add_token(self, token: str, allow: set[tuple[str, str]]) -> None:
        self.tokens[token] = allow

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeVaultTransit:
        fake = self

        class Handler(_Handler):
            transit = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- the engine ------------------------------------------------------------------------

    def _key_for(self, key: FakeKey, version: int, context: str | None) -> bytes:
        base = key.versions[version - 1]
        if not key.derived:
            return base
        if not context:
            raise _ItemError(MISSING_CONTEXT)
        try:
            ctx = base64.b64decode(context, validate=True)
        except (binascii.Error, ValueError):
            raise _ItemError("failed to base64-decode context") from None
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fake-vault\0" + ctx)
        return kdf.derive(base)

    def encrypt_item(self, key: FakeKey, item: dict[str, Any]) -> dict[str, Any]:
        version = int(item.get("key_version") or len(key.versions))
        if not 1 <= version <= len(key.versions):
            raise _ItemError("invalid key version")
        try:
            plaintext = base64.b64decode(item.get("plaintext", ""), validate=True)
        except (binascii.Error, ValueError):
            raise _ItemError("failed to base64-decode plaintext") from None
        k = self._key_for(key, version, item.get("context"))
        # convergent: the nonce comes from the plaintext, so equal inputs give equal outputs
        nonce = hmac.new(k, plaintext, hashlib.sha256).digest()[:12] if key.convergent else os.urandom(12)
        ct = AESGCM(k).encrypt(nonce, plaintext, None)
        return {"ciphertext": f"vault:v{version}:" + base64.b64encode(nonce + ct).decode(), "key_version": version}

    def decrypt_item(self, key: FakeKey, item: dict[str, Any]) -> dict[str, Any]:
        text = str(item.get("ciphertext", ""))
        parts = text.split(":", 2)
        if len(parts) != 3 or parts[0] != "vault" or not parts[1].startswith("v"):
            raise _ItemError("invalid ciphertext: no prefix")
        try:
            version = int(parts[1][1:])
        except ValueError:
            raise _ItemError("invalid ciphertext: could not parse version") from None
        if not 1 <= version <= len(key.versions):
            raise _ItemError("invalid key version")
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError):
            raise _ItemError("invalid ciphertext: could not decode") from None
        k = self._key_for(key, version, item.get("context"))
        try:
            pt = AESGCM(k).decrypt(raw[:12], raw[12:], None)
        except (InvalidTag, ValueError):
            raise _ItemError("cipher: message authentication failed") from None
        return {"plaintext": base64.b64encode(pt).decode()}


class _Handler(BaseHTTPRequestHandler):
    transit: FakeVaultTransit

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict[str, Any] | None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[str, str] | None:
        prefix = f"/v1/{self.transit.mount}/"
        if not self.path.startswith(prefix):
            return None
        op, _, name = self.path[len(prefix) :].partition("/")
        return (op, name) if op in ("keys", "encrypt", "decrypt") and name else None

    def _allowed(self, op: str, name: str) -> bool:
        token = self.headers.get("X-Vault-Token", "")
        if token not in self.transit.tokens:
            return False
        allow = self.transit.tokens[token]
        return allow is None or (op, name) in allow

    def do_GET(self) -> None:
        route = self._route()
        self.transit.requests.append(("GET", self.path, 0))
        if route is None or route[0] != "keys":
            self._send(404, {"errors": []})
            return
        _, name = route
        if not self._allowed("read", name):
            self._send(403, {"errors": [PERMISSION_DENIED]})
            return
        key = self.transit.keys.get(name)
        if key is None:
            self._send(404, {"errors": []})
            return
        self._send(
            200,
            {
                "data": {
                    "name": name,
                    "type": "aes256-gcm96",
                    "derived": key.derived,
                    "convergent_encryption": key.convergent,
                    "convergent_encryption_version": 3 if key.convergent else -1,
                    "latest_version": len(key.versions),
                    "min_decryption_version": 1,
                    "keys": {str(i + 1): 1700000000 + i for i in range(len(key.versions))},
                }
            },
        )

    def do_POST(self) -> None:
        route = self._route()
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._send(400, {"errors": ["failed to parse JSON input"]})
            return
        batch = body.get("batch_input")
        self.transit.requests.append(("POST", self.path, len(batch) if isinstance(batch, list) else 1))
        if route is None or route[0] == "keys":
            self._send(405 if route else 404, {"errors": []})
            return
        op, name = route
        if not self._allowed(op, name):
            self._send(403, {"errors": [PERMISSION_DENIED]})
            return
        key = self.transit.keys.get(name)
        if key is None:
            self._send(400, {"errors": ["encryption key not found"]})
            return
        fn = self.transit.encrypt_item if op == "encrypt" else self.transit.decrypt_item
        if not isinstance(batch, list):
            try:
                self._send(200, {"data": fn(key, body)})
            except _ItemError as exc:
                self._send(400, {"errors": [str(exc)]})
            return
        results: list[dict[str, Any]] = []
        failed = 0
        for item in batch:
            try:
                results.append(fn(key, item))
            except _ItemError as exc:
                failed += 1
                results.append({"error": str(exc)})
        status = 200
        if failed and failed == len(batch):
            status = 400
        elif failed:
            status = int(body.get("partial_failure_response_code") or 400)
        self._send(status, {"data": {"batch_results": results}})
