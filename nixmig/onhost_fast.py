"""The on-host fast path: `nixmig apply --on-host` with nothing to do, answered with the
standard library alone (hashlib, hmac, json, os, binascii), before typer, the config loader
or any nixmig module is imported (not even pathlib: every millisecond here is paid on every
activation).

A completed on-host run leaves an index file STATE/fast/KEY.json naming its journal and
the secret file, where KEY hashes the config file's bytes with the --migration and --host
(or $NIXMIG_HOST) it ran with. The fast path recomputes KEY, reads that journal and
answers only when it says every phase is done, not rolled back, and the secret agenix
wrote hashes (salted PBKDF2, kept in the journal) to the one the run applied. A changed
config, option, journal or secret, or anything unexpected, declines: the full command
then runs, validates everything and reports.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import os

STATE_DIR = "/var/lib/nixmig"
SYSTEM_CONFIG = "/etc/nixmig/nixmig.toml"
KDF_ROUNDS = 4096  # what a SCRAM-SHA-256 verifier in pg_authid costs: the journal is no weaker than the catalog

_VALUE_OPTS = {"-c": "config", "--config": "config", "-m": "migration", "--migration": "migration"}
_VALUE_OPTS |= {"--host": "host", "--state-dir": "state_dir"}
_FLAGS = {"--on-host", "--yes", "-y"}


def secret_tag(value: bytes, salt: bytes | None = None) -> str:
    """A salted PBKDF2-SHA256 of the secret: says whether the secret changed, reveals nothing usable."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", value, salt, KDF_ROUNDS)
    return f"pbkdf2-sha256${KDF_ROUNDS}${_b64(salt)}${_b64(digest)}"


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode()  # base64 the module imports re: 10 ms


def tag_matches(tag: object, value: bytes) -> bool:
    if not isinstance(tag, str):
        return False
    try:
        kind, rounds, salt, digest = tag.split("$")
        if kind != "pbkdf2-sha256" or int(rounds) != KDF_ROUNDS:
            return False
        mine = secret_tag(value, binascii.a2b_base64(salt)).rsplit("$", 1)[1]
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(mine, digest)


def journal_done(raw: object, secret: bytes) -> bool:
    """A journal (parsed JSON) that says: every phase done, not rolled back, this secret applied."""
    if not isinstance(raw, dict) or raw.get("completed") is None or raw.get("rolled_back"):
        return False
    steps = raw.get("steps")
    if not isinstance(steps, list) or not steps:
        return False
    if any(not isinstance(s, dict) or s.get("state") != "done" for s in steps):
        return False
    meta = raw.get("meta")
    return isinstance(meta, dict) and tag_matches(meta.get("secret"), secret)


def default_state_dir() -> str:
    return os.environ.get("NIXMIG_STATE_DIR") or STATE_DIR


def default_config() -> str:
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else "nixmig.toml"  # noqa: PTH110 - no pathlib here


def index_key(config_bytes: bytes, migration: str | None, host: str | None) -> str:
    h = hashlib.sha256(config_bytes)
    h.update(b"\0" + (migration or "").encode() + b"\0" + (host or "").encode())
    return h.hexdigest()


def index_path(state_dir: str, key: str) -> str:
    return os.path.join(state_dir, "fast", key + ".json")  # noqa: PTH118 - no pathlib here


def parse(argv: list[str]) -> dict[str, str] | None:
    """The options of `apply --on-host …` the fast path understands; None for anything else."""
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
    return opts


def fast_path(argv: list[str]) -> str | None:
    """For `apply --on-host` with nothing to do: the line to print. None: run the full command
    (it also reports every error: this path never fails, it only declines)."""
    opts = parse(argv)
    if opts is None:
        return None
    try:
        with open(opts.get("config") or default_config(), "rb") as fh:
            config_bytes = fh.read()
        state = opts.get("state_dir") or default_state_dir()
        key = index_key(config_bytes, opts.get("migration"), opts.get("host") or os.environ.get("NIXMIG_HOST"))
        with open(index_path(state, key), encoding="utf-8") as fh:
            index = json.load(fh)
        with open(index["journal"], encoding="utf-8") as fh:
            journal = json.load(fh)
        with open(index["secret"], "rb") as fh:
            secret = fh.read()
        if not journal_done(journal, secret):
            return None
        return f"nixmig: {journal['migration']} on {journal['host']}: done, nothing to do (journal {index['journal']})"
    except Exception:  # declining is always safe: the full command runs and reports
        return None
