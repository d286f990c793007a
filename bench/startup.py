"""Start-up cost of `nixmig --help` against `python -c "import typer"`, measured in the same run.

Prints the median wall time of each over N runs (default 10) and their ratio.
Target: ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_wall(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    baseline_argv = [sys.executable, "-c", "import typer"]
    nixmig_argv = [sys.executable, "-m", "nixmig", "--help"]
    median_wall(nixmig_argv, 2)  # warm the page cache and .pyc files
    base = median_wall(baseline_argv, args.runs)
    ours = median_wall(nixmig_argv, args.runs)
    print(f"python -c 'import typer': median {base * 1000:.1f} ms over {args.runs} runs")
    print(f"nixmig --help:            median {ours * 1000:.1f} ms over {args.runs} runs")
    print(f"ratio: {ours / base:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
