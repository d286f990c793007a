"""Re-encryption, the pure parts: schemes, key material, specs, the row decisions, the CLI."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pickle
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nixmig.errors import NixmigError
from nixmig.reencrypt import keys, schemes
from nixmig.reencrypt import spec as specs
from nixmig.reencrypt.errors import IntegrityError, KeyProviderError, PlaintextError, SpecError
from nixmig.reencrypt.modes import Mode, OnPlaintext
from nixmig.reencrypt.runner import BatchResult, Options, TablePlan, process_rows
from nixmig.reencrypt.schemes import ContextCipher, Failed, Keyring, LegacyCipher, SchemeId
from nixmig.sensitive import Secret
from tests.helpers import run_cli

pytestmark = pytest.mark.unit

OLD = Secret(bytes(range(32)))
NEW = Secret(bytes(range(100, 132)))
HMAC_SECRET = Secret(b"blind-index-secret")


# ---- schemes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("enc:v1:AAAA", SchemeId("enc", 1)),
        ("ctx:v12:", SchemeId("ctx", 12)),
        ("vault:v3:abc", SchemeId("vault", 3)),
        ("vctx:v1:abc", SchemeId("vctx", 1)),
        ("alice@example.org", None),
        ("", None),
        ("enc:1:AAAA", None),
        ("enc:v:AAAA", None),
        ("enc:vx:AAAA", None),
        ("enc:v1", None),
        ("foo:v1:AAAA", None),
        ("http://example.org", None),
        ("enc:v١:AAAA", None),  # a non-ASCII digit is not a version
    ],
)
def test_parse_prefix(value: str, expected: SchemeId | None) -> None:
    assert schemes.parse(value) == expected


def test_legacy_roundtrip_is_randomised_and_has_no_context() -> None:
    c = LegacyCipher(OLD, 1)
    a, b = c.encrypt_many("users.email", [b"alice@example.org"] * 2)
    assert a.startswith("enc:v1:") and a != b
    assert c.decrypt_many("other.column", [a, b]) == [b"alice@example.org"] * 2


def test_context_cipher_is_deterministic_per_column() -> None:
    c = ContextCipher(NEW, 2)
    (a1,) = c.encrypt_many("users.email", [b"alice@example.org"])
    (a2,) = ContextCipher(NEW, 2).encrypt_many("users.email", [b"alice@example.org"])
    (b1,) = c.encrypt_many("invitations.email", [b"alice@example.org"])
    assert a1 == a2 and a1.startswith("ctx:v2:")
    assert a1 != b1
    assert c.decrypt_many("users.email", [a1]) == [b"alice@example.org"]
    (wrong,) = c.decrypt_many("invitations.email", [a1])
    assert isinstance(wrong, Failed) and "wrong column" in wrong.reason


def _hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 written out, to pin the documented derivation."""
    prk = hmac.new(b"\0" * 32, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def test_context_key_derivation_is_the_documented_one() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    key = _hkdf_sha256(NEW.reveal(), b"nixmig context v1\x00users.email", 64)
    assert schemes.derive_column_key(NEW.reveal(), "users.email") == key
    (ct,) = ContextCipher(NEW, 1).encrypt_many("users.email", [b"x"])
    expected = "ctx:v1:" + base64.b64encode(AESSIV(key).encrypt(b"x", None)).decode()
    assert ct == expected


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda v: v[:-4] + ("AAAA" if v[-4:] != "AAAA" else "BBBB"), "authentication failed"),
        (lambda v: v + "!", "not valid base64"),
        (lambda v: v[:7] + "AAAA", "truncated"),
    ],
)
def test_corrupted_values_fail_without_showing_the_value(mangle: Any, reason: str) -> None:
    for cipher in (LegacyCipher(OLD, 1), ContextCipher(OLD, 1)):
        (ct,) = cipher.encrypt_many("t.c", [b"secret-plaintext"])
        (out,) = cipher.decrypt_many("t.c", [mangle(ct)])
        assert isinstance(out, Failed)
        assert reason in out.reason and "secret" not in out.reason


def test_wrong_key_length_is_refused() -> None:
    with pytest.raises(KeyProviderError, match="32 bytes"):
        ContextCipher(Secret(b"short"), 1)


