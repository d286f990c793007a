"""Running the user's deploy command (deploy-rs, nixos-rebuild, colmena) with its output streamed.

The command runs on this machine, from the repo root, with NIXMIG_PHASE set to
`stage`, `switch` or `rollback`, NIXMIG_MIGRATION to the migration's name and
NIXMIG_HOST to the host's name; `{host}` in the command is replaced by that name
(a service on several hosts: `deploy --skip-checks .#{host}`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

from nixmig.errors import NixmigError


class DeployError(NixmigError):
    """The deploy command failed."""


def run_deploy(
    command: str,
    *,
    repo: Path,
    phase: str,
    migration: str,
    emit: Callable[[str], None],
    timeout: float = 3600,
    host: str | None = None,
) -> None:
    argv = shlex.split(command)
    env = dict(os.environ, NIXMIG_PHASE=phase, NIXMIG_MIGRATION=migration)
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
