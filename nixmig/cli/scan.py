"""`nixmig scan [PATH...]`: hardcoded secrets in .nix files, as a table, JSON or SARIF 2.1.0.

Values are never printed, in any format: findings carry a mask and a length only.
tree-sitter and rich are imported inside the command, so `nixmig --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import typer

from nixmig import __version__
from nixmig.cli.common import JsonOption, print_json
from nixmig.errors import UsageError

if TYPE_CHECKING:
    from nixmig.nixsrc.scan import Kind, MaskedFinding, SyntaxProblem
    from nixmig.nixsrc.walk import ScanRun


class Format(StrEnum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"


SARIF_SCHEMA: Final = "https://json.schemastore.org/sarif-2.1.0.json"
RULE_IDS: Final = {
    "password": "nix/hardcoded-password",
    "url-credential": "nix/url-credential",
    "token": "nix/hardcoded-token",
    "key": "nix/hardcoded-key",
    "private-key": "nix/private-key",
    "hash": "nix/password-hash",
}


def register(app: typer.Typer) -> None:
    @app.command("scan")
    def scan(
        paths: list[str] | None = typer.Argument(
            None, help="Files or directories to scan (default: the current directory).", show_default=False
        ),
        fmt: Format = typer.Option(
            Format.TEXT, "--format", "-f", case_sensitive=False, help="text (a table), json, or sarif (2.1.0)."
        ),
        json_out: bool = JsonOption,
        fail_on_findings: bool = typer.Option(
            False, "--fail-on-findings", help="Exit 1 when anything is found (for CI and pre-commit)."
        ),
        jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes (0: one per CPU)."),
    ) -> None:
        """Find hardcoded secrets in .nix files: passwords, URLs with credentials, tokens,
        keys, private key blocks and password hashes (low severity).

        Walks the given paths for *.nix files (never following symlinks such as `result`,
        skipping .git). Each finding shows file:line:col, the attribute path, the kind, the
        value masked (its length only) and a suggested agenix secret name. Files that do not
        parse are reported on stderr, one line each, and counted.

        Exit status: 0, or 1 with --fail-on-findings when there are findings; 2 on usage errors.
        """
        if json_out:
            if fmt not in (Format.TEXT, Format.JSON):
                raise UsageError("--json and --format sarif contradict each other", hint="pass one of them")
            fmt = Format.JSON
        from nixmig.nixsrc.walk import scan_paths

        run = scan_paths(paths or ["."], jobs=jobs or None)
        for problem in run.problems:
            typer.echo(f"nixmig: {problem}", err=True)
        match fmt:
            case Format.TEXT:
                render_text(run)
            case Format.JSON:
                _print_compact(to_json(run))
            case Format.SARIF:
                print_json(to_sarif(run, Path.cwd()))
        if fail_on_findings and run.findings:
            raise typer.Exit(1)


# --------------------------------------------------------------------------- renderers


def _print_compact(data: dict[str, Any]) -> None:
    """JSON on one line per finding: valid JSON, readable, and json's fast C encoder."""
    import json

    head = {k: v for k, v in data.items() if k not in ("findings", "problems")}
    out = sys.stdout
    out.write(json.dumps(head)[:-1])
    for key in ("findings", "problems"):
        items = data[key]
        out.write(f', "{key}": [')
        out.write(",".join("\n  " + json.dumps(item) for item in items))
        out.write("\n]" if items else "]")
    out.write("}\n")


def _masked(length: int) -> str:
    from nixmig.sensitive import MASK

    return f"{MASK} ({length} char{'s' if length != 1 else ''})"


def _summary(run: ScanRun) -> str:
    n = len(run.findings)
    files = f"{run.files_scanned} file{'s' if run.files_scanned != 1 else ''}"
    if n:
        parts = [f"{n} finding{'s' if n != 1 else ''} in {run.files_with_findings} of {files}"]
    else:
        parts = [f"No hardcoded secrets in {files}"]
    if run.problems:
        parts.append(f"{len(run.problems)} not parsed")
    if run.symlinks_skipped:
        parts.append(f"{run.symlinks_skipped} symlink{'s' if run.symlinks_skipped != 1 else ''} skipped")
    return ", ".join(parts)


def render_text(run: ScanRun) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console.width = max(console.width, 240)
    if run.findings:
        table = Table(show_lines=False, header_style="bold")
        table.add_column("Location", no_wrap=True)
        table.add_column("Kind", no_wrap=True)
        table.add_column("Attribute", overflow="fold")
        table.add_column("Value", no_wrap=True)
        table.add_column("Suggested secret", no_wrap=True)
        for f in run.findings:
            kind = f"{f.kind} (low)" if f.severity == "low" else str(f.kind)
            table.add_row(f.location, kind, f.attr_path or "-", _masked(f.length), f.secret_name)
        console.print(table)
    console.print(_summary(run))


