"""On-host mode: the database phases run on the target itself, inside its activation.

`nixmig apply --on-host` is what a NixOS oneshot unit `nixmig-<migration>` (ordered
after the database unit and before the app unit) and a deploy-rs `activate.custom`
wrapper call on every activation. The sequence on the host:

1. activation: agenix decrypts the secret to /run/agenix/NAME; the database unit runs;
   the app unit, changed to read the secret, is stopped (it starts after step 2).
2. `nixmig apply --on-host` (implies --yes: nothing prompts):
   - fast path, with no database connection and no heavy import (this module needs
     only the standard library, nixmig.config and nixmig.journal): the journal says
     every phase is done, not rolled back, and the secret agenix wrote now hashes to
     the one the run applied (a salted PBKDF2 kept in the journal) -> exit 0 at once;
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

import base64
import hashlib
import hmac
import os
import secrets
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from nixmig import config as cfgmod
from nixmig.errors import UsageError
from nixmig.journal import Journal

STATE_DIR = Path("/var/lib/nixmig")
SYSTEM_CONFIG = Path("/etc/nixmig/nixmig.toml")
_KDF_ROUNDS = 4096  # what a SCRAM-SHA-256 verifier in pg_authid costs: the journal is no weaker than the catalog


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


def secret_tag(value: bytes, salt: bytes | None = None) -> str:
    """A salted PBKDF2-SHA256 of the secret: says whether the secret changed, reveals nothing usable."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", value, salt, _KDF_ROUNDS)
    return f"pbkdf2-sha256${_KDF_ROUNDS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def tag_matches(tag: object, value: bytes) -> bool:
    if not isinstance(tag, str):
        return False
    try:
        kind, rounds, salt, digest = tag.split("$")
        if kind != "pbkdf2-sha256" or int(rounds) != _KDF_ROUNDS:
            return False
        mine = secret_tag(value, base64.b64decode(salt)).rsplit("$", 1)[1]
    except ValueError:
        return False
    return hmac.compare_digest(mine, digest)


def secret_file(cfg: cfgmod.Config, host: str, migration: str) -> Path:
    return Path(cfg.hosts[host].agenix_dir) / cfg.migrations[migration].secret


def up_to_date(journal: Journal, secret: Path) -> bool:
    """Every phase done, not rolled back, and the secret is the one that run applied."""
    if journal.completed is None or journal.rolled_back or not journal.steps:
        return False
    if any(s.state != "done" for s in journal.steps.values()):
        return False
    try:
        value = secret.read_bytes()
    except OSError:
        return False
    return tag_matches(journal.meta.get("secret"), value)


def archive(journal: Journal) -> Path:
    """Move a completed journal aside (MIGRATION@STAMP.json) so a new run starts empty."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(journal.completed or time.time()))
    dest = journal.path.with_name(f"{journal.migration}@{stamp}.json")
    journal.path.rename(dest)
    return dest


def ensure_state_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


# --- the fast path: called by nixmig.entry before typer is imported -----------------

_VALUE_OPTS = {"-c": "config", "--config": "config", "-m": "migration", "--migration": "migration"}
_VALUE_OPTS |= {"--host": "host", "--state-dir": "state_dir"}
_FLAGS = {"--on-host", "--yes", "-y"}


def fast_path(argv: Sequence[str]) -> str | None:
    """For `apply --on-host` with nothing to do: the line to print. None: run the full command
    (it also reports every error: this path never fails, it only declines)."""
    if len(argv) < 2 or argv[0] != "apply" or "--on-host" not in argv:
        return None
    opts: dict[str, str] = {}
    args = list(argv[1:])
    while args:
        a = args.pop(0)
        key, eq, val = a.partition("=")
        if a in _FLAGS:
            continue
        if key in _VALUE_OPTS and eq:
            opts[_VALUE_OPTS[key]] = val
        elif a in _VALUE_OPTS and args:
            opts[_VALUE_OPTS[a]] = args.pop(0)
        else:
            return None  # anything else (-i, --debug, --help, a typo): the full command decides
    try:
        cfg = cfgmod.load(config_path(Path(opts["config"]) if "config" in opts else None))
        name = pick_migration(cfg, opts.get("migration"))
        host = this_host(cfg, name, opts.get("host"))
        root = state_dir(Path(opts["state_dir"]) if "state_dir" in opts else None)
        journal = Journal.open(root / "journal", host, name)
        if not up_to_date(journal, secret_file(cfg, host, name)):
            return None
    except Exception:  # declining is always safe: the full command runs and reports
        return None
    return f"nixmig: {name} on {host}: done, nothing to do (journal {journal.path})"
