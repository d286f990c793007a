"""`nixmig secret new NAME --from FILE:LINE[:COL]`: the value a Nix file hardcodes today, as a Secret.

For a secret nixmig cannot rotate (a MySQL/MariaDB password, an API or cluster token) the move
keeps its value: the literal that ``nixmig scan`` finds at FILE:LINE goes into the .age file and
nowhere else (never printed, never in argv), and ``nixmig patch`` then moves the service onto it.
The value has been public in the repository's history: it should be rotated when the service
allows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from nixmig.errors import UsageError
from nixmig.sensitive import Secret

if TYPE_CHECKING:
    from nixmig.nixsrc.model import FileModel


@dataclass(frozen=True)
class Taken:
    value: Secret
    where: str  # file:line:col
    attribute: str
    whole_text: bool = False  # the text of a file a *File option has written into the store (_store_file_text)


def parse_spec(spec: str) -> tuple[str, int, int | None]:
    """``FILE:LINE`` or ``FILE:LINE:COL`` (1-based)."""
    parts = spec.rsplit(":", 2)
    try:
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            return parts[0], int(parts[1]), int(parts[2])
        file, line = spec.rsplit(":", 1)
        return file, int(line), None
    except ValueError:
        raise UsageError(
            f"--from {spec!r}: expected FILE:LINE or FILE:LINE:COL", hint="as `nixmig scan` prints a location"
        ) from None


def take(spec: str, root: Path) -> Taken:
    """The hardcoded secret scan finds at ``spec`` (relative to ``root``, or absolute)."""
    from nixmig.nixsrc.model import model
    from nixmig.nixsrc.scan import Kind, scan_source, scan_sql

    name, line, col = parse_spec(spec)
    path = Path(name) if Path(name).is_absolute() else root / name
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--from: cannot read {name}: {exc.strerror}", where=path) from None
    sql = name.endswith(".sql")
    if sql:  # an initialScript's repository SQL file: its PASSWORD / IDENTIFIED BY clauses
        findings = scan_sql(source, name)
    else:
        result = scan_source(source, name)
        if result.problem is not None:
            raise UsageError(f"--from: {result.problem}", hint="fix the Nix syntax first")
        findings = list(result.findings)
    here = [f for f in findings if f.line == line and (col is None or f.col == col)]
    if not here and not sql and col is not None and (pointed := _string_at(source, name, line, col)) is not None:
        return pointed  # FILE:LINE:COL names the string itself: a value scan reads as a placeholder
    if not here:
        found = ", ".join(f"{f.line}:{f.col}" for f in findings) or "none"
        raise UsageError(
            f"--from {spec}: no hardcoded secret there",
            where=path,
            hint=f"`nixmig scan {name}` lists them (in this file: {found})",
        )
    if len(here) > 1:
        cols = ", ".join(f"{name}:{f.line}:{f.col} ({f.attr_path or 'a string'})" for f in here)
        raise UsageError(f"--from {spec}: several secrets on that line", hint=f"name one: {cols}")
    (f,) = here
    whole = _store_file_text(model(name, source), f.start) if f.start >= 0 and not sql else None
    if whole is not None and whole.value.reveal() != f.value.reveal():
        return whole  # more than the password: the file's whole text (else the password, as before)
    value = f.value
    if f.kind is Kind.URL_CREDENTIAL:
        value = Secret(unquote_to_bytes(value.reveal()))  # the userinfo is percent-encoded
    return Taken(value, f"{name}:{f.line}:{f.col}", f.attr_path)


def _string_at(source: bytes, name: str, line: int, col: int) -> Taken | None:
    """The string literal (no interpolation, not empty) whose value starts at ``line``:``col`` or whose
    quotes do: ``nixmig patch`` names a kept value there when scan does not see it as a secret (a value
    that reads like a placeholder, "CHANGE_ME_PASSWORD"). Only with a column: the user points at it."""
    from nixmig.nixsrc.indented import decode_any
    from nixmig.nixsrc.model import model
    from nixmig.nixsrc.parse import descendants

    fm = model(name, source)
    for node in descendants(fm.root):  # any string: a writeText's text is bound to no attribute
        if node.type not in ("string_expression", "indented_string_expression"):
            continue
        value = decode_any(node)  # an indented string too: a whole text kept as the secret
        start = fm.line_col(node.start_byte)
        quote = 2 if node.type == "indented_string_expression" else 1
        if value and start[0] == line and col in (start[1], start[1] + quote):
            whole = _store_file_text(fm, node.start_byte)
            if whole is not None:
                return whole
            binds = [b for b in fm.binds if b.value.start_byte <= node.start_byte < b.value.end_byte]
            attr = min(binds, key=lambda b: b.value.end_byte - b.value.start_byte).path if binds else ()
            return Taken(Secret(value.encode()), f"{name}:{line}:{col}", ".".join(attr))
    return None


def _store_file_text(fm: FileModel, byte: int) -> Taken | None:
    """A secret inside the text of a file written into the store for a ``*File`` option (``adminCredentialsFile
    = pkgs.writeText "x" ''ADMIN_USERNAME=...\nADMIN_PASSWORD=...''``): the option reads the whole file, so the
    secret is the whole text, as Nix evaluates it (``nixmig patch`` points the option at the agenix file)."""
    from nixmig.nixsrc.indented import decode_any
    from nixmig.nixsrc.patch import written_text

    if byte < 0:
        return None
    name = fm.name
    for b in fm.binds:
        if not (b.path and b.path[-1].endswith("File") and b.value.start_byte <= byte < b.value.end_byte):
            continue
        text = written_text(b.value, plain=False)
        if text is None or not text.start_byte <= byte < text.end_byte:
            continue
        value = decode_any(text)
        if value is None:
            return None  # interpolated: the value is not all here
        line, col = fm.line_col(text.start_byte)
        whole = "\n" in value.strip("\n")  # several lines: say that all of them are taken
        return Taken(Secret(value.encode()), f"{name}:{line}:{col}", ".".join(b.path), whole_text=whole)
    return None
