"""A let-bound password or URL read by a systemd unit's script (nixmig/nixsrc/shapes/let_script.py).

The patched scripts are evaluated by nix-instantiate and run by real bash, with the credential
systemd would hand over in a temp dir and the commands they call (docker, psql, mysql, pg_dump)
replaced by stubs that record their argv (a fake, named so: no dockerd or server is needed to see
what a command receives). A password with every character that quoting gets wrong must arrive
exactly: percent-encoded in a URL, its quotes doubled in SQL (and its backslashes for MySQL).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.shapes.let_script import shell_context
from tests.helpers import FIXTURES, plan_shape_case, run_with_credential

CASE = "oci-let-uri-in-unit-script"
FILE = "hosts/box/ledger.nix"
NASTY = "p@ss w'rd\"$(x)`y`\\%/é!"

MODULE = """{ config, pkgs, ... }:

{
  virtualisation.oci-containers.containers.db = {
    image = "postgres:16";
    environment.POSTGRES_PASSWORD = "Ldg-7pass";
  };

  systemd.services.ledger-schema =
    let
      dsn = "postgresql://postgres:Ldg-7pass@localhost/ledger";
      pw = "Ldg-7pass";
    in
    {
      path = [ pkgs.docker ];
      preStart = ''
        until docker exec db pg_isready --dbname ${dsn}; do
          sleep 1
        done
      '';
      script = ''
        docker exec --interactive db psql "${dsn}" -v ON_ERROR_STOP=1
        pg_dump --schema-only --dbname='${dsn}' -f /dev/null
        pg_dump '${dsn}' >/dev/null
        psql -c "ALTER ROLE postgres PASSWORD '${pw}'"
        mysql -e "ALTER USER postgres IDENTIFIED BY '${pw}'"
      '';
      serviceConfig.Type = "oneshot";
    };
}
"""


def _plan(text: str) -> tuple[pt.Plan, bytes]:
    plan, out = plan_shape_case(CASE, FILE, text.encode())
    assert isinstance(plan, pt.Plan)
    return plan, out


def _scripts(tmp_path: Path, patched: bytes) -> dict[str, Any]:
    module = tmp_path / "ledger.nix"
    module.write_bytes(patched)
    expr = (
        f'let m = import {module} {{ config.age.secrets.ledger-db-password.path = "/run/agenix/x"; '
        'pkgs.docker = "docker"; lib = { }; }; u = m.systemd.services.ledger-schema; '
        "in { inherit (u) preStart script; load = u.serviceConfig.LoadCredential; }"
    )
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True, check=True
    ).stdout
    return dict(json.loads(out))


def _run(tmp_path: Path, script: str, password: str) -> list[list[str]]:
    return run_with_credential(
        tmp_path, script, "ledger-db-password", password, ("docker", "psql", "mysql", "pg_dump"), ()
    )


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_the_patched_scripts_run_and_every_command_gets_the_secret_exactly(tmp_path: Path) -> None:
    plan, out = _plan(MODULE)
    assert plan.manual == (), [m.what for m in plan.manual]
    assert b"Ldg-7pass" not in out and b"dsn =" not in out and b"pw =" not in out
    scripts = _scripts(tmp_path, out)
    assert scripts["load"] == ["ledger-db-password:/run/agenix/x"]
    url = "postgresql://postgres:" + quote(NASTY, safe="") + "@localhost/ledger"
    assert _run(tmp_path, scripts["preStart"], NASTY) == [["docker", "exec", "db", "pg_isready", "--dbname", url]]
    calls = _run(tmp_path, scripts["script"], NASTY)
    assert calls == [
        ["docker", "exec", "--interactive", "db", "psql", url, "-v", "ON_ERROR_STOP=1"],
        ["pg_dump", "--schema-only", f"--dbname={url}", "-f", "/dev/null"],
        ["pg_dump", url],
        ["psql", "-c", "ALTER ROLE postgres PASSWORD '" + NASTY.replace("'", "''") + "'"],
        ["mysql", "-e", "ALTER USER postgres IDENTIFIED BY '" + NASTY.replace("\\", "\\\\").replace("'", "''") + "'"],
    ]


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_a_credential_ending_in_a_newline_gives_every_use_the_same_password(tmp_path: Path) -> None:
    """`agenix -e` in an editor leaves a newline at the end of the file. The bare value ($(< FILE)) never
    had it, the URL's percent-encoding did (%0A): psql and pg_dump then used another password than
    ALTER ROLE set (realcfg20's review). Both read the file less its final line breaks now."""
    _, out = _plan(MODULE)
    script = _scripts(tmp_path, out)["script"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _run(tmp_path / "a", script, NASTY + "\n") == _run(tmp_path / "b", script, NASTY)


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_a_missing_credential_stops_the_script_with_one_line(tmp_path: Path) -> None:
    _, out = _plan(MODULE)
    script = _scripts(tmp_path, out)["script"]
    env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(tmp_path / "none")}
    proc = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == "nixmig: the credential ledger-db-password is missing or empty"


def test_a_use_left_keeps_the_whole_value_and_is_said() -> None:
    """The URL is also the unit's description (a use nixmig has no edit for; an environment variable's
    it has, url_variables): no script is touched, the binding stays, and the one line names that use."""
    text = MODULE.replace(
        "      path = [ pkgs.docker ];\n",
        "      path = [ pkgs.docker ];\n      description = dsn;\n",
    )
    plan, out = _plan(text)
    assert b'dsn = "postgresql://postgres:Ldg-7pass@localhost/ledger";' in out
    assert b"nixmig_dsn" not in out  # (pw, another let, is still replaced)
    said = [m for m in plan.manual if "dsn (the hardcoded password" in m.what]
    assert len(said) == 1 and said[0].line == text[: text.index("description = dsn")].count("\n") + 1
    assert "nixmig replaces every use or none" in said[0].what


def test_a_use_in_the_unit_s_environment_moves_with_the_scripts_uses() -> None:
    """``environment.LEDGER_URL = dsn;`` beside the scripts' ``${dsn}``: the variable goes into the unit's
    env file (url_variables), the scripts read the credential, the binding goes: every use reads the secret."""
    text = MODULE.replace(
        "      path = [ pkgs.docker ];\n",
        "      path = [ pkgs.docker ];\n      environment.LEDGER_URL = dsn;\n",
    )
    plan, out = _plan(text)
    assert plan.manual == (), [m.what for m in plan.manual]
    assert b"Ldg-7pass" not in out and b"dsn = " not in out and b"LEDGER_URL = dsn" not in out
    assert b"nixmig_dsn" in out and b"printf '%s=%s%s%s\\n' LEDGER_URL postgresql://postgres:" in out


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ("psql <<EOF\\n      select '${dsn}';\\n      EOF", "heredoc"),
        ('x="$(psql ${dsn})"', "command substitution"),
    ],
)
def test_a_use_whose_quoting_nixmig_does_not_follow_is_left_and_said(script: str, why: str) -> None:
    text = MODULE.replace("pg_dump '${dsn}' >/dev/null", script.replace("\\n", "\n"))
    plan, out = _plan(text)
    assert b"dsn = " in out and b"nixmig_dsn" not in out
    assert any(why in m.what and "dsn (the hardcoded password" in m.what for m in plan.manual), plan.manual


