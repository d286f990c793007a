"""The hashes the Nix files pin, checked against PyPI (scripts/check-nix-hashes).

nix/pyrage.nix pins the sdist's hash, nix/types-docker.nix the wheel's, and
nix/pyrage-Cargo.lock must be byte-identical to the sdist's Cargo.lock (cargoSetupHook
compares them). Nothing here can build them, so a wrong value would first fail on a
user's `nix build`: the script downloads the same files from PyPI and compares.

The network tests skip, saying why, when PyPI cannot be reached (the Nix build
sandbox, an offline machine); the pure parts (file names, SRI) always run.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check-nix-hashes"

pytestmark = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed")


def _script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("check_nix_hashes", str(SCRIPT))
    spec = importlib.util.spec_from_loader("check_nix_hashes", loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def _run(root: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root)], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode == 3:
        pytest.skip(f"PyPI cannot be reached from here: {proc.stderr.strip()}")
    return proc


def test_fetchpypi_file_names_follow_nixpkgs() -> None:
    """nixpkgs' fetchPypi: sdist `pname-version.tar.gz`; wheel `pname-version-python-abi-platform.whl`
    (dist is the URL's directory, not part of the name; abi none and platform any by default)."""
    m = _script()
    assert m.fetchpypi_filename({"pname": "pyrage", "version": "1.4.0"}) == "pyrage-1.4.0.tar.gz"
    wheel = {"pname": "types_docker", "version": "7.2", "format": "wheel", "dist": "py3", "python": "py3"}
    assert m.fetchpypi_filename(wheel) == "types_docker-7.2-py3-none-any.whl"
    assert m.fetchpypi_filename({"pname": "x", "version": "1", "format": "wheel"}) == "x-1-py2.py3-none-any.whl"
    assert m.project_name("types_docker") == "types-docker"


def test_sri_is_base64_of_the_raw_sha256() -> None:
    m = _script()
    # `nix hash to-sri --type sha256 $(sha256sum of "")`
    assert m.sri_sha256(b"") == "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    assert hashlib.sha256(b"").hexdigest().startswith("e3b0c442")


def test_only_pypi_is_contacted() -> None:
    m = _script()
    with pytest.raises(ValueError, match="PyPI only"):
        m._get("https://crates.io/api/v1/crates/age")


def test_the_pinned_hashes_and_the_lock_file_match_pypi() -> None:
    proc = _run(ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "ok  nix/pyrage.nix: pyrage-" in proc.stdout
    assert "nix/pyrage-Cargo.lock is byte-identical" in proc.stdout
    assert "ok  nix/types-docker.nix: types_docker-" in proc.stdout


def _copy(tmp_path: Path) -> Path:
    for rel in (
        "nix/pyrage.nix",
        "nix/types-docker.nix",
        "nix/pyrage-Cargo.lock",
        "tests/nix/eval-fetchpypi.nix",
        "tests/nix/stubs.nix",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tmp_path / rel)
    return tmp_path


def _flip_hash(path: Path) -> None:
    """Change one base64 character of the pinned SRI hash."""
    text = path.read_text()
    start = text.index('hash = "sha256-') + len('hash = "sha256-')
    new = "A" if text[start] != "A" else "B"
    path.write_text(text[:start] + new + text[start + 1 :])


def test_a_wrong_hash_or_lock_file_is_caught(tmp_path: Path) -> None:
    """The check can fail: one wrong character in each hash, one changed byte in the lock file."""
    root = _copy(tmp_path)
    _flip_hash(root / "nix" / "pyrage.nix")
    _flip_hash(root / "nix" / "types-docker.nix")
    lock = root / "nix" / "pyrage-Cargo.lock"
    lock.write_bytes(lock.read_bytes().replace(b'version = "0.5.2"', b'version = "0.5.3"', 1))
    proc = _run(root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith('nix/pyrage.nix: hash = "sha256-') and '; write hash = "sha256-' in lines[0]
    assert "nix/pyrage-Cargo.lock differs from pyrage-1.4.0/Cargo.lock" in lines[1]
    assert "first at line 7" in lines[1]
    assert lines[2].startswith("nix/types-docker.nix: hash = ")


def test_a_file_pypi_does_not_have_is_named(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    f = root / "nix" / "types-docker.nix"
    f.write_text(f.read_text().replace('dist = "py3";', 'dist = "py3";\n    abi = "cp312";'))
    proc = _run(root)
    assert proc.returncode == 1
    assert "fetchPypi would fetch types_docker-" in proc.stderr and "-py3-cp312-any.whl" in proc.stderr
