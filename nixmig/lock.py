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
from collections.abc import Sequence

from nixmig.errors import NixmigError
from nixmig.remote.base import CommandFailed, Held, Transport

# $1 lock dir, $2 the holder's description, $3... lock names: each held in turn by a nested
# flock (the Nth refused exits 75 + N-1; the ones already held are released with it), the
# holder written into each file once all are held; a refusal puts that file's content (its
# holder) on stderr. One process holds them all: one session, released together.
_HOLD = 'for f in "$@"; do printf "%s\\n" "$H" > "$f"; done; echo locked; exec cat >/dev/null'
_MAX = 20  # flock -E takes a status below 256; 75 + 20 stays clear of the shell's 126-127


def _script(count: int) -> str:
    files = " ".join(f'"$1/${{{i + 3}}}.lock"' for i in range(count))
    chain = " ".join(f'flock -n -E {75 + i} "$1/${{{i + 3}}}.lock"' for i in range(count))
    refused = " ".join(f'[ "$rc" = {75 + i} ] && head -c 400 "$1/${{{i + 3}}}.lock" >&2;' for i in range(count))
    return f'mkdir -p -m 0700 "$1" || exit 1; H="$2" {chain} sh -c \'{_HOLD}\' sh {files}; rc=$?; {refused} exit "$rc"'


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
    return acquire_all(t, lock_dir, [(name, guards)], holder_text=holder_text)


def acquire_all(
    t: Transport, lock_dir: str, locks: Sequence[tuple[str, str | None]], *, holder_text: str | None = None
) -> Held:
    """Hold every LOCK_DIR/NAME.lock of ``locks`` (name, what it guards) in one process on the
    target, taken in that order; all or none."""
    if not 0 < len(locks) <= _MAX:
        raise ValueError(f"1 to {_MAX} locks at once, not {len(locks)}")
    text = holder_text or holder("nixmig")
    first: dict[str, str | None] = {}
    for name, guards in locks:  # one name twice: one lock (a second flock on it would refuse us)
        first.setdefault(name, guards)
    locks = list(first.items())
    names = [name for name, _ in locks]
    try:
        return t.hold(["sh", "-c", _script(len(names)), "sh", lock_dir, text, *names])
    except CommandFailed as exc:
        refused = exc.result.exit_code - 75
        if 0 <= refused < len(locks):
            name, guards = locks[refused]
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
