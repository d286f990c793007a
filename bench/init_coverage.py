"""How often `nixmig init` drafts what a user wrote by hand: over a corpus of case repos.

A case is a directory holding a small Nix repo with its hand-written ``nixmig.toml`` (the
corpus of bench/patch_coverage.py: /work/realcfg, tests/fixtures/shapes). Each case is copied
to a temp dir without its nixmig.toml and case.json, and the real CLI runs there as a user
would: ``nixmig init --print --json --no-eval``. Outcome:

- nothing: exit 0, "nothing to migrate" (no hardcoded database password drafted);
- said: a draft with no migration, only ``# check: not drafted`` lines (a MySQL database ...);
- match: a drafted migration for the hand-written one whose service agrees on host, runtime,
  container, database and role;
- checked: it differs on some of these, and each differing key is marked ``# check:``;
- wrong: a differing key not marked ``# check:``, a draft that does not load with
  nixmig.config, a draft whose migrations none matches the hand-written one, a traceback,
  a timeout, an exit code other than 0.

The draft's migration for the hand-written one: the one whose service has the same role and
database, else the one with the same secret, else the one whose service has the same container
(or database, for a native server), else the only one.
No value of any case is printed but the service keys compared.

    .venv/bin/python bench/init_coverage.py --corpus /work/realcfg [--skip-from LIST | --only-from LIST]
        [--src DIR] [--json]

Exit status: 0 when no case is wrong, 1 otherwise, 2 on bad arguments.
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nixmig.config import Config, Migration

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, named as mypy names bench/ files
from patch_coverage import case_dirs, nixmig_command, read_list

STEP_TIMEOUT = 120.0
KEYS = ("host", "runtime", "container", "database", "role")
SRC: Path | None = None


@dataclass
class Result:
    case: str
    outcome: str  # nothing | said | match | checked | wrong
    reason: str = ""
    migrations: int = 0
    differing: list[str] = field(default_factory=list)  # "key: draft != hand"


def checked_keys(toml: str) -> dict[str, set[str]]:
    """table -> the keys whose line follows a `# check:` line (guesses); as tests/unit/test_init.py reads them."""
    out: dict[str, set[str]] = {}
    table, prev = "", ""
    for line in toml.splitlines():
        if line.startswith("["):
            table = line.strip("[]")
        m = re.match(r"([A-Za-z_]+) = ", line)
        if m and prev.startswith("# check:"):
            out.setdefault(table, set()).add(m.group(1))
        prev = line
    return out


def run_init(cli: Sequence[str], tree: Path) -> tuple[int | None, str, str]:
    env = dict(os.environ, NO_COLOR="1", TERM="dumb", COLUMNS="200")
    if SRC is not None:
        env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        p = subprocess.run(
            [*cli, "init", "--print", "--json", "--no-eval", "--repo", str(tree)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, "", ""
    return p.returncode, p.stdout, p.stderr


def _load(text: str, where: Path) -> Config:
    from nixmig import config

    path = where / "nixmig.toml"
    path.write_text(text)
    try:
        return config.load(path)
    finally:
        path.unlink()


def _counterpart(draft: Config, hand: Config, hmig: Migration) -> Migration | None:
    hsvc = hand.services[hmig.service]
    migs = list(draft.migrations.values())
    for pick in (
        lambda m: (draft.services[m.service].role, draft.services[m.service].database) == (hsvc.role, hsvc.database),
        lambda m: m.secret == hmig.secret,
        lambda m: hsvc.container is not None and draft.services[m.service].container == hsvc.container,
        lambda m: hsvc.container is None and draft.services[m.service].database == hsvc.database,
    ):
        found = [m for m in migs if pick(m)]
        if len(found) == 1:
            return found[0]
    return migs[0] if len(migs) == 1 else None


def run_case(cli: Sequence[str], case_dir: Path, work: Path) -> Result:
    from nixmig import config
    from nixmig.errors import ConfigError

    res = Result(case_dir.name, "wrong")
    tree = work / case_dir.name
    shutil.copytree(case_dir, tree, symlinks=True)
    for f in ("nixmig.toml", "case.json"):
        (tree / f).unlink(missing_ok=True)
    rc, out, err = run_init(cli, tree)
    if rc is None:
        res.reason = f"timed out after {STEP_TIMEOUT:.0f}s"
        return res
    if rc != 0 or "Traceback" in err:
        first = next((ln for ln in err.splitlines() if ln.strip()), "")
        res.reason = f"exit {rc}: {first[:160]}"
        return res
    data = json.loads(out)
    if data.get("nothing_to_migrate"):
        res.outcome, res.reason = "nothing", "nothing to migrate"
        return res
    toml = str(data["toml"])
    try:
        drafted = _load(toml, work)
    except ConfigError as exc:
        res.reason = f"the draft does not load: {exc}"
        return res
    hand = config.load(case_dir / "nixmig.toml")
    res.migrations = len(drafted.migrations)
    if not drafted.migrations:
        said = [ln for ln in toml.splitlines() if ln.startswith("# check: not drafted:")]
        res.outcome = "said" if said else "wrong"
        res.reason = f"{len(said)} `# check: not drafted` line(s)" if said else "no migration and nothing said"
        return res
    guessed = checked_keys(toml)
    unmarked: list[str] = []
    for hname, hmig in hand.migrations.items():
        mig = _counterpart(drafted, hand, hmig)
        if mig is None:
            res.reason = f"no drafted migration for the hand-written {hname}"
            return res
        svc, hsvc = drafted.services[mig.service], hand.services[hmig.service]
        # a service's own secret (no database password in the repo): init drafts a move with no role
        service_secret = (
            mig.strategy == "move"
            and f"[services.{mig.service}]\n# the hardcoded password" in toml
            and ("not a database's password" in toml)
        )
        for key in KEYS:
            if key == "database" and mig.strategy == "move":  # the draft's migration
                continue  # strategy move queries no database: the key is never read
            if key == "role" and service_secret:
                continue  # no database, no role: patch ties the option by the secret's name
            a, b = getattr(svc, key), getattr(hsvc, key)
            if a != b:
                res.differing.append(f"{key}: {a!r} != {b!r}")
                if key not in guessed.get(f"services.{mig.service}", set()):
                    unmarked.append(key)
    if unmarked:
        res.reason = f"differs, not marked # check:: {', '.join(unmarked)}"
    elif res.differing:
        res.outcome, res.reason = "checked", "differs, every difference marked # check:"
    else:
        res.outcome, res.reason = "match", f"{', '.join(KEYS)} as written by hand"
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--corpus", action="append", type=Path, required=True, help="a directory of cases (repeatable)")
    ap.add_argument("--only-from", type=Path, help="a file listing the case names to run, one a line")
    ap.add_argument("--skip-from", type=Path, help="a file listing case names to leave out, one a line")
    ap.add_argument("--src", type=Path, help="a directory holding the nixmig package to test (default: installed)")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = ap.parse_args(argv)
    global SRC
    if args.src is not None:
        if not (args.src / "nixmig" / "__main__.py").is_file():
            print(f"init_coverage: {args.src}: no nixmig package there", file=sys.stderr)
            return 2
        SRC = args.src.resolve()
        sys.path.insert(0, str(SRC))
    for c in args.corpus:
        if not c.is_dir():
            print(f"init_coverage: {c}: not a directory", file=sys.stderr)
            return 2
    try:
        only, skip = read_list(args.only_from), read_list(args.skip_from) or set()
    except OSError as exc:
        print(f"init_coverage: {exc}", file=sys.stderr)
        return 2
    cases = case_dirs(args.corpus, only, skip)
    if not cases:
        print("init_coverage: no case (a directory with nixmig.toml) found", file=sys.stderr)
        return 2
    cli = nixmig_command() if SRC is None else [sys.executable, "-m", "nixmig"]
    with tempfile.TemporaryDirectory(prefix="init-coverage-") as tmp:
        results = [run_case(cli, d, Path(tmp)) for d in cases]
    totals = {k: sum(r.outcome == k for r in results) for k in ("nothing", "said", "match", "checked", "wrong")}
    totals["drafts"] = sum(r.migrations > 0 for r in results)
    if args.json:
        print(json.dumps({"totals": totals, "cases": [asdict(r) for r in results]}, indent=1))
    else:
        w = max(len(r.case) for r in results)
        for r in results:
            extra = f" [{'; '.join(r.differing)}]" if r.differing else ""
            print(f"{r.case:<{w}}  {r.outcome:<8} {r.reason}{extra}")
        print(
            f"\n{len(results)} cases: {totals['drafts']} drafts ({totals['match']} match the hand-written service, "
            f"{totals['checked']} differ with every difference marked # check:), {totals['said']} said not drafted, "
            f"{totals['nothing']} nothing to migrate, {totals['wrong']} wrong"
        )
    return 1 if totals["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
