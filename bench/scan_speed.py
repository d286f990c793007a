"""Speed of `nixmig scan` on a 10,000-file tree, against grep on the same tree, in the same run.

Builds the tree in a temp dir from the .nix files of the worked example (nixmig/examples/newton-dotfiles:
3 findings in 5 files, like a real repository), copied round-robin into
nested directories, plus a `.git` directory and `result` symlinks that both tools must skip.
--with-corpus adds the files of tests/scan_corpus: a worst case, dense with secrets (about
5 findings per file), where each finding costs more than the parse. Then times, end to end
(process start included), the median of --runs runs of:

    nixmig scan TREE --format json
    grep -rEl 'password|secret|://[^/]*:[^@]*@' TREE

and prints files/s for each and the ratio nixmig / grep. Target: the whole tree in <= 10 s
on 2 cores. Exit status 1 when the target is missed (use --no-fail to only print).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "nixmig" / "examples" / "newton-dotfiles", ROOT / "tests" / "scan_corpus"]
GREP_PATTERN = "password|secret|://[^/]*:[^@]*@"
TARGET_SECONDS = 10.0


def build_tree(dest: Path, n_files: int, sources_dirs: list[Path] = SOURCES) -> int:
    """n_files .nix files under dest (plus things to skip). Returns the number written."""
    sources = sorted(p for src in sources_dirs for p in src.rglob("*.nix"))
    blobs = [(p.name, p.read_bytes()) for p in sources]
    for i in range(n_files):
        name, data = blobs[i % len(blobs)]
        d = dest / f"host-{i // 1000:02d}" / f"module-{(i // 50) % 20:02d}" / f"n{i:05d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    # must be skipped: VCS state and links into the store
    git = dest / ".git" / "objects"
    git.mkdir(parents=True)
    for i in range(20):
        (git / f"leaked-{i}.nix").write_bytes(b'{ password = "in-git"; }\n')
    store = dest.parent / "fake-store"
    store.mkdir(exist_ok=True)
    (store / "evil.nix").write_bytes(b'{ password = "in-store"; }\n')
    (dest / "result").symlink_to(store)
    (dest / "host-00" / "result").symlink_to(store)
    return n_files


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(
    argv: list[str], runs: int, env: dict[str, str] | None = None
) -> tuple[float, float, subprocess.CompletedProcess[bytes]]:
    """Median wall time, median CPU time (user + sys of the process and its workers), last run."""
    times = []
    cpus = []
    proc: subprocess.CompletedProcess[bytes] | None = None
    for _ in range(runs):
        cpu = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, check=False, env=env)
        times.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
    assert proc is not None
    return statistics.median(times), statistics.median(cpus), proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=0, help="nixmig --jobs (0: one per CPU)")
    parser.add_argument(
        "--with-corpus",
        action="store_true",
        help="also copy tests/scan_corpus into the tree: the worst case, dense with secrets",
    )
    parser.add_argument("--no-fail", action="store_true")
    args = parser.parse_args()
    if shutil.which("grep") is None:
        raise SystemExit("grep not found")

    with tempfile.TemporaryDirectory(prefix="nixmig-scan-speed-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        n = build_tree(tree, args.files, SOURCES if args.with_corpus else SOURCES[:1])
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        nixmig_argv = [sys.executable, "-m", "nixmig", "scan", str(tree), "--format", "json", "--jobs", str(args.jobs)]
        grep_argv = ["grep", "-rEl", GREP_PATTERN, str(tree)]

        load_before = os.getloadavg()[0]
        nixmig_s, nixmig_cpu, proc = timed(nixmig_argv, args.runs, env)
        if proc.returncode != 0:
            raise SystemExit(f"nixmig scan failed ({proc.returncode}): {proc.stderr.decode()[-400:]}")
        report = json.loads(proc.stdout)
        grep_s, _, grep_proc = timed(grep_argv, args.runs)
        if grep_proc.returncode not in (0, 1):
            raise SystemExit(f"grep failed: {grep_proc.stderr.decode()}")

    scanned = report["files_scanned"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    made_from = "the worked example and the corpus" if args.with_corpus else "the worked example"
    print(f"tree: {n} .nix files from {made_from} (+ .git and result links to skip)")
    print(f"      {cpus} CPUs, load average {load_before:.1f} before, median of {args.runs} runs")
    found, problems = len(report["findings"]), len(report["problems"])
    print(f"nixmig scan --format json: {nixmig_s:6.2f} s {scanned / nixmig_s:8.0f} files/s", end="  ")
    print(f"({scanned} files scanned, {found} findings, {problems} not parsed)")
    matched = len(grep_proc.stdout.splitlines())
    print(f"grep -rEl '{GREP_PATTERN}': {grep_s:6.2f} s {n / grep_s:8.0f} files/s  ({matched} files matched)")
    print(f"ratio nixmig/grep: {nixmig_s / grep_s:.1f}x slower   target: <= {TARGET_SECONDS:.0f} s for the tree")
    print(
        f"nixmig CPU time: {nixmig_cpu:.2f} s (user + sys, workers included): about "
        f"{nixmig_cpu / max(1, min(cpus or 1, 2)):.1f} s of wall time on 2 idle cores, whatever else runs now"
    )
    if scanned != n:
        print(f"error: nixmig scanned {scanned} files, expected {n} (.git or result links not skipped?)")
        return 1
    return 0 if nixmig_s <= TARGET_SECONDS or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
