"""The names of backup files, in one place: the backup phase writes them, the cleanup
phase and gc find a migration's own by them.

    MIGRATION-YYYYmmddTHHMMSSZ.dump.age        a finished backup
    MIGRATION-YYYYmmddTHHMMSSZ.dump.partial    one being written (or left by a killed run)

A prefix glob (``db-*``) is not enough: it takes ``db-password-….dump.age`` for one of
migration ``db``'s. The migration is what comes before the last ``-STAMP``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
PARTIAL_SUFFIX = ".partial"
# the finished file's name; a partial's is this with ".partial" in place of the last ".age"
NAME = re.compile(r"^(?P<migration>.+)-(?P<stamp>\d{8}T\d{6}Z)\.[A-Za-z0-9.]+\.age$")


@dataclass(frozen=True)
class BackupName:
    migration: str
    stamp: str
    partial: bool


def final(migration: str, stamp: str) -> str:
    return f"{migration}-{stamp}.dump.age"


def partial(migration: str, stamp: str) -> str:
    return f"{migration}-{stamp}.dump{PARTIAL_SUFFIX}"


def free_stamp(directory: Path, migration: str) -> str:
    """The stamp of now for a new backup of ``migration`` in ``directory``, one no file there has yet:
    two backups within one second (a fast second apply) wait for the next second rather than write
    over the first one's file (the stamp has whole seconds)."""
    while True:
        stamp = time.strftime(STAMP_FORMAT, time.gmtime())
        if not (directory / final(migration, stamp)).exists() and not (directory / partial(migration, stamp)).exists():
            return stamp
        time.sleep(1.02 - time.time() % 1)


def parse(filename: str) -> BackupName | None:
    """The migration and stamp of a backup file's name (finished or partial); None: not a backup."""
    is_partial = filename.endswith(PARTIAL_SUFFIX)
    m = NAME.match(filename.removesuffix(PARTIAL_SUFFIX) + ".age" if is_partial else filename)
    if m is None:
        return None
    return BackupName(m.group("migration"), m.group("stamp"), is_partial)
