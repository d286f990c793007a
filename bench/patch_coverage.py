"""How often `nixmig patch` is right: patched / refused / wrong over a corpus of case repos.

A corpus is a directory of cases; a case is a directory holding a small Nix repo with its
``nixmig.toml`` (written as a user would) and a ``case.json``::

    {"source": "owner/repo path@commit", "shape": "short label",
     "literals": ["the hardcoded password as it appears in the .nix files"], "note": "..."}

A literal may carry context (``"PASSWORD 'pw'"``, ``"user:pw@"``) when the bare value also
appears where it is no password (a role name, another secret). An optional ``"expect"``
(``patched`` | ``refused``, as in tests/fixtures/shapes) is compared with the outcome. A shape
with nothing hardcoded left (``"no_literal": true``, an empty ``literals``) is measured without
the literal checks; any other case without a literal is invalid.

Each case is copied to a temp dir, made a git repo with one commit, and the real CLI runs
there as a user would run it: ``patch --explain``, ``patch --write``, ``patch --write`` again,
``patch --check``, ``scan --json``. When the write refuses because a kept value (strategy move,
``also``) has no .age yet, the bench runs the ``nixmig secret new NAME --from FILE:LINE`` commands
the refusal names (that refusal must have written nothing) and writes again. Outcome:

- patched: the write exits 0, no literal is left in any .nix or .sql file of the tree (a raw byte
  search, not nixmig's scan), every changed .nix parses with ``nix-instantiate --parse``,
  the second write changes nothing and ``--check`` exits 0;
- refused: the write exits 1 (or 2, a usage error) and nothing else is wrong; the first
  line of its stderr is recorded;
- wrong: success claimed (exit 0) with a literal left, or a changed file that does not
  parse, or a second write that changes something, or ``--check`` disagreeing with a
  successful write, or a traceback (or the CLI's "internal error" line), a timeout, or an
  exit code other than 0/1/2 in any step, or a changed file that no longer evaluates (below).

Evaluation (no nixpkgs here): every changed .nix file, and its original, is evaluated with
``nix-instantiate --eval`` through bench/nixstubs.nix: stub ``lib``/``pkgs``/``config`` (the
file's own definitions through mkIf/mkMerge over stubs; oci-containers.backend = the case's,
docker unless a file sets podman; age.secrets.<x>.path = /run/agenix/<x> for the secrets any
module of the case declares or secrets.nix has a rule for), forcing the attribute names of the result, of
systemd.services, age.secrets and virtualisation.oci-containers.containers, then every value.
The original is the control: eval is ``n/a`` when the original does not evaluate with the stubs
(a stub gap is never "wrong"), ``failed`` (the case is wrong) when the patched file stops short of
a level its original reaches, ``ok`` otherwise ("names only" when the original reaches only the
names). A file patch created has no control: failed only when not even its names evaluate.

Literals are never printed: only the file:line where one is left.

    .venv/bin/python bench/patch_coverage.py --corpus /path/to/cases [--json]
        [--only-from LIST] [--skip-from LIST]

Exit status: 0 when no case is wrong, 1 otherwise, 2 on bad arguments. No timing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT / "tests" / "fixtures" / "shapes"
STUBS = Path(__file__).resolve().parent / "nixstubs.nix"
STEP_TIMEOUT = 120.0
EVAL_TIMEOUT = 60.0
GIT = (
    "git",
    "-c",
    "user.name=patch-coverage",
    "-c",
    "user.email=patch-coverage@localhost",
    "-c",
    "commit.gpgsign=false",
)


def nixmig_command() -> list[str]:
    """The installed entry point beside this interpreter (the .venv's), else `python -m nixmig`."""
    entry = Path(sys.executable).parent / "nixmig"
    if entry.is_file() and os.access(entry, os.X_OK):
        return [str(entry)]
    return [sys.executable, "-m", "nixmig"]


@dataclass
class Step:
    args: list[str]
    rc: int | None  # None: timed out
    stdout: str
    stderr: str

    @property
    def first_err(self) -> str:
        for line in self.stderr.splitlines():
            if line.strip() and not line.startswith("note:"):
                return line.strip()
        return self.stderr.strip().splitlines()[0] if self.stderr.strip() else ""

    @property
    def traceback(self) -> bool:
        # the CLI turns a bug into one line, "nixmig: internal error: ..." (exit 1, like a refusal): a traceback
        marks = ("Traceback (most recent call last)", "nixmig: internal error:")
        return any(m in self.stderr or m in self.stdout for m in marks)


@dataclass
class Result:
    case: str
    shape: str
    outcome: str  # patched | refused | wrong | invalid
    reason: str
    problems: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    changed_files: list[str] = field(default_factory=list)
    literals_left: list[str] = field(default_factory=list)
    scan_findings_before: int | None = None
    scan_findings_after: int | None = None
    first_stderr: str = ""
    by_hand: list[str] = field(default_factory=list)
    source: str = ""
    expect: str = ""  # case.json's "expect" (patched | refused), when the case says
    eval: str = ""  # ok | n/a | failed | none (no changed .nix file to evaluate): see eval_changed
    eval_detail: str = ""


SRC: Path | None = None  # --src: run the nixmig package found there instead of the installed one


# patch --write refuses to remove the only copy of a kept value before its .age exists, naming the commands
TAKE_FIRST = re.compile(r"take the value\(s\) first: ((?:nixmig secret new \S+ --from \S+(?: && )?)+); then")


def run(cmd: Sequence[str], cwd: Path) -> Step:
    env = dict(os.environ, NO_COLOR="1", TERM="dumb", COLUMNS="200")
    if SRC is not None:
        env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("TYPER_USE_RICH", None)
    try:
        p = subprocess.run(
            list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return Step(list(cmd), None, out, err)
    return Step(list(cmd), p.returncode, p.stdout, p.stderr)


def nix_files(tree: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for p in sorted(tree.rglob("*.nix")):
        rel = p.relative_to(tree)
        if ".git" in rel.parts or p.is_symlink() or not p.is_file():
            continue
        out[rel.as_posix()] = p.read_bytes()
    return out


def searched_files(tree: Path) -> dict[str, bytes]:
    """Where a literal left counts: the .nix files and the SQL files beside them (an initialScript's
    ``./init.sql`` goes into the Nix store too)."""
    out = nix_files(tree)
    for p in sorted(tree.rglob("*.sql")):
        rel = p.relative_to(tree)
        if ".git" not in rel.parts and not p.is_symlink() and p.is_file():
            out[rel.as_posix()] = p.read_bytes()
    return out


def all_files(tree: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for p in sorted(tree.rglob("*")):
        rel = p.relative_to(tree)
        if ".git" in rel.parts or p.is_symlink() or not p.is_file():
            continue
        out[rel.as_posix()] = p.read_bytes()
    return out


def literals_left(files: dict[str, bytes], literals: Sequence[str]) -> list[str]:
    """file:line (and the literal's index in case.json) of every literal still present."""
    left: list[str] = []
    for i, lit in enumerate(literals):
        needle = lit.encode()
        for name, data in files.items():
            start = 0
            while (at := data.find(needle, start)) >= 0:
                line = data.count(b"\n", 0, at) + 1
                left.append(f"{name}:{line} (literal #{i + 1})")
                start = at + 1
    return left


def parse_error(path: Path) -> str | None:
    p = subprocess.run(
        ["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    if p.returncode == 0:
        return None
    lines = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("warning:")]
    return (lines or ["(no message)"])[0]


# ---- evaluation with stub module arguments (bench/nixstubs.nix) --------------------------------

IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_'-]*")
QUOTED = re.compile(rb'"([^"\\$\n]{1,80})"')
AGE_RULE = re.compile(rb'"([^"/\\$\n]+)\.age"')
OCI_BACKEND = re.compile(rb'oci-containers\.backend\s*=\s*"(docker|podman)"')
LEVELS = ("none", "names", "values")  # how far a file evaluates: nothing, the attribute names, every value


@dataclass(frozen=True)
class FileEval:
    level: int  # index in LEVELS
    error: str  # the nix error's first line at the first level that failed ("" when every level passed)


def stub_names(*texts: bytes) -> list[str]:
    """Every identifier and short quoted string of the texts: the attributes the `stub` value has."""
    out: set[str] = {"docker", "podman"}
    for text in texts:
        # separate passes: a quoted match may span the text between two strings
        out.update(m.group(0).decode(errors="replace") for m in IDENT.finditer(text))
        out.update(m.group(1).decode(errors="replace") for m in QUOTED.finditer(text))
    return sorted(out)


AGE_DECL = re.compile(rb'\bage\.secrets\.(?:"([^"$]+)"|([A-Za-z_][\w\'-]*))\s*=')


def stub_context(*trees: dict[str, bytes]) -> tuple[str, list[str]]:
    """The case's oci-containers backend (docker unless a file sets podman) and its agenix secret names
    (the rules of secrets.nix, the .age files, and each ``age.secrets.NAME = ...`` of any of its modules),
    from the original and patched trees alike."""
    backend, secrets = "docker", set()
    for files in trees:
        for name, data in files.items():
            if name.endswith(".age"):
                secrets.add(Path(name).name[: -len(".age")])
            elif name.endswith(".nix"):
                secrets.update(m.group(1).decode(errors="replace") for m in AGE_RULE.finditer(data))
                # declared by any module of the case (patch declares a secret once, in the host's file or the
                # one that already declares age.secrets, and reads it from a sibling)
                secrets.update((m.group(1) or m.group(2)).decode(errors="replace") for m in AGE_DECL.finditer(data))
                if any(m.group(1) == b"podman" for m in OCI_BACKEND.finditer(data)):
                    backend = "podman"
    return backend, sorted(secrets)


def nix_error(stderr: str, roots: Sequence[Path]) -> str:
    """The first `error:` line, with the first `at FILE:L:C` naming a file of the case, paths made relative."""
    lines = [ln.strip() for ln in stderr.splitlines()]
    errs = [ln for ln in lines if ln.startswith("error:")]
    first = errs[0] if errs else next((ln for ln in lines if ln and not ln.startswith("warning:")), "(no message)")
    prefixes = [str(r) + "/" for r in roots]
    if not any(p in first for p in prefixes):
        where = next((ln for ln in lines if ln.startswith("at ") and any(p in ln for p in prefixes)), "")
        if where:
            first += " (" + where.rstrip(":") + ")"
    for p in prefixes:
        first = first.replace(p, "")
    return first


def nix_eval(path: Path, params: dict[str, object], level: str, roots: Sequence[Path]) -> str | None:
    """None when `path` evaluates to `level` with the stubs, else the error's first line."""
    cmd = [
        "nix-instantiate", "--eval", "--strict", "--json", "--readonly-mode", str(STUBS),
        "--argstr", "file", str(path.resolve()),
        "--argstr", "params", json.dumps({**params, "level": level}),
    ]  # fmt: skip
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=EVAL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return f"evaluation timed out after {EVAL_TIMEOUT:.0f}s"
    return None if p.returncode == 0 else nix_error(p.stderr, roots)


def eval_file(path: Path, params: dict[str, object], roots: Sequence[Path]) -> FileEval:
    err = nix_eval(path, params, "values", roots)
    if err is None:
        return FileEval(2, "")
    names_err = nix_eval(path, params, "names", roots)
    return FileEval(1, err) if names_err is None else FileEval(0, names_err)


def eval_verdict(name: str, original: FileEval | None, patched: FileEval) -> tuple[str, str]:
    """ok | n/a | failed for one changed file, and the detail. The original is the control: a level
    the original does not reach with the stubs is a stub gap, not the patch's fault."""
    if original is None:  # a file patch created: no control
        if patched.level == 0:
            return "failed", f"{name} (new) does not evaluate: {patched.error}"
        return "ok", ""
    if original.level == 0:
        return "n/a", f"original does not evaluate with stubs: {name}: {original.error}"
    if patched.level < original.level:
        what = LEVELS[patched.level + 1]
        return "failed", f"{name} no longer evaluates ({what}; the original does): {patched.error}"
    return "ok", "" if original.level == 2 else f"{name}: names only"


def eval_changed(
    orig_root: Path, new_root: Path, changed: Sequence[str], original: dict[str, bytes], after: dict[str, bytes]
) -> tuple[str, str]:
    """The case's eval result over its changed .nix files: failed > n/a > ok; "none" with no file to evaluate.
    Both sides get the same stubs (names of both texts, the backend and secrets of both trees)."""
    files = [f for f in changed if f in after]
    if not files:
        return "none", ""
    backend, secrets = stub_context(all_files(orig_root), all_files(new_root))
    verdicts: list[tuple[str, str]] = []
    for f in files:
        params: dict[str, object] = {
            "names": stub_names(original.get(f, b""), after[f]),
            "backend": backend,
            "secrets": secrets,
        }
        roots = (new_root.resolve(), orig_root.resolve())
        before = eval_file(orig_root / f, params, roots) if f in original else None
        verdicts.append(eval_verdict(f, before, eval_file(new_root / f, params, roots)))
    for status in ("failed", "n/a"):
        hits = [d for s, d in verdicts if s == status]
        if hits:
            return status, hits[0] + (f" (+{len(hits) - 1} more)" if len(hits) > 1 else "")
    partial = [d for _, d in verdicts if d]
    return "ok", "; ".join(partial)


def scan_count(cli: list[str], tree: Path) -> tuple[int | None, Step]:
    step = run([*cli, "scan", ".", "--json"], tree)
    try:
        return len(json.loads(step.stdout)["findings"]), step
    except (ValueError, KeyError, TypeError):
        return None, step


def draft_config(cli: list[str], tree: Path) -> tuple[bool, str]:
    """--draft: nixmig.toml replaced by `nixmig init`'s draft, as the README's first steps make it (no
    edit of it: the `# check:` lines are left as they are), then `nixmig patch` runs every migration it
    drafted, as the README's next step does. (False, why) when init drafts none."""
    (tree / "nixmig.toml").unlink()
    step = run([*cli, "init", "--no-eval"], tree)
    drafted = tree / "nixmig.toml"
    if step.rc != 0 or not drafted.is_file():
        return False, f"init exit {step.rc}: {step.first_err}"
    import tomllib

    migs = tomllib.loads(drafted.read_text()).get("migrations", {})
    if not migs:
        return False, "init drafted no migration: " + next(
            (ln for ln in drafted.read_text().splitlines() if ln.startswith("# check: not drafted")), "nothing said"
        )
    return True, ""


def run_case(cli: list[str], case_dir: Path, work: Path, *, draft: bool = False) -> Result:
    name = case_dir.name
    try:
        meta = json.loads((case_dir / "case.json").read_text())
        literals = [str(x) for x in meta["literals"]]
        shape = str(meta.get("shape", "?"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Result(name, "?", "invalid", f"case.json unreadable: {type(exc).__name__}")
    res = Result(name, shape, "wrong", "", source=str(meta.get("source", "")), expect=str(meta.get("expect", "")))
    # a shape with nothing hardcoded left to take (an initialScript's SQL file whose clause the user deleted):
    # `"no_literal": true` says so; a gathered case with no literal is a mistake
    none_expected = meta.get("no_literal") is True
    if not literals and not none_expected:
        res.outcome, res.reason = "invalid", "case.json lists no literal"
        return res
    tree = work / name
    shutil.copytree(case_dir, tree, symlinks=True)
    (tree / "case.json").unlink()
    original = nix_files(tree)
    if not none_expected and not literals_left(searched_files(tree), literals):
        res.outcome, res.reason = "invalid", "no literal of case.json is in the case's .nix (or .sql) files"
        return res
    for git in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "case"]):
        g = subprocess.run([*GIT, *git], cwd=tree, capture_output=True, text=True, check=False)
        if g.returncode != 0:
            res.outcome, res.reason = "invalid", f"git {git[0]} failed: {g.stderr.strip()[:80]}"
            return res

    patch = [*cli, "patch"]
    if draft:
        drafted, why = draft_config(cli, tree)
        if not drafted:
            res.outcome, res.reason = "refused", why
            return res
        for git in (["add", "-A"], ["commit", "-q", "-m", "init's draft"]):
            subprocess.run([*GIT, *git], cwd=tree, capture_output=True, text=True, check=False)
    res.scan_findings_before, _ = scan_count(cli, tree)
    steps: dict[str, Step] = {}
    steps["explain"] = run([*patch, "--explain"], tree)
    before_write = all_files(tree)
    steps["write"] = run([*patch, "--write"], tree)
    takes = TAKE_FIRST.search(steps["write"].stderr) if steps["write"].rc == 1 else None
    if takes is not None:  # a kept value (strategy move, also) goes into its .age first, as the line says
        if all_files(tree) != before_write:
            res.problems.append("write: refused for a missing .age but changed files")
        for cmd in takes.group(1).split(" && "):
            words = cmd.split()
            steps[f"take {words[3]}"] = run([*cli, *words[1:]], tree)
        steps["write"] = run([*patch, "--write"], tree)
    after_first = all_files(tree)
    steps["write2"] = run([*patch, "--write"], tree)
    after_second = all_files(tree)
    steps["check"] = run([*patch, "--check"], tree)
    res.scan_findings_after, steps["scan"] = scan_count(cli, tree)
    res.exit_codes = {k: s.rc for k, s in steps.items()}
    res.first_stderr = steps["write"].first_err
    res.by_hand = [
        ln[len("by hand: ") :][:200] for ln in steps["write"].stdout.splitlines() if ln.startswith("by hand: ")
    ]

    problems = res.problems
    for k, s in steps.items():
        if s.rc is None:
            problems.append(f"{k}: timed out after {STEP_TIMEOUT:.0f}s")
        elif s.traceback:
            problems.append(f"{k}: traceback")
        elif s.rc not in (0, 1, 2):
            problems.append(f"{k}: exit {s.rc}")
    after = nix_files(tree)
    res.changed_files = sorted(f for f in set(original) | set(after) if original.get(f) != after.get(f))
    unparsed = set()
    for f in res.changed_files:
        if f in after:
            err = parse_error(tree / f)
            if err is not None:
                unparsed.add(f)
                problems.append(f"{f} does not parse: {err[:100]}")
    evaluable = [f for f in res.changed_files if f not in unparsed]
    res.eval, res.eval_detail = eval_changed(case_dir, tree, evaluable, original, after)
    if res.eval == "failed":
        problems.append(res.eval_detail)
    problems.extend(misplaced_age_files(tree, res.changed_files, original))
    if after_first != after_second:
        diff = sorted(f for f in set(after_first) | set(after_second) if after_first.get(f) != after_second.get(f))
        problems.append(f"second --write changed {', '.join(diff)}")
    res.literals_left = literals_left(searched_files(tree), literals)
    wrc, crc = steps["write"].rc, steps["check"].rc
    if wrc == 0:
        if res.literals_left:
            problems.append(f"write exit 0 with the literal left at {res.literals_left[0]}")
        if crc != 0:
            problems.append(f"write exit 0 but --check exit {crc}")
    if problems:
        res.outcome, res.reason = "wrong", problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
    elif wrc == 0:
        res.outcome = "patched"
        res.reason = f"{len(res.changed_files)} file(s) changed, parse ok, idempotent, --check 0; {eval_note(res)}"
    else:
        res.outcome = "refused"
        first = f"; first: {res.by_hand[0]}" if res.by_hand else ""
        res.reason = f"exit {wrc}: {res.first_stderr}{first}" + (
            f" [wrote {len(res.changed_files)} file(s); {len(res.literals_left)} literal(s) left]"
            if res.changed_files
            else ""
        )
        if res.eval != "none":
            res.reason += f"; {eval_note(res)}"
    return res


AGE_FILE = re.compile(rb"\bfile\s*=\s*((?:\.\.?/)[^\s;]*\.age)\s*;")


def misplaced_age_files(tree: Path, changed: Sequence[str], original: dict[str, bytes]) -> list[str]:
    """Each ``file = ../secrets/X.age;`` patch wrote (not in the file before) that does not name a file of
    the secrets directory (nixmig.toml's secrets_dir): agenix reads the .age at evaluation, so a path that
    misses it fails the deploy (``path ... does not exist``), which stub evaluation cannot show."""
    import tomllib

    try:
        secrets_dir = str(tomllib.loads((tree / "nixmig.toml").read_text()).get("secrets_dir", "secrets"))
    except (OSError, ValueError):
        return []
    want = (tree / secrets_dir).resolve()
    out: list[str] = []
    for name in changed:
        path = tree / name
        if not path.is_file() or not name.endswith(".nix"):
            continue
        before = {m.group(1) for m in AGE_FILE.finditer(original.get(name, b""))}
        for m in AGE_FILE.finditer(path.read_bytes()):
            if m.group(1) in before:
                continue  # the repo's own secret, as it was
            target = (path.parent / m.group(1).decode()).resolve()
            if target.parent != want:
                out.append(f"{name}: age file {m.group(1).decode()} resolves to {target.parent}, not {secrets_dir}/")
    return out


def eval_note(res: Result) -> str:
    if res.eval == "ok":
        return "eval ok" + (f" ({res.eval_detail})" if res.eval_detail else "")
    if res.eval == "n/a":
        return f"eval n/a ({res.eval_detail})"
    return f"eval {res.eval}" + (f": {res.eval_detail}" if res.eval_detail else "")


def case_dirs(corpora: Sequence[Path], only: set[str] | None, skip: set[str]) -> list[Path]:
    out: list[Path] = []
    for corpus in corpora:
        for d in sorted(corpus.iterdir()):
            if not d.is_dir() or d.name.startswith((".", "_")) or not (d / "nixmig.toml").is_file():
                continue
            if (only is not None and d.name not in only) or d.name in skip:
                continue
            out.append(d)
    return out


def read_list(path: Path | None) -> set[str] | None:
    if path is None:
        return None
    names = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return {n for n in names if n}


def code_version() -> str:
    """The commit of the code under test, and whether nixmig/ differs from it (others edit the tree)."""
    where = SRC or ROOT
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True, check=False
    )
    if SRC is not None and (SRC / "REV").is_file():
        return f"{where} (export of {(SRC / 'REV').read_text().strip()})"
    if rev.returncode != 0 or (SRC is not None and not (SRC / ".git").exists()):
        return f"{where} (not a git checkout)"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "nixmig"], cwd=where, capture_output=True, text=True, check=False
    )
    return f"{where} at {rev.stdout.strip()}" + (" + uncommitted changes in nixmig/" if dirty.stdout.strip() else "")


def table(results: Sequence[Result]) -> str:
    def reason(r: Result) -> str:
        return r.reason + (f" [case expects {r.expect}]" if r.expect and r.expect != r.outcome else "")

    rows = [("case", "shape", "outcome", "reason")] + [(r.case, r.shape, r.outcome, reason(r)) for r in results]
    w0 = max(len(r[0]) for r in rows)
    w1 = min(max(len(r[1]) for r in rows), 48)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{a:<{w0}}  {b[:w1]:<{w1}}  {c:<{w2}}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)


def totals(results: Sequence[Result]) -> dict[str, int]:
    t = {"cases": len(results), "patched": 0, "refused": 0, "wrong": 0, "invalid": 0, "unexpected": 0}
    t.update({"eval ok": 0, "eval n/a": 0, "eval failed": 0, "eval none": 0})
    for r in results:
        t[r.outcome] += 1
        if r.eval:
            t[f"eval {r.eval}"] += 1
        t["unexpected"] += bool(r.expect) and r.expect != r.outcome
    return t


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--corpus", action="append", type=Path, help="a directory of cases (repeatable)")
    ap.add_argument("--only-from", type=Path, help="a file listing the case names to run, one a line")
    ap.add_argument("--skip-from", type=Path, help="a file listing case names to leave out, one a line")
    ap.add_argument(
        "--src", type=Path, help="a directory holding the nixmig package to test (default: the installed one)"
    )
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON")
    ap.add_argument(
        "--draft",
        action="store_true",
        help="replace each case's nixmig.toml with `nixmig init`'s draft first (the README's path for a new user)",
    )
    args = ap.parse_args(argv)
    global SRC
    if args.src is not None:
        if not (args.src / "nixmig" / "__main__.py").is_file():
            print(f"patch_coverage: {args.src}: no nixmig package there", file=sys.stderr)
            return 2
        SRC = args.src.resolve()
    corpora: list[Path] = args.corpus or ([DEFAULT_CORPUS] if DEFAULT_CORPUS.is_dir() else [])
    if not corpora:
        print(f"patch_coverage: no corpus: pass --corpus DIR ({DEFAULT_CORPUS} does not exist)", file=sys.stderr)
        return 2
    for c in corpora:
        if not c.is_dir():
            print(f"patch_coverage: {c}: not a directory", file=sys.stderr)
            return 2
    if shutil.which("nix-instantiate") is None:
        print("patch_coverage: nix-instantiate not on PATH: outputs cannot be parsed", file=sys.stderr)
        return 2
    try:
        only, skip = read_list(args.only_from), read_list(args.skip_from) or set()
    except OSError as exc:
        print(f"patch_coverage: {exc}", file=sys.stderr)
        return 2
    cases = case_dirs(corpora, only, skip)
    if not cases:
        print("patch_coverage: no case (a directory with nixmig.toml and case.json) found", file=sys.stderr)
        return 2
    cli = nixmig_command()
    with tempfile.TemporaryDirectory(prefix="patch-coverage-") as tmp:
        results = [run_case(cli, d, Path(tmp), draft=args.draft) for d in cases]
    t = totals(results)
    if args.json:
        out = {"totals": t, "code": code_version(), "cli": cli, "cases": [asdict(r) for r in results]}
        print(json.dumps(out, indent=1))
    else:
        print(f"code under test: {code_version()}\n")
        print(table(results))
        print(
            f"\n{t['cases']} cases: patched {t['patched']}, refused {t['refused']}, wrong {t['wrong']}"
            + (f", invalid {t['invalid']}" if t["invalid"] else "")
            + (f"; {t['unexpected']} not as case.json expects" if t["unexpected"] else "")
        )
        print(
            f"eval (changed .nix files with stub module args, original as control): ok {t['eval ok']}, "
            f"n/a {t['eval n/a']}, failed {t['eval failed']}; {t['eval none']} case(s) changed no .nix file"
        )
    return 1 if t["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
