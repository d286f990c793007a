"""The run-argv shape (nixmig/nixsrc/shapes/run_argv.py): `podman|docker run -e 'VAR=URL'` on a unit's
command line becomes --env-file, rendered by that unit from the agenix secret."""

from __future__ import annotations

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.scan import scan_source

SOURCE = """{ config, lib, pkgs, ... }:
{
  virtualisation.oci-containers.containers.notes-db = {
    image = "postgres:16";
    environment.POSTGRES_PASSWORD = "lit-pw-3";
  };
  systemd.services.notes-migrate.serviceConfig = {
    Type = "oneshot";
    ExecStart = "${pkgs.docker}/bin/docker run --rm -e DATABASE_URL=postgresql://postgres:lit-pw-3@db/n -e M=x i:1";
  };
}
"""


def _plan(text: str) -> tuple[pt.Plan, dict[str, bytes], dict[str, bytes]]:
    sources = {"notes.nix": text.encode()}
    plan = pt.plan(sources, pt.Spec(secret="notes-db"))
    return plan, sources, {**sources, **plan.results(sources)}


def test_a_literal_url_in_docker_run_argv_becomes_an_env_file() -> None:
    plan, sources, after = _plan(SOURCE)
    assert plan.manual == (), [m.what for m in plan.manual]
    out = after["notes.nix"].decode()
    assert "docker run --rm --env-file /run/notes-migrate/notes-db.env -e M=x i:1" in out
    assert "lit-pw-3" not in out and "lit-pw-3" not in plan.diff(sources)
    assert 'LoadCredential = [ "notes-db:${config.age.secrets.notes-db.path}" ];' in out
    assert "printf '%s=%s%s%s\\n' DATABASE_URL postgresql://postgres: \"$password\" @db/n" in out
    assert scan_source(after["notes.nix"], "notes.nix").findings == ()
    again = pt.plan(after, pt.Spec(secret="notes-db"))
    assert again.edits == () and again.manual == ()


def test_another_command_or_another_password_is_left_for_the_verdict() -> None:
    """Only `podman|docker run|create`; a URL with another password is not this migration's."""
    for text in (
        SOURCE.replace("docker run", "docker exec"),
        SOURCE.replace("postgres:lit-pw-3@db", "postgres:other-pw-1@db"),
    ):
        plan, _, after = _plan(text)
        assert "--env-file" not in after["notes.nix"].decode()
        if "docker exec" in text:  # the same password left on a command line: said, with its shape
            assert any("a password in a command line" in m.what for m in plan.manual), plan.manual


def test_a_kept_let_binding_is_said_once_at_its_use() -> None:
    """A let-bound password with a use nixmig cannot edit: one line, at the use, naming the shape and
    the binding (the verdict used to add a second line at the binding: "no template for this shape")."""
    from tests.helpers import FIXTURES

    case = FIXTURES / "shapes" / "oci-execstart-argv-computed"
    sources = pt.read_sources(case)
    plan = pt.plan(sources, pt.Spec(secret="notes-db-password", role="notes"))
    assert len(plan.manual) == 1, [m.what for m in plan.manual]
    (m,) = plan.manual
    assert m.line == 21 and "a password in a command line" in m.what and "bound at hosts/box/notes.nix:4:3" in m.what
    assert b"argv-pw-6" not in plan.diff(sources).encode()
