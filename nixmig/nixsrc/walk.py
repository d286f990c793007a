"""Find the .nix files under some paths and scan them, in parallel when there are many.

Skips ``.git`` (and other VCS / direnv state directories) and every symlink:
``result`` links into the Nix store, and any other link, are never followed.
Values never leave a worker process: workers send back
:class:`~nixmig.nixsrc.scan.MaskedFinding` (length and a keyed digest, no value).
"""

from __future__ import annotations

import os
import posixpath
import re
import secrets
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from nixmig.errors import UsageError
from nixmig.nixsrc.scan import Finding, MaskedFinding, SyntaxProblem, disambiguate, scan_source, scan_sql, sql_paths

SKIP_DIRS: Final = frozenset({".git", ".hg", ".jj", ".svn", ".direnv"})
PARALLEL_THRESHOLD: Final = 200  # below this many files, a pool costs more than it saves
_BATCH: Final = 100


@dataclass
class ScanRun:
    findings: list[MaskedFinding] = field(default_factory=list)
    problems: list[SyntaxProblem] = field(default_factory=list)
    files_scanned: int = 0
    symlinks_skipped: int = 0

    @property
    def files_with_findings(self) -> int:
        return len({f.file for f in self.findings})


def _walk(root: str, unreadable: list[SyntaxProblem]) -> Iterator[tuple[str, bool]]:
    """(path, is_symlink) of the .nix files under ``root``; symlinks are reported, not followed."""
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            unreadable.append(SyntaxProblem(os.path.normpath(d), 1, 1, f"directory not scanned: {exc.strerror}"))
            continue
        subdirs: list[str] = []
        for e in entries:
            if e.is_symlink():  # result -> /nix/store/..., and every other link
                yield e.path, True
                continue
            if e.is_dir(follow_symlinks=False):
                if e.name not in SKIP_DIRS:
                    subdirs.append(e.path)
            elif e.name.endswith(".nix") and e.is_file(follow_symlinks=False):
                yield e.path, False
        stack.extend(reversed(subdirs))


def discover(paths: Sequence[str], unreadable: list[SyntaxProblem] | None = None) -> tuple[list[str], int]:
    """The .nix files to scan (in a stable order) and how many symlinks were skipped.

    A path given explicitly is scanned whatever its name; a missing path is a usage error.
    Directories that cannot be read are added to ``unreadable``.
    """
    files: list[str] = []
    skipped = 0
    seen: set[str] = set()
    for arg in paths:
        try:
            st = os.lstat(arg)
        except OSError as exc:
            raise UsageError(
                f"cannot scan: {exc.strerror or 'not found'}",
                where=arg,
                hint="pass existing files or directories",
            ) from None
        if stat.S_ISLNK(st.st_mode):
            skipped += 1
            continue
        found: Iterator[tuple[str, bool]]
        found = (
            _walk(arg, unreadable if unreadable is not None else [])
            if stat.S_ISDIR(st.st_mode)
            else iter([(arg, False)])
        )
        for path, is_link in found:
            if is_link:
                skipped += 1
                continue
            shown = os.path.normpath(path)
            if shown not in seen:
                seen.add(shown)
                files.append(shown)
    return files, skipped


# --------------------------------------------------------------------------- scanning

_KEY: bytes = b""


def _init_worker(key: bytes) -> None:
    global _KEY
    _KEY = key


def _scan_sql_file(path: str) -> list[Finding] | None:
    """A SQL file a Nix file names: its role passwords (None when it is missing, a link or unreadable)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        with open(path, "rb") as fh:
            return scan_sql(fh.read(), path)
    except OSError:
        return None


def _scan_one(path: str, key: bytes, sql_read: set[str]) -> tuple[list[MaskedFinding], SyntaxProblem | None]:
    """One .nix file's findings, and those of the SQL files it names (``sql_read``: the ones read)."""
    try:
        with open(path, "rb") as fh:
            source = fh.read()
    except OSError as exc:
        return [], SyntaxProblem(path, 1, 1, f"cannot read: {exc.strerror or exc}")
    try:
        result = scan_source(source, path)
        found = list(result.findings)
        for sql in sql_paths(source, path):  # an initialScript's ./init.sql goes into the store with it
            in_sql = _scan_sql_file(sql)
            if in_sql is not None:
                sql_read.add(sql)
                found += in_sql
    except Exception as exc:  # a scanner bug must not stop the other files
        return [], SyntaxProblem(path, 1, 1, f"not scanned: internal error {type(exc).__name__}")
    return [f.masked(key) for f in found], result.problem


