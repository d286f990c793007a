"""Strategy rebuild with an older value of the secret on the host (real sshd + dockerd).

provision initialises the new cluster from /run/agenix/NAME (POSTGRES_PASSWORD_FILE) and
copy sets the role's password from it: with an older value there, the database switched
to would hold a password the services never get."""

from __future__ import annotations

import json
from pathlib import Path

from nixmig.db.writer import Writer
from tests.e2e import twenty_stack as ts
from tests.e2e.test_rebuild_docker import (  # noqa: F401  (fixtures)
    Stack,
    assert_on_old_volume,
    assert_switched,
    db,
    site_for,
    stack,
    start_writer,
    stop_and_count,
    volume_names,
    writers,
)

OLDER = "an-0lder/value+from=an-earlier-attempt"


def test_provision_refuses_an_older_value_then_apply_again_finishes(
    stack: Stack,  # noqa: F811
    db: ts.Db,  # noqa: F811
    tmp_path: Path,
    writers: list[Writer],  # noqa: F811
) -> None:
    r = site_for(stack, db, tmp_path / "site", new_volume="twenty_db-data-next")
    app = start_writer(r, writers)
    killed = ts.nixmig(r.site, "apply", "--yes", env={"NIXMIG_TEST_SIGKILL_AFTER": "stage"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    f = r.site.agenix_file
    f.unlink()
    f.write_text(OLDER)
    f.chmod(0o400)

    refused = ts.nixmig(r.site, "apply", "--yes", "-i", str(r.site.keys.admin_key))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert f"does not hold the value of secrets/{ts.SECRET}.age" in line
    assert "provision refused before changing anything" in line
    # nothing made: no new volume, no scratch server; the service still on the old one
    assert "twenty_db-data-next" not in volume_names(stack)
    assert f"{ts.CONTAINER}-nixmig-new" not in {c.name for c in stack.client.containers.list(all=True)}
    assert_on_old_volume(r)
    steps = {s["phase"]: s["state"] for s in json.loads(r.site.journal.read_text())["steps"]}
    assert steps["stage"] == "failed" and steps["provision"] == "failed"

    again = ts.nixmig(r.site, "apply", "--yes", "-i", str(r.site.keys.admin_key))
    assert again.returncode == 0, again.stdout + again.stderr
    assert_switched(r, "twenty_db-data-next")
    assert r.login(OLDER) is not None
    acked, found = stop_and_count(r, app)
    assert found == acked