def test_blind_index_hex_and_bytea() -> None:
    digest = schemes.blind_index(b"k", b"v")
    assert schemes.blind_index_matches(b"k", b"v", digest.hex())
    assert schemes.blind_index_matches(b"k", b"v", digest.hex().upper())
    assert schemes.blind_index_matches(b"k", b"v", digest)
    assert not schemes.blind_index_matches(b"k", b"w", digest)
    assert not schemes.blind_index_matches(b"k", b"v", None)


# ---- key material and sources -----------------------------------------------------------


@pytest.mark.parametrize(
    "encoded",
    [
        base64.b64encode(bytes(range(32))),
        base64.b64encode(bytes(range(32))) + b"\n",
        base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"="),
        bytes(range(32)).hex().encode() + b"\n",
        bytes(range(32)),
    ],
)
def test_key_material_formats(encoded: bytes) -> None:
    assert keys.decode_material(encoded, where="k").reveal() == bytes(range(32))


def test_bad_key_material_names_the_source_not_the_value() -> None:
    with pytest.raises(KeyProviderError) as err:
        keys.decode_material(b"hunter2-not-a-key\n", where="/keys/old")
    assert "/keys/old" in str(err.value) and "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "kind", "ref"),
    [
        ("env:OLD_KEY", "env", "OLD_KEY"),
        ("file:/k/x", "file", "/k/x"),
        ("/k/x.key", "file", "/k/x.key"),
        ("secrets/pos-key-v1.age", "age", "secrets/pos-key-v1.age"),
        ("age:/k/x", "age", "/k/x"),
        ("vault", "vault", "pos-encryption-key"),
        ("vault:other", "vault", "other"),
    ],
)
def test_key_sources(text: str, kind: str, ref: str) -> None:
    src = keys.parse_source(text, option="--old-key")
    assert (src.kind, src.ref) == (kind, ref)


def test_env_and_file_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIXMIG_TEST_KEY", base64.b64encode(OLD.reveal()).decode())
    assert keys.load_local(keys.KeySource("env", "NIXMIG_TEST_KEY")) == OLD
    f = tmp_path / "new.key"
    f.write_text(NEW.reveal().hex() + "\n")
    assert keys.load_local(keys.KeySource("file", str(f))) == NEW
    with pytest.raises(KeyProviderError, match="not set"):
        keys.load_local(keys.KeySource("env", "NIXMIG_TEST_UNSET"))
    with pytest.raises(KeyProviderError, match="no such key file"):
        keys.load_local(keys.KeySource("file", str(tmp_path / "missing")))


