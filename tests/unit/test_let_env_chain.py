"""A let-bound password read through a let-bound environment attrset the containers share
(``dbPassword = "..."; env = { DB_USERNAME = dbUser; DB_PASSWORD = dbPassword; }; environment = env;``),
the database outside the repo's containers (a blind configuration, stop 20: refused, "no template")."""

from __future__ import annotations

from nixmig.nixsrc import patch as pt
from tests.helpers import FIXTURES, plan_shape_case

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


def test_a_let_url_filled_by_a_let_attrset_field_moves_and_says_the_field_is_written_out() -> None:
    """``formsDbUrl = "postgres://forms:PW@${net.db}:5432/forms"`` read by two apps: the env file's line holds
    the host as it evaluates; the field's binding stays (its other readers) and a note says the value is
    written out there; the URL's binding goes."""
    case, file = "oci-let-url-field-host-two-apps", "hosts/box/forms.nix"
    plan, out = plan_shape_case(case, file, (FIXTURES / "shapes" / case / file).read_bytes())
    assert plan.manual == (), [m.what for m in plan.manual]  # type: ignore[attr-defined]
    assert out.count(b"@10.88.0.10:5432/forms?sslmode=disable") == 2 and b'db = "10.88.0.10";' in out
    assert b"formsDbUrl" not in out and b"Frm-db-2291" not in out
    notes = [n for n in plan.notes if "the URL reads net.db;" in n]  # type: ignore[attr-defined]
    assert len(notes) == 1 and "written out" in notes[0] and "10.88.0.10" not in notes[0]  # named, not shown


def test_a_field_that_fills_the_password_is_never_shown() -> None:
    """``"postgres://forms:${db.pass}@${db.host}:5432/forms"``: the host's field is said (named), the
    password's is not written out and its value appears in no note and no by-hand item."""
    case, file = "oci-let-url-field-host-two-apps", "hosts/box/forms.nix"
    text = b"""{ ... }:
let
  db = { host = "10.88.0.10"; pass = "Frm-db-2291"; };
in
{
  virtualisation.oci-containers.containers = {
    forms-db = {
      image = "docker.io/library/postgres:16";
      environment = { POSTGRES_USER = "forms"; POSTGRES_DB = "forms"; POSTGRES_PASSWORD = "Frm-db-2291"; };
    };
    forms-api = {
      image = "ghcr.io/example/forms:3";
      environment.DATABASE_URL = "postgres://forms:${db.pass}@${db.host}:5432/forms";
    };
  };
}
"""
    plan, _ = plan_shape_case(case, file, text)
    notes: list[str] = list(plan.notes)  # type: ignore[attr-defined]
    said = [*notes, *(m.what + m.snippet for m in plan.manual)]  # type: ignore[attr-defined]
    assert not [x for x in said if "Frm-db-2291" in x], said
    fields = [n for n in notes if "the URL reads" in n]
    assert len(fields) == 1 and "the URL reads db.host;" in fields[0], fields
