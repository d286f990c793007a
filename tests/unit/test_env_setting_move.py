"""A service's setting strategy move takes out into the env file the service reads (shapes/env_file_option.py,
quoted lines): the patched module, evaluated by nix-instantiate, renders a file that bash reads back as the
value, byte for byte, whatever shell and Nix characters it holds."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES, plan_shape_case

SHAPES = FIXTURES / "shapes"

CASE = "native-paperless-settings-secret-key-move"
FILE = "modules/paperless.nix"
KEY = "ZkU)eBRT-yJie$@uHB7&h#X?(F3jN)Cp%n*18z6a#td"  # the fixture's literal: $ @ & # ? ( ) % *

MODULE = b"""{ config, lib, ... }:
{
  services.paperless = {
    enable = true;
    settings = {
      PAPERLESS_ADMIN_USER = "admin";
      PAPERLESS_ADMIN_PASSWORD = "Adm1n-pw-4410";
      PAPERLESS_SECRET_KEY = "VALUE";
    };
  };
}
"""


def _evaluated(tmp_path: Path, patched: bytes) -> dict[str, object]:
    module = tmp_path / "paperless.nix"
    module.write_bytes(patched)
    expr = (
        f'let m = import {module} {{ config = {{ age.secrets.paperless-secret-key.path = "/run/agenix/k"; '
        'services.paperless.user = "paperless"; }; lib = { }; pkgs.writeShellScript = n: t: t; }; '
        "u = m.systemd.services.paperless-secret-key-env; in { script = builtins.head u.serviceConfig.ExecStart; "
        "inherit (u.serviceConfig) LoadCredential User RuntimeDirectory; inherit (u) requiredBy; "
        "env = m.services.paperless.environmentFile; settings = m.services.paperless.settings; }"
    )
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True)
    assert out.returncode == 0, out.stderr.decode()
    got: dict[str, object] = json.loads(out.stdout)
    return got


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_the_secret_key_reaches_paperless_as_it_was(tmp_path: Path) -> None:
    text = MODULE.replace(b"VALUE", KEY.encode())
    plan, patched = plan_shape_case(CASE, FILE, text)
    assert plan.manual == (), [m.what for m in plan.manual]  # type: ignore[attr-defined]
    assert KEY.encode() not in patched and b"Adm1n-pw-4410" in patched  # the key named by the secret, only
    assert any("PAPERLESS_ADMIN_PASSWORD" in n for n in plan.notes)  # type: ignore[attr-defined]  # said
    got = _evaluated(tmp_path, patched)
    assert got["LoadCredential"] == ["paperless-secret-key:/run/agenix/k"]
    assert got["User"] == "paperless" and got["RuntimeDirectory"] == "paperless-secret-key-env"
    assert "paperless-web.service" in got["requiredBy"]  # type: ignore[operator]
    assert "PAPERLESS_SECRET_KEY" not in got["settings"]  # type: ignore[operator]
    env_path = "/run/paperless-secret-key-env/paperless-secret-key.env"
    assert got["env"] == env_path
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "paperless-secret-key").write_text(KEY)
    script = str(got["script"]).replace("/run/paperless-secret-key-env/", f"{run}/")
    env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(creds), "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert KEY.encode() not in proc.stdout + proc.stderr
    rendered = run / "paperless-secret-key.env"
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o400
    assert rendered.read_text() == f"PAPERLESS_SECRET_KEY='{KEY}'\n"
    back = subprocess.run(  # as paperless-manage reads it: set -o allexport; source FILE
        ["bash", "-c", 'set -o allexport; source "$1"; printf %s "$PAPERLESS_SECRET_KEY"', "manage", str(rendered)],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )
    assert back.stdout.decode() == KEY


def test_a_value_single_quotes_cannot_hold_is_left_by_hand() -> None:
    """A kept value holding a quote: no line of the env file holds it for both systemd and bash; nothing
    is written for it, and the verdict says so (the literal is not claimed)."""
    plan, patched = plan_shape_case(CASE, FILE, MODULE.replace(b"VALUE", b"it's-a-key-9917"))
    manual = [m.what for m in plan.manual]  # type: ignore[attr-defined]
    assert any("holds a quote, a backslash or a line break" in w for w in manual), manual
    assert b"environmentFile" not in patched


def test_several_settings_the_secret_names_none_of_is_left_to_the_verdict() -> None:
    """Two credentials in the settings and a secret named after neither: nixmig does not pick one."""
    text = MODULE.replace(b"VALUE", b"Key-0123456789").replace(b"PAPERLESS_SECRET_KEY", b"PAPERLESS_EMAIL_TOKEN")
    plan, patched = plan_shape_case(CASE, FILE, text)
    assert b"environmentFile" not in patched
    assert len(plan.manual) >= 2  # type: ignore[attr-defined]


VW_CASE = "native-vaultwarden-admin-token-move"
VW_FILE = "modules/vaultwarden.nix"
VW_TOKEN = "Vw-4dm1n_t0ken#2024$x"  # the fixture's literal

# nixpkgs' nameToEnvVar (nixos/modules/services/security/vaultwarden/default.nix), with the few lib
# functions it uses spelled out in builtins: the judge of env_var_name's port
NAME_TO_ENV_VAR = r"""
let
  lowerChars = builtins.genList (i: builtins.substring i 1 "abcdefghijklmnopqrstuvwxyz") 26;
  upperChars = builtins.genList (i: builtins.substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26;
  toUpper = builtins.replaceStrings lowerChars upperChars;
  optionalString = c: s: if c then s else "";
  stringLength = builtins.stringLength;
  substring = builtins.substring;
  elem = builtins.elem;
  nameToEnvVar = name:
    let
      parts = builtins.split "([A-Z0-9]+)" name;
      partsToEnvVar = parts: builtins.foldl' (key: x: let last = stringLength key - 1; in
        if builtins.isList x then key + optionalString (key != "" && substring last 1 key != "_") "_" + builtins.head x
        else if key != "" && elem (substring 0 1 x) lowerChars then
          substring 0 last key + optionalString (substring (last - 1) 1 key != "_") "_"
            + substring last 1 key + toUpper x
        else key + toUpper x) "" parts;
    in if builtins.match "[A-Z0-9_]+" name != null then name else partsToEnvVar parts;
