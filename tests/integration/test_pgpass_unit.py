"""The pgpass file patch writes for a libpq keyword DSN (services.miniflux.config.DATABASE_URL), against a
real server.

patch takes ``password=...`` out of the DSN and has the unit's ExecStartPre write ``*:*:*:*:PASSWORD``
from the agenix file (a systemd credential) into the file PGPASSFILE names. Here: the script as written
into the Nix file (its Nix string evaluated by nix-instantiate) writes that file 0400, libpq connects with
the patched DSN and that PGPASSFILE (and not with a wrong one: the server checks passwords), and a password
a pgpass line cannot hold unescaped stops the script with nothing written.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import psycopg  # noqa: TID251  (test, not product code)
import pytest

from nixmig.nixsrc import patch as pt
from tests.harness.postgres import PgServer

pytestmark = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")

MODULE = """{ config, lib, ... }:
{
  services.miniflux = {
    enable = true;
    config = {
      LISTEN_ADDR = "127.0.0.1:8080";
      DATABASE_URL = lib.mkForce "host=HOST port=PORT user=ROLE password=OLDPW dbname=postgres sslmode=disable";
    };
  };
}
"""


def _patched(pg: PgServer, role: str) -> tuple[str, str, str]:
    """(the DSN left in the module, PGPASSFILE, the ExecStartPre script as Nix evaluates it)."""
    src = MODULE.replace("HOST", pg.host).replace("PORT", str(pg.port)).replace("ROLE", role)
    sources = {"miniflux.nix": src.encode()}
    plan = pt.plan(sources, pt.Spec(secret="miniflux-db", role=role))
    assert plan.manual == (), [m.what for m in plan.manual]
    out = plan.results(sources)["miniflux.nix"].decode()
    assert "OLDPW" not in out
    dsn = re.search(r'DATABASE_URL = lib\.mkForce "([^"]*)";', out)
    pgpass = re.search(r'PGPASSFILE = "([^"]*)";', out)
    script = re.search(r'writeShellScript "[^"]*" (\'\'\n.*?\n *\'\')\}" \];', out, re.S)
    assert dsn is not None and pgpass is not None and script is not None, out
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--json", "--expr", script.group(1)], capture_output=True, check=True
    )
    return dsn.group(1), pgpass.group(1), str(json.loads(proc.stdout))


def _connect(dsn: str, passfile: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    return str(row[0]) if row else ""


def test_the_unit_writes_a_pgpass_file_libpq_logs_in_with(
    pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = f"miniflux_{secrets.token_hex(3)}"
    new = secrets.token_urlsafe(18)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{new}'")  # the role as rotate leaves it
    dsn, pgpass, script = _patched(pg, role)
    assert "password" not in dsn and f"user={role}" in dsn
    run = tmp_path / "run"
    run.mkdir()
    script = script.replace(str(Path(pgpass).parent), str(run))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "miniflux-db").write_text(new)
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    written = run / Path(pgpass).name
    assert written.read_text() == f"*:*:*:*:{new}\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o400
    assert new not in " ".join(proc.args) and new.encode() not in proc.stdout + proc.stderr
    assert _connect(dsn, written, monkeypatch) == role
    wrong = tmp_path / "wrong.pgpass"
    wrong.write_text("*:*:*:*:not-the-password\n")
    wrong.chmod(0o400)
    with pytest.raises(psycopg.OperationalError):
        _connect(dsn, wrong, monkeypatch)  # the server checks the password: the right file is what logged in


@pytest.mark.parametrize("bad", ["has:colon", "back\\slash", "with space", "p\nw", "\n"])
def test_a_password_a_pgpass_line_cannot_hold_stops_the_unit(pg: PgServer, tmp_path: Path, bad: str) -> None:
    _dsn, pgpass, script = _patched(pg, "miniflux")
    run = tmp_path / "run"
    run.mkdir()
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "miniflux-db").write_text(bad)
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    script = script.replace(str(Path(pgpass).parent), str(run))
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, check=False)
    assert proc.returncode == 1
    assert "nixmig secret new miniflux-db --force --charset urlsafe" in proc.stderr.decode()
    assert list(run.iterdir()) == []


def test_the_final_line_breaks_of_the_credential_are_no_part_of_the_pgpass_line(pg: PgServer, tmp_path: Path) -> None:
    """`agenix -e` in an editor leaves a newline at the end of the file: the password is the file less it,
    as for every reader (it stopped the unit before, as a character a pgpass line cannot hold)."""
    _dsn, pgpass, script = _patched(pg, "miniflux")
    run = tmp_path / "run"
    run.mkdir()
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "miniflux-db").write_text("Pg-pass_7\n\n")
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    script = script.replace(str(Path(pgpass).parent), str(run))
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    (written,) = run.iterdir()
    assert written.read_text() == "*:*:*:*:Pg-pass_7\n"
