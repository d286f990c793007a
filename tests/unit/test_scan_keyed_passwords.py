"""A map from a user to its password (``ensurePasswords.umami = "..."``, a custom module's option seen
in a real configuration): the attribute names the user, its parent says the value is a password.
Before, scan found nothing there and patch claimed success with the password left."""

from __future__ import annotations

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.scan import scan_source

SRC = b"""{ config, ... }:
{
  my.postgresql.ensurePasswords.umami = "umami-pw-1";
  my.other.ensurePasswords = { bob = "bobs-pw-2"; };
  my.db.userPasswords.carol = "/run/keys/carol";
  virtualisation.oci-containers.containers.umami = {
    image = "example/umami:2";
    environment.DATABASE_URL = "postgresql://umami:umami-pw-1@172.17.0.1:5432/umami";
  };
}
"""


def test_scan_finds_passwords_keyed_by_user() -> None:
    found = {f.attr_path for f in scan_source(SRC, "m.nix").findings}
    assert "my.postgresql.ensurePasswords.umami" in found
    assert "my.other.ensurePasswords.bob" in found
    assert "my.db.userPasswords.carol" not in found  # a path, not a password


def test_patch_says_the_keyed_password_it_cannot_edit() -> None:
    plan = pt.plan({"m.nix": SRC}, pt.Spec(secret="umami-db", role="umami"))
    assert any(m.line == 3 and "ensurePasswords.umami" in m.what for m in plan.manual), plan.manual
