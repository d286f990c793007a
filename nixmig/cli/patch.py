"""`nixmig patch`: the Nix changes of a migration, as a diff; --write applies them, --check is for CI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from nixmig.cli.common import JsonOption, RepoOption, print_json
from nixmig.errors import NixmigError, UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from nixmig.nixsrc.patch import Plan


def register(app: typer.Typer) -> None:
    app.command("patch")(patch)


def patch(
    repo: Path | None = RepoOption,
    config: Path | None = typer.Option(
        None,
        "-c",
        "--config",
        help="Path to nixmig.toml (default: nixmig.toml in --repo, else in the current directory).",
        show_default=False,
    ),
    migration: str | None = typer.Option(
        None, "--migration", "-m", help="Migration name (default: every migration of nixmig.toml, one after another)."
    ),
    write: bool = typer.Option(False, "--write", help="Apply the changes (every file is parsed first; all or none)."),
    check: bool = typer.Option(
        False, "--check", help="Exit 1 when the tree is not patched yet or a credential is left (for CI)."
    ),
    explain: bool = typer.Option(False, "--explain", help="Say for each change which literal it replaces and why."),
    json_out: bool = JsonOption,
) -> None:
    """Patch the Nix modules so the service reads its database password from agenix at runtime.

    Prints the changes as a unified diff (the hardcoded password masked). Edits are
    byte-exact: nothing outside the edited spans changes, and a second run changes
    nothing. Literals in shapes nixmig has no template for are listed with the
    snippet to apply by hand.

    The verdict comes from a scan of the tree as it would be after the edits: every
    credential of this migration still there (the same password anywhere, a database
    credential in the migration's files) is listed with file:line and why, and
    --write / --check exit 1 while anything is left. "Nothing to change" (exit 0) only
    when the scan finds nothing left and the tree uses the agenix secret.

    Without --migration, every migration of nixmig.toml in turn (each planned against
    what the one before wrote); the exit is 1 if any of them calls for it.
    """
    from nixmig import config as cfgmod

    if write and check:
        raise UsageError("--write and --check exclude each other", hint="--check only reports; --write applies")
    if repo is not None and not repo.is_dir():
        raise UsageError("not a directory", where=repo, hint="pass --repo with the root of the Nix repository")
    cfg_path = config or ((repo or Path.cwd()) / cfgmod.DEFAULT_CONFIG)
    cfg = cfgmod.load(cfg_path)
    root = repo or cfg.repo
    names = _pick_migrations(cfg, migration)
    if len(names) == 1:
        one = names[0]
        ok, report = _patch_one(cfg, cfg_path, root, one, write=write, check=check, explain=explain, quiet=json_out)
        if json_out:
            print_json(report)
        if not ok:
            raise typer.Exit(1)
        return
    # several: each in turn, planned against what the one before wrote (and with the also it added). A
    # migration's verdict lists the others' literals as left until they are patched, so with --write the
    # verdict is a second pass over the tree all of them wrote (what is left then is really left).
    if write:
        import tempfile

        _refuse_missing_in_any(cfg, root, names)
        with tempfile.TemporaryDirectory(prefix="nixmig-patch-") as tmp:
            _write_all_migrations(cfg_path, root, Path(tmp), names, explain=explain, json_out=json_out)
        return
    failed, reports = _verdicts(cfg_path, root, names, check=check, write=False, explain=explain, json_out=json_out)
    if json_out:
        print_json({"migrations": reports, "verdict": reports, "clean": all(r["clean"] for r in reports)})
    if failed:
        raise typer.Exit(1)


def _verdicts(
    cfg_path: Path,
    root: Path,
    names: list[str],
    *,
    check: bool,
    write: bool,
    explain: bool,
    json_out: bool,
    carry: dict[str, set[bytes]] | None = None,
) -> tuple[bool, list[dict[str, Any]]]:
    """Each migration planned against the tree as it is (after the writes): (any exit 1 due, the reports)."""
    from nixmig import config as cfgmod

    failed, reports = False, []
    for name in names:
        if not json_out:
            typer.echo(f"== migration {name}" + (": what is left" if write else ""), err=True)
        ok, report = _patch_one(
            cfgmod.load(cfg_path),
            cfg_path,
            root,
            name,
            write=False,
            check=check or write,
            explain=explain,
            quiet=json_out,
            carry=carry,
        )
        failed |= not ok
        reports.append(report)
    return failed, reports


def _write_all_migrations(
    cfg_path: Path, root: Path, shadow: Path, names: list[str], *, explain: bool, json_out: bool
) -> None:
    """Several migrations' --write: all or nothing. Each is written in turn into a copy of the tree (its
    .nix files, nixmig.toml and the secrets' names), planned against what the one before wrote; then the
    verdict is a second pass over that copy (one migration's literals are not "left" by another). Only
    when nothing is left are the changed files written back to the repo; else nothing is written."""
    from nixmig import config as cfgmod
    from nixmig import fsutil
    from nixmig.nixsrc import patch as pt
    from nixmig.nixsrc import validate

    sources = pt.read_sources(root)
    for name, data in {**pt.read_texts(root, sources), **sources}.items():  # the SQL files .nix names too
        (shadow / name).parent.mkdir(parents=True, exist_ok=True)
        (shadow / name).write_bytes(data)
    shadow_cfg = shadow / cfg_path.name  # (its name is in the notes)
    shadow_cfg.write_bytes(cfg_path.read_bytes())
    secrets_dir = cfgmod.load(cfg_path).secrets_dir
    if (root / secrets_dir).is_dir():
        (shadow / secrets_dir).mkdir(parents=True, exist_ok=True)
        for age in (root / secrets_dir).glob("*.age"):
            (shadow / secrets_dir / age.name).touch()  # patch asks only whether it exists
    written: list[dict[str, Any]] = []
    carry: dict[str, set[bytes]] = {}
    for name in names:
        try:
            _, report = _patch_one(
                cfgmod.load(shadow_cfg),
                shadow_cfg,
                shadow,
                name,
                write=True,
                check=False,
                explain=False,
                quiet=True,
                partial=True,
                carry=carry,
            )
        except NixmigError:
            if not json_out:  # the error's line follows
                typer.echo(f"== migration {name}: refused, nothing written for any migration (below)", err=True)
            raise
        written.append(report)
    failed, reports = _verdicts(
        shadow_cfg, shadow, names, check=True, write=True, explain=explain, json_out=json_out, carry=carry
    )
    changed = {n: d for n, d in pt.read_sources(shadow).items() if sources.get(n) != d}
    if not failed:
        if shadow_cfg.read_bytes() != cfg_path.read_bytes():  # before the Nix files, as one migration does
            fsutil.write_atomic(cfg_path.resolve(), shadow_cfg.read_bytes())
        if changed:
            validate.write_all(root, changed)
    if not json_out:
        for name, report in zip(names, written, strict=True):
            did = f"{len(report['files'])} file(s), {len(report['edits'])} edits" if report["written"] else ""
            what = ("wrote " + did if not failed else f"would write {did}; nothing written") if did else "no edit"
            typer.echo(f"== migration {name}: {what}", err=True)
        if failed:
            typer.echo(
                f"nothing written: {sum(len(r['manual']) for r in reports)} item(s) left by hand (above) once every "
                "migration's edits are in; do them, then patch --write again",
                err=True,
            )
    else:
        for r in written:
            r["written"] = r["written"] and not failed
        print_json({"migrations": written, "verdict": reports, "clean": all(r["clean"] for r in reports)})
    if failed:
        raise typer.Exit(1)


def _refuse_missing_in_any(cfg: Any, root: Path, names: list[str]) -> None:
    """Before any of several migrations writes: every value any of them keeps is in its .age already, or
    nothing is written and one line names them all (a migration written, the next refused, was half a run)."""
    from nixmig.nixsrc import patch as pt

    sources = pt.read_sources(root)
    missing: list[tuple[str, str]] = []
    secrets_dir = ""
    for name in names:
        spec = pt.spec_for(cfg, name)
        secrets_dir = spec.secrets_dir
        plan = pt.plan(sources, spec, find_companions=True, texts=pt.read_texts(root, sources))
        missing += [m for m in _missing_kept_values(root, spec.secrets_dir, plan, sources) if m not in missing]
    _refuse_missing(secrets_dir, missing)


def _patch_one(
    cfg: Any,
    cfg_path: Path,
    root: Path,
    name: str,
    *,
    write: bool,
    check: bool,
    explain: bool,
    quiet: bool,
    partial: bool = False,
    carry: dict[str, set[bytes]] | None = None,
) -> tuple[bool, dict[str, Any]]:
    """Patch (or explain, or check) one migration: (no exit 1 due, its JSON report); ``quiet``: print nothing.

    --write writes nothing while anything is left by hand (a half-moved service does not deploy, or runs on
    a stale copy): ``partial`` writes anyway, for several migrations' shadow copy (_write_all_migrations).
    ``carry``: the values this migration's plan takes out, kept in memory by migration name (a write pass
    fills it, the verdict pass after it reads it: the tree it sees no longer holds the database's value)."""
    from nixmig.errors import ConfigError
    from nixmig.nixsrc import patch as pt
    from nixmig.nixsrc import validate

    spec = pt.spec_for(cfg, name)
    sources = pt.read_sources(root)
    taken = carry.get(name, set()) if carry is not None and not write else set()
    plan = pt.plan(sources, spec, find_companions=True, taken_values=taken, texts=pt.read_texts(root, sources))
    if carry is not None and write:
        # the values the edits take out of the tree: not a by-hand item's (masked in the diff only, still there
        # for the second pass to see; carried, its word, "blocky" another role's password, would read as ours)
        manual = {(m.file, m.line) for m in plan.manual}
        carry[name] = {
            sources[f][s:e]
            for f, s, e in plan.masks
            if f in sources
            and (f, sources[f].count(b"\n", 0, s) + 1) not in manual
            and any(ed.file == f and ed.start <= s and e <= ed.end for ed in plan.edits)
        }
    notes = list(plan.notes)
    age_file = root / spec.secrets_dir / f"{spec.secret}.age"
    if not age_file.exists():
        at = dict(_missing_kept_values(root, spec.secrets_dir, plan, sources)).get(spec.secret)  # its line
        # no line the plan took the value from: a by-hand item's, when one alone can be this migration's
        first, lines = _kept_line(plan, [n for n in (spec.role, spec.secret, spec.db_service, spec.container) if n])
        read = _file_read(plan)
        if spec.strategy != "move":
            how = "`"
        elif read is not None and at is None:  # `builtins.readFile ./pw`: the value is in that file (realcfg35/02)
            how = f" --stdin < {shlex.quote(read)}` (strategy move keeps the value: the file the .nix reads holds it)"
        else:
            how = f" --from {at or first or 'FILE:LINE'}` (strategy move keeps the value: " + (
                "it reads the value there, before --write removes it)"
                if at is not None
                else "the item above at that line, if it holds this migration's value; else the line that does)"
                if first is not None
                else f"the line of the item above that holds this migration's value: one of {', '.join(lines)})"
                if lines
                else "the line that hardcodes it; if no line holds it any more, `--stdin` with the value the "
                "service has now)"
            )
        notes.append(
            f"{age_file.relative_to(root)} does not exist yet: create it with `nixmig secret new {spec.secret}" + how
        )
    if plan.edits and not agenix_in(sources):
        notes.append(
            "nothing in the repo's .nix files imports agenix's NixOS module (agenix.nixosModules.default, "
            "ragenix, agenix-rekey, <agenix/modules/age.nix>): add it to the host's "
            "modules, or the deploy fails to evaluate (The option `age' does not exist)"
        )
    if plan.edits and (container := keyless_container(sources)) is not None:
        notes.append(
            f"{container} sets boot.isContainer = true, and no .nix file enables sshd or sets age.identityPaths: "
            "agenix decrypts with the host's SSH key (by default the keys services.openssh generates), so inside "
            "this container it has none; set age.identityPaths to a key the container has (a bind-mounted host "
            "key), or enable services.openssh, or the activation cannot decrypt the secret"
        )
    kept_at = dict(_missing_kept_values(root, spec.secrets_dir, plan, sources))
    for var, secret in (*spec.also, *plan.auto_also):  # companions keep their value: made from the line
        if not (root / spec.secrets_dir / f"{secret}.age").exists():
            notes.append(
                f"{spec.secrets_dir}/{secret}.age (also: {var}) does not exist yet: create it with its current "
                f"value, `nixmig secret new {secret} --from {kept_at.get(secret, 'FILE:LINE')}` (the line that "
                f"hardcodes {var}, before --write removes it), or --stdin"
            )
    try:
        toml = _with_companions(cfg_path, name, plan)
    except ConfigError as e:
        if write:
            raise
        toml = None  # shown, not written: --write refuses with this line
        notes.append(f"{e} ({e.hint})" if e.hint else str(e))
    for var, secret in plan.auto_also:
        if var.startswith("role:"):  # another role of an initialScript (nixsrc/shapes/initial_script.py)
            held = (
                f"role {var.removeprefix('role:')}'s password is set in the same services.postgresql.initialScript "
                "(another role's credential, in the Nix store)"
            )
        elif "." in var:  # an option that takes a file (nixsrc/shapes/option_companion.py)
            held = (
                f"{var} reads a credential of its own from the Nix store (the database's value, or another secret "
                "of the service this migration patches)"
            )
        else:
            held = (
                f"{var} is a credential of its own, hardcoded in a container this migration patches (the "
                "database's password under another name, root's, another token)"
            )
        notes.append(
            f"{held}: it moves onto its own secret {secret}, its value "
            f"kept (a rotation must not change it), and --write adds it to also in [migrations.{name}] of "
            f"{cfg_path.name} (verify checks it on the host); that value is public in the history: "
            + (
                "it is a key data is encrypted with (a service's secrets.*File): changing it loses that data, "
                "so it keeps its value; keep the repository's history private"
                if ".secrets." in var
                else "rotate it its own way"
            )
        )
    diff = plan.diff(sources) + (_toml_diff(cfg_path, root, toml) if toml is not None else "")
    checked = None
    withheld = write and bool(plan.manual) and bool(plan.edits) and not partial
    if withheld:
        notes.append(
            f"nothing written: {len(plan.manual)} item(s) nixmig has no edit for (above) would be left beside these "
            "edits, and half a move does not deploy safely; do them by hand (or name what nixmig.toml should take), "
            "then patch --write again"
        )
        validate.check_all(plan.results(sources), originals=sources)
    elif write and plan.edits:
        _refuse_losing_kept_values(root, spec.secrets_dir, plan, sources)
        if toml is not None:  # before the Nix files (checked first): a run killed between them plans them again
            from nixmig import fsutil

            validate.check_all(plan.results(sources), originals=sources)
            fsutil.write_atomic(cfg_path.resolve(), toml.encode())
        checked = validate.write_all(root, plan.results(sources), originals=sources)
    elif plan.edits:
        validate.check_all(plan.results(sources), originals=sources)  # refuse early: the diff shown is one that parses

    if not quiet:
        _render(plan, diff, notes, explain=explain, check=check, checked=checked, withheld=withheld)
    ok = not ((check and not plan.clean) or (write and plan.manual))
    return ok, _as_json(plan, name, diff, notes, written=checked is not None)


NOBODYS_PASSWORD = "The value is nobody's password"  # noqa: S105 - a phrase mysql_initial_script.py says
A_HASH = "a hash is not the password"  # a phrase Builder.verdict says of a password hash (realcfg25/05)


# scan's words for a credential that is no password (DESCRIPTION): alone, a line named, never a whole command
_NOT_PASSWORD_KINDS = (
    "hardcoded token or shared secret",
    "hardcoded API, encryption or private key",
    "private key block",
)
_PASSWORD_KINDS = ("holds a hardcoded password", "password in the userinfo of a URL", "this migration's password")


_ONE_STRING = "a .nix file that is one string"  # a phrase Builder.file_read_items says (realcfg35/07)
_READ_FROM = re.compile(r"reads (?:it|the password) from (\S+), a plain file of the repository")


def _file_read(plan: Any) -> str | None:
    """The one repository file a by-hand item says the password is read from at evaluation (``builtins.readFile
    ./pw``), repo-relative; None when there is none, or several."""
    reads = {m.group(1) for x in plan.manual if (m := _READ_FROM.search(x.what))}
    return reads.pop() if len(reads) == 1 else None


def _kept_line(plan: Any, names: Sequence[str] = ()) -> tuple[str | None, list[str]]:
    """For `secret new --from`: the one by-hand item's FILE:LINE that holds the migration's value, when
    one alone can (the only one, else the only one whose attribute names a database: nextcloud's
    dbpassFile beside its adminpassFile, realcfg20/22, whose first item was the admin's); else None
    and every candidate's FILE:LINE (the command is then not printed whole: a wrong line stores
    another credential as this one)."""
    from nixmig.nixsrc.leftover import names_database

    # an item whose value is nobody's password (SQL that never ran, a hash) holds nothing a secret should keep
    # (nor a read of a plain file: the value is in that file, not at the line; _file_read says it)
    items = [
        m
        for m in plan.manual
        if m.file.endswith((".nix", ".sql"))
        and m.line > 0
        and not any(p in m.what for p in (NOBODYS_PASSWORD, A_HASH))
        and not _READ_FROM.search(m.what)
    ]
    # a token or a key beside passwords is no candidate for a password's value (28/04: GITHUB_SECRET); alone,
    # it is one to name, never a whole command (realcfg35/02: a TURN secret's line would have been sealed)
    passwords = [m for m in items if any(p in m.what for p in _PASSWORD_KINDS)]
    items = passwords or items
    # a .nix file that is one string: scan of that file alone sees no secret, so --from names its column
    where = list(dict.fromkeys(f"{m.file}:{m.line}" + (f":{m.col}" if _ONE_STRING in m.what else "") for m in items))
    if len(where) == 1 and (passwords or not any(k in m.what for m in items for k in _NOT_PASSWORD_KINDS)):
        return where[0], where
    named = list(dict.fromkeys(f"{m.file}:{m.line}" for m in items if names_database(m.what.split(" ", 1)[0])))
    if len(named) != 1 and names:  # else the one whose attribute names the migration's service or role (telegraf's
        # outputs.influxdb.password beside grafana's adminPassword, realcfg27/05)
        from nixmig.nixsrc.patch import GENERIC_SECRET_WORDS
        from nixmig.nixsrc.scan import words

        ours = {w.lower() for n in names for w in words(n)} - GENERIC_SECRET_WORDS
        named = list(
            dict.fromkeys(
                f"{m.file}:{m.line}" for m in items if {w.lower() for w in words(m.what.split(" ", 1)[0])} & ours
            )
        )
    return (named[0] if len(named) == 1 else None), where


def _with_companions(cfg_path: Path, migration: str, plan: Plan) -> str | None:
    """nixmig.toml with the companions the plan found by itself added to the migration's also (None: none).
    Computed before anything is written: a layout nixmig cannot extend refuses the whole write."""
    if not plan.auto_also or not plan.edits:
        return None
    from nixmig.tomledit import add_also

    return add_also(cfg_path.read_text(encoding="utf-8"), migration, plan.auto_also, where=cfg_path)


def _toml_diff(cfg_path: Path, root: Path, new: str) -> str:
    import difflib

    try:
        shown = cfg_path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        shown = str(cfg_path)
    old = cfg_path.read_text(encoding="utf-8")
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{shown}", f"b/{shown}", n=2
    )
    return "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines)


def _missing_kept_values(root: Path, secrets_dir: str, plan: Plan, sources: dict[str, bytes]) -> list[tuple[str, str]]:
    """(secret, FILE:LINE) of each value the plan keeps (strategy move, also) whose .age is not there yet."""
    missing = [(name, _literal_at(places, plan, sources)) for name, places in plan.kept]
    return [(name, at) for name, at in missing if not (root / secrets_dir / f"{name}.age").exists()]


def _refuse_missing(secrets_dir: str, missing: list[tuple[str, str]]) -> None:
    from nixmig.errors import ConfigError

    if missing:
        name, at = missing[0]
        first = " && ".join(f"nixmig secret new {n} --from {a}" for n, a in missing)
        raise ConfigError(
            f"{secrets_dir}/{name}.age does not exist, and this write removes the line that holds the value it "
            f"keeps ({at}); nothing written",
            hint=f"take the value(s) first: {first}; then patch --write again",
        )


def _refuse_losing_kept_values(root: Path, secrets_dir: str, plan: Plan, sources: dict[str, bytes]) -> None:
    """A value that is kept (strategy move, also) must be in its .age before --write removes the line
    that holds it: after the write, `secret new --from` has nothing to read. Nothing is written."""
    _refuse_missing(secrets_dir, _missing_kept_values(root, secrets_dir, plan, sources))


def _literal_at(places: tuple[str, ...], plan: Plan, sources: dict[str, bytes]) -> str:
    """The first FILE:LINE among ``places`` where scan finds the literal, else the first place whose line holds
    one masked string (FILE:LINE:COL of it, which `secret new --from` takes as pointed at: a value that reads
    like a placeholder), else a masked literal of the same files. The plan lists the strings that hold the
    value first (a let's, an imported file's: a use's line holds a name), so another masked literal of the
    same file (a companion's: root's password) is never taken for it."""
    from nixmig.nixsrc.scan import scan_source

    nl = b"\n"
    for at in places:
        file, _, line = at.rpartition(":")
        if file in sources and any(str(f.line) == line for f in scan_source(sources[file], file).findings):
            return at
    for at in places:
        file, _, line = at.rpartition(":")
        here = [
            s for f, s, _ in plan.masks if f == file and f in sources and sources[f].count(nl, 0, s) + 1 == int(line)
        ]
        if len(here) == 1:
            return f"{at}:{here[0] - sources[file].rfind(nl, 0, here[0])}"
    files = {at.rpartition(":")[0] for at in places}
    masked = [f"{f}:{sources[f].count(nl, 0, start) + 1}" for f, start, _ in plan.masks if f in files and f in sources]
    for at in masked:
        file, _, line = at.rpartition(":")
        if any(str(f.line) == line for f in scan_source(sources[file], file).findings):
            return at
    return places[0]


def _pick_migrations(cfg: Any, name: str | None) -> list[str]:
    """--migration NAME, or every migration in the file's order (init drafts one per database)."""
    defined = ", ".join(cfg.migrations) or "(none)"
    if name is not None:
        if name not in cfg.migrations:
            raise UsageError(f"no migration {name!r}", where=cfg.path, hint="defined: " + defined)
        return [name]
    if not cfg.migrations:
        raise UsageError(
            "no migration defined",
            where=cfg.path,
            hint="add a [migrations.NAME] table by hand (README: nixmig.toml); where `nixmig init` could not draft "
            "one, its `# check: not drafted:` lines say why",
        )
    return [str(n) for n in cfg.migrations]


def _render(
    plan: Plan, diff: str, notes: list[str], *, explain: bool, check: bool, checked: str | None, withheld: bool = False
) -> None:
    if diff and not check:
        typer.echo(diff, nl=False)
    if explain and plan.edits:
        typer.echo("\nwhy:")
        for e in plan.edits:
            typer.echo(f"  {e.where}: {e.explanation}")
    for m in plan.manual:
        typer.echo(f"\nby hand: {m.where}: {m.what}" if m.file else f"\nby hand: {m.what}")
        if m.snippet:
            typer.echo("\n".join("    " + ln if ln else ln for ln in m.snippet.splitlines()))
    for n in notes:
        typer.echo(f"note: {n}", err=True)
    files = len(plan.files)
    if not plan.edits:
        summary = (
            "nothing to change: the tree is patched (a scan finds none of this migration's credentials left)"
            if not plan.manual
            else "nothing nixmig can change by itself"
        )
    elif checked is not None:
        summary = f"wrote {files} file{'s' * (files != 1)} ({len(plan.edits)} edits, each checked with {checked})"
    elif withheld:
        summary = f"nothing written: {len(plan.edits)} edits in {files} file{'s' * (files != 1)} held back"
    elif check:
        summary = (
            f"not patched: {len(plan.edits)} edits pending in {files} file{'s' * (files != 1)} (nixmig patch --write)"
        )
    else:
        summary = f"{len(plan.edits)} edits in {files} file{'s' * (files != 1)}; run with --write to apply them"
    if plan.manual:
        summary += f"; {len(plan.manual)} to do by hand (above)"
    typer.echo(summary, err=True)


def _as_json(plan: Plan, migration: str, diff: str, notes: list[str], *, written: bool) -> dict[str, Any]:
    return {
        "migration": migration,
        "clean": plan.clean,
        "written": written,
        "files": plan.files,
        "edits": [{"file": e.file, "line": e.line, "col": e.col, "explanation": e.explanation} for e in plan.edits],
        "manual": [
            {"file": m.file, "line": m.line, "col": m.col, "what": m.what, "snippet": m.snippet} for m in plan.manual
        ],
        "notes": notes,
        "also_added": dict(plan.auto_also),  # companions found by patch, added to nixmig.toml by --write
        "diff": diff,
    }


# agenix's NixOS module brought in: a flake's agenix/ragenix/agenix-rekey input's nixosModules, the
# channel's path, or a setting only the module has (age.identityPaths, agenix-rekey's age.rekey) in
# use. Not age.secrets: patch writes that itself, and a second run would take it for the import.
_AGENIX = re.compile(
    rb"\b(?:r?agenix|agenix-rekey)\b[^\n]*\bnixosModules?\b|/modules/age\.nix\b|\bage\.(?:identityPaths|rekey)\b"
)


_IS_CONTAINER = re.compile(rb"\bboot\.isContainer\s*=\s*(?:lib\.mkDefault\s+|lib\.mkForce\s+)?true\b")
_HAS_KEY = re.compile(rb"\bidentityPaths\b|\bopenssh\s*(?:\.enable\s*=\s*true|=\s*\{[^}]*\benable\s*=\s*true)")


def keyless_container(sources: Mapping[str, bytes]) -> str | None:
    """The .nix file that makes the host a container (``boot.isContainer = true``) when no file of the repo
    gives agenix a key to decrypt with (``age.identityPaths``, or sshd enabled: its host keys), else None."""
    nix = {name: src for name, src in sources.items() if name.endswith(".nix")}
    if any(_HAS_KEY.search(src) for src in nix.values()):
        return None
    return next((name for name, src in sorted(nix.items()) if _IS_CONTAINER.search(src)), None)


def agenix_in(sources: Mapping[str, bytes]) -> bool:
    """Whether the repo's Nix files bring in agenix's NixOS module (see _AGENIX)."""
    return any(name.endswith(".nix") and _AGENIX.search(src) for name, src in sources.items())
