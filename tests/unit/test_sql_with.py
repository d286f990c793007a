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


def test_clauses_read_a_hole_that_is_a_whole_role_or_password() -> None:
    """``CREATE ROLE "${db.user}" ... PASSWORD '${db.password}'``: the role and the password are the let's
    values (an unquoted role folded to lower case, as the server does); a hole inside a value is left out."""
    sql = b"CREATE ROLE \"${u}\" WITH LOGIN PASSWORD '${p}';\nCREATE ROLE ${U} LOGIN PASSWORD 'x-${p}';\n"
    u, p, upper = sql.index(b"${u}"), sql.index(b"${p}"), sql.index(b"${U}")
    holes = {(u, u + 4): "Ledger", (p, p + 4): "pw-1", (upper, upper + 4): "Other"}
    got = [(c.role, c.password, c.value_start) for c in clauses(sql, holes=holes)]
    assert got == [("Ledger", "pw-1", p)]
    holes[(upper, upper + 4)] = "Other"
    later = sql.index(b"${p}", p + 1)
    holes[(later, later + 4)] = "pw-1"
    assert [c.role for c in clauses(sql, holes=holes)] == ["Ledger"]  # 'x-${p}': a hole inside the value
    assert clauses(sql) == []
    one = b"ALTER USER ${U} PASSWORD '${p}';"
    assert [(c.role, c.password) for c in clauses(one, holes={(11, 15): "Other", (26, 30): "pw"})] == [("other", "pw")]
