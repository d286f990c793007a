"""Running the user's deploy command (deploy-rs, nixos-rebuild, colmena) with its output streamed.

The command runs on this machine, from the repo root, with NIXMIG_PHASE set to
`stage`, `switch` or `rollback`, NIXMIG_MIGRATION to the migration's name and
NIXMIG_HOST to the host's name; `{host}` in the command is replaced by that name
(a service on several hosts: `deploy --skip-checks .#{host}`).

The command does not get nixmig's whole environment (:func:`deploy_env`): the variables
nixmig reads secrets from (every ``env:NAME`` key source in nixmig.toml, VAULT_TOKEN,
ENCRYPTION_HMAC_SECRET) and anything named like a credential (``*TOKEN*``, ``*SECRET*``,
``*PASSWORD*``, ``*_KEY``, AWS_*, VAULT_* ...) are left out. A deploy that needs one of
the latter lists it in the migration's ``deploy_env``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from nixmig.config import NIXMIG_SECRET_ENV
from nixmig.errors import NixmigError


class DeployError(NixmigError):
    """The deploy command failed."""


# never passed, whatever deploy_env says: what nixmig itself reads secrets from
ALWAYS_DROPPED = NIXMIG_SECRET_ENV
_CREDENTIAL_PREFIXES = ("VAULT_", "BAO_", "AWS_", "AZURE_", "GOOGLE_", "GCP_", "PGPASS")
_CREDENTIAL_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL", "PRIVATE_KEY", "API_KEY")
_CREDENTIAL_SUFFIXES = ("_KEY", "_KEYS", "_PASS", "_PWD", "_AUTH")


def looks_secret(name: str) -> bool:
    """A variable named like a credential (by the usual conventions; case does not matter)."""
    n = name.upper()
    return (
        n.startswith(_CREDENTIAL_PREFIXES) or any(w in n for w in _CREDENTIAL_WORDS) or n.endswith(_CREDENTIAL_SUFFIXES)
    )


def deploy_env(
    environ: Mapping[str, str], *, drop: Collection[str] = (), keep: Collection[str] = ()
) -> tuple[dict[str, str], list[str]]:
    """The deploy command's environment from ``environ``, and the names left out (sorted).

    ``drop``: the variables nixmig.toml reads secrets from (Config.secret_env); always left
    out, with ALWAYS_DROPPED. Then every name that :func:`looks_secret`, unless it is in
    ``keep`` (the migration's deploy_env)."""
    never = ALWAYS_DROPPED | set(drop)
    env: dict[str, str] = {}
    left_out: list[str] = []
    for name, value in environ.items():
        if name in never or (looks_secret(name) and name not in keep):
            left_out.append(name)
        else:
            env[name] = value
    return env, sorted(left_out)


def run_deploy(
    command: str,
    *,
    repo: Path,
    phase: str,
    migration: str,
    emit: Callable[[str], None],
    timeout: float = 3600,
    host: str | None = None,
    drop_env: Collection[str] = (),
    keep_env: Collection[str] = (),
) -> None:
    """Run the deploy command; ``drop_env`` / ``keep_env`` as for :func:`deploy_env`."""
    argv = shlex.split(command)
    env, left_out = deploy_env(os.environ, drop=drop_env, keep=keep_env)
    if left_out:  # names only, never a value
        emit(f"  deploy runs without {', '.join(left_out)} (secrets; deploy_env in nixmig.toml passes one it needs)")
    env.update(NIXMIG_PHASE=phase, NIXMIG_MIGRATION=migration)
    if host is not None:
        argv = [a.replace("{host}", host) for a in argv]  # after splitting: a name never needs quoting
        env["NIXMIG_HOST"] = host
    try:
        proc = subprocess.Popen(
            argv, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise DeployError(
            f"deploy command not found: {argv[0]}",
            where=f"migrations.{migration}.deploy",
            hint="install it or fix the path",
        ) from None
    assert proc.stdout is not None
    tail: list[str] = []
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        tail = [*tail[-4:], line]
        emit(f"  | {line}")
    code = proc.wait(timeout=timeout)
    if code != 0:
        raise DeployError(
            f"deploy ({phase}) exited {code}: {' | '.join(tail[-2:])}",
            where=f"migrations.{migration}.deploy",
            hint="fix it, then `nixmig apply` resumes here; or `nixmig rollback`",
        )
