"""The journal: one JSON file per host and migration, written as each step completes.

It lives in the repo's `.nixmig/` (0600 file in a 0700 directory) and never
holds a secret in clear: rollback material is stored as age ciphertext
(base64) to the operator's recipients, so only the operator can use it.
Every write is atomic (temp file + rename), so a SIGKILL leaves either the old
or the new journal, never half of one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nixmig import fsutil
from nixmig.errors import NixmigError

StepState = Literal["running", "done", "failed", "undone"]


class JournalError(NixmigError):
    """The journal cannot be read or written."""


@dataclass
class Step:
    phase: str
    state: StepState
    started: float
    finished: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.finished is None else self.finished - self.started


@dataclass
class Journal:
    path: Path
    migration: str
    host: str
    steps: dict[str, Step] = field(default_factory=dict)
    rolled_back: bool = False
    # when apply last ran every phase to the end (None while a run is unfinished)
    completed: float | None = None
    # facts a mode keeps beside the steps (on-host: a salted hash of the secret it applied)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, directory: Path, host: str, migration: str) -> Journal:
        path = directory / host / f"{migration}.json"
        if not path.exists():
            return cls(path, migration, host)
        return cls.read(path)

    @classmethod
    def read(cls, path: Path) -> Journal:
        """The journal in this file, whatever its name (gc reads archived ones too)."""
        try:
            raw = json.loads(path.read_text())
            steps = {s["phase"]: Step(**s) for s in raw["steps"]}
            return cls(
                path,
                raw["migration"],
                raw["host"],
                steps,
                bool(raw.get("rolled_back", False)),
                raw.get("completed"),
                dict(raw.get("meta") or {}),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise JournalError(
                f"unreadable journal ({exc})", where=path, hint="inspect it; move it away to start over"
            ) from None

    def reload(self) -> Journal:
        """The journal as the file holds it now (read again once the locks are held)."""
        if not self.path.exists():
            return Journal(self.path, self.migration, self.host)
        return Journal.read(self.path)

    def state(self, phase: str) -> StepState | None:
        step = self.steps.get(phase)
        return step.state if step else None

    def data(self, phase: str) -> dict[str, Any]:
        step = self.steps.get(phase)
        return step.data if step else {}

    def begin(self, phase: str) -> None:
        # A phase that ran before and did not finish (killed, or failed) keeps its data: it
        # may hold rollback material written before the change (a sealed old verifier), and a
        # re-run that finds the change already made (check) must not lose it.
        prev = self.steps.get(phase)
        kept = dict(prev.data) if prev is not None and prev.state in ("running", "failed") else {}
        self.steps[phase] = Step(phase, "running", time.time(), data=kept)
        self.save()

    def finish(self, phase: str, data: dict[str, Any] | None = None) -> None:
        step = self.steps[phase]
        step.state, step.finished, step.error = "done", time.time(), None
        step.data = dict(data or {})
        self.save()

    def fail(self, phase: str, error: str) -> None:
        step = self.steps[phase]
        step.state, step.finished, step.error = "failed", time.time(), error
        self.save()

    def undone(self, phase: str) -> None:
        self.steps[phase].state = "undone"
        self.save()

    def start_over(self) -> Path | None:
        """Empty a rolled-back journal for a new run, after keeping a copy of it beside it
        (MIGRATION@STAMP.json): what its rollback retired (``retain`` with ``after =
        "rollback"``) stays visible to gc. Returns the copy's path (None: not rolled back)."""
        if not self.rolled_back:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = self.path.with_name(f"{self.migration}@{stamp}.json")
        n = 1
        while dest.exists():
            dest = self.path.with_name(f"{self.migration}@{stamp}-{n}.json")
            n += 1
        self.save()  # the file as this object holds it
        fsutil.write_atomic(dest, self.path.read_bytes(), 0o600)
        self.reset()
        return dest

    def reset(self) -> None:
        self.steps.clear()
        self.rolled_back = False
        self.completed = None
        self.meta.clear()
        self.save()

    def complete(self) -> None:
        self.completed = time.time()
        self.save()

    @property
    def started(self) -> bool:
        return bool(self.steps)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.parent.chmod(0o700)
        body = {
            "migration": self.migration,
            "host": self.host,
            "rolled_back": self.rolled_back,
            "completed": self.completed,
            "meta": self.meta,
            "steps": [s.__dict__ for s in self.steps.values()],
        }
        fsutil.write_atomic(self.path, (json.dumps(body, indent=2) + "\n").encode(), 0o600)
