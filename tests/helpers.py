"""Shared helpers for tests: fixture paths, copies of the worked example, running the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE = FIXTURES / "newton-dotfiles"
KEYS = FIXTURES / "test-keys"
ADMIN_PUB = " ".join((KEYS / "admin_ed25519.pub").read_text().split()[:2])
NEWTON_PUB = " ".join((KEYS / "newton_host_ed25519.pub").read_text().split()[:2])


def copy_example(dest: Path) -> Path:
    repo = dest / "newton-dotfiles"
    shutil.copytree(EXAMPLE, repo)
    return repo


def private_key(tmp: Path, name: str) -> Path:
    """A 0600 copy of a TEST ONLY key (git does not keep modes)."""
    out = tmp / name
    shutil.copyfile(KEYS / name, out)
    out.chmod(0o600)
    return out


def run_cli(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
    return subprocess.run(
        [sys.executable, "-m", "nixmig", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes: to prove that nothing was written."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
