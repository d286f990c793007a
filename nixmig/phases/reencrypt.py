"""reencrypt (optional, after verify): re-encrypt columns through the tunnel, with the new password.

Configured by ``migrations.NAME.reencrypt`` (:class:`nixmig.config.ReencryptSettings`). Two phases:
``reencrypt-check`` right after preflight (the spec against the catalog, read with psql like
preflight; the keys and the HMAC secret loaded: a mistake stops the run before the backup), and
``reencrypt`` right after verify, which runs
what ``nixmig reencrypt --apply`` runs (:mod:`nixmig.reencrypt.runner`): keyset batches, each
committed with its checkpoint in ``nixmig_progress``, compare-and-set against the
application's writes, blind indexes checked and every new ciphertext decrypted again before
it is written.

- It reaches the server with psycopg through :meth:`Transport.forward` to the endpoint the
  runtime gives (an SSH direct-tcpip channel; the local transport connects directly), logged
  in as the service's role (dual-role: the new role) with the new password, as verify did.
- ``check``: every table's checkpoint says its pass finished, and a read-only verify pass
  finds no value left in an old scheme, no plaintext and no failure. A run killed during the
  phase resumes from the checkpoints (check is false, ``do`` goes on where the batches stopped).
- ``do``: the pass. HMAC mismatches, undecryptable values and refused plaintexts fail the
  phase, named by primary key, never by value; fix and run apply again (it resumes).
- ``undo``: the legacy scheme can be produced again (AES-256-GCM under the old key, or Vault's
  non-derived key), so rollback re-encrypts every value back to it with the same runner:
  batches, checkpoints, compare-and-set, blind indexes, decrypt-again. Not for mode
  ``encrypt-plaintext`` (which values were plaintext is not recorded: they stay encrypted, and
  rollback says so; the backup has them in clear) nor ``verify`` (it wrote nothing).

No key, secret or value reaches describe(), the journal or a message: key sources are shown
by name (``age:secrets/pos-key-v2.age``, ``env:NAME``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nixmig.config import Migration, ReencryptSettings, new_role_for
from nixmig.errors import NixmigError
from nixmig.phases.base import Action, Context, Phase
from nixmig.reencrypt.modes import Mode, OnPlaintext
from nixmig.sensitive import Secret

if TYPE_CHECKING:
    from nixmig.reencrypt.keys import KeyOptions
    from nixmig.reencrypt.runner import Options, TableStats
    from nixmig.reencrypt.schemes import Keyring
    from nixmig.reencrypt.spec import Spec

KEEP_OLD_KEY_DAYS = 90


class ReencryptPhaseError(NixmigError):
    """The re-encryption found values it must not write, or could not run."""


def with_reencrypt(phases: Sequence[Phase], migration: Migration) -> list[Phase]:
    """The strategy's phases, with reencrypt right after verify when the migration asks for it."""
    out = list(phases)
    if migration.reencrypt is None:
        return out
    names = [p.name for p in out]
    at = names.index("verify") + 1 if "verify" in names else len(out)
    out.insert(at, Reencrypt())
    out.insert(names.index("preflight") + 1 if "preflight" in names else 0, ReencryptCheck())
    return out


@dataclass(frozen=True)
class _Run:
    """One migration's settings, resolved: what to migrate, with which keys, how."""

    settings: ReencryptSettings
    spec: Spec
    key_opts: KeyOptions
    mode: Mode
    key: str  # migrations.NAME.reencrypt, for messages

    @property
    def indexed(self) -> bool:
        return self.settings.hmac_check and any(c.hmac for t in self.spec.tables for c in t.columns)


def _resolve(ctx: Context) -> _Run:
    from nixmig.reencrypt import keys
    from nixmig.reencrypt import spec as specs

    r = ctx.migration.reencrypt
    assert r is not None
    key = f"migrations.{ctx.name}.reencrypt"
    spec = specs.for_migration(
        r.tables, r.schema, ctx.cfg.reencrypt or None, migration=ctx.name, where=str(ctx.cfg.path)
    )
    base = ctx.cfg.repo
    key_opts = keys.KeyOptions(
        new=keys.rebase(r.new_key, base, option=f"{key}.new_key"),
        old=keys.rebase(r.old_key, base, option=f"{key}.old_key") if r.old_key else None,
        new_version=r.new_key_version,
        old_version=r.old_key_version,
        loaded_identities=tuple(ctx.identities),
        vault=keys.VaultSettings(
            r.vault_addr or os.environ.get("VAULT_ADDR", ""), Secret(os.environ.get("VAULT_TOKEN", "")), r.vault_mount
        ),
        vault_key=r.vault_key,
    )
    return _Run(r, spec, key_opts, Mode(r.mode), key)


