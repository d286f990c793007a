"""A host that holds an older value of the secret, on real parts: the twenty stack (sshd,
dockerd, twenty-db-1, the app writing every ~10 ms; see twenty_stack.py).

Found there: with an older value in /run/agenix/NAME before apply, stage said "already
in effect", rotate set the role's password to that older value, switch gave the app the
repo's value, and verify failed (`new password logs in: FAIL`); the app could not log in
until a rollback. Now stage compares digests (the host's file hashed there, the repo's
value hashed here) and deploys; rotate refuses before any ALTER ROLE when they differ.
"""

from __future__ import annotations

import json
from pathlib import Path

from nixmig.db.writer import Writer
from tests.e2e import twenty_stack as ts
from tests.e2e.test_migrate_docker import (  # noqa: F401  (fixtures)
    app,
    assert_rotated,
    site,
    stack,
    states,
    stop_and_count,
)

OLDER = "an-0lder/value+from=an-earlier-attempt"


def plant(target: ts.Site, value: str) -> Path:
    """The host's agenix file holds ``value`` (0400), as an earlier activation left it."""
    f = target.agenix_file
    f.unlink(missing_ok=True)
    f.write_text(value)
    f.chmod(0o400)
    return f


def test_an_older_value_on_the_host_is_deployed_over(site: ts.Site, app: Writer) -> None:  # noqa: F811
    plant(site, OLDER)
    run = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "stage: already in effect" not in run.stdout
    assert f"holds another value than secrets/{ts.SECRET}.age: deploying" in run.stdout
    assert "activating newton (stage)" in run.stdout
    assert site.agenix_file.read_bytes() == site.password.reveal()
    assert_rotated(site)
    assert site.db.login(OLDER) is not None
    assert states(site) == ["done"] * 7
    verify = json.loads(site.journal.read_text())["steps"][5]
    assert verify["phase"] == "verify" and all(c["ok"] for c in verify["data"]["checks"])
    acked, found = stop_and_count(site, app)
    assert found == acked and app.failed_attempts == 0  # the app never met a password the role lacks
    for text in (run.stdout, run.stderr, site.journal.read_text()):
        assert OLDER not in text and site.password.reveal_str() not in text


def test_rotate_refuses_when_the_host_file_differs(site: ts.Site, app: Writer) -> None:  # noqa: F811
    killed = ts.nixmig(site, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": "stage"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert site.agenix_file.read_bytes() == site.password.reveal()
    plant(site, OLDER)  # e.g. an older generation activated on the host in between

    refused = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert f"{site.agenix_file} does not hold the value of secrets/{ts.SECRET}.age" in line
    assert "rotate refused before changing anything" in line and "run `nixmig apply` again" in line
    # no ALTER ROLE happened: the old password still logs in, neither other value does
    assert site.db.login(ts.OLD_PASSWORD) is None
    assert site.db.login(OLDER) is not None and site.db.login(site.password.reveal_str()) is not None
    steps = {s["phase"]: s["state"] for s in json.loads(site.journal.read_text())["steps"]}
    assert steps["stage"] == "failed" and steps["rotate"] == "failed" and "switch" not in steps
    assert not site.env_file.exists()

    again = ts.nixmig(site, "apply", "--yes", "-i", str(site.keys.admin_key))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "activating newton (stage)" in again.stdout  # stage deployed the repo's value first
    assert_rotated(site)
    assert states(site) == ["done"] * 7
    acked, found = stop_and_count(site, app)
    assert found == acked
