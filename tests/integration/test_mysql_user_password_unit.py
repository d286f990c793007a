"""The oneshot patch writes for ``IDENTIFIED BY '...'`` in services.mysql.initialScript, run against a
real MariaDB server (Debian's mariadb-server, as scripts/bootstrap installs it).

patch removes the clause from the SQL (GRANT ... IDENTIFIED BY: the script's CREATE USER gets ACCOUNT
LOCK) and adds a unit whose script sets the account's password from the agenix file (a systemd
credential). Here: the patched SQL runs as nixpkgs runs it (piped into the client by the superuser),
the account cannot log in before the unit ran (locked, never an empty password), the script (as
written into the Nix file, the package path pointed at this machine's client and the superuser at
root over the socket) sets the value byte for byte, quotes and backslashes included, and neither the
general query log nor the binary log holds it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nixmig.nixsrc import patch as pt

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
MODULE = """{ pkgs, ... }:
{
  services.mysql = {
    enable = true;
    package = pkgs.mariadb;
    initialScript = pkgs.writeText "init.sql" ''
      CREATE DATABASE helpdesk;
      CREATE USER 'helpdesk'@'localhost';
      GRANT ALL PRIVILEGES ON helpdesk.* TO 'helpdesk'@'localhost' IDENTIFIED BY 'old-desk-pw';
    '';
  };
}
"""


@dataclass
class Maria:
    datadir: Path
    socket: Path
    general_log: Path

    def client(self, *args: str, user: str = "root", password: str | None = None, stdin: str = "") -> str:
        extra = self.datadir.parent / "client.cnf"
        extra.write_text(f"[client]\npassword={password}\n" if password is not None else "[client]\n")
        extra.chmod(0o600)
        out = subprocess.run(
            ["mysql", f"--defaults-extra-file={extra}", "-S", str(self.socket), "-u", user, "-N", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip())
        return out.stdout


@pytest.fixture
def maria(tmp_path: Path) -> Iterator[Maria]:
    if not os.path.exists(MARIADBD):
        pytest.fail("mariadbd is missing: run scripts/bootstrap (it installs Debian's mariadb-server)")
    data, sock, glog = tmp_path / "data", tmp_path / "mysqld.sock", tmp_path / "general.log"
    subprocess.run(
        ["mysql_install_db", "--no-defaults", f"--datadir={data}", "--user=root", "--skip-test-db"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    proc = subprocess.Popen(
        [MARIADBD, "--no-defaults", f"--datadir={data}", f"--socket={sock}", "--skip-networking", "--user=root",
         f"--log-error={tmp_path / 'error.log'}", "--general-log=1", f"--general-log-file={glog}",
         f"--log-bin={tmp_path / 'binlog'}", "--server-id=1", f"--pid-file={tmp_path / 'pid'}"],
    )  # fmt: skip
    try:
        for _ in range(300):
            if sock.exists():
                break
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "error.log").read_text())
            time.sleep(0.1)
        yield Maria(data, sock, glog)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


TWICE = """{ pkgs, ... }:
{
  services.mysql = {
    enable = true;
    package = pkgs.mariadb;
    initialScript = pkgs.writeText "init.sql" ''
      CREATE USER 'helpdesk'@'localhost' IDENTIFIED BY 'first-desk-pw';
      CREATE DATABASE helpdesk;
      GRANT ALL PRIVILEGES
        ON helpdesk.* TO 'helpdesk'@'localhost'
        IDENTIFIED BY 'old-desk-pw';
    '';
  };
}
"""


def _sql_and_script(module: str = MODULE) -> tuple[str, str]:
    spec = pt.Spec(secret="helpdesk-db", role="helpdesk", strategy="move")
    src = {"db.nix": module.encode()}
    plan = pt.plan(src, spec)
    out = plan.results(src)["db.nix"].decode()
    assert "old-desk-pw" not in out and "first-desk-pw" not in out and plan.manual == (), plan.manual
    sql = re.search(r"writeText \"init.sql\" ''\n(.*?)    '';", out, re.S)
    script = re.search(r"    script = ''\n(.*?)    '';", out, re.S)
    assert sql is not None and script is not None, out
    body = "\n".join(line.removeprefix("      ") for line in script.group(1).splitlines())
    body = body.replace("''${", "${")  # the Nix indented string's escape, as Nix writes the script
    body = body.replace("${config.services.mysql.package}/bin/mysql", "mysql")
    return sql.group(1), body


def test_the_patched_sql_runs_locked_and_the_unit_sets_the_kept_password(maria: Maria, tmp_path: Path) -> None:
    sql, script = _sql_and_script()
    assert "CREATE USER 'helpdesk'@'localhost' ACCOUNT LOCK;" in sql
    assert "TO 'helpdesk'@'localhost';" in sql and "IDENTIFIED" not in sql
    maria.client(stdin=sql)  # as nixpkgs' postStart: cat initialScript | mysql -u SUPERUSER -N
    with pytest.raises(RuntimeError, match=r"locked|denied"):
        maria.client("-e", "SELECT 1", user="helpdesk", password="")  # no empty password before the unit
    value = "it's a \\ back'slash \"pw\" $HOME `x` %s"  # kept as it is: quotes and backslashes included
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "helpdesk-db").write_text(value + "\n")  # an agenix file may end with a newline
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    for _ in range(2):  # at each start: the second run changes nothing
        run = subprocess.run(
            ["bash", "-e", "-c", script.replace("-u ${config.services.mysql.user}", f"-S {maria.socket} -u root")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
    assert maria.client("-e", "SELECT CURRENT_USER()", user="helpdesk", password=value).strip() == "helpdesk@localhost"
    with pytest.raises(RuntimeError, match="denied"):
        maria.client("-e", "SELECT 1", user="helpdesk", password="old-desk-pw")
    maria.client(stdin="FLUSH LOGS;")
    logs = [maria.general_log, *tmp_path.glob("binlog.0*")]
    assert len(logs) >= 2
    for log in logs:
        data = log.read_bytes()
        assert value.encode() not in data and b"back''slash" not in data, log
    assert b"ALTER USER" not in maria.general_log.read_bytes()  # the session's general log was off


def test_an_account_given_a_password_twice_ends_locked_then_with_the_kept_one(maria: Maria, tmp_path: Path) -> None:
    """CREATE USER ... IDENTIFIED BY 'a'; GRANT ... IDENTIFIED BY 'b' (MariaDB resets the password: the script
    ends with b, the value a move keeps): patched, the script leaves the account locked, no password of the
    two logs in, and the unit sets the kept one."""
    maria.client(stdin=TWICE.split("''\n", 1)[1].split("    '';", 1)[0])  # the script as published: ends with b
    assert maria.client("-e", "SELECT 1", user="helpdesk", password="old-desk-pw").strip() == "1"
    maria.client(stdin="DROP USER 'helpdesk'@'localhost'; DROP DATABASE helpdesk;")
    sql, script = _sql_and_script(TWICE)
    assert "CREATE USER 'helpdesk'@'localhost' ACCOUNT LOCK;" in sql and "IDENTIFIED" not in sql
    maria.client(stdin=sql)
    for old in ("", "first-desk-pw", "old-desk-pw"):
        with pytest.raises(RuntimeError, match=r"locked|denied"):
            maria.client("-e", "SELECT 1", user="helpdesk", password=old)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "helpdesk-db").write_text("old-desk-pw\n")  # the kept value: `secret new --from` the GRANT's line
    run = subprocess.run(
        ["bash", "-e", "-c", script.replace("-u ${config.services.mysql.user}", f"-S {maria.socket} -u root")],
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert maria.client("-e", "SELECT 1", user="helpdesk", password="old-desk-pw").strip() == "1"
