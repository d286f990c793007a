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
from urllib.parse import unquote_to_bytes

from nixmig.errors import UsageError
from nixmig.sensitive import Secret


@dataclass(frozen=True)
class Taken:
    value: Secret
    where: str  # file:line:col
    attribute: str


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
    from nixmig.nixsrc.scan import Kind, scan_source

    name, line, col = parse_spec(spec)
    path = Path(name) if Path(name).is_absolute() else root / name
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--from: cannot read {name}: {exc.strerror}", where=path) from None
    result = scan_source(source, name)
    if result.problem is not None:
        raise UsageError(f"--from: {result.problem}", hint="fix the Nix syntax first")
    here = [f for f in result.findings if f.line == line and (col is None or f.col == col)]
    if not here and col is not None and (pointed := _string_at(source, name, line, col)) is not None:
        return pointed  # FILE:LINE:COL names the string itself: a value scan reads as a placeholder
    if not here:
        found = ", ".join(f"{f.line}:{f.col}" for f in result.findings) or "none"
        raise UsageError(
            f"--from {spec}: no hardcoded secret there",
            where=path,
            hint=f"`nixmig scan {name}` lists them (in this file: {found})",
        )
    if len(here) > 1:
        cols = ", ".join(f"{name}:{f.line}:{f.col} ({f.attr_path or 'a string'})" for f in here)
        raise UsageError(f"--from {spec}: several secrets on that line", hint=f"name one: {cols}")
    (f,) = here
    value = f.value
    if f.kind is Kind.URL_CREDENTIAL:
        value = Secret(unquote_to_bytes(value.reveal()))  # the userinfo is percent-encoded
    return Taken(value, f"{name}:{f.line}:{f.col}", f.attr_path)


def _string_at(source: bytes, name: str, line: int, col: int) -> Taken | None:
    """The string literal (no interpolation, not empty) whose value starts at ``line``:``col`` or whose
    quotes do: ``nixmig patch`` names a kept value there when scan does not see it as a secret (a value
    that reads like a placeholder, "CHANGE_ME_PASSWORD"). Only with a column: the user points at it."""
    from nixmig.nixsrc.model import decode_string, model

    fm = model(name, source)
    for lit in fm.lits:
        value = decode_string(lit.node)
        start = fm.line_col(lit.node.start_byte)
        if value and start[0] == line and col in (start[1], start[1] + 1):
            return Taken(Secret(value.encode()), f"{name}:{line}:{col}", ".".join(lit.path))
    return None
