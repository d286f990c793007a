"""Atomic file writes: temp file in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically; keeps the old mode unless ``mode`` is given."""
    staged = stage(path, data, mode)
    try:
        staged.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        raise
    fsync_dir(path.parent)


def stage(path: Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to a hidden temp file beside ``path`` (fsynced) and return it."""
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".nixmig-tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    return Path(tmp)


def rename_durable(src: Path, dst: Path) -> None:
    """Rename ``src`` (already fsynced) to ``dst`` and fsync the directory, so the new name
    survives a power cut (without it the rename may be lost while the data is not)."""
    src.replace(dst)
    fsync_dir(dst.parent)


def mkdir_durable(path: Path, mode: int = 0o700, *, parents_mode: int = 0o777) -> None:
    """``mkdir -p`` whose new directories survive a power cut: each new one's parent is fsynced.
    ``mode`` for ``path`` itself, ``parents_mode`` for the parents it makes (as Path.mkdir(parents=True):
    the default, less the umask)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode if d == path else parents_mode)
        except FileExistsError:
            continue  # made meanwhile by someone else: it is theirs to sync
        fsync_dir(d.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
