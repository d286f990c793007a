"""``CREATE USER x SUPERUSER WITH LOGIN PASSWORD '...'``: WITH after an option is a syntax error in
PostgreSQL (it comes only right after the role's name), so the statement never created the role. A blind
configuration (stop 20) was patched anyway: the clause cut, and a unit added that sets the password of a
role that never exists (a failed unit at every switch). Now it is said, and nothing is edited."""

from __future__ import annotations

import pytest

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.sqlpass import clauses


@pytest.mark.parametrize(
    ("sql", "invalid"),
    [
        (b"CREATE USER master SUPERUSER WITH LOGIN PASSWORD 'pw';", True),
        (b"CREATE ROLE app WITH LOGIN PASSWORD 'pw';", False),
        (b"create role app login password 'pw' valid until 'infinity';", False),
        (b"ALTER USER app WITH PASSWORD 'pw';", False),
        (b"CREATE ROLE app LOGIN PASSWORD 'pw with spaces';", False),  # WITH inside the value: no keyword
        (b"CREATE ROLE app IN ROLE web WITH LOGIN PASSWORD 'pw';", True),
    ],
)
def test_with_only_after_the_role_name(sql: bytes, invalid: bool) -> None:
    (c,) = clauses(sql)
    assert c.invalid is invalid


def test_an_invalid_statement_is_said_and_nothing_is_edited() -> None:
    src = {
        "db.nix": b"""{ pkgs, ... }:
{
  services.postgresql = {
    enable = true;
    initialScript = pkgs.writeText "init.sql" ''
      CREATE USER master SUPERUSER WITH LOGIN PASSWORD 'Master-pw-881';
    '';
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="master-db-password", role="master"))
    assert not plan.edits
    (item,) = plan.manual
    assert "is not valid SQL" in item.what and item.line == 6, item.what
