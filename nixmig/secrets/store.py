"""The agenix secret set of a repo: new, rekey, check, show.

Every operation computes everything first (evaluation, recipients,
decryption, encryption) and only then writes, each file atomically, so a
failure leaves the repo exactly as it was.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nixmig import fsutil
from nixmig.errors import NixmigError, RecipientError, SecretsError, UsageError
from nixmig.secrets import recipients as rcp
from nixmig.secrets import rules as rl
from nixmig.secrets.age import Identity, Stanza, decrypt, encrypt, header, load_identities
from nixmig.sensitive import Secret

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_rsa")


def find_rules(repo: Path, secrets_dir: str = "secrets") -> Path:
    """secrets.nix in ``repo/secrets_dir`` or at the repo root."""
    for candidate in (repo / secrets_dir / rl.RULES_FILE, repo / rl.RULES_FILE):
        if candidate.is_file():
            return candidate
    raise SecretsError(
        f"no {rl.RULES_FILE} in {repo / secrets_dir} or {repo}",
        hint="pass --repo with the repository root, or create secrets/secrets.nix (agenix layout)",
    )


def identities_or_default(paths: Sequence[Path]) -> list[Identity]:
    """The given identity files, or agenix's defaults (~/.ssh/id_ed25519, id_rsa) that exist."""
    if paths:
        return load_identities(paths)
    found = [Path(p).expanduser() for p in DEFAULT_IDENTITIES]
    return load_identities([p for p in found if p.is_file()])


def entry_name(name: str) -> str:
    base = name.removesuffix(".age")
    if not _NAME_RE.match(base) or ".." in base.split("/"):
        raise UsageError(
            f"invalid secret name {name!r}",
            hint="use letters, digits, '.', '-' and '_' (e.g. twenty-db-password)",
        )
    return base + ".age"


def recipients_of(rules: rl.Rules, entry: rl.Entry, source: bytes | None = None) -> list[rcp.Recipient]:
    """Parse an entry's keys; an unsupported one is reported with its line in secrets.nix."""
    out = []
    for key in entry.public_keys:
        try:
            out.append(rcp.parse(key))
        except RecipientError as exc:
            line = _line_of(source if source is not None else rules.source, key)
            where = f"{rules.path}:{line}" if line else str(rules.path)
            raise RecipientError(f"{entry.name}: {exc.what}", where=where, hint=exc.hint) from None
    return out


def _line_of(source: bytes, key: str) -> int | None:
    needle = key.strip().split()[1] if len(key.split()) > 1 else key.strip()
    idx = source.find(needle.encode())
    return source.count(b"\n", 0, idx) + 1 if idx >= 0 else None


# ------------------------------------------------------------------------ new


@dataclass(frozen=True)
class NewResult:
    name: str
    file: Path
    rules_edited: bool
    replaced: bool
    expression: str | None
    recipients: tuple[rcp.Recipient, ...]


def new_secret(
    rules_path: Path,
    name: str,
    value: Secret,
    *,
    like: str | None = None,
    recipients: Sequence[str] = (),
    default_recipients: Sequence[str] = (),
    force: bool = False,
    use_nix: bool | None = None,
) -> NewResult:
    """Encrypt ``value`` as NAME.age and list it in secrets.nix."""
    ename = entry_name(name)
    rules = rl.load(rules_path, use_nix=use_nix)
    target = rules.dir / ename
    # a rule with no .age yet (written first, the agenix way) is filled in with its own keys; a value
    # that exists is replaced only with --force
    exists = target.exists()
    if exists and not force:
        raise SecretsError(
            f"secret {ename} already exists",
            where=target,
            hint="pass --force to replace its value (and --like/--recipient to change its keys)",
        )
    expression = _expression(rules, ename, like, recipients, default_recipients)
    source = rl.with_entry(rules, ename, expression) if expression is not None else rules.source
    edited = rl.entries_from(rl.evaluate(rules.path, source, use_nix=use_nix), rules.path)
    if ename not in edited:  # e.g. shadowed by a later `//`
        raise SecretsError(f"{ename} does not appear in the evaluated file after the edit", where=rules.path)
    keys = recipients_of(rules, edited[ename], source)
    ciphertext = encrypt(value, keys)

    old = target.read_bytes() if target.exists() else None
    target.parent.mkdir(parents=True, exist_ok=True)
    fsutil.write_atomic(target, ciphertext, 0o644 if old is None else None)
    if source != rules.source:
        try:
            fsutil.write_atomic(rules.path, source)
        except BaseException:
            if old is None:
                target.unlink()
            else:
                fsutil.write_atomic(target, old)
            raise
    return NewResult(ename, target, source != rules.source, exists, expression, tuple(keys))


def _expression(
    rules: rl.Rules,
    ename: str,
    like: str | None,
    literal: Sequence[str],
    default: Sequence[str],
) -> str | None:
    parts: list[str] = []
    if like is not None:
        lname = like if like.endswith(".age") else like + ".age"
        if lname not in rules.entries:
            raise SecretsError(
                f"--like {like}: no such entry",
                where=rules.path,
                hint="existing entries: " + (", ".join(sorted(rules.entries)) or "(none)"),
            )
        parts.append(rl.entry_expression(rules, lname))
    keys = list(literal)
    if not parts and not keys:
        if ename in rules.entries:
            return None  # --force on an existing entry keeps its keys as written
        keys = list(default)
        if not keys:
            raise UsageError(
                "no recipients for the new secret",
                hint="pass --like OTHER or --recipient KEY, or set hosts.<name>.age_recipient in nixmig.toml",
            )
    if keys:
        names = rl.let_names_for(rules)
        items = []
        for k in keys:
            r = rcp.parse(k, where="--recipient" if literal else "nixmig.toml")
            items.append(names.get(r.text) or f'"{r.text}"')
        parts.append("[ " + " ".join(items) + " ]")
    if len(parts) == 2 and not _is_simple(parts[0]):
        parts[0] = f"({parts[0]})"
    return " ++ ".join(parts)


