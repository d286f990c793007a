"""secret new / rekey / check / show: behaviour and bad input (one line, nothing written)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nixmig.errors import NixmigError
from nixmig.secrets import store
from nixmig.secrets.age import header, load_identities
from nixmig.sensitive import Secret
from tests.helpers import ADMIN_PUB, NEWTON_PUB, copy_example, private_key, run_cli, snapshot


def one_error_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


def test_new_generates_urlsafe_32_and_never_prints_it(repo: Path, tmp_path: Path) -> None:
    proc = run_cli("secret", "new", "twenty-db-password", "--repo", str(repo), "--like", "twenty-app-secret")
    assert proc.returncode == 0, proc.stderr
    key = private_key(tmp_path, "newton_host_ed25519")
    value = subprocess.run(
        ["age", "-d", "-i", str(key), str(repo / "secrets/twenty-db-password.age")],
        check=True,
        capture_output=True,
    ).stdout
    assert len(value) == 32
    assert all(c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in value)
    assert value not in proc.stdout + proc.stderr


def test_new_from_stdin_strips_exactly_one_newline(repo: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "secret",
        "new",
        "moved",
        "--repo",
        str(repo),
        "--like",
        "twenty-app-secret",
        "--stdin",
        stdin=b"postgres\n\n",
    )
    assert proc.returncode == 0, proc.stderr
    ident = private_key(tmp_path, "admin_ed25519")
    got = store.show(repo / "secrets/secrets.nix", "moved", load_identities([ident]))
    assert got.reveal() == b"postgres\n"


def test_new_default_recipients_from_nixmig_toml(repo: Path) -> None:
    (repo / "nixmig.toml").write_text(
        f'[hosts.newton]\naddress = "newton"\nage_recipient = "{NEWTON_PUB}"\n'
        f'[operator]\nrecipients = ["{ADMIN_PUB}"]\n'
    )
    proc = run_cli("secret", "new", "db", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert '"db.age".publicKeys = [ newton admin ];' in (repo / "secrets/secrets.nix").read_text()


def test_force_replaces_value_and_keeps_expression(repo: Path, tmp_path: Path) -> None:
    rules = repo / "secrets/secrets.nix"
    before = rules.read_bytes()
    old = (repo / "secrets/twenty-app-secret.age").read_bytes()
    store.new_secret(rules, "twenty-app-secret", Secret("new-value"), force=True)
    assert rules.read_bytes() == before
    assert (repo / "secrets/twenty-app-secret.age").read_bytes() != old
    ident = private_key(tmp_path, "admin_ed25519")
    assert store.show(rules, "twenty-app-secret", load_identities([ident])).reveal() == b"new-value"


def test_a_rule_written_first_gets_its_value_with_its_own_keys(repo: Path, tmp_path: Path) -> None:
    """The agenix way: the rule in secrets.nix first, then the value. Before, a rule with no .age was
    "already exists" (pass --force); now it is filled in, secrets.nix untouched."""
    rules = repo / "secrets/secrets.nix"
    rules.write_text(
        rules.read_text().replace(
            '"twenty-app-secret.age"', '"db.age".publicKeys = [ admin ];\n  "twenty-app-secret.age"', 1
        )
    )
    before = rules.read_bytes()
    made = store.new_secret(rules, "db", Secret("first-value"))
    assert rules.read_bytes() == before and not made.replaced
    ident = private_key(tmp_path, "admin_ed25519")
    assert store.show(rules, "db", load_identities([ident])).reveal() == b"first-value"
    with pytest.raises(NixmigError, match=r"secret db\.age already exists"):  # a value there: --force only
        store.new_secret(rules, "db", Secret("second"))


@pytest.mark.parametrize(
    ("args", "stdin", "expect", "code"),
    [
        (["secret", "new", "twenty-app-secret", "--like", "twenty-app-secret"], None, "already exists", 1),
        (["secret", "new", "x", "-r", "not-a-key"], None, "not a public key", 1),
        (["secret", "new", "x", "-r", "ecdsa-sha2-nistp256 AAAAE2VjZHNh"], None, "unsupported key type", 1),
        (["secret", "new", "x", "-r", "ssh-ed25519 AAAA!!!"], None, "not valid base64", 1),
        (["secret", "new", "x", "-r", "age1zzz"], None, "not a valid age recipient", 1),
        (["secret", "new", "x"], None, "no recipients", 2),
        (["secret", "new", "../x", "--like", "twenty-app-secret"], None, "invalid secret name", 2),
        (["secret", "new", "x", "--like", "nope"], None, "--like nope: no such entry", 1),
        (["secret", "new", "x", "--like", "twenty-app-secret", "--length", "8"], None, "out of range", 2),
        (["secret", "new", "x", "--like", "twenty-app-secret", "--stdin"], b"", "stdin is empty", 2),
        (
            ["secret", "show", "twenty-app-secret", "-i", "/nonexistent/key"],
            None,
            "/nonexistent/key: no such identity file",
            1,
        ),
        (["secret", "show", "nope", "-i", "IDENT"], None, "no secret nope.age", 1),
    ],
)
def test_bad_input_one_line_nothing_written(
    repo: Path, tmp_path: Path, args: list[str], stdin: bytes | None, expect: str, code: int
) -> None:
    ident = private_key(tmp_path, "admin_ed25519")
    args = [str(ident) if a == "IDENT" else a for a in args]
    before = snapshot(repo)
    proc = run_cli(*args, "--repo", str(repo), stdin=stdin)
    assert proc.returncode == code, proc.stderr
    assert expect in one_error_line(proc)
    assert snapshot(repo) == before


def test_malformed_secrets_nix_names_line_col(repo: Path) -> None:
    rules = repo / "secrets/secrets.nix"
    rules.write_text(rules.read_text().replace("servers ++ [ admin ];", "servers ++ [ admin ;"))
    before = snapshot(repo)
    proc = run_cli("secret", "new", "x", "--repo", str(repo), "-r", ADMIN_PUB)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert f"{rules}:9:59: syntax error" in line
    assert snapshot(repo) == before


def test_unsupported_key_in_secrets_nix_names_its_line(repo: Path) -> None:
    rules = repo / "secrets/secrets.nix"
    rules.write_text(
        rules.read_text().replace("servers = [ newton ];", 'servers = [ newton "ecdsa-sha2-nistp256 AAAAE2VjZHNh" ];')
    )
    before = snapshot(repo)
    proc = run_cli("secret", "new", "x", "--repo", str(repo), "--like", "twenty-app-secret")
    assert proc.returncode == 1
    assert f"{rules}:6: twenty-" not in one_error_line(proc)  # names the new entry's key
    assert f"{rules}:6:" in one_error_line(proc)
    assert snapshot(repo) == before


def test_repo_without_secrets_nix(tmp_path: Path) -> None:
    proc = run_cli("secret", "new", "x", "--repo", str(tmp_path), "-r", ADMIN_PUB)
    assert proc.returncode == 1
    assert "no secrets.nix" in one_error_line(proc)
    assert list(tmp_path.iterdir()) == []


def test_identity_that_is_not_a_recipient_names_the_file(repo: Path, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    proc = run_cli("secret", "show", "twenty-app-secret", "--repo", str(repo), "-i", str(tmp_path / "other"))
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "twenty-app-secret.age" in line and str(tmp_path / "other") in line
    assert "is a recipient" in line


def add_host_key(repo: Path, pub: str) -> None:
    rules = repo / "secrets/secrets.nix"
    rules.write_text(
        rules.read_text().replace("servers = [ newton ];", f'zeta = "{pub}";\n  servers = [ newton zeta ];')
    )


def test_rekey_after_adding_a_host(repo: Path, tmp_path: Path) -> None:
    store.new_secret(repo / "secrets/secrets.nix", "db", Secret("dbpw"), like="twenty-app-secret")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "zeta")], check=True)
    add_host_key(repo, " ".join((tmp_path / "zeta.pub").read_text().split()[:2]))
    admin = private_key(tmp_path, "admin_ed25519")

    dry = run_cli("secret", "rekey", "--repo", str(repo), "--dry-run", "--json")
    assert {i["name"]: i["status"] for i in json.loads(dry.stdout)} == {
        "twenty-app-secret.age": "would rekey",
        "db.age": "would rekey",
    }
    proc = run_cli("secret", "rekey", "--repo", str(repo), "-i", str(admin), "--json")
    assert proc.returncode == 0, proc.stderr
    assert {i["status"] for i in json.loads(proc.stdout)} == {"rekeyed"}
    out = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "zeta"), str(repo / "secrets/db.age")], check=True, capture_output=True
    )
    assert out.stdout == b"dbpw"
    again = run_cli("secret", "rekey", "--repo", str(repo), "-i", str(admin), "--json")
    assert {i["status"] for i in json.loads(again.stdout)} == {"unchanged"}
    check = run_cli("secret", "check", "--repo", str(repo), "-i", str(admin))
    assert check.returncode == 0, check.stdout + check.stderr


def test_rekey_is_all_or_nothing(repo: Path, tmp_path: Path) -> None:
    rules = repo / "secrets/secrets.nix"
    # b.age is readable only by a key the operator does not pass.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    kpub = " ".join((tmp_path / "k.pub").read_text().split()[:2])
    add_host_key(repo, kpub)
    store.new_secret(rules, "b", Secret("bbb"), recipients=[kpub])
    rules.write_text(
        rules.read_text().replace('"b.age".publicKeys = [ zeta ];', '"b.age".publicKeys = [ zeta admin ];')
    )
    before = snapshot(repo)
    proc = run_cli("secret", "rekey", "--repo", str(repo), "-i", str(private_key(tmp_path, "admin_ed25519")))
    assert proc.returncode == 1
    assert "cannot decrypt b.age" in one_error_line(proc)
    assert snapshot(repo) == before


def test_check_reports_every_kind_of_problem(repo: Path, tmp_path: Path) -> None:
    rules = repo / "secrets/secrets.nix"
    store.new_secret(rules, "only-admin", Secret("x"), recipients=[ADMIN_PUB])
    rules.write_text(
        rules.read_text()
        .replace('"only-admin.age".publicKeys = [ admin ];', '"only-admin.age".publicKeys = [ admin newton ];')
        .replace("}\n", '  "gone.age".publicKeys = [ admin ];\n}\n')
    )
    (repo / "secrets/stray.age").write_bytes((repo / "secrets/only-admin.age").read_bytes())
    proc = run_cli(
        "secret", "check", "--repo", str(repo), "-i", str(private_key(tmp_path, "newton_host_ed25519")), "--json"
    )
    assert proc.returncode == 1
    problems: dict[str, list[str]] = {}
    for p in json.loads(proc.stdout)["problems"]:
        problems.setdefault(p["file"], []).append(p["problem"])
    assert set(problems) == {"only-admin.age", "gone.age", "stray.age"}
    # encrypted to admin only, listed for admin and newton; and newton's key cannot read it
    assert ["other keys" in p for p in problems["only-admin.age"]] == [True, False]
    assert "is a recipient" in problems["only-admin.age"][1]
    assert ["missing" in p for p in problems["gone.age"]] == [True]
    assert ["not listed" in p for p in problems["stray.age"]] == [True]
    assert len(header((repo / "secrets/only-admin.age").read_bytes(), where="x")) >= 1
