"""Shared helpers for tests: fixture paths, copies of the worked example, running the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from nixmig import demo

FIXTURES = Path(__file__).parent / "fixtures"
# The worked example is kept once: EXAMPLE is the tree nixmig ships for `nixmig demo`
# (nixmig/examples/newton-dotfiles). Tests read it in place or work on copy_example's copy.
# The overlay holds only what the tests add to it, never a file the example has:
# secrets/twenty-app-secret.age, the app's existing secret as the operator's repo holds it
# (an age file for the TEST keys in secrets.nix, made outside nixmig and kept byte for byte:
# tests/unit/test_secrets_interop.py decrypts it with the age CLI and with nixmig, and the
# `secret check`/`rekey`/`new --like` tests need an .age already there). The shipped example
# lacks it on purpose: the demo makes it itself, for fresh keys.
EXAMPLE = demo.EXAMPLE
EXAMPLE_OVERLAY = FIXTURES / "newton-dotfiles-overlay"
KEYS = FIXTURES / "test-keys"
ADMIN_PUB = " ".join((KEYS / "admin_ed25519.pub").read_text().split()[:2])
NEWTON_PUB = " ".join((KEYS / "newton_host_ed25519.pub").read_text().split()[:2])


def copy_example(dest: Path) -> Path:
    """dest/newton-dotfiles: a copy of the shipped worked example plus the tests' overlay."""
    repo = dest / "newton-dotfiles"
    shutil.copytree(EXAMPLE, repo)
    for src in sorted(EXAMPLE_OVERLAY.rglob("*")):
        if src.is_file():
            target = repo / src.relative_to(EXAMPLE_OVERLAY)
            if target.exists():
                raise AssertionError(f"{src}: the overlay would replace a file of the shipped example")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
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


def plan_shape_case(case: str, file: str, text: bytes) -> tuple[object, bytes]:
    """The plan of the shape corpus case ``case`` with ``file`` replaced by ``text``, and that file after it."""
    from nixmig import config
    from nixmig.nixsrc import patch as pt

    root = FIXTURES / "shapes" / case
    cfg = config.load(root / "nixmig.toml")
    (migration,) = cfg.migrations
    sources = {**pt.read_sources(root), file: text}
    plan = pt.plan(sources, pt.spec_for(cfg, migration))
    return plan, plan.results(sources).get(file, text)


def load_bench(script: str, module_name: str) -> Any:
    """bench/SCRIPT.py as a module (bench/ is no package), registered under ``module_name``."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


ARGV_STUB = """#!/bin/bash
# a stand-in for a command a patched script calls (a fake, named so): records its name, its argv and
# the variables named in $RECORD_ENV (NUL-separated), one call a line; reads stdin
{
  printf '%s\\0' "${0##*/}" "$@"
  for v in $RECORD_ENV; do printf '%s\\0' "$v=${!v-unset}"; done
  printf '\\n'
} >>"$ARGV_LOG"
[ -t 0 ] || cat >/dev/null
exit 0
"""


def run_with_credential(
    tmp_path: Path,
    script: str,
    credential: str,
    password: str,
    commands: tuple[str, ...],
    record_env: tuple[str, ...] = (),
) -> list[list[str]]:
    """Run a patched unit script in real bash as systemd would hand it the credential ``credential``
    (``$CREDENTIALS_DIRECTORY``), each of ``commands`` replaced by ARGV_STUB: the calls it made (name,
    argv, then NAME=value of ``record_env``). The script must succeed and print no password."""
    bin_dir, creds = tmp_path / "bin", tmp_path / "creds"
    bin_dir.mkdir(exist_ok=True)
    creds.mkdir(exist_ok=True)
    for name in commands:
        (bin_dir / name).write_text(ARGV_STUB)
        (bin_dir / name).chmod(0o755)
    (creds / credential).write_bytes(password.encode())
    log = tmp_path / "argv.log"
    log.write_bytes(b"")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CREDENTIALS_DIRECTORY": str(creds),
        "ARGV_LOG": str(log),
        "RECORD_ENV": " ".join(record_env),
    }
    proc = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert password.encode() not in proc.stdout + proc.stderr
    return [rec.split("\0")[:-1] for rec in log.read_text().split("\n") if rec]
