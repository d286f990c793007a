"""Check every file nixmig is about to write, all of them before writing any.

Each file is parsed with tree-sitter-nix and, when it is installed, with
``nix-instantiate --parse`` (the parser that matters at deploy time; it also
rejects what tree-sitter lets through, such as an attribute defined twice). If
one file fails, :func:`write_all` writes nothing. Then every file is staged
beside its target (temp file, fsync) and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nixmig.errors import NixSyntaxError
from nixmig.fsutil import fsync_dir, stage
from nixmig.nixsrc.parse import first_error, parse, position

NIX = "nix-instantiate"
_POS = re.compile(r"at «stdin»:(\d+):(\d+)")


class WouldNotParse(NixSyntaxError):
    """A file nixmig was about to write does not parse: nothing was written."""


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    col: int
    message: str


def nix_available() -> bool:
    return shutil.which(NIX) is not None


def problem(name: str, data: bytes, *, use_nix: bool | None = None) -> Problem | None:
    """The first parse error in ``data``: nix-instantiate --parse when installed, then tree-sitter-nix."""
    if use_nix is None:
        use_nix = nix_available()
    return _problem(name, data, _nix_parse({name: data})[name] if use_nix else None)


def _nix_parse(files: Mapping[str, bytes]) -> dict[str, tuple[int, bytes]]:
    """(exit code, stderr) of ``nix-instantiate --parse`` for each file. The processes run side
    by side, up to _SIDE_BY_SIDE at once: each takes ~40 ms to start, most of a deploy's
    patching when they ran one after the other (two files per deploy on the worked example)."""
    out: dict[str, tuple[int, bytes]] = {}
    names = list(files)
    for i in range(0, len(names), _SIDE_BY_SIDE):
        procs = {
            name: subprocess.Popen(
                [NIX, "--parse", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            for name in names[i : i + _SIDE_BY_SIDE]
        }
        try:
            for name, proc in procs.items():
                _, stderr = proc.communicate(files[name], timeout=60)
                out[name] = (proc.returncode, stderr)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return out


_SIDE_BY_SIDE = 8


def _problem(name: str, data: bytes, nix: tuple[int, bytes] | None) -> Problem | None:
    """The first parse error: ``nix``'s (exit code and stderr of nix-instantiate --parse; None:
    not installed), then tree-sitter-nix's."""
    if nix is not None and nix[0] != 0:
        code, raw = nix
        stderr = raw.decode("utf-8", "replace")
        m = _POS.search(stderr)
        first = next((ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("error:")), "")
        lines = stderr.strip().splitlines()
        message = first.removeprefix("error:").strip() or (lines[0] if lines else f"exit {code}")
        message = message.replace("(string):", f"{name}:")  # nix read it from stdin
        line, col = (int(m.group(1)), int(m.group(2))) if m else (1, 1)
        return Problem(name, line, col, f"{message} ({NIX} --parse)")
    # nixmig itself reads the files back with tree-sitter (the next run, nixmig scan)
    err = first_error(parse(data))
    if err is not None:
        pos = position(err)
        what = f"missing {err.type!r}" if err.is_missing else "syntax error"
        return Problem(name, pos.line, pos.col, f"{what} (tree-sitter-nix)")
    return None


def check_all(
    files: Mapping[str, bytes], *, use_nix: bool | None = None, originals: Mapping[str, bytes] | None = None
) -> str:
    """Parse every file; raise WouldNotParse naming the first failure. Returns what checked them.
    ``originals``: the files as read; a failure of a file that did not parse as read either is said
    as that (its line in the original), not blamed on the edit."""
    if use_nix is None:
        use_nix = nix_available()
    nix = _nix_parse(files) if use_nix else {}
    problems = [p for name, data in sorted(files.items()) if (p := _problem(name, data, nix.get(name)))]
    if problems:
        p = problems[0]
        before = originals.get(p.file) if originals is not None else None
        if before is not None:
            was = _problem(p.file, before, _nix_parse({p.file: before}).get(p.file) if use_nix else None)
            if was is not None:
                raise WouldNotParse(
                    f"{p.file} does not parse as it is: {was.message}",
                    where=f"{was.file}:{was.line}:{was.col}",
                    hint="nothing was written; fix that file (nixmig edits files that parse), then run patch again",
                )
        more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
        raise WouldNotParse(
            f"the patched file would not parse: {p.message}{more}",
            where=f"{p.file}:{p.line}:{p.col}",
            hint="nothing was written; apply the change by hand (see --explain) and report the layout",
        )
    return f"{NIX} --parse" if use_nix else "tree-sitter-nix (nix-instantiate not found)"


def write_all(
    root: Path,
    files: Mapping[str, bytes],
    *,
    use_nix: bool | None = None,
    checked: str | None = None,
    originals: Mapping[str, bytes] | None = None,
) -> str:
    """Check every file, then write them all: staged first, renamed last; nothing written on a failed check.
    ``checked``: what check_all returned for exactly these bytes already (a patch parsed ahead): not again."""
    if checked is None:
        checked = check_all(files, use_nix=use_nix, originals=originals)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, data in sorted(files.items()):
            target = root / name
            if target.is_symlink():  # write where the link points, as it was read, and keep the link
                target = target.resolve()
            staged.append((stage(target, data), target))
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    for tmp, target in staged:
        tmp.replace(target)
    for d in sorted({t.parent for _, t in staged}):
        fsync_dir(d)
    return checked