def test_a_unit_that_loads_credentials_already_is_said() -> None:
    text = MODULE.replace(
        'serviceConfig.Type = "oneshot";',
        'serviceConfig.Type = "oneshot";\n      serviceConfig.LoadCredential = [ "other:/run/x" ];',
    )
    plan, _ = _plan(text)
    assert any("sets LoadCredential already" in m.what for m in plan.manual), plan.manual


@pytest.mark.parametrize(
    ("text", "at", "want"),
    [
        ("echo X", 5, "bare"),
        ('echo "a X"', 8, "dq"),
        ("echo 'a X'", 8, "sq"),
        ("echo 'it''s' X", 13, "bare"),
        ('echo "a\\"b" X', 12, "bare"),
        ("# it's X\necho X", 14, "bare"),
        ("cat <<EOF\nX", 10, None),
        ('echo "$(cat X)"', 12, None),
    ],
)
def test_shell_context(text: str, at: int, want: str | None) -> None:
    assert text[at] == "X"
    assert shell_context(text, at) == want


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_a_script_in_a_double_quoted_nix_string_runs_too(tmp_path: Path) -> None:
    """``script = "psql ${dsn} ...";``: the lines and quotes are escaped for a "..." Nix string, and the
    script itself is no URL left for the verdict."""
    start, end = MODULE.index("      script = ''"), MODULE.index("      serviceConfig.Type")
    text = (
        MODULE[:start]
        + '      script = "docker exec db psql ${dsn} && pg_dump \\"--dbname=${dsn}\\" \'${dsn}\'";\n'
        + MODULE[end:]
    )
    plan, out = _plan(text)
    assert plan.manual == (), [m.what for m in plan.manual]
    url = "postgresql://postgres:" + quote(NASTY, safe="") + "@localhost/ledger"
    calls = _run(tmp_path, _scripts(tmp_path, out)["script"], NASTY)
    assert calls == [["docker", "exec", "db", "psql", url], ["pg_dump", f"--dbname={url}", url]]


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        (
            "      preStart = ''\n        until",
            "      preStart = ''  until",
            "starts on the line of its opening quotes",
        ),
        (
            'serviceConfig.Type = "oneshot";',
            'serviceConfig.Type = "oneshot";\n      serviceConfig.ExecStartPost = "/bin/docker exec db psql ${dsn}";',
            "beside a script of the same unit",
        ),
    ],
)
def test_a_use_nixmig_cannot_finish_leaves_every_use(old: str, new: str, why: str) -> None:
    """Checked before any edit: one use it cannot replace and no script of the value is touched."""
    text = MODULE.replace(old, new)
    assert text != MODULE
    plan, out = _plan(text)
    assert b"dsn = " in out and b"nixmig_dsn" not in out
    assert any(why in m.what and "dsn (the hardcoded password" in m.what for m in plan.manual), plan.manual


