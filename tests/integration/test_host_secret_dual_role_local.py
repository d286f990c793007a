"""Strategy dual-role with an older value of the secret on the host (local target: real
PostgreSQL, local transport, the deploy command running the patched renderer).

add-role gives the second role the password read from /run/agenix/NAME; with an older
value there it would make a role whose password the services never get."""

from __future__ import annotations

import json

from nixmig.db import roles
from nixmig.demo import SECRET
from tests.integration.test_dual_role_local import (  # noqa: F401  (fixture)
    NEW_PASSWORD,
    NEW_ROLE,
    Dual,
    dual,
    nixmig,
)

OLDER = "an-0lder-value-from-an-earlier-attempt"


def _plant(d: Dual, value: str) -> None:
    f = d.t.agenix_dir / SECRET
    f.unlink(missing_ok=True)
    f.write_text(value)
    f.chmod(0o400)


def test_add_role_refuses_an_older_value_then_apply_again_finishes(dual: Dual) -> None:  # noqa: F811
    killed = nixmig(dual, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": "stage"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    _plant(dual, OLDER)

    refused = nixmig(dual, "apply", "--yes", "-i", str(dual.t.admin_key))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"does not hold the value of secrets/{SECRET}.age" in refused.stderr
    assert "add-role refused before changing anything" in refused.stderr
    ctx = dual.ctx()
    assert not roles.info(ctx.t, ctx.runtime, NEW_ROLE).exists  # no role made
    steps = {s["phase"]: s["state"] for s in json.loads(dual.journal.read_text())["steps"]}
    assert steps["stage"] == "failed" and steps["add-role"] == "failed"

    again = nixmig(dual, "apply", "--yes", "-i", str(dual.t.admin_key))
    assert again.returncode == 0, again.stdout + again.stderr
    reason, acting = dual.login(NEW_ROLE, NEW_PASSWORD)
    assert reason is None and acting == "postgres"
