"""Real-parts test harness: throwaway PostgreSQL clusters, sshd and dockerd.

Each module starts a real Debian binary in a temp dir and yields a small frozen
dataclass describing how to reach it. The tier conftests (tests/integration,
tests/e2e) re-export the fixtures. A missing binary is a hard failure naming
the apt package to install, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest


class HarnessError(RuntimeError):
    """A real part of the test environment could not be started."""


def require_binary(name_or_path: str, apt_package: str) -> str:
    """Return the absolute path of a binary, or fail the test naming the apt package."""
    if os.sep in name_or_path:
        if os.access(name_or_path, os.X_OK):
            return name_or_path
        found = None
    else:
        found = shutil.which(name_or_path) or shutil.which(name_or_path, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        pytest.fail(
            f"test harness needs {name_or_path!r}, which is missing: run `apt-get install {apt_package}` (as root)",
            pytrace=False,
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log file, for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
