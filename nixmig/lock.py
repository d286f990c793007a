"""The locks against concurrent nixmig runs, on the target host.

`flock` on a file in /run (a tmpfs), held by a process that lives exactly as long
as our SSH session or our pipe: if nixmig is killed, sshd (or the kernel) ends
that process and the lock is released. No stale locks to clean up by hand.

A run holds two: its migration's (HOST-MIGRATION.lock) and its database's
(db-DIGEST.lock, see nixmig.target.lock_name), so two migrations on one database, or
two configs naming one host differently, never work on it at once. The holder writes
who it is into the file; a run refused names it.
"""

from __future__ import annotations

import getpass
import os
import socket
import time

from nixmig.errors import NixmigError
from nixmig.remote.base import CommandFailed, Held, Transport

# $1 lock dir, $2 lock name, $3 the holder's description: written into the file once held;
# refused (75), the file's content (the holder) goes to stderr
_SCRIPT = (
    'mkdir -p -m 0700 "$1" || exit 1; f="$1/$2.lock"; '
    'flock -n -E 75 "$f" sh -c \'printf "%s\\n" "$1" > "$2"; echo locked; exec cat >/dev/null\' sh "$3" "$f"; '
    'rc=$?; if [ "$rc" = 75 ]; then head -c 400 "$f" >&2; fi; exit "$rc"'
)


class LockedError(NixmigError):
    """Another nixmig run holds this host's lock."""


def holder(what: str) -> str:
    """Who holds a lock, as a refused run reads it: what runs, from where, since when."""
    user = _user()
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return " ".join(f"{what}, run by {user}@{socket.gethostname()} (pid {os.getpid()}) since {when}".split())


def acquire(
    t: Transport, lock_dir: str, name: str, *, holder_text: str | None = None, guards: str | None = None
) -> Held:
    """Hold LOCK_DIR/NAME.lock on the target; ``guards``: what it protects, for the refusal."""
    text = holder_text or holder("nixmig")
    try:
        return t.hold(["sh", "-c", _SCRIPT, "sh", lock_dir, name, text])
    except CommandFailed as exc:
        if exc.result.exit_code == 75:
            who = " ".join(exc.result.stderr.decode("utf-8", "replace").split())[:300] or "holder unknown"
            on = f" on {guards}" if guards else ""
            raise LockedError(
                f"another nixmig run holds the lock{on} ({lock_dir}/{name}.lock): {who}",
                where=t.name,
                hint="wait for it to finish (the lock is released when that run ends, even if killed)",
            ) from None
        raise


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