def _login_role(ctx: Context) -> str:
    """The role the services log in as once migrated (the one whose password is the new secret)."""
    if ctx.migration.strategy == "dual-role":
        return new_role_for(ctx.migration, ctx.service)
    return ctx.service.role


def _hmac_secret(ctx: Context, run: _Run) -> Secret | None:
    from nixmig.reencrypt import keys

    if not run.indexed:
        return None
    source = keys.rebase(run.settings.hmac_secret, ctx.cfg.repo, option=f"{run.key}.hmac_secret")
    return keys.load_secret(source, option=f"{run.key}.hmac_secret", loaded=tuple(ctx.identities))


def _options(ctx: Context, run: _Run, mode: Mode, *, apply: bool, hmac: Secret | None) -> Options:
    from nixmig.reencrypt import runner, workers

    r = run.settings
    return runner.Options(
        mode=mode,
        apply=apply,
        batch_size=r.batch_size,
        on_plaintext=OnPlaintext(r.on_plaintext),
        hmac_secret=hmac,
        jobs=workers.default_jobs() if r.jobs is None else r.jobs,
        pause=r.pause,
    )


@contextlib.contextmanager
def _connected(ctx: Context) -> Iterator[tuple[Any, Any]]:
    """A reading and a writing connection, through the transport's forward to the server."""
    from nixmig.phases.rotate import new_password
    from nixmig.reencrypt import runner

    host, port = ctx.runtime.endpoint(ctx.t)
    password = new_password(ctx)
    with ctx.t.forward(host, port) as (lhost, lport):

        def connect() -> Any:
            user, db = _login_role(ctx), ctx.service.database
            return runner.connect_to(host=lhost, port=lport, user=user, dbname=db, password=password)

        with contextlib.closing(connect()) as conn, contextlib.closing(connect()) as writer:
            yield conn, writer


class _Lines:
    """Progress as lines through ctx.emit: one when a table starts, one when it ends."""

    def __init__(self, ctx: Context, verb: str) -> None:
        self.ctx, self.verb = ctx, verb

    def start(self, table: str, total: int, done: int) -> None:
        resumed = f", resuming after {done:,}" if done else ""
        self.ctx.emit(f"{table}: {self.verb} {total:,} rows{resumed}")

    def advance(self, table: str, rows: int) -> None:
        pass

    def finish(self, table: str) -> None:
        pass


def _summary(stats: Sequence[TableStats]) -> list[str]:
    return [
        f"{s.table}: {s.counts.scanned:,} rows scanned, {s.counts.migrated:,} values migrated, "
        f"{s.counts.already_new:,} already new, {s.counts.plaintext:,} plaintext, "
        f"{s.counts.hmac_failed:,} HMAC failed, {s.counts.decrypt_failed:,} did not decrypt"
        f"{f', {s.counts.conflicts:,} changed meanwhile and redone' if s.counts.conflicts else ''}"
        f" ({s.rows_per_s:,.0f} rows/s)"
        for s in stats
    ]


def _journal(stats: Sequence[TableStats], run: _Run, keyring: Keyring) -> dict[str, Any]:
    return {
        "mode": run.mode.value,
        "scheme": str(keyring.new.scheme),
        "tables": {s.table: s.counts.as_dict() for s in stats},
        "at": time.time(),
    }


def _failures(stats: Sequence[TableStats], opts: Options) -> str | None:
    """One line naming what failed, by primary key, or None."""
    bad = [s for s in stats if s.failed(opts)]
    if not bad:
        return None
    total = sum(s.failed(opts) for s in bad)
    listed = [f"{s.table}.{f.column} primary key {f.pk}: {f.reason}" for s in bad for f in s.failures][:5]
    hmac = sum(s.counts.hmac_failed for s in stats)
    head = "HMAC verification failed: check the HMAC secret; " if hmac else ""
    more = "; ..." if total > len(listed) else ""
    return f"{head}{total} value(s) not migrated ({'; '.join(listed)}{more})"


