"""Does the secret on the host hold the repo's value? Digests compared; the secret never moves.

agenix writes /run/agenix/NAME at activation from the deployed config's NAME.age. A
host can hold an older value (an earlier attempt, a regenerated secret, `nixmig secret
new --force`): "the file is there" then does not mean the stage deploy is in effect, and
a password read from it is not the one switch gives the services (rotate would set the
role's password to a value the app never gets: an outage until a rollback).

The repo's NAME.age is decrypted here with the operator identity (--identity, else
agenix's defaults ~/.ssh/id_ed25519 and id_rsa) and hashed in memory; the host's file is
hashed there (`sha256sum`, through the transport); rotate, which reads the password
anyway, hashes what it read here instead (one round trip, not two). Only the two digests
meet, and neither is printed or journaled (the digest of a short password can be guessed offline).

Stage deploys unless the digests are equal. Rotate, dual-role's add-role and rebuild's
provision refuse, before they change anything, when they differ; they reopen stage in the
journal, so `nixmig apply` again deploys the repo's value first.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixmig.errors import IdentityError, NixmigError
from nixmig.phases.base import Action, Context
from nixmig.secrets.age import Identity, decrypt
from nixmig.sensitive import Secret

_EMPTY = hashlib.sha256(b"").hexdigest()
_HEX = re.compile(r"^[0-9a-f]{64}$")
_HASH = 'if [ ! -e "$1" ]; then exit 3; fi; exec sha256sum -- "$1"'


class HostSecretError(NixmigError):
    """The secret on the host cannot be hashed."""


@dataclass(frozen=True)
class HostSecret:
    """The two digests (never shown). ``host`` None: the file is missing or empty;
    ``repo`` None: no identity here decrypts the repo's file (``unknown`` says why)."""

    path: str  # on the host
    age_file: Path  # in the repo
    host: str | None
    repo: str | None
    unknown: str = ""

    @property
    def present(self) -> bool:
        return self.host is not None

    @property
    def same(self) -> bool:
        """The host's file holds the repo's value (proven, not assumed)."""
        return self.host is not None and self.repo is not None and self.host == self.repo

    @property
    def differs(self) -> bool:
        """Known to differ: the repo's value is known and the host's file is missing or another."""
        return self.repo is not None and self.host != self.repo


def age_file(ctx: Context, name: str | None = None) -> Path:
    """The repo's NAME.age (the migration's secret, or the companion ``name``: nixmig.toml's also)."""
    from nixmig.secrets import store

    return store.find_rules(ctx.cfg.repo, ctx.cfg.secrets_dir).parent / f"{name or ctx.migration.secret}.age"


def on_host(ctx: Context, name: str | None = None) -> str:
    """Where agenix decrypts NAME on the host."""
    return f"{ctx.host.agenix_dir}/{name}" if name else ctx.secret_on_host


def shown(ctx: Context, path: Path) -> str:
    """The repo's file as messages name it (relative to the repo)."""
    try:
        return path.relative_to(ctx.cfg.repo).as_posix()
    except ValueError:
        return str(path)


def _identities(ctx: Context) -> list[Identity]:
    if ctx.identities:
        return ctx.identities
    from nixmig.secrets import store

    try:
        return store.identities_or_default([])  # agenix's defaults, as `nixmig secret show`
    except IdentityError:
        return []  # e.g. a passphrase-protected ~/.ssh/id_ed25519: not usable here


