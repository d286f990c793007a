"""Key providers: Vault transit (against the FAKE transit server) and agenix .age keys."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixmig.errors import NixmigError
from nixmig.reencrypt import keys
from nixmig.reencrypt.errors import KeyProviderError, VaultError
from nixmig.reencrypt.keys import (
    KeyOptions,
    KeySource,
    VaultContextCipher,
    VaultLegacyCipher,
    VaultSettings,
    VaultTransit,
)
from nixmig.reencrypt.schemes import Failed, SchemeId
from nixmig.sensitive import Secret
from tests.fakes.vault_transit import ROOT_TOKEN, FakeVaultTransit
from tests.helpers import ADMIN_PUB, NEWTON_PUB, private_key

pytestmark = pytest.mark.unit


@pytest.fixture
def vault() -> Iterator[FakeVaultTransit]:
    with FakeVaultTransit() as fake:
        fake.create_key("pos-encryption-key")
        fake.create_key("pos-ctx", derived=True, convergent=True)
        yield fake


def transit(fake: FakeVaultTransit, token: str = ROOT_TOKEN) -> VaultTransit:
    return VaultTransit(VaultSettings(fake.url, Secret(token)))


def test_context_cipher_batches_and_is_deterministic(vault: FakeVaultTransit) -> None:
    c = VaultContextCipher(transit(vault), "pos-ctx")
    assert c.scheme == SchemeId("vctx", 1)
    values = [f"v{i}".encode() for i in range(10)] + [b"v0"]
    cts = c.encrypt_many("users.email", values)
    assert all(ct.startswith("vctx:v1:") for ct in cts)
    assert cts[0] == cts[-1]  # convergent: equal plaintexts, equal ciphertexts
    assert c.encrypt_many("invitations.email", [b"v0"])[0] != cts[0]
    assert c.decrypt_many("users.email", cts) == values
    posts = [n for m, p, n in vault.requests if m == "POST"]
    assert posts == [11, 1, 11]  # one batch_input request per call


def test_rotation_gives_the_latest_version(vault: FakeVaultTransit) -> None:
    vault.rotate("pos-ctx")
    c = VaultContextCipher(transit(vault), "pos-ctx")
    assert c.scheme == SchemeId("vctx", 2)
    assert c.accepts(SchemeId("vctx", 1))
    with pytest.raises(VaultError, match="has no version 3"):
        VaultContextCipher(transit(vault), "pos-ctx", 3)


def test_one_bad_item_fails_alone(vault: FakeVaultTransit) -> None:
    old = VaultLegacyCipher(transit(vault), "pos-encryption-key")
    good = old.encrypt_many("", [b"a", b"b"])
    bad = good[0][:-6] + "AAAAAA"
    out = old.decrypt_many("", [good[0], bad, good[1]])
    assert out[0] == b"a" and out[2] == b"b"
    assert isinstance(out[1], Failed) and "message authentication failed" in out[1].reason
    (only,) = old.decrypt_many("", [bad])  # every item failed: Vault answers 400
    assert isinstance(only, Failed)


def test_missing_context_means_already_context_encrypted(vault: FakeVaultTransit) -> None:
    ctx = VaultContextCipher(transit(vault), "pos-ctx").encrypt_many("users.email", [b"a"])
    wrong_old = VaultLegacyCipher(transit(vault), "pos-ctx")
    with pytest.raises(VaultError) as err:
        wrong_old.decrypt_many("users.email", ["vault:" + ctx[0].removeprefix("vctx:")])
    line = str(err.value)
    assert "derived key and needs a context" in line and "already context-encrypted" in line
    assert "\n" not in line


def test_permission_denied_names_the_capabilities(vault: FakeVaultTransit) -> None:
    vault.add_token("reader", {("read", "pos-ctx")})
    c = VaultContextCipher(transit(vault, "reader"), "pos-ctx")
    with pytest.raises(VaultError) as err:
        c.encrypt_many("users.email", [b"a"])
    line = str(err.value)
    assert "permission denied for encrypt" in line
    assert 'path "transit/encrypt/pos-ctx" { capabilities = ["update"] }' in line
    assert "reader" not in line  # the token is never shown
    vault.add_token("nothing", set())
    with pytest.raises(VaultError, match='path "transit/keys/pos-ctx"'):
        VaultContextCipher(transit(vault, "nothing"), "pos-ctx")


def test_missing_key_and_non_derived_key(vault: FakeVaultTransit) -> None:
    with pytest.raises(VaultError, match="no transit key 'nope'"):
        VaultContextCipher(transit(vault), "nope")
    with pytest.raises(VaultError, match="not a derived convergent key"):
        VaultContextCipher(transit(vault), "pos-encryption-key")


def test_unreachable_vault_and_missing_settings() -> None:
    t = VaultTransit(VaultSettings("http://127.0.0.1:1", Secret("tok-SEKRIT")))
    with pytest.raises(VaultError) as err:
        t.read_key("k")
    assert "cannot reach Vault" in str(err.value) and "SEKRIT" not in str(err.value)
    with pytest.raises(VaultError, match="no Vault token"):
        VaultTransit(VaultSettings("http://127.0.0.1:1", Secret("")))
    with pytest.raises(VaultError, match="no Vault address"):
        VaultTransit(VaultSettings("", Secret("t")))


def test_keyring_from_vault_sources(vault: FakeVaultTransit) -> None:
    opts = KeyOptions(new="vault:pos-ctx", old="vault", vault=VaultSettings(vault.url, Secret(ROOT_TOKEN)))
    ring = keys.build_keyring(opts, need_old=True)
    assert ring.new.scheme == SchemeId("vctx", 1)
    assert ring.decoder(SchemeId("vault", 7)) is not None  # Vault decides which versions it has


# ---- agenix ------------------------------------------------------------------------------


def test_agenix_key_is_decrypted_in_memory(tmp_path: Path) -> None:
    from nixmig.secrets import age
    from nixmig.secrets.recipients import parse

    key = os.urandom(32)
    f = tmp_path / "pos-key-v1.age"
    f.write_bytes(age.encrypt(Secret(base64.b64encode(key) + b"\n"), [parse(ADMIN_PUB)]))
    ident = private_key(tmp_path, "admin_ed25519")
    assert keys.load_local(keys.parse_source(str(f), option="--old-key"), [ident]).reveal() == key
    with pytest.raises(KeyProviderError, match="needs an identity"):
        keys.load_local(KeySource("age", str(f)), [])
    other = tmp_path / "other.age"
    other.write_bytes(age.encrypt(Secret(base64.b64encode(key)), [parse(NEWTON_PUB)]))
    with pytest.raises(NixmigError) as err:  # nixmig.secrets' IdentityError: not a recipient
        keys.load_local(KeySource("age", str(other)), [ident])
    assert "other.age" in str(err.value) and base64.b64encode(key).decode() not in str(err.value)
