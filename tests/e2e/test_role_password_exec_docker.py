"""The oneshot patch writes for SQL run by ``podman/docker exec ... psql -c "CREATE ROLE ... PASSWORD '...'"``,
run against a real PostgreSQL container through the real docker CLI.

patch removes the clause from the unit's SQL and adds a unit whose script sets the role's password
from the agenix file (a systemd credential), through ``exec -i CONTAINER psql`` with the SQL on
stdin. Here: the SQL left after the edit creates the role, the script (as written into the Nix
file, the runtime pointed at this machine's docker) sets a password holding quotes, a backslash and
a dollar sign, it is in no argv, and a server logging every statement has no trace of it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psycopg  # noqa: TID251  (test, not product code)

from nixmig import config
from nixmig.nixsrc import patch as pt
from tests.harness.dockerd import DockerEngine, PgContainerFactory
from tests.harness.postgres import conninfo
from tests.helpers import FIXTURES

CASE = FIXTURES / "shapes" / "oci-podman-create-role-exec"


def _patched() -> str:
    cfg = config.load(CASE / "nixmig.toml")
    (migration,) = cfg.migrations
    sources = pt.read_sources(CASE)
    plan = pt.plan(sources, pt.spec_for(cfg, migration))
    return plan.results(sources)["hosts/box/wiki.nix"].decode()


def _indented(out: str, key: str, indent: str) -> str:
    m = re.search(rf"{indent}{key} = ''\n(.*?){indent}'';", out, re.S)
    assert m is not None, out
    body = "\n".join(line.removeprefix(indent + "  ") for line in m.group(1).splitlines())
    return body.replace("''$", "$").replace("'''", "''")  # Nix indented-string escapes, as Nix reads them


def test_the_patched_sql_runs_and_the_exec_unit_sets_the_password(
    pg_container: PgContainerFactory, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    out = _patched()
    assert "Wiki-pw-77" not in out
    pg = pg_container(password="super-pw", args=["-c", "log_statement=all", "-c", "log_min_duration_statement=0"])
    created = _indented(out, "ExecStart", "      ")
    script = _indented(out, "script", "    ")
    for text in (created, script):
        assert "${pkgs.podman}/bin/podman" in text
    docker = ["docker", "-H", docker_engine.base_url]
    runtime = " ".join(docker)
    created = created.replace("${pkgs.podman}/bin/podman", runtime).replace(" pg ", f" {pg.name} ")
    script = script.replace("${pkgs.podman}/bin/podman", runtime).replace(" pg ", f" {pg.name} ")
    assert "PASSWORD" not in created
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", created], capture_output=True, check=False)
    assert run.returncode == 0, run.stderr.decode()  # the SQL left after the edit creates role and database
    new = "it's a \\ $HOME `x` pw'"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "wiki-js-db-password").write_text(new + "\n")
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    dsn = conninfo(host=pg.host, port=pg.port, user="wiki-js", password=new, dbname="wiki-js")
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT current_user").fetchone() == ("wiki-js",)
    logs = subprocess.run([*docker, "logs", pg.name], capture_output=True, check=True)
    log = (logs.stdout + logs.stderr).decode(errors="replace")
    assert 'CREATE ROLE "wiki-js" WITH LOGIN' in log  # the server logged every statement
    assert "it's a" not in log and "Wiki-pw-77" not in log
    assert new not in script
