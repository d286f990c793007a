"""A host that holds an older value of the secret, on the local target (real PostgreSQL,
the native runtime, the local transport, the deploy command playing activation).

Before the fix stage said "already in effect" when /run/agenix/NAME merely existed:
rotate then set the role's password to the older value, switch gave the app the
repo's value, and verify failed (in production: the app down until a rollback).
"""

from __future__ import annotations

import json
from pathlib import Path

from nixmig.demo import OLD_PASSWORD, SECRET, Target
from tests.integration.test_migrate_local import journal, nixmig, role_matches, target  # noqa: F401

NEW = "n3w/pa+ss=w@rd:%?-long-enough"  # what the target fixture puts in the repo's .age
OLDER = "an-0lder-value-from-an-earlier-attempt"


def plant(t: Target, value: str) -> Path:
    """The host's agenix file holds ``value`` (0400), as an earlier activation left it."""
    f = t.agenix_dir / SECRET
    f.unlink(missing_ok=True)
    f.write_text(value)
    f.chmod(0o400)
    return f


def states(t: Target) -> dict[str, str]:
    return {s["phase"]: s["state"] for s in journal(t)["steps"]}  # type: ignore[attr-defined]


def test_an_older_value_on_the_host_is_deployed_over(target: Target) -> None:  # noqa: F811
    agenix = plant(target, OLDER)
    run = nixmig(target, "apply", "--yes", "-i", str(target.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "stage: already in effect" not in run.stdout
    assert f"holds another value than secrets/{SECRET}.age: deploying" in run.stdout
    assert agenix.read_text() == NEW
    assert role_matches(target, NEW) and not role_matches(target, OLDER)
    verify = journal(target)["steps"][5]  # type: ignore[index]
    assert verify["phase"] == "verify" and all(c["ok"] for c in verify["data"]["checks"])
    for text in (run.stdout, run.stderr, json.dumps(journal(target))):
        assert OLDER not in text and NEW not in text


def test_without_an_identity_stage_deploys_rather_than_assume(target: Target) -> None:  # noqa: F811
    plant(target, OLDER)
    run = nixmig(target, "apply", "--yes", env={"HOME": str(target.root)})  # no -i, no default key
    assert run.returncode == 0, run.stdout + run.stderr
    assert "cannot tell whether it holds the value" in run.stdout
    assert "rotate: cannot check" in run.stdout
    assert role_matches(target, NEW)


def test_rotate_refuses_when_the_host_file_differs_then_apply_again_finishes(target: Target) -> None:  # noqa: F811
    killed = nixmig(target, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": "stage"})
    assert killed.returncode == -9
    assert (target.agenix_dir / SECRET).read_text() == NEW
    plant(target, OLDER)  # e.g. an older generation activated in between

    refused = nixmig(target, "apply", "--yes", "-i", str(target.admin_key))
    assert refused.returncode == 1
    assert f"does not hold the value of secrets/{SECRET}.age" in refused.stderr
    assert "rotate refused before changing anything" in refused.stderr and "nixmig apply" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert role_matches(target, OLD_PASSWORD) and not role_matches(target, OLDER)  # no ALTER ROLE
    assert states(target)["stage"] == "failed" and states(target)["rotate"] == "failed"
    assert not target.env_file.exists()  # switch never ran

    again = nixmig(target, "apply", "--yes", "-i", str(target.admin_key))
    assert again.returncode == 0, again.stdout + again.stderr
    assert role_matches(target, NEW)
    assert set(states(target).values()) == {"done"}
