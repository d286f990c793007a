"""age interop: files nixmig writes open with Debian's age, and the other way round."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nixmig.secrets import store
from nixmig.secrets.age import load_identities
from nixmig.sensitive import Secret
from tests.helpers import ADMIN_PUB, copy_example, private_key, run_cli


def age_keygen(tmp: Path) -> tuple[Path, str]:
    key = tmp / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    pub = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True)
    return key, pub.stdout.strip()


def test_nixmig_file_decrypts_with_age_cli_ssh_and_age_identity(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    age_key, age_pub = age_keygen(tmp_path)
    value = b"s3cret-value_with-no-newline"
    result = store.new_secret(
        repo / "secrets/secrets.nix",
        "db-password",
        Secret(value),
        recipients=[ADMIN_PUB, age_pub],
    )
    assert result.file.read_bytes().startswith(b"age-encryption.org/v1\n")  # binary, like agenix
    for ident in (private_key(tmp_path, "admin_ed25519"), age_key):
        out = subprocess.run(["age", "-d", "-i", str(ident), str(result.file)], check=True, capture_output=True)
        assert out.stdout == value


def test_age_cli_file_decrypts_with_nixmig(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(ADMIN_PUB + "\n")
    target = repo / "secrets" / "twenty-app-secret.age"
    subprocess.run(
        ["age", "-R", str(recipients), "-o", str(target)],
        input=b"from-the-age-cli",
        check=True,
    )
    ident = private_key(tmp_path, "admin_ed25519")
    value = store.show(repo / "secrets/secrets.nix", "twenty-app-secret", load_identities([ident]))
    assert value.reveal() == b"from-the-age-cli"
    proc = run_cli("secret", "show", "twenty-app-secret", "--repo", str(repo), "-i", str(ident))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"from-the-age-cli"


def test_age_identity_file_decrypts_existing_secret(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    age_key, age_pub = age_keygen(tmp_path)
    subprocess.run(["age", "-r", age_pub, "-o", str(repo / "secrets/x.age")], input=b"abc", check=True)
    (repo / "secrets/secrets.nix").write_text(
        (repo / "secrets/secrets.nix").read_text().replace("}\n", f'  "x.age".publicKeys = [ "{age_pub}" ];\n}}\n')
    )
    proc = run_cli("secret", "check", "--repo", str(repo), "-i", str(age_key), "--json")
    report = json.loads(proc.stdout)
    # twenty-app-secret is not readable by this age key: reported, x.age is fine.
    assert [p["file"] for p in report["problems"]] == ["twenty-app-secret.age"]
    assert "is a recipient" in report["problems"][0]["problem"]
    assert proc.returncode == 1


@pytest.mark.parametrize("ident", ["admin_ed25519", "newton_host_ed25519"])
def test_shipped_agenix_file_decrypts(tmp_path: Path, ident: str) -> None:
    repo = copy_example(tmp_path)
    key = private_key(tmp_path, ident)
    expected = subprocess.run(
        ["age", "-d", "-i", str(key), str(repo / "secrets/twenty-app-secret.age")],
        check=True,
        capture_output=True,
    ).stdout
    got = store.show(repo / "secrets/secrets.nix", "twenty-app-secret", load_identities([key]))
    assert got.reveal() == expected and expected