def test_keyring_local(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(base64.b64encode(OLD.reveal()))
    new.write_bytes(base64.b64encode(NEW.reveal()))
    ring = keys.build_keyring(keys.KeyOptions(new=str(new), old=str(old), new_version=2), need_old=True)
    assert ring.new.scheme == SchemeId("ctx", 2)
    assert ring.decoder(SchemeId("enc", 1)) is not None
    assert ring.decoder(SchemeId("ctx", 1)) is not None  # old context key, for key rotation
    assert ring.decoder(SchemeId("enc", 2)) is None
    with pytest.raises(KeyProviderError, match="needs the old key"):
        keys.build_keyring(keys.KeyOptions(new=str(new)), need_old=True)


def test_local_ciphers_have_recipes_with_a_masked_key() -> None:
    """What a worker process gets (--jobs): the same ciphers, rebuilt; the key never in a repr."""
    ring = Keyring(ContextCipher(NEW, 2), (LegacyCipher(OLD, 1),))
    recipes = ring.recipes()
    assert recipes is not None
    assert repr(NEW.reveal()) not in repr(recipes) and repr(OLD.reveal()) not in repr(recipes)
    rebuilt = Keyring.build(pickle.loads(pickle.dumps(recipes)))
    assert rebuilt.new.scheme == SchemeId("ctx", 2)
    ct = ring.new.encrypt_many("users.email", [b"a@x.org"])
    assert rebuilt.new.encrypt_many("users.email", [b"a@x.org"]) == ct  # deterministic, same key
    assert rebuilt.old[0].decrypt_many("", LegacyCipher(OLD, 1).encrypt_many("", [b"b"])) == [b"b"]


def test_a_cipher_without_recipe_keeps_the_work_in_this_process() -> None:
    class Remote(ContextCipher):
        recipe = None  # type: ignore[assignment]  # like the Vault ciphers

    assert Keyring(Remote(NEW, 1), (LegacyCipher(OLD, 1),)).recipes() is None
    assert Keyring(ContextCipher(NEW, 1), (Remote(OLD, 1),)).recipes() is None


# ---- specs ------------------------------------------------------------------------------


def test_example_spec_is_the_issue_one() -> None:
    got = {t.name: [c.name for c in t.columns] for t in specs.EXAMPLE_SPEC.tables}
    assert got == {
        "users": ["email", "first_name", "last_name"],
        "invitations": ["email", "token"],
        "guest_orders": ["customer_name", "customer_phone", "customer_email", "ip_address", "user_agent"],
        "delivery_addresses": ["full_address", "geocoding_result"],
        "notifications": ["recipient", "body"],
        "sessions": ["session_id", "ip_address"],
        "consent_records": ["ip_address"],
    }


def test_spec_toml_roundtrip_and_nixmig_toml_section(tmp_path: Path) -> None:
    f = tmp_path / "nixmig.toml"
    f.write_text('secrets_dir = "secrets"\n\n' + specs.to_toml(specs.EXAMPLE_SPEC))
    assert specs.load(f) == specs.EXAMPLE_SPEC
    plain = tmp_path / "spec.toml"
    plain.write_text('[tables.users]\ncolumns = ["email"]\nhmac = { email = "email_hmac" }\n')
    assert specs.load(plain) == specs.Spec((specs.TableSpec("users", (specs.Column("email", "email_hmac"),)),))
    other = tmp_path / "other.toml"
    other.write_text('secrets_dir = "s"\n')
    assert specs.load(other, required=False) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[tables.users]\ncolumns = "email"\n', "tables.users.columns: expected a list"),
        ('[tables.users]\ncolumns = ["email"]\ncolour = 1\n', "tables.users.colour: unknown key"),
        ("[tables.users]\ncolumns = []\n", "tables.users.columns: empty"),
        ('[tables.users]\ncolumns = ["a", "a"]\n', "listed twice"),
        ('[tables.users]\ncolumns = ["a"]\nhmac = { b = "b_hmac" }\n', "tables.users.hmac.b"),
        ('[reencrypt.tables.users]\ncolumns = ["a"]\nhmac = { b = "x" }\n', "reencrypt.tables.users.hmac.b"),
        ("tables = {}\n", "no table"),
    ],
)
def test_spec_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "spec.toml"
    f.write_text(text)
    with pytest.raises(SpecError) as err:
        specs.load(f)
    assert message in str(err.value) and str(f) in str(err.value)


def test_spec_from_flags_and_select() -> None:
    s = specs.from_flags(["users.email=email_hmac", "users.first_name", "sessions.ip_address"])
    assert [t.name for t in s.tables] == ["users", "sessions"]
    assert s.tables[0].columns[0] == specs.Column("email", "email_hmac")
    assert s.select("sessions").names() == ["sessions"]
    assert s.select("all") == s
    with pytest.raises(SpecError, match="'orders' is not in the spec"):
        s.select("users,orders")
    with pytest.raises(SpecError, match=r"TABLE\.COLUMN"):
        specs.from_flags(["email"])


# ---- the row decisions ------------------------------------------------------------------

PLAN = TablePlan(
    spec=specs.TableSpec("users", (specs.Column("email", "email_hmac"), specs.Column("name"))),
    schema="public",
    pk="id",
    pk_type="bigint",
    columns=("email", "name"),
    column_types=("text", "text"),
    hmac_columns=("email_hmac",),
    hmac_types=("text",),
    hmac_of=(0, None),
)
RING = Keyring(ContextCipher(NEW, 1), (LegacyCipher(OLD, 1),))


def legacy(pt: str) -> str:
    return LegacyCipher(OLD, 1).encrypt_many("", [pt.encode()])[0]


def new(column: str, pt: str) -> str:
    return ContextCipher(NEW, 1).encrypt_many(f"users.{column}", [pt.encode()])[0]


def hm(pt: str) -> str:
    return schemes.blind_index(HMAC_SECRET.reveal(), pt.encode()).hex()


def opts(**kw: Any) -> Options:
    return Options(hmac_secret=HMAC_SECRET, **kw)


def total(batch: BatchResult) -> dict[str, int]:
    return batch.counts().as_dict()


