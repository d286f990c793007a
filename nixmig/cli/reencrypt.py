"""`nixmig reencrypt`: move encrypted columns to per-column deterministic encryption.

Thin: parse the flags, load the spec and the keys, call the runner, render.
psycopg, cryptography and hvac are imported by the runner when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nixmig.cli.common import ConfigOption, JsonOption, print_json
from nixmig.errors import UsageError
from nixmig.reencrypt.modes import Mode, OnPlaintext
from nixmig.sensitive import Secret

if TYPE_CHECKING:
    from nixmig.reencrypt.spec import Spec

KEEP_OLD_KEY_DAYS = 90

HELP = """Re-encrypt columns from the old key to deterministic encryption with a key derived per
`table.column` (HKDF-SHA256 + AES-SIV, or Vault transit with derived keys).

Dry run by default: reads, decrypts, checks blind indexes and reports; --apply writes,
batch by batch, each batch committed with its checkpoint (a killed run resumes when run
again). The application may keep writing: rows it changes are re-read, never overwritten.

Key sources (--old-key, --new-key): env:NAME, file:PATH, age:PATH or a .age path (agenix,
decrypted in memory with --identity), vault[:KEY] (Vault transit). Local keys are 32 bytes
as base64, hex or raw.

Tables and columns come from --column, --spec, the [reencrypt] table of nixmig.toml, or the
shipped example spec (see --show-spec); --tables picks some of them.
"""


def register(app: typer.Typer) -> None:
    """Add the `reencrypt` command to the nixmig app."""
    app.command("reencrypt", help=HELP, no_args_is_help=False)(reencrypt)


def reencrypt(
    db: str = typer.Option(
        None,
        "--db",
        envvar="DATABASE_URL",
        show_default=False,
        help="libpq conninfo or postgresql:// URL (default: $DATABASE_URL). Prefer a "
        "password in ~/.pgpass or PGPASSWORD over one in the URL.",
    ),
    tables: str = typer.Option("all", "--tables", help="Comma-separated tables of the spec, or all."),
    mode: Mode = typer.Option(Mode.REENCRYPT, "--mode", help="reencrypt, encrypt-plaintext or verify."),
    apply: bool = typer.Option(
        False, "--apply/--dry-run", help="--dry-run (default) reads, checks and reports; --apply writes."
    ),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="Rows per batch and transaction."),
    on_plaintext: OnPlaintext = typer.Option(
        OnPlaintext.ERROR,
        "--on-plaintext",
        help="A value without a scheme prefix in reencrypt mode: error (stop), encrypt it, "
        "skip it, or fail the row and go on.",
    ),
    old_key: str = typer.Option(None, "--old-key", show_default=False, help="Source of the old key."),
    old_key_version: int = typer.Option(1, "--old-key-version", min=1, help="Version of the old key."),
    new_key: str = typer.Option(None, "--new-key", show_default=False, help="Source of the new key."),
    new_key_version: int = typer.Option(
        None,
        "--new-key-version",
        min=1,
        show_default=False,
        help="Version of the new key (default: 1; Vault: the key's latest).",
    ),
    identity: list[Path] = typer.Option(
        [], "--identity", "-i", help="ssh or age identity to decrypt .age keys (repeatable)."
    ),
    vault_addr: str = typer.Option(
        None, "--vault-addr", envvar="VAULT_ADDR", show_default=False, help="Vault address (default: $VAULT_ADDR)."
    ),
    vault_token: str = typer.Option(
        None,
        "--vault-token",
        envvar="VAULT_TOKEN",
        show_default=False,
        help="Vault token (default: $VAULT_TOKEN; prefer the variable: argv is visible in ps).",
    ),
    vault_key: str = typer.Option(
        "pos-encryption-key", "--vault-key", help="Transit key of a bare `vault` key source."
    ),
    vault_mount: str = typer.Option("transit", "--vault-mount", help="Mount path of the transit engine."),
    vault_max_batch: int = typer.Option(
        None,
        "--vault-max-batch",
        min=1,
        show_default=False,
        help="At most this many values per Vault batch request (default: as many as the server accepts; "
        "a refused request is split, whatever --batch-size is).",
    ),
    hmac_secret: str = typer.Option(
        None,
        "--hmac-secret",
        envvar="ENCRYPTION_HMAC_SECRET",
        show_default=False,
        help="Secret of the blind indexes (default: $ENCRYPTION_HMAC_SECRET; prefer the variable).",
    ),
    hmac_secret_file: Path = typer.Option(
        None,
        "--hmac-secret-file",
        show_default=False,
        help="Read the HMAC secret from a file (one trailing newline stripped).",
    ),
    no_hmac_check: bool = typer.Option(False, "--no-hmac-check", help="Do not check blind indexes."),
    column: list[str] = typer.Option(
        [], "--column", help="TABLE.COLUMN[=HMAC_COLUMN] to migrate (repeatable; replaces the spec)."
    ),
    spec_file: Path = typer.Option(None, "--spec", show_default=False, help="TOML spec file."),
    schema: str = typer.Option(
        None, "--schema", show_default=False, help="Schema of the tables (default: the spec's, else public)."
    ),
    config: Path = ConfigOption,
    show_spec: bool = typer.Option(False, "--show-spec", help="Print the spec as TOML and exit."),
    pause: float = typer.Option(0.0, "--pause", min=0.0, help="Seconds to wait between batches."),
    jobs: int = typer.Option(
        None,
        "--jobs",
        "-j",
        min=0,
        show_default=False,
        help="Worker processes that decrypt and encrypt beside the reads and writes (default: one per CPU "
        "beyond the first, 2 on 2 CPUs, at most 4; 0: in this process). Vault keys always run in this process.",
    ),
    json_out: bool = JsonOption,
) -> None:
    from nixmig.reencrypt import keys, report, runner, workers
    from nixmig.reencrypt import spec as specs

    spec = _load_spec(column, spec_file, config, schema).select(tables)
    if show_spec:
        typer.echo(specs.to_toml(spec), nl=False)
        return
    if mode is Mode.VERIFY and apply:
        raise UsageError("verify is read-only", where="--apply", hint="drop --apply")
    secret = _hmac_secret(spec, hmac_secret, hmac_secret_file, no_hmac_check)
    if not db:
        raise UsageError("no database", where="--db", hint="pass --db or set DATABASE_URL")
    key_opts = keys.KeyOptions(
        new=new_key,
        old=old_key,
        new_version=new_key_version,
        old_version=old_key_version,
        identities=tuple(identity),
        vault=keys.VaultSettings(vault_addr or "", Secret(vault_token or ""), vault_mount, vault_max_batch),
        vault_key=vault_key,
    )
    keyring = keys.build_keyring(key_opts, need_old=mode is Mode.REENCRYPT)
    opts = runner.Options(
        mode=mode,
        apply=apply,
        batch_size=batch_size,
        on_plaintext=on_plaintext,
        hmac_secret=secret,
        pause=pause,
        jobs=workers.default_jobs() if jobs is None else jobs,
    )
    conn = runner.connect(db)
    writer = None
    try:
        plans = runner.inspect(conn, spec)
        if opts.writes:
            typer.echo(report.reminder(KEEP_OLD_KEY_DAYS), err=True)
            writer = runner.connect(db)
        with report.RichProgress(enabled=not json_out) as progress:
            stats = runner.run(conn, plans, keyring, opts, progress, writer=writer)
    finally:
        conn.close()
        if writer is not None:
            writer.close()
    if json_out:
        print_json(report.as_json(stats, opts))
    else:
        report.render(stats, opts)
    if any(s.failed(opts) for s in stats):
        raise typer.Exit(code=1)


def _load_spec(column: list[str], spec_file: Path | None, config: Path | None, schema: str | None) -> Spec:
    from dataclasses import replace

    from nixmig.reencrypt import spec as specs

    result: Spec | None
    if column:
        result = specs.from_flags(column)
    elif spec_file is not None:
        result = specs.load(spec_file)
    else:
        path = config if config is not None else Path("nixmig.toml")
        found = specs.load(path, required=False) if config is not None or path.exists() else None
        result = found or specs.EXAMPLE_SPEC
    assert result is not None
    return replace(result, schema=schema) if schema else result


def _hmac_secret(spec: Spec, value: str | None, path: Path | None, skip: bool) -> Secret | None:
    indexed = [f"{t.name}.{c.hmac}" for t in spec.tables for c in t.columns if c.hmac]
    if skip or not indexed:
        return None
    if path is not None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read the HMAC secret: {exc.strerror}", where=path) from None
        return Secret(raw[:-1] if raw.endswith(b"\n") else raw)
    if value:
        return Secret(value)
    raise UsageError(
        f"the spec has blind indexes ({', '.join(indexed[:3])}{', ...' if len(indexed) > 3 else ''}) "
        "but no HMAC secret",
        where="--hmac-secret",
        hint="set ENCRYPTION_HMAC_SECRET, pass --hmac-secret-file, or --no-hmac-check",
    )