def test_a_podman_run_command_line_stays_run_argv_s() -> None:
    """``podman run -e 'DATABASE_URL=postgresql://u:${dbPassword}@db/x'`` in a unit's ExecStart is run_argv's
    (--env-file: the URL in no argv); let_script, earlier in the table, does not make it ``${VAR}``."""
    case = FIXTURES / "shapes" / "oci-execstart-argv-password"
    text = (case / "hosts/box/notes.nix").read_text()
    assert 'systemd.services."${app}-migrate"' in text
    text = text.replace('systemd.services."${app}-migrate"', "systemd.services.notes-migrate")
    plan, out = plan_shape_case(case.name, "hosts/box/notes.nix", text.encode())
    assert isinstance(plan, pt.Plan) and plan.manual == ()
    assert b"podman run --rm --env-file /run/notes-migrate/notes-db-password.env example/notes:3" in out
    assert b"NIXMIG_" not in out and b"argv-pw-6" not in out


def test_a_read_of_another_field_of_the_let_attrset_is_no_read_of_the_password() -> None:
    """``cfg.images.web`` beside ``cfg.pw`` (a public configuration, stop 19: said as 'cfg is read as a whole'
    at the image line): the password's uses are the unit's script, replaced; the other field stays."""
    text = (
        MODULE.replace(
            "    let\n",
            '    let\n      cfg = { pw = "Ldg-7pass"; images.web = "nginx"; };\n',
        )
        .replace("'${pw}'", "'${cfg.pw}'")
        .replace('      pw = "Ldg-7pass";\n', "")
    )
    text = text.replace(
        '      serviceConfig.Type = "oneshot";',
        '      serviceConfig.Type = "oneshot";\n      description = cfg.images.web;',
    )
    assert "cfg.images.web" in text and "${cfg.pw}" in text
    plan, out = _plan(text)
    assert plan.manual == (), [m.what for m in plan.manual]
    assert b"Ldg-7pass" not in out and b"description = cfg.images.web;" in out