def test_rows_are_reencrypted_and_checked() -> None:
    rows = [
        (1, legacy("a@x.org"), legacy("Ann"), hm("a@x.org")),
        (2, new("email", "b@x.org"), new("name", "Bob"), hm("b@x.org")),
        (3, legacy("c@x.org"), None, hm("WRONG")),
        (4, legacy("d@x.org")[:-6] + "AAAAAA", legacy("Dan"), hm("d@x.org")),
        (5, None, new("name", "Eve"), None),
        (6, legacy("f@x.org"), new("name", "Fay"), hm("f@x.org")),
    ]
    results = process_rows(rows, PLAN, RING, opts())
    assert results.to_write() == [0, 5]
    assert results.row(0) == [new("email", "a@x.org"), new("name", "Ann")]
    assert not results.changed[1]  # already new: not rewritten
    assert [f.kind for f in results.row_failures(2)] == ["hmac"]
    assert [f.kind for f in results.row_failures(3)] == ["decrypt"]
    assert not results.changed[4]
    assert results.row(5)[1] == rows[5][2]  # the new one kept as read
    assert total(results) == {
        "scanned": 0,
        "migrated": 3,
        "already_new": 4,
        "plaintext": 0,
        "old_scheme": 0,
        "hmac_failed": 1,
        "decrypt_failed": 1,
        "conflicts": 0,
    }
    assert all(f.pk in ("3", "4") and "x.org" not in f.reason for _, f in results.failures)
    results.drop([0, 2])
    assert (total(results)["migrated"], total(results)["hmac_failed"], results.to_write()) == (1, 0, [5])


def test_plaintext_default_is_an_error_that_suggests_encrypt_plaintext() -> None:
    rows = [(7, "g@x.org", legacy("Gus"), hm("g@x.org"))]
    with pytest.raises(PlaintextError) as err:
        process_rows(rows, PLAN, RING, opts())
    line = str(err.value)
    assert "invalid ciphertext: no prefix" in line and "encrypt-plaintext" in line
    assert "users.email" in line and "7" in line and "g@x.org" not in line


@pytest.mark.parametrize(
    ("mode", "policy", "write", "migrated", "failures"),
    [
        (Mode.REENCRYPT, OnPlaintext.ENCRYPT, True, 2, []),
        (Mode.REENCRYPT, OnPlaintext.SKIP, True, 1, []),
        (Mode.REENCRYPT, OnPlaintext.FAIL, False, 0, ["plaintext"]),
        (Mode.ENCRYPT_PLAINTEXT, OnPlaintext.ERROR, True, 2, []),
    ],
)
def test_plaintext_policies(mode: Mode, policy: OnPlaintext, write: bool, migrated: int, failures: list[str]) -> None:
    rows = [(7, "g@x.org", legacy("Gus"), hm("g@x.org"))]
    r = process_rows(rows, PLAN, RING, opts(mode=mode, on_plaintext=policy))
    assert (r.to_write() == [0]) is write
    assert r.counts().plaintext == 1 and r.counts().migrated == migrated
    assert [f.kind for f in r.row_failures(0)] == failures
    if write and migrated == 2:
        assert r.row(0) == [new("email", "g@x.org"), new("name", "Gus")]


def test_plaintext_with_wrong_blind_index_is_not_encrypted() -> None:
    rows = [(8, "h@x.org", None, hm("other"))]
    r = process_rows(rows, PLAN, RING, opts(mode=Mode.ENCRYPT_PLAINTEXT))
    assert not r.to_write() and r.counts().hmac_failed == 1 and r.counts().plaintext == 1


def test_encrypt_plaintext_without_old_key_leaves_old_values() -> None:
    ring = Keyring(ContextCipher(NEW, 1))
    rows = [(9, legacy("i@x.org"), "Ivy", hm("i@x.org"))]
    r = process_rows(rows, PLAN, ring, opts(mode=Mode.ENCRYPT_PLAINTEXT))
    assert r.to_write() == [0] and r.row(0) == [rows[0][1], new("name", "Ivy")]
    assert (r.counts().old_scheme, r.counts().migrated) == (1, 1)


def test_unknown_key_version_is_a_decrypt_failure() -> None:
    rows = [(10, LegacyCipher(OLD, 3).encrypt_many("", [b"j"])[0], None, hm("j"))]
    r = process_rows(rows, PLAN, RING, opts())
    assert not r.to_write() and r.row_failures(0)[0].reason == "no key for scheme enc:v3"


