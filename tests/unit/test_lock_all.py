"""Several locks in one held process (nixmig.lock.acquire_all), with real flock on this
machine: all or none, the refusal names the lock that was held and its holder."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixmig import lock
from nixmig.remote.local import LocalTransport


def test_all_or_none_and_the_refusal_names_the_busy_lock(tmp_path: Path) -> None:
    t, d = LocalTransport(), str(tmp_path / "locks")
    other = lock.acquire(t, d, "db-1", holder_text="run B")
    try:
        with pytest.raises(lock.LockedError) as exc:
            lock.acquire_all(t, d, [("newton-m", "migration m"), ("db-1", "the database")], holder_text="run A")
        line = exc.value.line()
        assert "holds the lock on the database" in line and "db-1.lock" in line and "run B" in line
        # the first lock was released with the refusal: another run takes it at once
        lock.acquire(t, d, "newton-m", holder_text="run C").close()
    finally:
        other.close()
    both = lock.acquire_all(t, d, [("newton-m", "migration m"), ("db-1", "the database")], holder_text="run A")
    try:
        assert (tmp_path / "locks" / "newton-m.lock").read_text() == "run A\n"
        assert (tmp_path / "locks" / "db-1.lock").read_text() == "run A\n"
        with pytest.raises(lock.LockedError, match=r"on migration m .*run A"):
            lock.acquire_all(t, d, [("newton-m", "migration m")], holder_text="run D")
    finally:
        both.close()
    lock.acquire_all(t, d, [("db-1", None), ("newton-m", None)]).close()  # released together


def test_one_name_twice_is_one_lock(tmp_path: Path) -> None:
    t = LocalTransport()
    held = lock.acquire_all(t, str(tmp_path), [("host-config", "a"), ("host-config", "b")])
    held.close()