in map nameToEnvVar NAMES
"""

NAMES = ["adminToken", "disable2FARemember", "ADMIN_TOKEN", "smtpPassword", "foo2", "FOO2", "pushInstallationKey",
         "yubicoSecretKey", "databaseUrl", "smtp_password", "a", "orgEventsEnabled", "iconCacheTTL", "x2y"]  # fmt: skip


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_vaultwarden_names_are_the_variables_its_module_writes() -> None:
    from nixmig.nixsrc.shapes.env_setting_move import env_var_name

    expr = NAME_TO_ENV_VAR.replace("NAMES", "[ " + " ".join(json.dumps(n) for n in NAMES) + " ]")
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True)
    assert out.returncode == 0, out.stderr.decode()
    assert [env_var_name("vaultwarden", n) for n in NAMES] == json.loads(out.stdout)
    assert env_var_name("n8n", "dbPassword") == "dbPassword"  # n8n's environment: names as written


def _unit_renders(
    tmp_path: Path, patched: bytes, service: str, secret: str, settings: str, value: str
) -> tuple[dict[str, Any], str]:
    """The patched module evaluated by nix-instantiate (stub args): the unit ``service``'s serviceConfig with
    the service's ``settings`` as ``cfg``, and the env file its ExecStartPre renders in real bash from the
    credential ``value`` (what systemd hands over in $CREDENTIALS_DIRECTORY)."""
    module = tmp_path / f"{service}.nix"
    module.write_bytes(patched)
    expr = (
        f'let m = import {module} {{ config.age.secrets.{secret}.path = "/run/agenix/s"; '
        "lib.mkBefore = x: x; pkgs.writeShellScript = n: t: t; }; "
        f"s = m.systemd.services.{service}.serviceConfig; in s // {{ cfg = m.services.{service}.{settings}; }}"
    )
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True)
    assert out.returncode == 0, out.stderr.decode()
    got: dict[str, Any] = json.loads(out.stdout)
    assert got["LoadCredential"] == [f"{secret}:/run/agenix/s"]
    assert got["EnvironmentFile"] == [f"-/run/{service}/{secret}.env"]
    (script,) = got["ExecStartPre"]
    run, creds = tmp_path / "run", tmp_path / "creds"
    run.mkdir(mode=0o700)
    creds.mkdir()
    (creds / secret).write_text(value)
    env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(creds)}
    proc = subprocess.run(
        ["bash", "-c", script.replace(f"/run/{service}/", f"{run}/")], env=env, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return got, (run / f"{secret}.env").read_text()


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_the_admin_token_reaches_vaultwarden_as_it_was(tmp_path: Path) -> None:
    plan, patched = plan_shape_case(VW_CASE, VW_FILE, (SHAPES / VW_CASE / VW_FILE).read_bytes())
    assert plan.manual == (), [m.what for m in plan.manual]  # type: ignore[attr-defined]
    got, rendered = _unit_renders(tmp_path, patched, "vaultwarden", "vaultwarden-admin-token", "config", VW_TOKEN)
    assert "adminToken" not in got["cfg"] and got["cfg"]["domain"] == "https://vault.example.org"
    assert rendered == f"ADMIN_TOKEN='{VW_TOKEN}'\n"


def test_vaultwarden_takes_the_credential_its_secret_names_and_leaves_hashes() -> None:
    text = (
        (SHAPES / VW_CASE / VW_FILE)
        .read_bytes()
        .replace(b'adminToken = "', b'smtpPassword = "Smtp-pw-7781";\n      adminToken = "')
    )
    plan, patched = plan_shape_case(VW_CASE, VW_FILE, text)
    assert b"ADMIN_TOKEN" in patched and b"Smtp-pw-7781" in patched  # the SMTP password: the verdict's
    assert plan.manual == ()  # type: ignore[attr-defined]  # another credential: no by-hand item of this one
    assert any("smtpPassword" in n and "a migration of its own" in n for n in plan.notes)  # type: ignore[attr-defined]
    hashed = (
        (SHAPES / VW_CASE / VW_FILE)
        .read_bytes()
        .replace(VW_TOKEN.encode(), b"$argon2id$v=19$m=65540,t=3,p=4$c2FsdHNhbHQ$Q0RDbFlWeFYwSWIvM2hhK3g5cUx4cG8")
    )
    plan, patched = plan_shape_case(VW_CASE, VW_FILE, hashed)
    assert b"EnvironmentFile" not in patched  # a hash is no secret to move: nothing moved


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_mealie_reads_the_rotated_password_from_its_env_file(tmp_path: Path) -> None:
    """services.mealie.settings.POSTGRES_PASSWORD (a rotation): the key leaves the settings (the unit's
    Environment=); the mealie unit renders it into its EnvironmentFile from a systemd credential."""
    case, file = "native-mealie-settings-postgres-password", "modules/mealie.nix"
    plan, patched = plan_shape_case(case, file, (SHAPES / case / file).read_bytes())
    assert plan.manual == (), [m.what for m in plan.manual]  # type: ignore[attr-defined]
    got, rendered = _unit_renders(tmp_path, patched, "mealie", "mealie-db-password", "settings", "New-pw_0.9~x")
    assert "POSTGRES_PASSWORD" not in got["cfg"] and got["cfg"]["POSTGRES_USER"] == "mealie"
    assert rendered == "POSTGRES_PASSWORD=New-pw_0.9~x\n"


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
def test_keycloak_s_first_admin_reaches_it_under_both_variable_names(tmp_path: Path) -> None:
    """services.keycloak.initialAdminPassword (no file twin; its module writes KC_BOOTSTRAP_ADMIN_USERNAME =
    "admin" and the password into the unit's Environment= only when the option is set, older modules
    KEYCLOAK_ADMIN/_PASSWORD): the option goes, the unit's EnvironmentFile holds both pairs, the value as it was."""
    case, file = "native-keycloak-initial-admin-password-move", "modules/keycloak.nix"
    plan, patched = plan_shape_case(case, file, (SHAPES / case / file).read_bytes())
    assert plan.manual == (), [m.what for m in plan.manual]  # type: ignore[attr-defined]
    value = "Kc-b00tstrap-9 $x#&"  # what the agenix file holds: any byte single quotes take
    got, rendered = _unit_renders(tmp_path, patched, "keycloak", "keycloak-admin-password", "settings", value)
    assert got["cfg"]["hostname"] == "sso.example.org"
    assert sorted(rendered.splitlines()) == sorted(
        [
            "KC_BOOTSTRAP_ADMIN_USERNAME=admin",
            f"KC_BOOTSTRAP_ADMIN_PASSWORD='{value}'",
            "KEYCLOAK_ADMIN=admin",
            f"KEYCLOAK_ADMIN_PASSWORD='{value}'",
        ]
    )
    assert b"initialAdminPassword" not in patched and b"Kc-b00tstrap-9" not in patched


def test_a_constant_env_line_takes_plain_words_only() -> None:
    from nixmig.nixsrc.render import EnvLine

    assert EnvLine("KEYCLOAK_ADMIN", "", "", constant="admin").constant == "admin"
    with pytest.raises(ValueError, match="constant env line"):
        EnvLine("X", "", "", constant="a b")
