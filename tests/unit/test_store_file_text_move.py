"""A ``*File`` option given a store file whose text holds a credential among other lines (miniflux'
``adminCredentialsFile = pkgs.writeText "x" ''ADMIN_USERNAME=...\\nADMIN_PASSWORD=...''``), under strategy
move: the whole text is the secret, as Nix evaluates the indented string (escapes, indentation), taken
by `secret new --from` at the password's line or the string's, and the option names the agenix file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nixmig.secrets import store
from nixmig.secrets.age import load_identities
from tests.helpers import FIXTURES, private_key, run_cli

CASE = FIXTURES / "shapes" / "native-miniflux-admin-credentials-writetext-move"
MODULE = "modules/miniflux.nix"


def _evaluated_text() -> str:
    """What Nix writes into the store file: the writeText's text, evaluated by nix-instantiate."""
    source = (CASE / MODULE).read_text()
    start = source.index("''\n")
    end = source.index("'';", start) + 2
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-"], input=source[start:end].encode(), capture_output=True
    )
    assert proc.returncode == 0, proc.stderr.decode()
    text: str = json.loads(proc.stdout)
    return text


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(CASE, repo, ignore=shutil.ignore_patterns("expected.diff", "case.json"))
    return repo


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate")
@pytest.mark.parametrize("at", ["the string", "the password's line"])
def test_the_whole_text_moves_into_the_secret_and_the_option_reads_it(tmp_path: Path, at: str) -> None:
    repo = _repo(tmp_path)
    first = run_cli("patch", "--write", cwd=repo)
    assert first.returncode != 0  # the .age is not there yet: nothing written, the spec said
    m = re.search(rb"secret new miniflux-admin-password --from (\S+?);", first.stderr)
    assert m, first.stderr
    spec = m.group(1).decode() if at == "the string" else f"{MODULE}:12"
    made = run_cli("secret", "new", "miniflux-admin-password", "--repo", str(repo), "--from", spec)
    assert made.returncode == 0, made.stderr
    assert b"the whole text (2 lines)" in made.stdout and b"Fl4x" not in made.stdout + made.stderr
    ident = private_key(tmp_path, "admin_ed25519")
    kept = store.show(repo / "secrets/secrets.nix", "miniflux-admin-password", load_identities([ident])).reveal()
    assert kept.decode() == _evaluated_text() == "ADMIN_USERNAME=reader\nADMIN_PASSWORD=Fl4x-read3r-pw''s\n"
    second = run_cli("patch", "--write", cwd=repo)
    assert second.returncode == 0, second.stderr
    patched = (repo / MODULE).read_text()
    assert "Fl4x" not in patched and "config.age.secrets.miniflux-admin-password.path" in patched
    scan = run_cli("scan", "--fail-on-findings", str(repo))
    assert scan.returncode == 0, scan.stdout
