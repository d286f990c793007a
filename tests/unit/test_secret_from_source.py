"""`nixmig secret new NAME --from FILE:LINE[:COL]`: the hardcoded value moves into the .age, never printed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from nixmig.secrets import store
from nixmig.secrets.age import load_identities
from tests.helpers import copy_example, private_key, run_cli, snapshot

COMPOSE = "modules/system/linux/twenty/arion-compose.nix"


def _show(repo: Path, tmp_path: Path, name: str) -> bytes:
    ident = private_key(tmp_path, "admin_ed25519")
    return store.show(repo / "secrets/secrets.nix", name, load_identities([ident])).reveal()


def _new(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_cli("secret", "new", "kept", "--repo", str(repo), "--like", "twenty-app-secret", *args)


def test_the_value_at_file_line_moves_into_the_age_file(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    proc = _new(repo, "--from", f"{COMPOSE}:44")  # POSTGRES_PASSWORD = "postgres"
    assert proc.returncode == 0, proc.stderr
    assert _show(repo, tmp_path, "kept") == b"postgres"
    out = proc.stdout + proc.stderr
    assert b"postgres\n" not in proc.stdout and b'"postgres"' not in out
    assert f"{COMPOSE}:44:32".encode() in proc.stdout and b"rotate it" in proc.stderr


def test_a_url_credential_is_taken_percent_decoded(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    path = repo / COMPOSE
    path.write_text(path.read_text().replace("postgres:postgres@db", "postgres:p%40ss%2Fw@db", 1))
    proc = _new(repo, "--from", f"{COMPOSE}:14:50", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["from"] == f"{COMPOSE}:14:50"
    assert _show(repo, tmp_path, "kept") == b"p@ss/w"


def test_nothing_there_or_bad_spec_is_one_line_and_nothing_written(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    before = snapshot(repo)
    for spec, said in (
        (f"{COMPOSE}:3", "no hardcoded secret there"),
        (f"{COMPOSE}:x", "expected FILE:LINE"),
        ("nope.nix:1", "cannot read nope.nix"),
    ):
        proc = _new(repo, "--from", spec)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and said in err and err.count("\n") == 1 and "Traceback" not in err, err
    proc = _new(repo, "--from", f"{COMPOSE}:44", "--stdin")
    assert proc.returncode == 2 and "exclude each other" in proc.stderr.decode()
    assert snapshot(repo) == before
