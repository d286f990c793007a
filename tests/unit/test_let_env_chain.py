"""A let-bound password read through a let-bound environment attrset the containers share
(``dbPassword = "..."; env = { DB_USERNAME = dbUser; DB_PASSWORD = dbPassword; }; environment = env;``),
the database outside the repo's containers (a blind configuration, stop 20: refused, "no template")."""

from __future__ import annotations

from nixmig.nixsrc import patch as pt

APP = b"""{ pkgs, config, ... }:
let
  dbUser = "immich";
  dbPassword = "Imm-db-pw-881";
  redisPassword = "RVALUE";
  env = {
    DB_HOSTNAME = "10.0.0.1";
    DB_USERNAME = dbUser;
    DB_PASSWORD = dbPassword;
    REDIS_PASSWORD = redisPassword;
  };
in
{
  services.redis.servers.immich.requirePass = redisPassword;
  virtualisation.oci-containers.containers = {
    immich_server = { image = "ghcr.io/immich-app/immich-server:release"; environment = env; };
    immich_ml = { image = "ghcr.io/immich-app/immich-machine-learning:release"; environment = env; };
  };
}
"""


def _plan(redis: bytes) -> tuple[pt.Plan, bytes]:
    src = {"immich.nix": APP.replace(b"RVALUE", redis)}
    plan = pt.plan(src, pt.Spec(secret="immich-db-password", role="immich"))
    return plan, plan.results(src).get("immich.nix", src["immich.nix"])


def test_the_password_leaves_the_let_chain_and_redis_stays() -> None:
    plan, out = _plan(b"R3dis-own-pw")
    assert plan.manual == (), [m.what for m in plan.manual]
    assert b"Imm-db-pw-881" not in out and b"DB_PASSWORD = dbPassword" not in out
    assert out.count(b"environmentFiles = [") == 2
    assert b"REDIS_PASSWORD = redisPassword;" in out and b'redisPassword = "R3dis-own-pw";' in out


def test_another_credential_with_the_same_text_is_said_as_that() -> None:
    """redisPassword = the database's text: two secrets in one, said as such (not "no edit for this shape")."""
    plan, _ = _plan(b"Imm-db-pw-881")
    (item,) = plan.manual
    assert "redisPassword holds the database's value under another credential's name" in item.what, item.what
