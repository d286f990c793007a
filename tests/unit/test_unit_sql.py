"""SQL with a role's password run by a systemd unit (nixmig/nixsrc/shapes/unit_sql.py): what is cut,
what is left for the verdict, and how the exec command is read."""

from __future__ import annotations

import pytest

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.shapes.unit_sql import find_exec
from tests.helpers import FIXTURES, plan_shape_case

CASE = FIXTURES / "shapes" / "oci-podman-create-role-exec"
FILE = "hosts/box/wiki.nix"


def _plan(text: bytes) -> tuple[pt.Plan, bytes]:
    plan, out = plan_shape_case(CASE.name, FILE, text)
    assert isinstance(plan, pt.Plan)
    return plan, out


def _source() -> bytes:
    return (CASE / FILE).read_bytes()


def test_the_case_is_cut_and_a_unit_added() -> None:
    plan, out = _plan(_source())
    assert plan.manual == ()
    assert b"PASSWORD 'Wiki-pw-77'" not in out and b'CREATE ROLE \\"wiki-js\\" WITH LOGIN;' in out
    assert b"systemd.services.nixmig-wiki-js-db-password-password" in out
    assert b"podman exec -i pg psql" in out


def test_another_roles_clause_is_left_and_said() -> None:
    plan, out = _plan(_source().replace(b'ROLE \\"wiki-js\\" WITH', b"ROLE reports WITH"))
    assert b"PASSWORD 'Wiki-pw-77'" in out
    assert b"nixmig-wiki-js-db-password-password" not in out
    assert any("SQL" in m.what for m in plan.manual), plan.manual


@pytest.mark.parametrize("special", ["$", "`", "\\\\", "!"])
def test_a_password_the_shell_would_change_is_left_and_said(special: str) -> None:
    text = _source().replace(b"PASSWORD 'Wiki-pw-77'", f"PASSWORD 'Wiki{special}77'".encode())
    plan, out = _plan(text)
    assert f"PASSWORD 'Wiki{special}77'".encode() in out
    assert plan.manual


def test_a_container_named_by_an_expression_is_left_and_said() -> None:
    text = _source().replace(b"podman exec -i pg \\", b"podman exec -i ${dbName} \\")
    plan, out = _plan(text)
    assert b"PASSWORD 'Wiki-pw-77'" in out and plan.manual


def test_a_unit_that_does_not_run_psql_is_left_and_said() -> None:
    text = _source().replace(b"psql -U postgres", b"mysql -u root")
    plan, out = _plan(text)
    assert b"PASSWORD 'Wiki-pw-77'" in out and plan.manual


@pytest.mark.parametrize(
    ("command", "want"),
    [
        (
            "${pkgs.podman}/bin/podman exec -i postgres psql -U postgres -c x",
            ("podman", "${pkgs.podman}/bin/podman exec", "postgres", "postgres"),
        ),
        (
            "docker exec -it db psql --username=admin -c x",
            ("docker", "${config.virtualisation.docker.package}/bin/docker exec", "db", "admin"),
        ),
        (
            "podman exec --user postgres -i pg psql -c x",
            ("podman", "${config.virtualisation.podman.package}/bin/podman exec --user postgres", "pg", "postgres"),
        ),
        (
            "/run/current-system/sw/bin/docker exec db.1 psql",
            ("docker", "/run/current-system/sw/bin/docker exec", "db.1", "postgres"),
        ),
    ],
)
def test_the_exec_command_is_read(command: str, want: tuple[str, str, str, str]) -> None:
    how = find_exec(command)
    assert how is not None
    assert (how.runtime, how.command, how.name, how.user) == want


def test_combined_short_flags_are_not_guessed() -> None:
    assert find_exec("docker exec -iu postgres db psql -c x") is None


def test_a_unit_named_by_an_expression_is_left_and_said() -> None:
    """The password setter is ordered after the unit that creates the role: a name nixmig cannot
    write (``"${name}-init"``) leaves the clause for the verdict rather than an `after` that names nothing."""
    text = _source().replace(b"systemd.services.make-wiki-db = {", b'systemd.services."${dbName}-init" = {')
    plan, out = _plan(text)
    assert b"PASSWORD 'Wiki-pw-77'" in out and plan.manual
    assert b"nixmig-wiki-js-db-password-password" not in out
