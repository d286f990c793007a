"""Cost of a no-op `nixmig apply --on-host` (what a NixOS unit runs on every activation).

Sets up a host whose journal says done and whose agenix secret is the applied one,
then prints the median wall time over N runs (default 20) of:

- `python -c pass`                         the interpreter alone (the floor);
- `python -c "import typer"`               the baseline bench/startup.py uses;
- `nixmig --help`                          the full command line's start-up;
- `nixmig status --on-host`                a journal-only command through the full CLI;
- `nixmig apply --on-host` (no-op)         the fast path (nixmig.onhost.fast_path);

and the no-op's ratio to each. It also checks the no-op printed "nothing to do" and
connected to no database (there is none: the config points at a port nothing listens on).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nixmig import onhost
from nixmig.journal import Journal

PHASES = ["preflight", "backup", "stage", "rotate", "switch", "verify", "cleanup"]


def median_wall(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nixmig-bench-onhost-"))
    try:
        agenix = root / "agenix"
        agenix.mkdir()
        (agenix / "db-password").write_bytes(b"a-32-character-password-xxxxxxxx")
        cfg = root / "nixmig.toml"
        cfg.write_text(
            "[operator]\nrecipients = []\n"
            f'[hosts.newton]\naddress = "localhost"\ntransport = "local"\nagenix_dir = "{agenix}"\n'
            f'lock_dir = "{root / "lock"}"\n'
            '[services.db]\nhost = "newton"\nruntime = "native"\nport = 1\n'
            '[migrations.db-password]\nservice = "db"\nsecret = "db-password"\n'
        )
        state = root / "state"
        j = Journal.open(state / "journal", "newton", "db-password")
        for p in PHASES:
            j.begin(p)
            j.finish(p)
        j.meta["secret"] = onhost.secret_tag((agenix / "db-password").read_bytes())
        j.complete()
        onhost.remember(state, cfg, None, None, j, agenix / "db-password")  # what a completed run leaves
        env = {**os.environ, "NIXMIG_STATE_DIR": str(state)}
        exe = Path(sys.executable).with_name("nixmig")
        nixmig = [str(exe)] if exe.exists() else [sys.executable, "-m", "nixmig"]
        noop = [*nixmig, "apply", "--on-host", "-c", str(cfg)]
        out = subprocess.run(noop, capture_output=True, text=True, env=env, check=True).stdout
        assert out.startswith("nixmig: db-password on newton: done, nothing to do"), out  # the fast path's line
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("python -c 'import typer'", [sys.executable, "-c", "import typer"]),
            ("nixmig --help", [*nixmig, "--help"]),
            ("nixmig status --on-host", [*nixmig, "status", "--on-host", "-c", str(cfg)]),
            ("nixmig apply --on-host (no-op)", noop),
        ]
        for _, argv in cases:  # warm the page cache and .pyc files
            median_wall(argv, 2, env)
        medians = {label: median_wall(argv, args.runs, env) for label, argv in cases}
        print(f"command: {' '.join(noop)}  (NIXMIG_STATE_DIR={state})")
        print(f"output:  {out.strip()}")
        for label, secs in medians.items():
            print(f"{label:32} median {secs * 1000:6.1f} ms over {args.runs} runs")
        fast = medians["nixmig apply --on-host (no-op)"]
        for label in ("python -c pass", "python -c 'import typer'", "nixmig status --on-host"):
            print(f"no-op / {label}: {fast / medians[label]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
