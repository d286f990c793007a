"""The per-host lock against concurrent nixmig runs.

`flock` on a file in /run (a tmpfs), held by a process that lives exactly as long
as our SSH session or our pipe: if nixmig is killed, sshd (or the kernel) ends
that process and the lock is released. No stale locks to clean up by hand.
"""

from __future__ import annotations

from nixmig.errors import NixmigError
from nixmig.remote.base import CommandFailed, Held, Transport

_SCRIPT = 'mkdir -p -m 0700 "$1" && exec flock -n -E 75 "$1/$2.lock" sh -c "echo locked; exec cat >/dev/null"'


class LockedError(NixmigError):
    """Another nixmig run holds this host's lock."""


def acquire(t: Transport, lock_dir: str, name: str) -> Held:
    try:
        return t.hold(["sh", "-c", _SCRIPT, "sh", lock_dir, name])
    except CommandFailed as exc:
        if exc.result.exit_code == 75:
            raise LockedError(
                f"another nixmig run holds the lock {lock_dir}/{name}.lock",
                where=t.name,
                hint="wait for it to finish (the lock is released when that run ends, even if killed)",
            ) from None
        raise
