"""`nixmig secret new | rekey | check | show`: agenix-compatible secrets."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from nixmig.cli.common import ConfigOption, JsonOption, RepoOption, load_config_if_any, print_json, resolve_repo

app = typer.Typer(
    help="Create, re-encrypt, check and read agenix secrets (secrets/secrets.nix + *.age).",
    no_args_is_help=True,
)

IdentityOption = typer.Option(
    None,
    "--identity",
    "-i",
    help="ssh private key or age identity file to decrypt with (repeatable; "
    "default: ~/.ssh/id_ed25519 and ~/.ssh/id_rsa, like agenix).",
    show_default=False,
)


def _rules(repo: Path | None, config: Path | None) -> tuple[Path, object]:
    from nixmig.secrets.store import find_rules

    cfg = load_config_if_any(config, repo)
    root = resolve_repo(repo, cfg)
    return find_rules(root, cfg.secrets_dir if cfg else "secrets"), cfg


@app.command("new")
def new(
    name: str = typer.Argument(..., help="Secret name; writes secrets/NAME.age."),
    repo: Path | None = RepoOption,
    config: Path | None = ConfigOption,
    length: int = typer.Option(32, "--length", "-l", help="Characters to generate (16..4096)."),
    charset: str = typer.Option(
        "urlsafe",
        "--charset",
        help="urlsafe (A-Z a-z 0-9 - _, safe in postgres:// URLs), alnum, hex, or "
        "base64 (contains + and /: needs percent-encoding in URLs).",
    ),
    stdin: bool = typer.Option(
        False,
        "--stdin",
        help="Read the secret from stdin instead of generating one (to move a secret that is "
        "hardcoded today). Exactly one trailing newline is stripped, so `echo pw |` works.",
    ),
    from_source: str | None = typer.Option(
        None,
        "--from",
        metavar="FILE:LINE[:COL]",
        help="Take the value a Nix file hardcodes today (where `nixmig scan` finds it) instead of "
        "generating one: for a secret that cannot be rotated now (MySQL/MariaDB, a token). The value "
        "is never printed; it has been public in the repo's history: rotate it when you can.",
        show_default=False,
    ),
    like: str | None = typer.Option(None, "--like", help="Copy the publicKeys expression of this entry as written."),
    recipient: list[str] | None = typer.Option(
        None, "--recipient", "-r", help="Add this public key (ssh-ed25519, ssh-rsa, age1…); repeatable."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing secret's value."),
    json_out: bool = JsonOption,
) -> None:
    """Generate (or read from stdin) a secret, encrypt it with age, and list it in secrets.nix.

    Recipients: --like and/or --recipient; otherwise every hosts.*.age_recipient and
    operator.recipients from nixmig.toml. The plaintext never touches the disk and is
    never printed: read it back with `nixmig secret show`.
    """
    from nixmig.secrets import generate, store

    rules_path, cfg = _rules(repo, config)
    taken = None
    if from_source is not None and stdin:
        from nixmig.errors import UsageError

        raise UsageError("--from and --stdin exclude each other", hint="the value comes from one place")
    if from_source is not None:
        from nixmig.secrets import fromsource

        taken = fromsource.take(from_source, rules_path.parent.parent)
        value = taken.value
    elif stdin:
        if sys.stdin.isatty():
            typer.echo("Enter the secret, then Ctrl-D:", err=True)
        value = generate.from_stdin(sys.stdin.buffer.read())
    else:
        value = generate.generate(length, charset)  # type: ignore[arg-type]
    defaults: list[str] = []
    if cfg is not None:
        defaults = [*cfg.host_recipients(), *cfg.operator.recipients]  # type: ignore[attr-defined]
    result = store.new_secret(
        rules_path, name, value, like=like, recipients=recipient or [], default_recipients=defaults, force=force
    )
    rel = (
        result.file.relative_to(rules_path.parent.parent)
        if rules_path.parent.parent in result.file.parents
        else result.file
    )
    if json_out:
        print_json(
            {
                "name": result.name,
                "file": str(result.file),
                "secrets_nix_edited": result.rules_edited,
                "replaced": result.replaced,
                "recipients": [r.text for r in result.recipients],
                "from": taken.where if taken is not None else None,
            }
        )
        return
    verb = "replaced" if result.replaced else "wrote"
    origin = f", the value hardcoded at {taken.where}" if taken is not None else ""
    if taken is not None and taken.whole_text:
        lines = value.reveal().count(b"\n") + (not value.reveal().endswith(b"\n"))  # several: _store_file_text
        origin = (
            f", the whole text ({lines} lines) of the file {taken.attribute} writes into the store, at {taken.where}"
        )
    typer.echo(f"{verb} {rel} ({len(value)} characters{origin}, {len(result.recipients)} recipients)")
    if taken is not None:
        typer.echo(
            f"note: that value has been public in the repository's history ({taken.where}): rotate it once the "
            f"service reads {result.name} (for a database: `nixmig apply`; else the service's own way)",
            err=True,
        )
    if result.rules_edited:
        typer.echo(f'{rules_path}: "{result.name}".publicKeys = {result.expression};')


@app.command("rekey")
def rekey(
    identity: list[Path] | None = IdentityOption,
    repo: Path | None = RepoOption,
    config: Path | None = ConfigOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say which files would change."),
    everything: bool = typer.Option(False, "--all", help="Re-encrypt every file, changed or not."),
    json_out: bool = JsonOption,
) -> None:
    """Re-encrypt secrets to the keys secrets.nix lists now (after adding or removing a host).

    Every file is decrypted first; if one cannot be, nothing is written. Then each
    changed file is replaced atomically.
    """
    from nixmig.secrets import store

    rules_path, _ = _rules(repo, config)
    idents = [] if dry_run else store.identities_or_default(identity or [])
    items = store.rekey(rules_path, idents, dry_run=dry_run, everything=everything)
    if json_out:
        print_json([{"name": i.name, "status": i.status} for i in items])
        return
    for i in items:
        typer.echo(f"{i.status:12} {i.name}")
    changed = sum(i.status in ("rekeyed", "would rekey") for i in items)
    typer.echo(f"{changed} of {len(items)} files {'would change' if dry_run else 're-encrypted'}")


@app.command("check")
def check(
    identity: list[Path] | None = IdentityOption,
    repo: Path | None = RepoOption,
    config: Path | None = ConfigOption,
    json_out: bool = JsonOption,
) -> None:
    """Check that secrets.nix and the .age files agree, and that each file decrypts.

    Exit 1 with a table of problems: a listed file that is missing, a file that is not
    listed, a file encrypted to other ssh keys than listed, one that does not decrypt.
    """
    from nixmig.secrets import store

    rules_path, _ = _rules(repo, config)
    idents = store.identities_or_default(identity or [])
    report = store.check(rules_path, idents)
    if json_out:
        print_json(
            {
                "checked": report.checked,
                "decrypted": report.decrypted,
                "problems": [{"file": p.file, "problem": p.problem} for p in report.problems],
            }
        )
    elif report.problems:
        from rich.console import Console
        from rich.table import Table

        table = Table("file", "problem", title=f"{rules_path}: {len(report.problems)} problems")
        for p in report.problems:
            table.add_row(p.file, p.problem)
        Console(stderr=False).print(table)
    else:
        how = f", {report.decrypted} decrypted" if idents else " (no identity: decryption not checked)"
        typer.echo(f"ok: {report.checked} secrets{how}")
    if report.problems:
        raise typer.Exit(1)


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Secret name (with or without .age)."),
    identity: list[Path] | None = IdentityOption,
    repo: Path | None = RepoOption,
    config: Path | None = ConfigOption,
) -> None:
    """Decrypt a secret to stdout, byte for byte (no newline added), for scripts."""
    from nixmig.secrets import store

    rules_path, _ = _rules(repo, config)
    value = store.show(rules_path, name, store.identities_or_default(identity or []))
    sys.stdout.buffer.write(value.reveal())
    sys.stdout.buffer.flush()
