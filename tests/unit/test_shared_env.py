"""A let-bound attrset of environment variables shared by containers (nixmig/nixsrc/shapes/shared_env.py):
taken only when every use of it is a container's environment; anything else is left and said."""

from __future__ import annotations

import pytest

from nixmig.nixsrc import patch as pt
from tests.helpers import FIXTURES, plan_shape_case

CASE = FIXTURES / "shapes" / "oci-shared-env-let"
FILE = "hosts/box/chat.nix"


def _plan(text: bytes) -> tuple[pt.Plan, bytes]:
    plan, out = plan_shape_case(CASE.name, FILE, text)
    assert isinstance(plan, pt.Plan)
    return plan, out


def test_the_case_moves_every_shared_use() -> None:
    plan, out = _plan((CASE / FILE).read_bytes())
    assert plan.manual == ()
    assert b"DB_PASSWORD = dbPassword" not in out and b"PGPASSWORD = dbPassword" not in out
    for name in (b"chat", b"chat-worker", b"chat-cron"):
        assert b'environmentFiles = [ "/run/' + name + b'/chat-db-password.env" ];' in out


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # the shared attrset is also read by something that is no container nor unit (every shell's environment)
        (b"in\n{", b"in\n{\n  environment.variables = env;"),
        # passed on by inherit
        (b"in\n{", b"in\n{\n  _module.args = { inherit env; };"),
        # the container's own attrset replaces base's environment
        (b'image = "example/chat-cron:1";', b'image = "example/chat-cron:1";\n      environment = { X = "1"; };'),
        # a container named by an expression nixmig cannot read
        (b'"${name}-worker" = {', b'"${builtins.getEnv "X"}-worker" = {'),
    ],
)
def test_a_shared_attrset_used_otherwise_is_left_and_said(old: bytes, new: bytes) -> None:
    text = (CASE / FILE).read_bytes()
    assert old in text
    plan, out = _plan(text.replace(old, new, 1))
    assert plan.manual, "what is left must be said"
    assert b'"Chat-db-5"' in out  # the password stays until every use reads the secret


def test_a_unit_reading_the_shared_attrset_whole_renders_it_too() -> None:
    """realcfg32/05: `systemd.services.U.environment = env;` is a reader nixmig edits (the unit's EnvironmentFile)."""
    text = (CASE / FILE).read_bytes().replace(b"in\n{", b"in\n{\n  systemd.services.report.environment = env;", 1)
    plan, out = _plan(text)
    assert plan.manual == ()
    assert b'"Chat-db-5"' not in out
    assert b'EnvironmentFile = [ "-/run/report/chat-db-password.env" ];' in out