def to_json(run: ScanRun) -> dict[str, Any]:
    return {
        "files_scanned": run.files_scanned,
        "files_with_findings": run.files_with_findings,
        "symlinks_skipped": run.symlinks_skipped,
        "findings": [f.to_dict() for f in run.findings],
        "problems": [p.to_dict() for p in run.problems],
    }


def _artifact(file: str, root: Path) -> dict[str, str]:
    """A relative URI under %SRCROOT% (the current directory) when possible."""
    from urllib.parse import quote

    path = Path(file)
    absolute = Path(os.path.normpath(path if path.is_absolute() else root / path))
    try:
        rel = absolute.relative_to(root)
    except ValueError:
        return {"uri": absolute.as_uri()}
    return {"uri": quote(rel.as_posix()), "uriBaseId": "%SRCROOT%"}


def _rules() -> list[dict[str, Any]]:
    from nixmig.nixsrc.scan import DESCRIPTION, SEVERITY, Kind, Severity

    rules = []
    for kind in Kind:
        high = SEVERITY[kind] is Severity.HIGH
        rules.append(
            {
                "id": RULE_IDS[kind.value],
                "name": "".join(w.capitalize() for w in RULE_IDS[kind.value].split("/")[1].split("-")),
                "shortDescription": {"text": DESCRIPTION[kind].split(" (")[0].capitalize()},
                "fullDescription": {"text": f"A {DESCRIPTION[kind]} in a Nix file."},
                "help": {
                    "text": "Move the value into an agenix secret and read it at runtime "
                    "(a *File / env_file option pointing at config.age.secrets.NAME.path), "
                    "then rotate it: it is in the git history and the Nix store.",
                },
                "defaultConfiguration": {"level": "error" if high else "note"},
                "properties": {
                    "tags": ["security", "secrets", "nix"],
                    "precision": "high",
                    "security-severity": "8.0" if high else "3.0",
                },
            }
        )
    return rules


def _kind_index(kind: Kind) -> int:
    from nixmig.nixsrc.scan import Kind

    return list(Kind).index(kind)


def _region(line: int, col: int, end_line: int | None = None, end_col: int | None = None) -> dict[str, int]:
    region = {"startLine": line, "startColumn": col}
    if end_line is not None and end_col is not None:
        region |= {"endLine": end_line, "endColumn": end_col}
    return region


def _result(f: MaskedFinding, root: Path) -> dict[str, Any]:
    import hashlib

    where = f" in {f.attr_path}" if f.attr_path else ""
    fingerprint = hashlib.sha256(f"{f.file}\0{f.attr_path}\0{f.kind}".encode()).hexdigest()[:32]
    return {
        "ruleId": RULE_IDS[f.kind.value],
        "ruleIndex": _kind_index(f.kind),
        "level": "error" if f.severity == "high" else "note",
        "message": {
            "text": f"Hardcoded {f.kind}{where} ({f.length} characters, value not shown). "
            f"Move it to an agenix secret, for example `{f.secret_name}`."
        },
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": _artifact(f.file, root),
                    "region": _region(f.line, f.col, f.end_line, f.end_col),
                }
            }
        ],
        "partialFingerprints": {"nixmigFinding/v1": fingerprint},
        "properties": {"attribute": f.attr_path, "suggestedSecret": f.secret_name, "valueLength": f.length},
    }


def _notification(p: SyntaxProblem, root: Path) -> dict[str, Any]:
    return {
        "level": "error",
        "message": {"text": p.message},
        "locations": [
            {"physicalLocation": {"artifactLocation": _artifact(p.file, root), "region": _region(p.line, p.col)}}
        ],
    }


def to_sarif(run: ScanRun, root: Path) -> dict[str, Any]:
    """SARIF 2.1.0 that GitHub code scanning accepts: one rule per kind, relative URIs."""
    root = Path(os.path.normpath(root.absolute()))
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "nixmig",
                        "semanticVersion": __version__,
                        "version": __version__,
                        "rules": _rules(),
                    }
                },
                "originalUriBaseIds": {"%SRCROOT%": {"uri": root.as_uri().rstrip("/") + "/"}},
                "columnKind": "unicodeCodePoints",
                "results": [_result(f, root) for f in run.findings],
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "toolExecutionNotifications": [_notification(p, root) for p in run.problems],
                    }
                ],
            }
        ],
    }
