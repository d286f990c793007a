"""age encryption through pyrage (rage): the only module that imports pyrage.

Files are written in age's binary format, like agenix. Plaintext only ever
exists in memory, wrapped in :class:`~nixmig.sensitive.Secret`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyrage

from nixmig.errors import IdentityError, SecretsError
from nixmig.secrets.recipients import Recipient
from nixmig.sensitive import Secret

_MAGIC = b"age-encryption.org/v1\n"
_ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"


@dataclass(frozen=True)
class Identity:
    """A private key that can decrypt: an ssh key or an age identity file."""

    path: Path
    key: Any  # pyrage identity object


@dataclass(frozen=True)
class Stanza:
    type: str
    args: tuple[str, ...]


def load_identities(paths: Iterable[Path]) -> list[Identity]:
    """Load every identity in each file; fail naming the file that cannot be used."""
    out: list[Identity] = []
    for path in paths:
        out.extend(_load_identity_file(path))
    return out


def _load_identity_file(path: Path) -> list[Identity]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(
            "no such identity file", where=path, hint="pass --identity with an ssh private key or an age key file"
        ) from None
    except OSError as exc:
        raise IdentityError(f"cannot read identity file: {exc.strerror}", where=path) from None
    text = raw.decode("utf-8", "replace")
    if "PRIVATE KEY-----" in text and "AGE-SECRET-KEY" not in text:
        try:
            return [Identity(path, pyrage.ssh.Identity.from_buffer(raw))]
        except pyrage.IdentityError as exc:
            if "decrypted" in str(exc):
                raise IdentityError(
                    "the ssh key is passphrase-protected",
                    where=path,
                    hint="use an unencrypted copy in a private tmpfs, or an age identity file",
                ) from None
            raise IdentityError(f"not a usable ssh private key ({exc})", where=path) from None
    keys = [line.strip() for line in text.splitlines() if line.strip().startswith("AGE-SECRET-KEY-1")]
    if not keys:
        if text.lstrip().startswith(("ssh-", "age1")):
            hint = "that is a public key: pass the private key file"
        else:
            hint = "pass an ssh private key (~/.ssh/id_ed25519) or an age-keygen identity file"
        raise IdentityError("not an ssh private key or age identity file", where=path, hint=hint)
    idents = []
    for k in keys:
        try:
            idents.append(Identity(path, pyrage.x25519.Identity.from_str(k)))
        except pyrage.IdentityError:
            raise IdentityError("malformed AGE-SECRET-KEY line", where=path) from None
    return idents


def encrypt(plaintext: Secret, recipients: Sequence[Recipient]) -> bytes:
    """Encrypt to every recipient; binary age format."""
    if not recipients:
        raise SecretsError("no recipients to encrypt to", hint="list at least one key in secrets.nix")
    objs = []
    for r in recipients:
        if r.kind == "age":
            objs.append(pyrage.x25519.Recipient.from_str(r.text))
        else:
            objs.append(pyrage.ssh.Recipient.from_str(r.text))
    result: bytes = pyrage.encrypt(plaintext.reveal(), objs)
    return result


def decrypt(data: bytes, identities: Sequence[Identity], *, where: str | Path) -> Secret:
    """Decrypt an age file; the error names the file and the identities tried."""
    if not identities:
        raise IdentityError("no identity to decrypt with", where=where, hint="pass --identity PATH")
    try:
        plain: bytes = pyrage.decrypt(data, [i.key for i in identities])
    except pyrage.DecryptError as exc:
        names = ", ".join(sorted({str(i.path) for i in identities}))
        if "No matching keys" in str(exc):
            raise IdentityError(
                f"none of the identities ({names}) is a recipient of this file",
                where=where,
                hint="pass --identity with a key listed for it in secrets.nix",
            ) from None
        raise SecretsError(f"cannot decrypt: {exc}", where=where) from None
    return Secret(plain)


def header(data: bytes, *, where: str | Path) -> list[Stanza]:
    """The recipient stanzas of an age file (binary or armored), without decrypting."""
    if data.startswith(_ARMOR_BEGIN):
        body = b"".join(line for line in data.splitlines()[1:] if line and not line.startswith(b"-----"))
        try:
            data = base64.b64decode(body)
        except (binascii.Error, ValueError):
            raise SecretsError("malformed armored age file", where=where) from None
    if not data.startswith(_MAGIC):
        raise SecretsError("not an age file (bad header)", where=where, hint="was it written by age or agenix?")
    stanzas: list[Stanza] = []
    for raw in data[len(_MAGIC) :].split(b"\n"):
        if raw.startswith(b"---"):
            return stanzas
        if raw.startswith(b"-> "):
            fields = raw[3:].decode("ascii", "replace").split(" ")
            stanzas.append(Stanza(fields[0], tuple(fields[1:])))
    raise SecretsError("truncated age header", where=where)


def encrypt_stream(src: BinaryIO, dst: BinaryIO, recipients: Sequence[Recipient]) -> None:
    """Encrypt a stream to a stream (backups: the plaintext never lands on a disk)."""
    objs = [
        pyrage.x25519.Recipient.from_str(r.text) if r.kind == "age" else pyrage.ssh.Recipient.from_str(r.text)
        for r in recipients
    ]
    pyrage.encrypt_io(src, dst, objs)


def decrypt_stream(src: BinaryIO, dst: BinaryIO, identities: Sequence[Identity], *, where: str | Path) -> None:
    try:
        pyrage.decrypt_io(src, dst, [i.key for i in identities])
    except pyrage.DecryptError as exc:
        raise SecretsError(f"cannot decrypt: {exc}", where=where) from None