def _scan_batch(batch: list[str]) -> tuple[list[MaskedFinding], list[SyntaxProblem], set[str]]:
    findings: list[MaskedFinding] = []
    problems: list[SyntaxProblem] = []
    sql_read: set[str] = set()
    for path in batch:
        fs, problem = _scan_one(path, _KEY, sql_read)
        findings.extend(fs)
        if problem is not None:
            problems.append(problem)
    return findings, problems, sql_read


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def scan_files(files: Sequence[str], *, jobs: int | None = None) -> ScanRun:
    """Scan ``files``; ``jobs`` processes when there are enough files to be worth it."""
    key = secrets.token_bytes(32)
    jobs = default_jobs() if jobs is None or jobs <= 0 else jobs
    run = ScanRun(files_scanned=len(files))
    batches = [list(files[i : i + _BATCH]) for i in range(0, len(files), _BATCH)]
    if jobs > 1 and len(files) >= PARALLEL_THRESHOLD:
        import multiprocessing

        # warm the parser and query once: forked workers inherit them
        scan_source(b"{ }", "warm-up.nix")
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(key,)) as pool:
            results = pool.map(_scan_batch, batches, chunksize=1)
    else:
        _init_worker(key)
        results = [_scan_batch(b) for b in batches]
    sql_files: set[str] = set()
    for findings, problems, sql_read in results:
        run.findings.extend(findings)
        run.problems.extend(problems)
        sql_files |= sql_read
    run.files_scanned += len(sql_files)  # the SQL files the .nix files name count as scanned
    importing, reading = _cross_file_candidates(files)
    run.findings += [f.masked(key) for f in _imported_reads(importing, files)]
    read = _file_reads(reading)
    run.findings += [f.masked(key) for f in read]
    run.files_scanned += len({f.file for f in read})
    # a SQL file two Nix files name is found twice: once
    run.findings = list({(f.file, f.line, f.col, f.rule): f for f in run.findings}.values())
    run.findings.sort(key=lambda f: (f.file, f.line, f.col))
    run.findings = disambiguate(run.findings)
    run.problems.sort(key=lambda p: (p.file, p.line, p.col))
    return run


_IMPORT_PATH = re.compile(rb"\bimport\s+\(?\s*(\.\.?/[\w./-]+)")
_FILE_READ_TRIGGER = re.compile(
    rb"\b(?:readFile|fileContents)\s+\(?\s*\.\.?/|=\s*import\s+\(?\s*\.\.?/[\w./-]+\.nix\s*\)?\s*;"
)


