"""On-host mode: the database phases run on the target itself, inside its activation.

`nixmig apply --on-host` is what a NixOS oneshot unit `nixmig-<migration>` (ordered
after the database unit and before the app unit) and a deploy-rs `activate.custom`
wrapper call on every activation. The sequence on the host:

1. activation: agenix decrypts the secret to /run/agenix/NAME; the database unit runs;
   the app unit, changed to read the secret, is stopped (it starts after step 2).
2. `nixmig apply --on-host` (implies --yes: nothing prompts):
   - fast path (nixmig.onhost_fast), with no database connection and nothing but
     the standard library imported: the config file is byte for byte the one the
     last completed run validated, its journal says every phase is done and not
     rolled back, and the secret agenix wrote hashes to the one that run applied (a
     salted PBKDF2 kept in the journal) -> one line, exit 0;
   - otherwise the engine runs the phases with the local transport, the lock in the
     host's lock_dir (/run/nixmig):
       preflight  the database answers, the role exists, row counts (secrets.nix is
                  not read: the repo is not on the host);
       backup     pg_dump, age-encrypted to operator.recipients, into
                  STATE/backups/HOST/ (0600; never plaintext on disk);
       stage      a check: agenix wrote the secret in this activation (no deploy);
       rotate     ALTER ROLE with a SCRAM verifier of the secret (the old verifier
                  sealed to the operator in the journal);
       switch     marks the server log; no deploy: the app unit starts after us;
       verify     the database checks; health checks are left out (the app is not
                  up yet: run them after the activation);
       cleanup    backups past retention_days in STATE/backups/HOST/.
   - a secret that changed since the run that completed (a new password deployed)
     starts a new run: the journal is archived (MIGRATION@STAMP.json) and the phases
     run again, so the role follows the secret, with a fresh backup first.
3. the app unit starts and reads the secret.

State: $NIXMIG_STATE_DIR or --state-dir, default /var/lib/nixmig (0700):
journal/HOST/MIGRATION.json and backups/HOST/. The config: -c, else
/etc/nixmig/nixmig.toml when it exists, else ./nixmig.toml. The host: --host, else
$NIXMIG_HOST, else the service's only host, else the one named like this machine.
Rollback on the host needs the operator identity (`nixmig rollback --on-host -i KEY`);
it restores the old password and leaves the configuration: activate the previous
generation after it. A rolled-back journal starts over at the next activation that
still runs nixmig-<migration> (like apply does off-host).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from nixmig import config as cfgmod
from nixmig import onhost_fast
from nixmig.errors import UsageError
from nixmig.fsutil import rename_durable, write_atomic
from nixmig.journal import Journal
from nixmig.onhost_fast import fast_path, secret_tag, tag_matches

__all__ = ["fast_path", "secret_tag", "tag_matches"]

STATE_DIR = Path(onhost_fast.STATE_DIR)
SYSTEM_CONFIG = Path(onhost_fast.SYSTEM_CONFIG)


def state_dir(option: Path | None = None) -> Path:
    if option is not None:
        return option
    env = os.environ.get("NIXMIG_STATE_DIR")
    return Path(env) if env else STATE_DIR


def config_path(option: Path | None = None) -> Path:
    if option is not None:
        return option
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else Path(cfgmod.DEFAULT_CONFIG)


def pick_migration(cfg: cfgmod.Config, name: str | None) -> str:
    if name is not None and name in cfg.migrations:
        return name
    if name is None and len(cfg.migrations) == 1:
        return next(iter(cfg.migrations))
    raise UsageError(
        f"no migration {name!r}" if name else "which migration?",
        where=cfg.path,
        hint="pass --migration NAME; defined: " + (", ".join(cfg.migrations) or "(none)"),
    )


def this_host(cfg: cfgmod.Config, migration: str, option: str | None = None) -> str:
    """Which of the migration's hosts this machine is."""
    targets = cfg.targets(cfg.migrations[migration].service)
    name = option or os.environ.get("NIXMIG_HOST")
    if name:
        if name not in cfg.hosts:
            raise UsageError(f"unknown host {name!r}", where=cfg.path, hint="runs on: " + ", ".join(targets))
        return name
    if len(targets) == 1:
        return targets[0]
    me = socket.gethostname()
    for candidate in (me, me.split(".")[0]):
        if candidate in targets:
            return candidate
    raise UsageError(
        f"this machine ({me}) is none of migration {migration}'s hosts ({', '.join(targets[:6])})",
        where=cfg.path,
        hint="pass --host NAME (or set NIXMIG_HOST)",
    )


def secret_file(cfg: cfgmod.Config, host: str, migration: str) -> Path:
    return Path(cfg.hosts[host].agenix_dir) / cfg.migrations[migration].secret


def up_to_date(journal: Journal, secret: Path) -> bool:
    """Every phase done, not rolled back, and the secret is the one that run applied."""
    try:
        value = secret.read_bytes()
    except OSError:
        return False
    raw: dict[str, Any] = {"completed": journal.completed, "rolled_back": journal.rolled_back, "meta": journal.meta}
    raw["steps"] = [{"state": s.state} for s in journal.steps.values()]
    return onhost_fast.journal_done(raw, value)


def remember(
    state: Path, config: Path, migration: str | None, host: str | None, journal: Journal, secret: Path
) -> None:
    """Leave the index the fast path reads (see nixmig.onhost_fast) after a completed run."""
    key = onhost_fast.index_key(config.read_bytes(), migration, host or os.environ.get("NIXMIG_HOST"))
    path = Path(onhost_fast.index_path(str(state), key))
    path.parent.mkdir(mode=0o700, exist_ok=True)
    body = {"journal": str(journal.path), "secret": str(secret)}
    write_atomic(path, json.dumps(body).encode(), 0o600)


def archive(journal: Journal) -> Path:
    """Move a completed journal aside (MIGRATION@STAMP.json) so a new run starts empty."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(journal.completed or time.time()))
    dest = journal.path.with_name(f"{journal.migration}@{stamp}.json")
    n = 1
    while dest.exists():  # two runs completed in one second: never over the earlier one's record
        n += 1
        dest = journal.path.with_name(f"{journal.migration}@{stamp}-{n}.json")
    rename_durable(journal.path, dest)  # the directory fsynced: the move survives a power cut
    return dest


def ensure_state_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