def _is_simple(expr: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_][\w'-]*|\[.*\]", expr.strip(), re.S))


# ---------------------------------------------------------------------- rekey


@dataclass(frozen=True)
class RekeyItem:
    name: str
    status: str  # "rekeyed", "would rekey", "unchanged", "missing file"


_RECIPIENT_STANZAS = frozenset({"ssh-ed25519", "ssh-rsa", "X25519"})


def _matches(stanzas: Sequence[Stanza], keys: Sequence[rcp.Recipient]) -> bool:
    """Does the header name exactly these recipients, as far as a header can show?"""
    have = Counter(
        (s.type, s.args[0] if s.type.startswith("ssh-") and s.args else "")
        for s in stanzas
        if s.type in _RECIPIENT_STANZAS  # rage adds random "grease" stanzas: ignore them
    )
    want = Counter((k.kind if k.kind != "age" else "X25519", k.tag or "") for k in keys)
    return have == want


def rekey(
    rules_path: Path,
    identities: Sequence[Identity],
    *,
    dry_run: bool = False,
    everything: bool = False,
    use_nix: bool | None = None,
) -> list[RekeyItem]:
    """Re-encrypt the files whose recipients differ from secrets.nix: all or none."""
    rules = rl.load(rules_path, use_nix=use_nix)
    items: list[RekeyItem] = []
    todo: list[tuple[rl.Entry, Path, list[rcp.Recipient]]] = []
    for entry in rules.entries.values():
        path = rules.file_for(entry)
        keys = recipients_of(rules, entry)
        if not path.is_file():
            items.append(RekeyItem(entry.name, "missing file"))
            continue
        if everything or not _matches(header(path.read_bytes(), where=path), keys):
            todo.append((entry, path, keys))
        else:
            items.append(RekeyItem(entry.name, "unchanged"))
    if dry_run:
        return items + [RekeyItem(e.name, "would rekey") for e, _, _ in todo]
    # Decrypt everything first: one unreadable file means nothing is written.
    plain: list[tuple[Path, Secret, list[rcp.Recipient]]] = []
    failures: list[str] = []
    for entry, path, keys in todo:
        try:
            plain.append((path, decrypt(path.read_bytes(), identities, where=path), keys))
        except NixmigError as exc:
            failures.append(f"{entry.name} ({exc.what})")
    if failures:
        raise SecretsError(
            "cannot decrypt " + "; ".join(failures),
            where=rules.path,
            hint="pass --identity with a key that can read every file; nothing was re-encrypted",
        )
    staged = [(path, fsutil.stage(path, encrypt(value, keys))) for path, value, keys in plain]
    try:
        for path, tmp in staged:
            tmp.replace(path)
    finally:
        for _, tmp in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    if staged:
        fsutil.fsync_dir(rules.dir)
    return items + [RekeyItem(e.name, "rekeyed") for e, _, _ in todo]


# ---------------------------------------------------------------------- check


@dataclass(frozen=True)
class Problem:
    file: str
    problem: str


@dataclass
class CheckReport:
    checked: int = 0
    decrypted: int = 0
    problems: list[Problem] = field(default_factory=list)


def check(rules_path: Path, identities: Sequence[Identity], *, use_nix: bool | None = None) -> CheckReport:
    rules = rl.load(rules_path, use_nix=use_nix)
    report = CheckReport()
    listed = set()
    for entry in rules.entries.values():
        path = rules.file_for(entry)
        listed.add(path.resolve())
        report.checked += 1
        try:
            keys = recipients_of(rules, entry)
        except RecipientError as exc:
            report.problems.append(Problem(entry.name, exc.line()))
            continue
        if not path.is_file():
            report.problems.append(Problem(entry.name, "listed in secrets.nix but the file is missing"))
            continue
        data = path.read_bytes()
        try:
            stanzas = header(data, where=path)
        except SecretsError as exc:
            report.problems.append(Problem(entry.name, exc.what))
            continue
        if not _matches(stanzas, keys):
            report.problems.append(
                Problem(entry.name, "encrypted to other keys than secrets.nix lists: run nixmig secret rekey")
            )
        if identities:
            try:
                decrypt(data, identities, where=path)
                report.decrypted += 1
            except NixmigError as exc:
                report.problems.append(Problem(entry.name, exc.what))
    for path in sorted(rules.dir.rglob("*.age")):
        if path.resolve() not in listed:
            rel = path.relative_to(rules.dir).as_posix()
            report.problems.append(Problem(rel, "not listed in secrets.nix (agenix will not deploy it)"))
    return report


def show(rules_path: Path, name: str, identities: Sequence[Identity], *, use_nix: bool | None = None) -> Secret:
    ename = entry_name(name)
    rules = rl.load(rules_path, use_nix=use_nix)
    if ename not in rules.entries:
        raise SecretsError(
            f"no secret {ename} in secrets.nix",
            where=rules.path,
            hint="existing: " + (", ".join(sorted(rules.entries)) or "(none)"),
        )
    path = rules.file_for(rules.entries[ename])
    if not path.is_file():
        raise SecretsError("listed in secrets.nix but the file is missing", where=path)
    return decrypt(path.read_bytes(), identities, where=path)