def _cross_file_candidates(files: Sequence[str]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The scanned files the cross-file passes need, each read once: those that import a relative path and
    interpolate (_imported_reads), and those that read a relative file at evaluation (_file_reads)."""
    importing: dict[str, bytes] = {}
    reading: dict[str, bytes] = {}
    for path in files:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            continue  # said by the scan itself
        if b"${" in data and _IMPORT_PATH.search(data):
            importing[path] = data
        if _FILE_READ_TRIGGER.search(data):
            reading[path] = data
    return importing, reading


def _imported_reads(importing: dict[str, bytes], files: Sequence[str]) -> list[Finding]:
    """The findings one file's scan cannot make: a plain .nix file's string whose key says nothing, read by
    another file where a password goes (``PASSWORD '${private.db}'``; nixsrc.patch.imported_password_findings).
    ``importing``: the scanned files that import a relative path and interpolate; they and the files they
    import are parsed again, nothing else."""
    if not importing:
        return []
    from nixmig.errors import NixSyntaxError
    from nixmig.nixsrc.model import model
    from nixmig.nixsrc.patch import imported_password_findings

    sources = dict(importing)
    wanted: set[str] = set()
    for path, data in importing.items():
        for t in _IMPORT_PATH.findall(data):
            target = posixpath.normpath(posixpath.join(posixpath.dirname(path), t.decode()))
            wanted.add(target if target.endswith(".nix") else posixpath.join(target, "default.nix"))
    for path in sorted(wanted - sources.keys()):
        try:
            with open(path, "rb") as fh:
                sources[path] = fh.read()
        except OSError:
            continue
    models = {}
    for path, data in sources.items():
        try:
            models[posixpath.normpath(path)] = model(posixpath.normpath(path), data)
        except NixSyntaxError:
            continue  # a problem the scan lists
    try:
        found = imported_password_findings(models)
    except Exception:  # a scanner bug must not stop the scan
        return []
    scanned = {posixpath.normpath(p) for p in files}  # a file outside the paths asked for is not reported
    return [f for name, fs in found.items() if name in scanned for f in fs]


def _file_reads(reading: dict[str, bytes]) -> list[Finding]:
    """A repository file that is not Nix read at evaluation into a password (``password = lib.fileContents
    ./password.key;``, ``POSTGRES_PASSWORD = builtins.readFile ./pw``): it goes into the Nix store with the
    configuration, so its text is a finding at line 1 of that file (realcfg26/10). Only files naming such a
    read (``reading``) are parsed again; the file read must be a regular file of at most 64 KiB holding one line."""
    if not reading:
        return []
    from nixmig.errors import NixSyntaxError
    from nixmig.nixsrc.model import model
    from nixmig.nixsrc.patch import file_read_passwords_of
    from nixmig.nixsrc.scan import Kind, file_project, suggest_name, words
    from nixmig.sensitive import Secret

    out: list[Finding] = []
    seen: set[str] = set()
    for path, data in reading.items():
        try:
            fm = model(posixpath.normpath(path), data)
            reads = file_read_passwords_of(fm, imports=True)
        except NixSyntaxError:
            reads = []  # a problem the scan lists
        except Exception:  # a scanner bug must not stop the scan (the file's own scan said nothing of it)
            reads = []
        for _line, _col, name, target in reads:
            if target in seen:
                continue
            seen.add(target)
            try:
                st = os.lstat(target)
                if not stat.S_ISREG(st.st_mode) or st.st_size > 65536:
                    continue
                with open(target, "rb") as fh:
                    text = fh.read()
            except OSError:
                continue
            line, col, start = 1, 1, 0
            if target.endswith(".nix"):  # `dbPassword = import ./pw.nix;`: a file that is one string (35/07)
                at = _string_file(target, text)
                if at is None:
                    continue  # an attrset, a function: read by key, or no password (imported_reads' shapes)
                line, col, start, value = at
            else:
                value = text.strip(b"\n")
            if not value or b"\n" in value or b"\0" in value:
                continue  # no one-line secret: a key file, a config, a binary
            out.append(
                Finding(
                    file=target,
                    line=line,
                    col=col,
                    end_line=line,
                    end_col=col + len(value.decode("utf-8", "replace")),
                    attr_path=name,
                    kind=Kind.PASSWORD,
                    value=Secret(value),
                    secret_name=suggest_name(
                        project=file_project(fm.name, fm.source), plain=[name], kind=Kind.PASSWORD,
                        name_words=words(name),
                    ),
                    rule="file-read",
                    start=start,
                    end=start + len(value),
                )
            )  # fmt: skip
    return out


def _string_file(path: str, data: bytes) -> tuple[int, int, int, bytes] | None:
    """(line, col, start, value) of the string a .nix file is, whole; None when it is anything else."""
    from nixmig.errors import NixSyntaxError
    from nixmig.nixsrc.model import decode_string, model
    from nixmig.nixsrc.patch import string_file

    try:
        fm = model(path, data)
    except NixSyntaxError:
        return None
    node = string_file(fm)
    value = decode_string(node) if node is not None else None
    if node is None or value is None or node.end_byte - node.start_byte != len(value.encode()) + 2:
        return None  # escapes: the bytes between the quotes are not the value (start/end would be wrong)
    line, col = fm.line_col(node.start_byte + 1)
    return line, col, node.start_byte + 1, value.encode()


def scan_paths(paths: Sequence[str], *, jobs: int | None = None) -> ScanRun:
    unreadable: list[SyntaxProblem] = []
    files, skipped = discover(paths, unreadable)
    run = scan_files(files, jobs=jobs)
    run.symlinks_skipped = skipped
    run.problems = sorted([*run.problems, *unreadable], key=lambda p: (p.file, p.line, p.col))
    return run
