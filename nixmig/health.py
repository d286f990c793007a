"""Health checks from nixmig.toml: morph-style http and command checks, retried."""

from __future__ import annotations

import shlex
import subprocess
import time
import urllib.error
import urllib.request

from nixmig.config import HealthCheck


def run_check(check: HealthCheck) -> str | None:
    """None when healthy within the retries, else the last reason."""
    reason = "not run"
    for attempt in range(max(1, check.retries)):
        if attempt:
            time.sleep(min(2**attempt, 10))
        reason_or_none = _once(check)
        if reason_or_none is None:
            return None
        reason = reason_or_none
    return reason


def _once(check: HealthCheck) -> str | None:
    if check.type == "http":
        assert check.url is not None
        try:
            with urllib.request.urlopen(check.url, timeout=check.timeout) as resp:  # noqa: S310 - user's URL
                code = int(resp.status)
        except urllib.error.HTTPError as exc:
            code = exc.code
        except (urllib.error.URLError, OSError) as exc:
            return f"{check.url}: {getattr(exc, 'reason', exc)}"
        return None if 200 <= code < 300 else f"{check.url}: HTTP {code}"
    assert check.command is not None
    try:
        proc = subprocess.run(shlex.split(check.command), capture_output=True, timeout=check.timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{check.command}: {exc}"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()[-1:]
        return f"{check.command}: exit {proc.returncode} {' '.join(tail)}"
    return None
