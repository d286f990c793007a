"""services.mysql.initialScript with IDENTIFIED BY '...' (nixsrc/shapes/mysql_initial_script.py): which
statement is whose, what each edit leaves, and what stays said. The golden diffs are fixtures in
tests/fixtures/shapes (native-mysql-initialscript-grant-identified, and the refusal
native-mysql-initialscript-grant-creates-user); the oneshot runs against a real MariaDB in
tests/integration/test_mysql_user_password_unit.py."""

from __future__ import annotations

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.shapes.mysql_initial_script import statements

MODULE = """{ pkgs, ... }:
{
  services.mysql.enable = true;
  services.mysql.initialScript = pkgs.writeText "init.sql" ''
%s
  '';
}
"""


def _plan(sql: str, role: str = "postgres", strategy: str = "move") -> tuple[pt.Plan, str]:
    src = {"db.nix": (MODULE % sql).encode()}
    plan = pt.plan(src, pt.Spec(secret="app-db", role=role, strategy=strategy))
    return plan, plan.results(src).get("db.nix", b"").decode()


def test_statements_read_accounts_hosts_and_clauses() -> None:
    sql = (
        "CREATE USER IF NOT EXISTS `app`@`10.0.%` IDENTIFIED BY 'a''b';\n"
        "ALTER USER app IDENTIFIED BY 'x';\n"
        "GRANT SELECT ON db.* TO 'app'@'localhost';\n"
        "CREATE USER 'o'@'h' IDENTIFIED BY PASSWORD '*0123';\n"  # a hash: no clause nixmig moves
        "CREATE USER 'i'@'h' IDENTIFIED BY '${pw}';\n"  # interpolated: left out
    )
    got = [(s.verb, s.account, s.clause[2] if s.clause else None) for s in statements(sql)]
    assert got == [
        ("create", "'app'@'10.0.%'", "a'b"),
        ("alter", "'app'@'%'", "x"),
        ("grant", "'app'@'localhost'", None),
        ("create", "'o'@'h'", None),
    ]


def test_create_user_identified_by_becomes_account_lock_and_the_unit_unlocks() -> None:
    plan, out = _plan(
        "    CREATE USER 'app'@'localhost' IDENTIFIED BY 'app-pw-9';\n    GRANT ALL ON app.* TO 'app'@'localhost';"
    )
    assert plan.manual == () and "app-pw-9" not in out
    assert "CREATE USER 'app'@'localhost' ACCOUNT LOCK;" in out
    assert "ALTER USER 'app'@'localhost' IDENTIFIED BY '$pw' ACCOUNT UNLOCK;" in out
    assert dict(plan.kept) == {"app-db": ("db.nix:5",)}  # strategy move: secret new --from names the line


def test_the_role_picks_its_account_and_another_users_password_is_said() -> None:
    sql = (
        "    CREATE USER 'app'@'localhost' IDENTIFIED BY 'app-pw-9';\n"
        "    CREATE USER 'report'@'localhost' IDENTIFIED BY 'rep-pw-3';"
    )
    plan, out = _plan(sql, role="app")
    assert "app-pw-9" not in out and "ALTER USER 'app'@'localhost'" in out
    assert [m.line for m in plan.manual] == [6]  # report's, by the verdict: one secret holds one value
    plan, out = _plan(sql)  # no role named and two users: nixmig does not pick
    assert not plan.edits and {m.line for m in plan.manual} == {5, 6}


def test_strategy_rotate_is_refused_with_its_line() -> None:
    plan, _ = _plan("    CREATE USER 'app'@'localhost' IDENTIFIED BY 'app-pw-9';", role="app", strategy="rotate")
    assert not plan.edits
    assert any("nixmig cannot rotate it" in m.what and 'strategy = "move"' in m.what for m in plan.manual)


def test_statements_read_holes_nixmig_knows_as_their_values() -> None:
    """``'${db.user}'@'localhost' IDENTIFIED BY '${db.pw}'``: holes (interpolations of a let string or a let
    attrset's field, by offset) that are a whole name or a whole password are read as their values; a hole
    inside a value, a value with a quote, or a hole nixmig does not know leaves the statement out."""
    sql = "CREATE USER '${u}'@'localhost' IDENTIFIED BY '${p}';\nALTER USER 'x'@'h' IDENTIFIED BY 'ro-${p}';\n"

    def at(s: str, n: int = 1) -> tuple[int, int]:
        i = -1
        for _ in range(n):
            i = sql.index(s, i + 1)
        return (i, i + len(s))

    holes = {at("${u}"): "helpdesk", at("${p}"): "pw-1", at("${p}", 2): "pw-1"}
    got = [(s.account, s.clause[2] if s.clause else None, s.read) for s in statements(sql, holes)]
    assert got == [("'helpdesk'@'localhost'", "pw-1", at("${p}"))]
    assert statements(sql, {at("${u}"): "helpdesk", at("${p}"): "it's"}) == []  # a quote: not read
    assert statements(sql) == []


def test_another_account_under_move_is_told_to_get_a_migration_of_its_own() -> None:
    """A blind case (stop 23): the migration (move) patched its account, and the second account's line said
    'a migration with strategy = "move" moves one such value', which it already was. It names the line to
    take the other value from; under rotate, the migration's own account is told to use move (test above)."""
    sql = (
        "    -- the app\n"
        "    CREATE USER IF NOT EXISTS 'app'@'localhost' IDENTIFIED BY 'app-pw-9';\n"
        "    CREATE USER IF NOT EXISTS 'pma'@'localhost' IDENTIFIED BY 'pma-pw-7';"
    )
    plan, out = _plan(sql, role="app")
    assert "CREATE USER IF NOT EXISTS 'app'@'localhost' ACCOUNT LOCK;" in out
    (m,) = plan.manual
    assert m.line == 7 and "give this account a migration of its own" in m.what
    assert "--from db.nix:7" in m.what and "pma-pw-7" not in m.what
