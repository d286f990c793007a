"""A real apply and rollback on the local target (demo cluster, local transport): the deploy
command, wrapped to record its environment with `env -0`, never sees nixmig's secrets
(VAULT_TOKEN, ENCRYPTION_HMAC_SECRET, the variables the config's env: key sources read)
nor anything named like a credential, unless deploy_env passes it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from nixmig.demo import SECRET, Target
from tests.integration.test_migrate_local import nixmig, target  # noqa: F401  (target: the fixture)

SECRETS = {
    "VAULT_TOKEN": "vault-token-value-1",
    "ENCRYPTION_HMAC_SECRET": "hmac-secret-value-2",
    "COLUMN_KEY_NEW": "column-key-value-3",  # named by an env: source only: no pattern would catch it
    "COLUMN_KEY_OLD": "column-key-value-4",
    "AWS_SECRET_ACCESS_KEY": "aws-value-5",
    "GITHUB_TOKEN": "github-value-6",
    "PGPASSWORD": "pg-value-7",
}
PASSED = {"NIXMIG_IT_PLAIN": "plain-value", "CACHIX_AUTH_TOKEN": "cachix-value"}  # the latter: deploy_env


def _record_env(t: Target, record: Path) -> None:
    path = t.repo / "nixmig.toml"
    text = path.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("deploy = "))
    demo = line.removeprefix('deploy = "').removesuffix('"')
    wrapped = "sh -c " + shlex.quote(f"env -0 >> {shlex.quote(str(record))} && exec {demo}")
    text = text.replace(line, f'deploy = {json.dumps(wrapped)}\ndeploy_env = ["CACHIX_AUTH_TOKEN"]')
    # a second migration whose reencrypt phase reads its keys from env: sources (never applied here)
    text += """
[migrations.columns]
service = "twenty-db"
secret = "twenty-app-secret"

[migrations.columns.reencrypt]
new_key = "env:COLUMN_KEY_NEW"
old_key = "env:COLUMN_KEY_OLD"
tables = { users = { columns = ["email"] } }
"""
    path.write_text(text)


def _environments(record: Path) -> list[dict[str, str]]:
    """One dict per deploy run: `env -0` ends each NAME=VALUE with a NUL; a name seen again
    starts the next run's block."""
    runs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for item in record.read_bytes().split(b"\0"):
        if not item:
            continue
        name, _, value = item.decode().partition("=")
        if name in current:  # the next run's block
            runs.append(current)
            current = {}
        current[name] = value
    runs.append(current)
    return runs


def test_deploy_sees_no_secret_of_nixmig(target: Target, tmp_path: Path) -> None:  # noqa: F811
    record = tmp_path / "deploy-env"
    _record_env(target, record)
    env = {**SECRETS, **PASSED}
    run = nixmig(target, "apply", "--yes", "-m", SECRET, "-i", str(target.admin_key), env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    back = nixmig(target, "rollback", "--yes", "-m", SECRET, "-i", str(target.admin_key), env=env)
    assert back.returncode == 0, back.stdout + back.stderr

    runs = _environments(record)
    phases = [r.get("NIXMIG_PHASE") for r in runs]
    assert phases[:2] == ["stage", "switch"] and phases[2:] and set(phases[2:]) == {"rollback"}, phases
    raw = record.read_text()
    for seen in runs:
        assert not set(SECRETS) & set(seen), sorted(set(SECRETS) & set(seen))
        assert {k: seen.get(k) for k in PASSED} == PASSED
        assert "PATH" in seen and seen["NIXMIG_MIGRATION"] == SECRET
    for value in SECRETS.values():
        assert value not in raw  # not under another name either
    # the output names what was left out, never a value
    assert "deploy runs without " in run.stdout
    for value in SECRETS.values():
        assert value not in run.stdout + run.stderr + back.stdout + back.stderr
