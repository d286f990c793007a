"""The deploy command's environment (nixmig.deploy.deploy_env): nixmig's own secrets and
anything named like a credential are left out; deploy_env passes a credential the deploy
needs, never one nixmig reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nixmig import config
from nixmig.deploy import deploy_env, looks_secret, run_deploy
from nixmig.errors import ConfigError
from tests.unit.test_foundation import EXAMPLE_TOML, load_text

REENCRYPT = """
[migrations.twenty-db-password.reencrypt]
new_key = "env:COLUMN_KEY_NEW"
old_key = "file:keys/old"
tables = { users = { columns = ["email"] } }
"""

ENVIRON = {
    "PATH": "/usr/bin",
    "HOME": "/root",
    "SSH_AUTH_SOCK": "/run/agent.sock",
    "NIX_SSHOPTS": "-p 2222",
    "LANG": "C.UTF-8",
    "VAULT_TOKEN": "hvs.x",
    "VAULT_ADDR": "http://127.0.0.1:8200",
    "ENCRYPTION_HMAC_SECRET": "h",
    "COLUMN_KEY_NEW": "k",
    "AWS_SECRET_ACCESS_KEY": "a",
    "AWS_PROFILE": "prod",
    "GITHUB_TOKEN": "ghp_x",
    "CACHIX_AUTH_TOKEN": "c",
    "PGPASSWORD": "p",
    "DB_PASS": "p",
    "my_api_key": "m",
    "OPENAI_API_KEY": "o",
    "APP_SECRET_KEY_BASE": "s",
}


def test_secrets_and_credentials_are_left_out() -> None:
    env, left_out = deploy_env(ENVIRON, drop={"COLUMN_KEY_NEW"})
    assert set(env) == {"PATH", "HOME", "SSH_AUTH_SOCK", "NIX_SSHOPTS", "LANG"}
    assert left_out == sorted(set(ENVIRON) - set(env))
    assert not looks_secret("COLUMN_KEY_NEW")  # left out only because the config reads a key from it


def test_deploy_env_passes_a_credential_but_never_what_nixmig_reads() -> None:
    keep = {"CACHIX_AUTH_TOKEN", "VAULT_TOKEN", "COLUMN_KEY_NEW"}
    env, _ = deploy_env(ENVIRON, drop={"COLUMN_KEY_NEW"}, keep=keep)
    assert "CACHIX_AUTH_TOKEN" in env
    assert not {"VAULT_TOKEN", "COLUMN_KEY_NEW", "ENCRYPTION_HMAC_SECRET"} & set(env)


@pytest.mark.parametrize("name", ["NIX_PATH", "NIX_CONFIG", "TERM", "XDG_RUNTIME_DIR", "KEYMAP", "GNUPGHOME"])
def test_ordinary_names_do_not_look_secret(name: str) -> None:
    assert not looks_secret(name)


def test_config_secret_env_names_every_env_source(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, EXAMPLE_TOML + REENCRYPT)
    # new_key's variable, the default hmac_secret's, and the Vault token
    assert cfg.secret_env() == {"COLUMN_KEY_NEW", "ENCRYPTION_HMAC_SECRET", "VAULT_TOKEN"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["COLUMN_KEY_NEW"]', "deploy_env[0]: nixmig reads a secret from COLUMN_KEY_NEW"),
        ('["A", "VAULT_TOKEN"]', "deploy_env[1]: nixmig reads a secret from VAULT_TOKEN"),
        ('["A=B"]', "deploy_env[0]: 'A=B' is not an environment variable name"),
    ],
)
def test_deploy_env_refuses_what_nixmig_reads(tmp_path: Path, value: str, message: str) -> None:
    line = 'deploy = "deploy --skip-checks .#newton"\n'
    text = EXAMPLE_TOML.replace(line, f"{line}deploy_env = {value}\n")
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, text + REENCRYPT)
    assert f"migrations.twenty-db-password.{message}" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_run_deploy_passes_the_filtered_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real child process: what it sees, and the one line naming (never showing) what it does not."""
    for k, v in ENVIRON.items():
        if k != "PATH":
            monkeypatch.setenv(k, v)
    out = tmp_path / "env"
    lines: list[str] = []
    script = tmp_path / "dump.py"
    script.write_text("import json, os, sys\nopen(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))\n")
    run_deploy(
        f"{sys.executable} {script} {out}",
        repo=tmp_path,
        phase="stage",
        migration="m",
        emit=lines.append,
        host="newton",
        drop_env={"COLUMN_KEY_NEW"},
        keep_env={"CACHIX_AUTH_TOKEN"},
    )
    seen = json.loads(out.read_text())
    assert seen["NIXMIG_PHASE"] == "stage" and seen["NIXMIG_HOST"] == "newton"
    assert seen["CACHIX_AUTH_TOKEN"] == "c" and seen["HOME"] == "/root"
    for name in ENVIRON.keys() - {"PATH", "HOME", "SSH_AUTH_SOCK", "NIX_SSHOPTS", "LANG", "CACHIX_AUTH_TOKEN"}:
        assert name not in seen
    assert lines[0].startswith("  deploy runs without ") and "VAULT_TOKEN" in lines[0] and "hvs.x" not in lines[0]
    assert set(lines[0].split(" (")[0].removeprefix("  deploy runs without ").split(", ")) >= config.NIXMIG_SECRET_ENV
