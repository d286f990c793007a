"""The reencrypt phase's configuration (migrations.NAME.reencrypt): validation at load, one line
per mistake naming the key; where the phases go; plan shows it without connecting or key material."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixmig import config, engine
from nixmig.errors import ConfigError
from nixmig.remote.base import Transport
from tests.helpers import copy_example
from tests.unit.test_engine_plan import write_cfg

pytestmark = pytest.mark.unit

SPEC = """
[reencrypt.tables.users]
columns = ["email", "first_name"]
hmac = { email = "email_hmac" }

[reencrypt.tables.sessions]
columns = ["session_id"]
"""

PHASE = """
[migrations.twenty-db-password.reencrypt]
old_key = "file:keys/old.key"
new_key = "secrets/pos-key-v2.age"
"""


def no_connect() -> Transport:
    raise AssertionError("plan must not connect")


def test_phases_and_plan(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    cfg = write_cfg(repo, PHASE + 'tables = ["users"]\nbatch_size = 500\n' + SPEC)
    ctx = engine.make_context(cfg, "twenty-db-password", connect=no_connect)
    steps = engine.plan(ctx)
    assert [s.phase for s in steps] == [
        "preflight",
        "reencrypt-check",
        "backup",
        "stage",
        "rotate",
        "switch",
        "verify",
        "reencrypt",
        "cleanup",
    ]
    text = "\n".join(a.text for s in steps if s.phase.startswith("reencrypt") for a in s.actions)
    assert "public.users: re-encrypt email (blind index email_hmac), first_name" in text
    assert "sessions" not in text  # tables = ["users"] picks one table of [reencrypt]
    assert "batches of 500 rows" in text and "old key file:keys/old.key (version 1)" in text
    assert "HMAC secret env:ENCRYPTION_HMAC_SECRET" in text
    assert "rollback re-encrypts the values back to the legacy scheme" in text
    # without the table, the strategy's phases as they were
    assert [p.name for p in engine.phases_for("rotate", write_cfg(repo).migrations["twenty-db-password"])] == [
        "preflight",
        "backup",
        "stage",
        "rotate",
        "switch",
        "verify",
        "cleanup",
    ]


def test_tables_written_in_the_phase(tmp_path: Path) -> None:
    inline = PHASE + '[migrations.twenty-db-password.reencrypt.tables.people]\ncolumns = ["name"]\n'
    cfg = write_cfg(copy_example(tmp_path), inline)
    r = cfg.migrations["twenty-db-password"].reencrypt
    assert r is not None and r.tables == {"people": {"columns": ["name"]}} and r.mode == "reencrypt"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (PHASE + "colour = 1\n" + SPEC, "migrations.twenty-db-password.reencrypt.colour: unknown key"),
        (PHASE + "batch_size = 0\n" + SPEC, "reencrypt.batch_size: must be at least 1, got 0"),
        (PHASE + 'mode = "fast"\n' + SPEC, "reencrypt.mode: expected one of 'reencrypt', 'encrypt-plaintext'"),
        (PHASE, "reencrypt.tables: names tables of [reencrypt], but nixmig.toml has no [reencrypt] table"),
        (PHASE + 'tables = ["users", "nope"]\n' + SPEC, "reencrypt.tables: table 'nope' is not in the spec"),
        (PHASE + "tables = 3\n" + SPEC, 'reencrypt.tables: expected "all", a list of table names'),
        (
            PHASE + "[migrations.twenty-db-password.reencrypt.tables.t]\ncolumns = []\n",
            "migrations.twenty-db-password.reencrypt.tables.t.columns: empty",
        ),
        (
            '[migrations.twenty-db-password.reencrypt]\nnew_key = "env:K"\n' + SPEC,
            'reencrypt.old_key: required with mode = "reencrypt"',
        ),
        (PHASE + 'hmac_secret = "vault:k"\n' + SPEC, "reencrypt.hmac_secret: cannot come from Vault"),
        (PHASE + 'hmac_secret = "env:"\n' + SPEC, "reencrypt.hmac_secret: env: needs a name after the colon"),
        (PHASE + "[reencrypt.tables.users]\ncolumns = [1]\n", "reencrypt.tables.users.columns[0]: expected a string"),
    ],
)
def test_mistakes_are_one_line_naming_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        write_cfg(copy_example(tmp_path), extra)
    line = err.value.line()
    assert message in line and "nixmig.toml" in line and "\n" not in line


def test_encrypt_plaintext_needs_no_old_key(tmp_path: Path) -> None:
    cfg = write_cfg(
        copy_example(tmp_path),
        '[migrations.twenty-db-password.reencrypt]\nnew_key = "env:K"\nmode = "encrypt-plaintext"\n' + SPEC,
    )
    assert isinstance(cfg, config.Config)
