"""Ciphertext formats. Every ciphertext starts with ``TAG:vN:``: its scheme and key version.

=========  =======  ===========================================================
prefix     family   format of the rest (standard base64)
=========  =======  ===========================================================
``enc:vN:``  legacy   AES-256-GCM under the old key, 12-byte random nonce first,
                    no context (what the application wrote before).
``ctx:vN:``  context  AES-SIV (RFC 5297, deterministic) under a 512-bit key
                    derived per column: HKDF-SHA256(master key, salt none,
                    info ``b"nixmig context v1\\0" + b"table.column"``). Equal
                    plaintexts in one column give equal ciphertexts (lookups
                    keep working); the same plaintext in another column does not.
``vault:vN:`` legacy  Vault transit's own ciphertext, non-derived key, no context.
``vctx:vN:``  context Vault transit, derived convergent key, context
                    ``table.column``; ``vault:vN:`` + the rest is what Vault returns.
=========  =======  ===========================================================

A value without one of these prefixes is plaintext.

Ciphers work on whole batches (``encrypt_many``/``decrypt_many``) so that the
Vault provider can send one ``batch_input`` request per batch and column.
Decryption failures are values (:class:`Failed`), with a reason that never
includes the value.

A local cipher can give a :class:`LocalKey` recipe (:meth:`LegacyCipher.recipe`,
:meth:`ContextCipher.recipe`) from which a worker process builds the same cipher: that is
how batches are decrypted and encrypted beside the reads and writes (``--jobs``). The
recipe holds the key bytes: it is handed to the worker on its private pipe, and its repr
is masked. Vault ciphers have no recipe (Vault does their work).
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from nixmig.reencrypt.errors import KeyProviderError

if TYPE_CHECKING:
    from nixmig.sensitive import Secret

KEY_BYTES: Final = 32
HKDF_INFO: Final = b"nixmig context v1\x00"


class Family(enum.Enum):
    LEGACY = "legacy"
    CONTEXT = "context"


TAGS: Final[dict[str, Family]] = {
    "enc": Family.LEGACY,
    "ctx": Family.CONTEXT,
    "vault": Family.LEGACY,
    "vctx": Family.CONTEXT,
}


@dataclass(frozen=True, slots=True)
class SchemeId:
    tag: str
    version: int

    @property
    def prefix(self) -> str:
        return f"{self.tag}:v{self.version}:"

    @property
    def family(self) -> Family:
        return TAGS[self.tag]

    def __str__(self) -> str:
        return f"{self.tag}:v{self.version}"


def parse(value: str) -> SchemeId | None:
    """The scheme of a stored value, or None when it carries no scheme prefix (plaintext)."""
    tag, sep, rest = value.partition(":")
    if not sep or tag not in TAGS or rest[:1] != "v":
        return None
    ver, sep, _ = rest.partition(":")
    digits = ver[1:]
    if not sep or not digits.isdigit() or not digits.isascii() or len(digits) > 9:
        return None
    return SchemeId(tag, int(digits))


@dataclass(frozen=True, slots=True)
class Failed:
    """A value that did not decrypt. ``reason`` names the cause, never the value."""

    reason: str


class Cipher(Protocol):
    """A scheme with its key. ``scheme`` is what :meth:`encrypt_many` produces."""

    @property
    def scheme(self) -> SchemeId: ...

    def accepts(self, sid: SchemeId) -> bool:
        """Whether this cipher can decrypt values of scheme ``sid``."""
        ...

    def encrypt_many(self, context: str, plaintexts: Sequence[bytes]) -> list[str]: ...

    def decrypt_many(self, context: str, values: Sequence[str]) -> list[bytes | Failed]: ...


class CipherRecipe(Protocol):
    """What a worker process needs to build a cipher (picklable)."""

    def build(self) -> Cipher: ...


@dataclass(frozen=True)
class LocalKey:
    """The recipe of a local cipher: its tag, key bytes and version. The repr masks the key."""

    tag: str
    key: bytes = field(repr=False)
    version: int

    def build(self) -> Cipher:
        from nixmig.sensitive import Secret

        key = Secret(self.key)
        if self.tag == "enc":
            return LegacyCipher(key, self.version)
        if self.tag == "ctx":
            return ContextCipher(key, self.version)
        raise ValueError(f"no local cipher for tag {self.tag!r}")


def recipe_of(cipher: Cipher) -> CipherRecipe | None:
    """The recipe of a cipher that can be rebuilt in a worker process, else None."""
    recipe = getattr(cipher, "recipe", None)
    return recipe() if callable(recipe) else None


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _unb64(text: str) -> bytes:
    return binascii.a2b_base64(text, strict_mode=True)


def _check_key(key: Secret, what: str) -> bytes:
    raw = key.reveal()
    if len(raw) != KEY_BYTES:
        raise KeyProviderError(f"{what}: a key must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


class LegacyCipher:
    """``enc:vN:``: AES-256-GCM, random nonce, no context (the old application's format)."""

    def __init__(self, key: Secret, version: int = 1) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._key = key
        self._aead = AESGCM(_check_key(key, f"enc:v{version} key"))
        self._scheme = SchemeId("enc", version)
        self._skip = len(self._scheme.prefix)

    def recipe(self) -> LocalKey:
        return LocalKey("enc", self._key.reveal(), self._scheme.version)

    @property
    def scheme(self) -> SchemeId:
        return self._scheme

    def accepts(self, sid: SchemeId) -> bool:
        return sid == self._scheme

    def encrypt_many(self, context: str, plaintexts: Sequence[bytes]) -> list[str]:
        prefix, aead = self._scheme.prefix, self._aead
        out = []
        for pt in plaintexts:
            nonce = os.urandom(12)
            out.append(prefix + _b64(nonce + aead.encrypt(nonce, pt, None)))
        return out

    def decrypt_many(self, context: str, values: Sequence[str]) -> list[bytes | Failed]:
        from cryptography.exceptions import InvalidTag

        dec, skip, unb64 = self._aead.decrypt, self._skip, binascii.a2b_base64
        try:  # every value good: no per-value bookkeeping (a failure redoes the batch below)
            raws = [unb64(v[skip:], strict_mode=True) for v in values]
            return [dec(r[:12], r[12:], None) if len(r) >= 28 else _fail() for r in raws]
        except (binascii.Error, ValueError, InvalidTag):
            pass
        out: list[bytes | Failed] = []
        for value in values:
            try:
                raw = unb64(value[skip:], strict_mode=True)
            except (binascii.Error, ValueError):
                out.append(Failed("not valid base64"))
                continue
            if len(raw) < 12 + 16:
                out.append(Failed("truncated ciphertext"))
                continue
            try:
                out.append(dec(raw[:12], raw[12:], None))
            except InvalidTag:
                out.append(Failed("authentication failed: wrong key or corrupted value"))
        return out


def _fail() -> bytes:
    raise ValueError("truncated")


def derive_column_key(master: bytes, context: str) -> bytes:
    """The 512-bit AES-SIV key of one column: HKDF-SHA256(master, info=HKDF_INFO + context)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=HKDF_INFO + context.encode())
    return hkdf.derive(master)


class ContextCipher:
    """``ctx:vN:``: deterministic AES-SIV under a key derived per ``table.column``."""

    def __init__(self, key: Secret, version: int = 1) -> None:
        self._master = key
        _check_key(key, f"ctx:v{version} key")
        self._scheme = SchemeId("ctx", version)
        self._skip = len(self._scheme.prefix)
        self._aeads: dict[str, Any] = {}

    def recipe(self) -> LocalKey:
        return LocalKey("ctx", self._master.reveal(), self._scheme.version)

    @property
    def scheme(self) -> SchemeId:
        return self._scheme

    def accepts(self, sid: SchemeId) -> bool:
        return sid == self._scheme

    def _aead(self, context: str) -> Any:
        aead = self._aeads.get(context)
        if aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESSIV

            aead = AESSIV(derive_column_key(self._master.reveal(), context))
            self._aeads[context] = aead
        return aead

    def encrypt_many(self, context: str, plaintexts: Sequence[bytes]) -> list[str]:
        enc, prefix, b64 = self._aead(context).encrypt, self._scheme.prefix, binascii.b2a_base64
        return [prefix + b64(enc(pt, None), newline=False).decode("ascii") for pt in plaintexts]

    def decrypt_many(self, context: str, values: Sequence[str]) -> list[bytes | Failed]:
        from cryptography.exceptions import InvalidTag

        dec, skip, unb64 = self._aead(context).decrypt, self._skip, binascii.a2b_base64
        try:  # every value good: no per-value bookkeeping (a failure redoes the batch below)
            return [dec(unb64(v[skip:], strict_mode=True), None) for v in values]
        except (binascii.Error, ValueError, InvalidTag):
            pass
        out: list[bytes | Failed] = []
        for value in values:
            try:
                raw = unb64(value[skip:], strict_mode=True)
            except (binascii.Error, ValueError):
                out.append(Failed("not valid base64"))
                continue
            if len(raw) < 16:
                out.append(Failed("truncated ciphertext"))
                continue
            try:
                out.append(dec(raw, None))
            except InvalidTag:
                out.append(Failed("authentication failed: wrong key, wrong column or corrupted"))
        return out


@dataclass(frozen=True)
class Keyring:
    """The cipher new values are written with, and those that can read the old ones."""

    new: Cipher
    old: tuple[Cipher, ...] = ()

    def decoder(self, sid: SchemeId) -> Cipher | None:
        if self.new.accepts(sid):
            return self.new
        for c in self.old:
            if c.accepts(sid):
                return c
        return None

    def recipes(self) -> tuple[CipherRecipe, tuple[CipherRecipe, ...]] | None:
        """Recipes of every cipher, when all can be rebuilt in a worker process (None: Vault)."""
        new = recipe_of(self.new)
        old = [recipe_of(c) for c in self.old]
        if new is None or None in old:
            return None
        return new, tuple(r for r in old if r is not None)

    @staticmethod
    def build(recipes: tuple[CipherRecipe, tuple[CipherRecipe, ...]]) -> Keyring:
        new, old = recipes
        return Keyring(new.build(), tuple(r.build() for r in old))


def blind_index(secret: bytes, plaintext: bytes) -> bytes:
    """HMAC-SHA256(secret, plaintext): what a blind-index column holds (raw or hex)."""
    return hmac.new(secret, plaintext, hashlib.sha256).digest()


def blind_index_matches(secret: bytes, plaintext: bytes, stored: str | bytes | None) -> bool:
    """Whether a stored blind index (lowercase/uppercase hex text, or bytea) matches."""
    if stored is None:
        return False
    digest = hmac.digest(secret, plaintext, "sha256")
    if isinstance(stored, str):
        return hmac.compare_digest(digest.hex().encode(), stored.lower().encode())
    return hmac.compare_digest(digest, bytes(stored))
