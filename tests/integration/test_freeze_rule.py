"""Rebuild's freeze rule in pg_hba.conf: the fingerprint leaves it out (the old server has it
while compared, the copy never does), anything else in the file still counts; the copy of
the file drops exactly that block."""

from __future__ import annotations

from nixmig import config, engine
from nixmig.db import fingerprint as fp
from nixmig.db import rebuild as rb
from nixmig.demo import SECRET, Target
from tests.integration.test_migrate_local import target

__all__ = ["target"]  # the fixture, shared with test_migrate_local

KEY = "*/file/pg_hba.conf"


def test_the_fingerprint_ignores_the_freeze_block_only(target: Target) -> None:
    ctx = engine.make_context(config.load(target.repo / "nixmig.toml"), SECRET)
    hba = target.pg_data / "pg_hba.conf"
    original = hba.read_bytes()
    try:
        before = fp.take(ctx.t, ctx.runtime, []).items[KEY]
        hba.write_bytes(rb.FREEZE_BLOCK.encode() + original)
        assert fp.take(ctx.t, ctx.runtime, []).items[KEY] == before
        hba.write_bytes(rb.FREEZE_BLOCK.encode() + original + b"host all all 10.0.0.0/8 reject\n")
        assert fp.take(ctx.t, ctx.runtime, []).items[KEY] != before
    finally:
        hba.write_bytes(original)
        ctx.close()


def test_without_freeze_removes_exactly_the_block() -> None:
    body = b"# TYPE DATABASE USER ADDRESS METHOD\nlocal all all trust\nhost all all all scram-sha-256\n"
    assert rb.without_freeze(rb.FREEZE_BLOCK.encode() + body) == body
    assert rb.without_freeze(body) == body
    edited = rb.FREEZE_BLOCK.replace("reject", "trust").encode() + body  # not ours any more: kept, so it differs
    assert rb.without_freeze(edited) == edited
    assert rb.FREEZE_BLOCK.splitlines()[1] == "host all all all reject"