class ReencryptCheck:
    """Right after preflight: the tables, columns, primary keys and column types are checked in
    the catalog (psql as the admin role, like preflight) and the keys and the HMAC secret are
    loaded, so that a wrong spec or an unreadable key stops the run before the backup, not after
    the switch. Read-only; nothing to undo."""

    name = "reencrypt-check"
    title = "check the re-encryption spec and keys"

    def describe(self, ctx: Context) -> list[Action]:
        run = _resolve(ctx)
        r = run.settings
        names = ", ".join(t.name for t in run.spec.tables)
        sources = ", ".join(x for x in (r.old_key, r.new_key, r.hmac_secret if run.indexed else None) if x is not None)
        return [
            Action("sql", f"catalog (read-only): tables, columns, primary keys and column types of {names}"),
            Action("local", f"load {sources}"),
        ]

    def check(self, ctx: Context) -> bool:
        return False  # read-only and quick: always run

    def do(self, ctx: Context) -> dict[str, Any]:
        from nixmig.db import ops
        from nixmig.db.sql import literal
        from nixmig.reencrypt import keys, runner

        run = _resolve(ctx)
        keyring = keys.build_keyring(run.key_opts, need_old=run.mode is Mode.REENCRYPT)
        _hmac_secret(ctx, run)

        def fetch(schema: str, table: str) -> runner.Catalog:
            query = runner.CATALOG_SQL.format(schema=literal(schema), table=literal(table))
            return runner.Catalog.from_json(ops.psql(ctx.t, ctx.runtime, query + ";").strip())

        plans = runner.inspect_with(run.spec, fetch)
        ctx.emit(f"{len(plans)} table(s) to re-encrypt, new scheme {keyring.new.scheme}")
        return {"tables": [p.name for p in plans], "scheme": str(keyring.new.scheme)}

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        return None


