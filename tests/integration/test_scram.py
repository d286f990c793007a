"""Our SCRAM-SHA-256 verifier is byte-identical to the one PostgreSQL computes."""

from __future__ import annotations

import base64

import psycopg  # noqa: TID251 - test talks to the real server

from nixmig.db import scram
from nixmig.db.ops import password_matches
from nixmig.sensitive import Secret
from tests.harness.postgres import PgServer


def test_verifier_matches_postgres(pg_db: PgServer) -> None:
    pw = "p/+=@:%? ünïcode 'quote\\"
    with psycopg.connect(pg_db.dsn, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute("DROP ROLE IF EXISTS scram_probe")
        conn.execute(psycopg.sql.SQL("CREATE ROLE scram_probe LOGIN PASSWORD {}").format(psycopg.sql.Literal(pw)))
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_probe'").fetchone()
        conn.execute("DROP ROLE scram_probe")
    assert row is not None
    theirs = str(row[0])
    head = theirs.split("$")[1]
    iterations, salt = head.split(":")
    ours = scram.verifier(Secret(pw), salt=base64.b64decode(salt), iterations=int(iterations))
    assert ours == theirs
    assert password_matches(Secret(theirs), Secret(pw))
    assert not password_matches(Secret(theirs), Secret(pw + "x"))


def test_login_with_our_verifier(pg_db: PgServer) -> None:
    verifier = scram.verifier(Secret("fresh-Password_1"))
    with psycopg.connect(pg_db.dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS scram_login")
        conn.execute(psycopg.sql.SQL("CREATE ROLE scram_login LOGIN PASSWORD {}").format(psycopg.sql.Literal(verifier)))
    try:
        with psycopg.connect(
            host=pg_db.host, port=pg_db.port, user="scram_login", password="fresh-Password_1", dbname=pg_db.dbname
        ) as c:
            assert c.execute("SELECT current_user").fetchone() == ("scram_login",)
    finally:
        with psycopg.connect(pg_db.dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE scram_login")
