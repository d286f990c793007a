"""What every phase sees (Context) and is (Phase)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nixmig.config import Config, Host, Migration, Service
from nixmig.db.runtime import Runtime
from nixmig.journal import Journal
from nixmig.remote.base import Transport
from nixmig.secrets.age import Identity
from nixmig.secrets.recipients import Recipient
from nixmig.sensitive import Secret


@dataclass(frozen=True)
class Action:
    """One thing a phase would do, as `plan` prints it (secrets masked)."""

    kind: str  # "run" (on the target), "local" (on this machine), "sql", "deploy", "check", "file"
    text: str


@dataclass
class Context:
    cfg: Config
    name: str
    migration: Migration
    service: Service
    host_name: str
    host: Host
    runtime: Runtime
    journal: Journal
    connect: Callable[[], Transport]
    operator_recipients: list[Recipient]
    identities: list[Identity]
    emit: Callable[[str], None] = print
    old_password: Secret | None = None  # the hardcoded password, when known: verify it is refused
    restore_test: bool = False
    _transport: Transport | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)
    # on-host mode (nixmig.onhost): nixmig runs on the target inside its activation; the
    # deploys are that activation, the repo is not here, the state lives in state_root
    on_host: bool = False
    state_root: Path | None = None

    @property
    def t(self) -> Transport:
        if self._transport is None:
            self._transport = self.connect()
        return self._transport

    @property
    def secret_on_host(self) -> str:
        return f"{self.host.agenix_dir}/{self.migration.secret}"

    @property
    def state_dir(self) -> Path:
        """Journal, backups and repo originals: the repo's .nixmig/, on-host /var/lib/nixmig."""
        return self.state_root if self.state_root is not None else self.cfg.repo / ".nixmig"

    @property
    def backups_dir(self) -> Path:
        return self.state_dir / "backups" / self.host_name

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class Phase(Protocol):
    name: str
    title: str

    def describe(self, ctx: Context) -> list[Action]: ...

    def check(self, ctx: Context) -> bool:
        """True when the facts on the target say this phase's effect is already there."""
        ...

    def do(self, ctx: Context) -> dict[str, Any]:
        """Apply; return what the journal keeps (no secret in clear)."""
        ...

    def undo(self, ctx: Context, data: dict[str, Any]) -> None: ...


def now() -> float:
    return time.time()