def test_verify_mode_decrypts_new_values_and_checks_blind_indexes() -> None:
    rows = [
        (1, new("email", "a@x.org"), new("name", "Ann"), hm("a@x.org")),
        (2, new("email", "b@x.org"), None, hm("WRONG")),
        (3, legacy("c@x.org"), "Cy", hm("c@x.org")),
        (4, new("email", "d@x.org")[:-4] + "AAAA", None, hm("d@x.org")),
    ]
    results = process_rows(rows, PLAN, RING, opts(mode=Mode.VERIFY))
    assert not any(results.changed)
    t = total(results)
    assert (t["already_new"], t["hmac_failed"], t["old_scheme"], t["plaintext"], t["decrypt_failed"]) == (4, 1, 1, 1, 1)


class _BrokenCipher(ContextCipher):
    def decrypt_many(self, context: str, values: Sequence[str]) -> list[bytes | Failed]:
        return [b"something else" for _ in values]


def test_new_ciphertext_is_decrypted_again_before_it_is_written() -> None:
    ring = Keyring(_BrokenCipher(NEW, 1), (LegacyCipher(OLD, 1),))
    with pytest.raises(IntegrityError, match="did not decrypt back"):
        process_rows([(1, legacy("a@x.org"), None, hm("a@x.org"))], PLAN, ring, opts())


# ---- the CLI ----------------------------------------------------------------------------


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from nixmig.cli import app\n"
        "try:\n    app(['reencrypt', '--help'], prog_name='nixmig')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('psycopg', 'cryptography', 'hvac') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout


def test_help_never_shows_secret_values() -> None:
    env = dict(
        os.environ,
        VAULT_TOKEN="tok-SEKRIT",
        ENCRYPTION_HMAC_SECRET="hmac-SEKRIT",
        DATABASE_URL="postgresql://u:pw-SEKRIT@h/db",
    )
    out = subprocess.run(
        [sys.executable, "-m", "nixmig", "reencrypt", "--help"], capture_output=True, text=True, env=env, check=True
    )
    assert "SEKRIT" not in out.stdout + out.stderr
    assert "[default: dry-run]" in out.stdout


def test_show_spec_prints_the_example() -> None:
    res = run_cli("reencrypt", "--show-spec", "--tables", "users,sessions", cwd=Path("/"))
    assert res.returncode == 0
    text = res.stdout.decode()
    assert '[reencrypt.tables.users]\ncolumns = ["email", "first_name", "last_name"]' in text
    assert "guest_orders" not in text and 'session_id = "session_id_hmac"' in text


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--db", "host=x", "--new-key", "env:X"], 2, "no HMAC secret"),
        (["--mode", "verify", "--apply", "--no-hmac-check"], 2, "verify is read-only"),
        (["--no-hmac-check", "--new-key", "env:X"], 2, "no database"),
        (["--tables", "orders"], 1, "'orders' is not in the spec"),
        (
            ["--no-hmac-check", "--db", "host=x", "--mode", "encrypt-plaintext", "--new-key", "env:NIXMIG_UNSET"],
            1,
            "NIXMIG_UNSET is not set",
        ),
        (["--no-hmac-check", "--db", "host=x", "--new-key", "env:K"], 1, "reencrypt needs the old key"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], code: int, message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ENCRYPTION_HMAC_SECRET")}
    env["K"] = base64.b64encode(NEW.reveal()).decode()
    res = subprocess.run(
        [sys.executable, "-m", "nixmig", "reencrypt", *args], capture_output=True, text=True, env=env, cwd="/"
    )
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_errors_are_nixmig_errors() -> None:
    assert issubclass(SpecError, NixmigError) and issubclass(KeyProviderError, NixmigError)


@pytest.mark.parametrize(("cpus", "jobs"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 4), (64, 4)])
def test_default_worker_processes(cpus: int, jobs: int) -> None:
    from nixmig.reencrypt.workers import default_jobs

    assert default_jobs(cpus) == jobs


def test_whole_column_replaced_only_when_every_row_is_migrated_in_order() -> None:
    """Every row of a column migrated, but a plaintext row (encrypt-plaintext) is queued before
    the legacy row above it: the values land on their own rows, not in the order encrypted."""
    rows = [(1, legacy("a@x.org"), legacy("Ann"), hm("a@x.org")), (2, "b@x.org", legacy("Bob"), hm("b@x.org"))]
    r = process_rows(rows, PLAN, RING, opts(on_plaintext=OnPlaintext.ENCRYPT))
    assert r.to_write() == [0, 1]
    assert r.row(0) == [new("email", "a@x.org"), new("name", "Ann")]
    assert r.row(1) == [new("email", "b@x.org"), new("name", "Bob")]