def repo_digest(ctx: Context, name: str | None = None) -> tuple[str | None, str]:
    """sha256 of the value of the repo's NAME.age, or (None, why not)."""
    path = age_file(ctx, name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HostSecretError(
            "the secret's file is missing",
            where=path,
            hint=f"create it: nixmig secret new {name or ctx.migration.secret}",
        ) from None
    identities = _identities(ctx)
    if not identities:
        return None, "no operator identity (--identity, ~/.ssh/id_ed25519 or id_rsa)"
    try:
        value = decrypt(data, identities, where=path)
    except IdentityError as exc:
        return None, exc.what
    return hashlib.sha256(value.reveal()).hexdigest(), ""


def host_digest(ctx: Context, name: str | None = None) -> str | None:
    """sha256 of the host's file, computed there; None when it is missing or empty."""
    path = on_host(ctx, name)
    # exit 3: no such file (told apart by the exit code, not by a localised message)
    r = ctx.t.run(["sh", "-c", _HASH, "sh", path], check=False)
    if r.exit_code == 3:
        return None
    if not r.ok:
        raise HostSecretError(f"cannot hash {path}: {r.tail()}", where=ctx.t.name, hint="nixmig reads it to compare")
    digest = r.stdout.decode("ascii", "replace").split(" ", 1)[0].lstrip("\\")
    if not _HEX.match(digest):
        raise HostSecretError(f"unexpected output of sha256sum for {path}", where=ctx.t.name)
    return None if digest == _EMPTY else digest


def compare(ctx: Context, value: Secret | None = None, name: str | None = None) -> HostSecret:
    """Both digests (off-host only: on-host the repo is not there, and the activation
    running nixmig has just written the deployed value). ``value``: the host's file as a
    phase that reads it anyway (rotate) just read it, hashed here: no second round trip.
    ``name``: a companion secret (also) instead of the migration's."""
    repo, why = repo_digest(ctx, name)
    if value is None:
        host = host_digest(ctx, name)
    else:
        digest = hashlib.sha256(value.reveal()).hexdigest()
        host = None if digest == _EMPTY else digest
    return HostSecret(on_host(ctx, name), age_file(ctx, name), host, repo, why)


def host_file_row(ctx: Context, name: str | None = None) -> dict[str, Any]:
    """The host's file holds the repo's value (the migration's secret, or the companion ``name``):
    proven by digests, else a failed row."""
    path, secret = on_host(ctx, name), name or ctx.migration.secret
    if ctx.on_host:
        ok = ctx.t.run(["test", "-s", path], check=False).ok
        return {"check": f"{path} exists", "ok": ok, "detail": "" if ok else "missing or empty"}
    hs = compare(ctx, name=name)
    if hs.repo is None:
        detail = f"not checked: {hs.unknown}; pass -i with a key listed for it in secrets.nix"
    elif not hs.present:
        detail = "missing or empty on the host"
    elif not hs.same:
        detail = "another value (their sha256 differ)"
    else:
        detail = ""
    return {"check": f"{path} holds the value of {secret}.age", "ok": hs.same, "detail": detail}


def also_rows(ctx: Context) -> list[dict[str, Any]]:
    """Each companion's file on the host (nixmig.toml's also) holds its repo value: agenix
    deployed it, else the container that reads it does not start, or starts with another.
    With no identity here that decrypts it (rotate runs without one), its presence is what is
    checked, and the row says so."""
    rows = []
    for name in ctx.migration.also.values():
        row = host_file_row(ctx, name)
        if not ctx.on_host and row["detail"].startswith("not checked: "):
            present = host_digest(ctx, name) is not None
            why = row["detail"].removeprefix("not checked: ")
            row = {
                "check": f"{on_host(ctx, name)} exists (its value not compared: {why})",
                "ok": present,
                "detail": "" if present else "missing or empty on the host",
            }
        rows.append(row)
    return rows


def describe(ctx: Context) -> list[Action]:
    """The guard's line in a plan (none on-host)."""
    if ctx.on_host:
        return []
    return [
        Action(
            "check",
            f"{ctx.secret_on_host} holds the value of {ctx.migration.secret}.age (sha256 there and here), "
            "else refuse before any change",
        )
    ]


def differs(ctx: Context) -> bool:
    """For a phase's check(): the host's secret is known not to be the repo's."""
    return not ctx.on_host and compare(ctx).differs


def require_repo_value(
    ctx: Context,
    phase: str,
    error: type[NixmigError],
    *,
    consequence: str = "the services would get another password than the role",
    unknown_refuses: bool = False,
    checked: HostSecret | None = None,
) -> None:
    """Before ``phase`` uses the host's secret: refuse, changing nothing, when it is not
    the repo's value (and reopen stage, so that apply again deploys it first).
    A value that cannot be checked here (no identity) is said, or (``unknown_refuses``) refused.
    ``checked``: the comparison the phase made just now (compare(ctx, value)), else made here."""
    if ctx.on_host:
        return
    hs = checked if checked is not None else compare(ctx)
    rel = shown(ctx, hs.age_file)
    if hs.repo is None:
        if unknown_refuses:
            raise error(
                f"cannot check that {hs.path} on {ctx.host_name} holds the value of {rel} ({hs.unknown}): "
                f"{phase} refused before changing anything",
                where=ctx.t.name,
                hint="pass -i with a key listed for it in secrets.nix",
            )
        ctx.emit(
            f"{phase}: cannot check that {hs.path} on {ctx.host_name} holds the value of {rel} "
            f"({hs.unknown}); pass --identity with a key listed for it in secrets.nix to check"
        )
        return
    if hs.same:
        return
    reopened = _reopen_stage(ctx, phase)
    state = "is missing" if not hs.present else f"does not hold the value of {rel} (their sha256 differ)"
    raise error(
        f"{ctx.host_name}'s {hs.path} {state}: {phase} refused before changing anything, {consequence}",
        where=ctx.t.name,
        hint=(
            "run `nixmig apply` again: stage deploys the repo's secret first"
            if reopened
            else "deploy the repo's config to the host (stage), then `nixmig apply` again"
        )
        + f" (if {rel} is the wrong value, put the right one back with `nixmig secret new --force`)",
    )


def _reopen_stage(ctx: Context, phase: str) -> bool:
    step = ctx.journal.steps.get("stage")
    if step is None:
        return False
    if step.state == "done":
        ctx.journal.fail("stage", f"{phase} found the host's secret is not the repo's: stage deploys again")
    return step.state in ("failed", "running")