class Reencrypt:
    name = "reencrypt"
    title = "re-encrypt columns"

    def describe(self, ctx: Context) -> list[Action]:
        run = _resolve(ctx)
        r = run.settings
        acts = [
            Action(
                "check",
                f"log in as {_login_role(ctx)} to {ctx.service.database} with the new password, "
                "through a tunnel to the server",
            )
        ]
        verb = {"reencrypt": "re-encrypt", "encrypt-plaintext": "encrypt", "verify": "verify"}[r.mode]
        for t in run.spec.tables:
            cols = ", ".join(c.name + (f" (blind index {c.hmac})" if c.hmac else "") for c in t.columns)
            acts.append(Action("sql", f"{run.spec.schema}.{t.name}: {verb} {cols}"))
        jobs = "default" if r.jobs is None else str(r.jobs)
        acts.append(
            Action(
                "sql",
                f"batches of {r.batch_size} rows paged on the primary key, each committed with its checkpoint "
                f"in nixmig_progress; compare-and-set against the application's writes; worker processes: {jobs}",
            )
        )
        keys_line = f"new key {r.new_key}" + (f" (version {r.new_key_version})" if r.new_key_version else "")
        if r.old_key:
            keys_line = f"old key {r.old_key} (version {r.old_key_version}), " + keys_line
        if run.indexed:
            keys_line += f"; HMAC secret {r.hmac_secret}"
        acts.append(Action("local", f"mode {r.mode}, on plaintext: {r.on_plaintext}; {keys_line}"))
        if run.mode is Mode.REENCRYPT:
            acts.append(Action("local", "rollback re-encrypts the values back to the legacy scheme with the old key"))
        return acts

    def check(self, ctx: Context) -> bool:
        """Done when every table's pass finished (checkpoint) and a verify pass finds nothing left."""
        from nixmig.reencrypt import keys, runner

        run = _resolve(ctx)
        if run.mode is Mode.VERIFY:
            return False  # do() is the verify pass
        keyring = keys.build_keyring(run.key_opts, need_old=run.mode is Mode.REENCRYPT)
        hmac = _hmac_secret(ctx, run)
        with _connected(ctx) as (conn, _):
            plans = runner.inspect(conn, run.spec)
            if not runner.passes_done(conn, plans, run.mode, keyring):
                return False
            opts = _options(ctx, run, Mode.VERIFY, apply=False, hmac=hmac)
            stats = runner.run(conn, plans, keyring, opts)
        return not any(s.failed(opts) for s in stats)

    def do(self, ctx: Context) -> dict[str, Any]:
        from nixmig.reencrypt import keys, runner
        from nixmig.reencrypt.errors import PlaintextError

        run = _resolve(ctx)
        keyring = keys.build_keyring(run.key_opts, need_old=run.mode is Mode.REENCRYPT)
        hmac = _hmac_secret(ctx, run)
        opts = _options(ctx, run, run.mode, apply=run.mode is not Mode.VERIFY, hmac=hmac)
        with _connected(ctx) as (conn, writer):
            plans = runner.inspect(conn, run.spec)  # every table and column checked before any batch
            if opts.writes and run.settings.old_key:
                ctx.emit(
                    f"keep the old key ({run.settings.old_key}) for as long as you keep backups from before this "
                    f"run, and at least {KEEP_OLD_KEY_DAYS} days: they and rollback need it"
                )
            verb = "verifying" if run.mode is Mode.VERIFY else "re-encrypting"
            try:
                stats = runner.run(
                    conn, plans, keyring, opts, _Lines(ctx, verb), writer=writer if opts.writes else None
                )
            except PlaintextError as exc:
                raise PlaintextError(
                    exc.what,
                    where=exc.where,
                    hint=f'for data that was never encrypted set mode = "encrypt-plaintext" in {run.key}, '
                    'or on_plaintext = "encrypt", "skip" or "fail"; the batches before it are kept',
                ) from None
        for line in _summary(stats):
            ctx.emit(line)
        problem = _failures(stats, opts)
        if problem is not None:
            raise ReencryptPhaseError(
                problem,
                where=f"{ctx.t.name}: {ctx.service.database}",
                hint="the other rows are migrated and checkpointed; fix those rows (or the secret) and run apply "
                "again: it resumes",
            )
        return _journal(stats, run, keyring)

    def can_undo(self, ctx: Context, data: dict[str, Any]) -> None:
        """Before rollback undoes anything: the keys (and the HMAC secret) can be loaded."""
        run = _resolve(ctx)
        if run.mode is Mode.REENCRYPT:
            _reverse_keyring(run)
            _hmac_secret(ctx, run)

    def undo(self, ctx: Context, data: dict[str, Any]) -> None:
        from nixmig.reencrypt import runner

        run = _resolve(ctx)
        if run.mode is Mode.VERIFY:
            return
        if run.mode is Mode.ENCRYPT_PLAINTEXT:
            ctx.emit(
                "reencrypt: values encrypted from plaintext stay encrypted (which ones were plaintext is not "
                "recorded); the backup taken before this run has them in clear"
            )
            return
        keyring = _reverse_keyring(run)
        hmac = _hmac_secret(ctx, run)
        opts = _options(ctx, run, Mode.REENCRYPT, apply=True, hmac=hmac)
        opts = _replace(opts, on_plaintext=OnPlaintext.SKIP)  # plaintext was plaintext before: leave it
        with _connected(ctx) as (conn, writer):
            plans = runner.inspect(conn, run.spec)
            stats = runner.run(conn, plans, keyring, opts, _Lines(ctx, "back to the old key:"), writer=writer)
        for line in _summary(stats):
            ctx.emit(line)
        problem = _failures(stats, opts)
        if problem is not None:
            raise ReencryptPhaseError(
                "rollback of reencrypt: " + problem,
                where=f"{ctx.t.name}: {ctx.service.database}",
                hint="the other rows are back in the legacy scheme; fix those rows and run rollback again",
            )


def _reverse_keyring(run: _Run) -> Keyring:
    """Write the legacy scheme with the old key; read the new scheme (and the legacy one)."""
    from nixmig.reencrypt import keys
    from nixmig.reencrypt.schemes import Family, Keyring

    fwd: Keyring = keys.build_keyring(run.key_opts, need_old=True)
    legacy = [c for c in fwd.old if c.scheme.family is Family.LEGACY]
    if not legacy:
        raise ReencryptPhaseError(
            "the old key cannot write the legacy scheme", where=f"{run.key}.old_key", hint="restore from the backup"
        )
    others = tuple(c for c in fwd.old if c is not legacy[0])
    return Keyring(legacy[0], (fwd.new, *others))


def _replace(opts: Options, **changes: Any) -> Options:
    from dataclasses import replace

    return replace(opts, **changes)
