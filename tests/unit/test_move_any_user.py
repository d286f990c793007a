"""Strategy move with no role set: an app container's database password beside a user other than the
default role is this migration's when the secret's name names it (move changes no password, so whose
it is does not matter); a secret that names something else takes nothing."""

from __future__ import annotations

from nixmig.nixsrc import patch as pt

APP = b"""{ ... }:
{
  virtualisation.oci-containers.containers.photos = {
    image = "photoprism/photoprism:latest";
    environment = {
      PHOTOPRISM_DATABASE_DRIVER = "mysql";
      PHOTOPRISM_DATABASE_SERVER = "mariadb:3306";
      PHOTOPRISM_DATABASE_USER = "photoprism";
      PHOTOPRISM_DATABASE_PASSWORD = "Ph0to-db-7715";
    };
  };
}
"""


def _plan(secret: str, strategy: str = "move", role: str = "postgres") -> tuple[pt.Plan, bytes]:
    src = {"photos.nix": APP}
    spec = pt.Spec(secret=secret, host="box", strategy=strategy, role=role)
    plan = pt.plan(src, spec)
    return plan, plan.results(src).get("photos.nix", APP)


def test_the_app_password_the_secret_names_moves_with_no_role_set() -> None:
    plan, out = _plan("photoprism-db-password")
    assert plan.manual == (), [m.what for m in plan.manual]
    assert b"Ph0to-db-7715" not in out and b"environmentFiles" in out


def test_a_secret_naming_something_else_takes_nothing() -> None:
    plan, out = _plan("redis-password")
    assert out == APP and plan.manual  # said, never taken


def test_a_rotation_still_wants_the_role() -> None:
    """rotate changes the role's password: the container's user must be the role (else the hint to set it)."""
    plan, out = _plan("photoprism-db-password", strategy="rotate")
    assert b"Ph0to-db-7715" in out
    assert any("set that user as the service's role" in m.what for m in plan.manual), [m.what for m in plan.manual]
