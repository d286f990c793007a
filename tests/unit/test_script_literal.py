"""The password written straight into a unit's script (nixmig/nixsrc/shapes/script_literal.py).

As in test_let_script.py: the patched script is evaluated by nix-instantiate and run by real bash
with the credential systemd would hand over in a temp dir, the commands it calls (psql, pg_dump,
mysql) replaced by stubs that record their argv (a fake, named so: no server is needed to see what
a command receives). A password with every character quoting gets wrong must arrive exactly:
percent-encoded inside a URL, its quotes doubled in an SQL string, as it is everywhere else.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from nixmig.nixsrc import patch as pt
from tests.helpers import plan_shape_case, run_with_credential

CASE = "native-script-literal-pgpassword"
FILE = "hosts/box/ledger.nix"
NASTY = "p@ss w'rd\"$(x)`y`\\%/é!"

MODULE = """{ config, pkgs, ... }:

{
  services.postgresql.enable = true;

  systemd.services.ledger = {
    environment.DATABASE_URL = "postgresql://ledger:Ldg-8pass@localhost/ledger";
  };

  systemd.services.ledger-backup = {
    path = [ pkgs.postgresql ];
    script = ''
      export PGPASSWORD="Ldg-8pass"
      PGPASSWORD=Ldg-8pass pg_dump -U ledger ledger >/dev/null
      psql 'postgresql://ledger:Ldg-8pass@localhost/ledger' -c 'VACUUM'
      pg_dump --dbname=postgresql://ledger:Ldg-8pass@localhost/ledger -f /dev/null
      psql -c "SELECT 'Ldg-8pass'"
      mysql -u ledger -pLdg-8pass -e 'SELECT 1'
    '';
    serviceConfig.Type = "oneshot";
  };
}
"""


def _plan(text: str) -> tuple[pt.Plan, bytes]:
    plan, out = plan_shape_case(CASE, FILE, text.encode())
    assert isinstance(plan, pt.Plan)
    return plan, out


def _script(tmp_path: Path, patched: bytes) -> tuple[str, list[str]]:
    module = tmp_path / "ledger.nix"
    module.write_bytes(patched)
    expr = (
        f'let m = import {module} {{ config.age.secrets.ledger-db-password.path = "/run/agenix/x"; '
        'pkgs = { postgresql = "pg"; hello = "hello"; writeShellScript = n: t: t; }; lib.mkBefore = x: x; }; '
        "u = m.systemd.services.ledger-backup; in { inherit (u) script; load = u.serviceConfig.LoadCredential; }"
    )
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True, check=True
    ).stdout
    got = json.loads(out)
    return str(got["script"]), list(got["load"])


def _run(tmp_path: Path, script: str, password: str) -> list[list[str]]:
    return run_with_credential(
        tmp_path, script, "ledger-db-password", password, ("psql", "mysql", "pg_dump"), ("PGPASSWORD",)
    )


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_every_copy_in_the_script_reads_the_secret_exactly(tmp_path: Path) -> None:
    plan, out = _plan(MODULE)
    assert plan.manual == (), [m.what for m in plan.manual]
    assert b"Ldg-8pass" not in out
    script, load = _script(tmp_path, out)
    assert load == ["ledger-db-password:/run/agenix/x"]
    url = "postgresql://ledger:" + quote(NASTY, safe="") + "@localhost/ledger"
    env = f"PGPASSWORD={NASTY}"
    assert _run(tmp_path, script, NASTY) == [
        ["pg_dump", "-U", "ledger", "ledger", env],
        ["psql", url, "-c", "VACUUM", env],
        ["pg_dump", f"--dbname={url}", "-f", "/dev/null", env],
        ["psql", "-c", "SELECT '" + NASTY.replace("'", "''") + "'", env],
        ["mysql", "-u", "ledger", f"-p{NASTY}", "-e", "SELECT 1", env],
    ]


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_a_missing_credential_stops_the_script_with_one_line(tmp_path: Path) -> None:
    _, out = _plan(MODULE)
    script, _ = _script(tmp_path, out)
    env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(tmp_path / "none")}
    proc = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == "nixmig: the credential ledger-db-password is missing or empty"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("psql -c \"SELECT 'Ldg-8pass'\"", "psql <<EOF\n      SELECT 'Ldg-8pass';\n      EOF"),  # a heredoc
        ("psql -c \"SELECT 'Ldg-8pass'\"", 'x="$(psql -c Ldg-8pass)"'),  # $( ) in double quotes
        ("psql -c \"SELECT 'Ldg-8pass'\"", "psql -c \"ALTER ROLE ledger PASSWORD 'Ldg-8pass'\""),  # SQL setting it
        ('serviceConfig.Type = "oneshot";', 'serviceConfig.LoadCredential = [ "other:/run/x" ];'),
    ],
)
def test_a_copy_nixmig_cannot_follow_leaves_the_whole_script_and_is_said(old: str, new: str) -> None:
    """Every copy or none: the script stays as it is, and the verdict names its line."""
    text = MODULE.replace(old, new)
    assert text != MODULE
    plan, out = _plan(text)
    assert b"nixmig_ledger_db_password" not in out
    start = text.index("script = ''")
    script = text[start : text.index("'';", start)]
    first = text[:start].count("\n") + 1
    left = {first + i for i, ln in enumerate(script.splitlines()) if "Ldg-8pass" in ln and "PASSWORD '" not in ln}
    assert len(left) >= 4  # (SQL that sets the password is the unit-sql shape's: its clause goes)
    said = {m.line for m in plan.manual if m.file == FILE and "still holds this migration's password" in m.what}
    assert left <= said, (left, said)


def test_a_literal_that_is_no_recognised_password_is_not_touched() -> None:
    """No app holds the role's password: a string in a script is no credential by its name alone."""
    text = MODULE.replace('environment.DATABASE_URL = "postgresql://ledger:Ldg-8pass@localhost/ledger";', "")
    _, out = _plan(text)
    assert b"nixmig_ledger_db_password" not in out


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_a_unit_with_a_script_copy_and_a_url_to_render_loads_the_credential_once(tmp_path: Path) -> None:
    """The same unit's preStart holds the password and its environment the URL: the script's LoadCredential
    and the env file renderer's are one (two would not evaluate: 'attribute LoadCredential already defined')."""
    src = {
        "app.nix": b"""{ config, pkgs, ... }:
{
  services.postgresql.enable = true;
  systemd.services.app = {
    environment.DATABASE_URL = "postgresql://app:App-pw-991@localhost/app";
    preStart = ''
      PGPASSWORD=App-pw-991 psql -h localhost -U app -c 'select 1'
    '';
    serviceConfig.ExecStart = "${pkgs.hello}/bin/hello";
  };
}
"""
    }
    plan = pt.plan(src, pt.Spec(secret="app-db-password", role="app"))
    assert plan.manual == (), [m.what for m in plan.manual]
    out = plan.results(src)["app.nix"]
    assert b"App-pw-991" not in out and out.count(b"LoadCredential") == 1
    module = tmp_path / "app.nix"
    module.write_bytes(out)
    expr = (
        f'let m = import {module} {{ config.age.secrets.app-db-password.path = "/run/agenix/x"; '
        'pkgs = { hello = "hello"; writeShellScript = n: t: t; }; lib.mkBefore = x: x; }; '
        "u = m.systemd.services.app; in { inherit (u) preStart; load = u.serviceConfig.LoadCredential; "
        "pre = u.serviceConfig.ExecStartPre; }"
    )
    got = json.loads(
        subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True, check=True
        ).stdout
    )
    assert got["load"] == ["app-db-password:/run/agenix/x"] and len(got["pre"]) == 1
    calls = run_with_credential(tmp_path, got["preStart"], "app-db-password", NASTY, ("psql",), ("PGPASSWORD",))
    assert calls == [["psql", "-h", "localhost", "-U", "app", "-c", "select 1", f"PGPASSWORD={NASTY}"]]


def test_a_copy_in_a_path_is_a_name_and_leaves_the_script_as_it_was() -> None:
    """``exec ${pkg}/bin/NAME`` where NAME is the password's text too (a blind configuration, stop 20: the
    program's path became the password's variable, the service would exec /bin/<new password>): a copy in a
    path is no password, so no copy is replaced (every copy or none) and the verdict says the others."""
    text = MODULE.replace("mysql -u ledger -pLdg-8pass -e 'SELECT 1'", "exec ${pkgs.hello}/bin/Ldg-8pass foreground")
    plan, out = _plan(text)
    assert b"/bin/Ldg-8pass foreground" in out
    assert b"nixmig_ledger_db_password" not in out
    assert any("ledger-backup" in m.what for m in plan.manual), [m.what for m in plan.manual]


def test_a_password_that_is_the_role_s_name_is_not_replaced_in_scripts() -> None:
    """The role's name as its password (educator_aaa / educator_aaa): a copy in a script may be the name
    (`psql -U ledger`, a program): nixmig does not guess which copy is which."""
    text = MODULE.replace("Ldg-8pass", "ledger")
    _, out = _plan(text)
    assert b"pg_dump -U ledger ledger" in out and b"nixmig_ledger_db_password" not in out
