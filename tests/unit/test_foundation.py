"""Config loading, the Secret type, generators, exit codes, and start-up imports."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nixmig import config
from nixmig.errors import ConfigError, UsageError
from nixmig.secrets.generate import ALPHABETS, from_stdin, generate
from nixmig.sensitive import Secret
from tests.helpers import run_cli

EXAMPLE_TOML = """\
secrets_dir = "secrets"

[operator]
recipients = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIWGQejmv1vqcqb2xrIuLEd6YFeWLHzeobl7s3js0eT3"]

[hosts.newton]
address = "newton.example.org"
port = 22
user = "root"
identity = "~/.ssh/id_ed25519"
known_hosts = "~/.ssh/known_hosts"
age_recipient = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG8IX+GbwvuhhTIXuwLJpZ4x7RNzQwb4yKIOiP1pQGSi"

[services.twenty-db]
host = "newton"
runtime = "docker"
container = "twenty-db-1"
volume = "twenty_db-data"
database = "default"
role = "postgres"

[migrations.twenty-db-password]
service = "twenty-db"
secret = "twenty-db-password"
strategy = "rotate"
deploy = "deploy --skip-checks .#newton"

[[migrations.twenty-db-password.health_checks]]
type = "http"
url = "https://crm.example.org/healthz"
timeout = 60
"""


def load_text(tmp_path: Path, text: str) -> config.Config:
    f = tmp_path / "nixmig.toml"
    f.write_text(text)
    return config.load(f)


def test_worked_example_config_loads(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, EXAMPLE_TOML)
    assert cfg.hosts["newton"].port == 22
    assert cfg.services["twenty-db"].container == "twenty-db-1"
    mig = cfg.migrations["twenty-db-password"]
    assert mig.strategy == "rotate" and mig.retention_days == 7
    assert mig.health_checks[0].timeout == 60.0
    assert cfg.repo == tmp_path
    assert cfg.host_recipients() == [cfg.hosts["newton"].age_recipient]


def test_readme_example_is_the_tested_one() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert EXAMPLE_TOML.strip() in readme


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("port = 22", 'port = "22a"'), "hosts.newton.port: expected an integer, got '22a'"),
        (("port = 22", "prot = 22"), "hosts.newton.prot: unknown key"),
        (
            ('strategy = "rotate"', 'strategy = "yolo"'),
            "migrations.twenty-db-password.strategy: expected one of 'rotate', 'rebuild', 'dual-role'",
        ),
        (('host = "newton"', 'host = "nowhere"'), "services.twenty-db.host: unknown host 'nowhere'"),
        (('service = "twenty-db"', 'service = "x"'), "migrations.twenty-db-password.service: unknown service 'x'"),
        (
            ("timeout = 60", "timeout = true"),
            "migrations.twenty-db-password.health_checks[0].timeout: expected a number",
        ),
        (('address = "newton.example.org"\n', ""), "hosts.newton.address: required key is missing"),
        (("[operator]", "[operator"), "not valid TOML"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, EXAMPLE_TOML.replace(*edit))
    text = str(exc.value)
    assert text.startswith(str(tmp_path / "nixmig.toml") + ": ")
    assert message in text
    assert "\n" not in text


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml")


def test_secret_is_masked_everywhere() -> None:
    s = Secret("hunter2-hunter2")
    assert "hunter2" not in f"{s} {s!r} {s:>20} {[s]} {dict(a=s)}"
    assert s.reveal() == b"hunter2-hunter2"
    assert s == Secret(b"hunter2-hunter2") and s != Secret("other")
    with pytest.raises(TypeError):
        pickle.dumps(s)


@pytest.mark.parametrize("charset", sorted(ALPHABETS))
def test_generate_uses_only_its_alphabet(charset: str) -> None:
    values = [generate(64, charset).reveal_str() for _ in range(50)]  # type: ignore[arg-type]
    assert all(len(v) == 64 for v in values)
    seen = Counter("".join(values))
    assert set(seen) <= set(ALPHABETS[charset])
    assert len(seen) > len(ALPHABETS[charset]) * 0.9  # uses (nearly) the whole alphabet
    assert len(set(values)) == 50


def test_generate_rejects_short_lengths() -> None:
    with pytest.raises(UsageError):
        generate(8)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"pw\n", b"pw"), (b"pw", b"pw"), (b"pw\r\n", b"pw"), (b"pw\n\n", b"pw\n"), (b" pw \n", b" pw ")],
)
def test_stdin_strips_exactly_one_newline(raw: bytes, expected: bytes) -> None:
    assert from_stdin(raw).reveal() == expected


def test_exit_codes_and_one_line_errors(tmp_path: Path) -> None:
    ok = run_cli("--help")
    assert ok.returncode == 0 and b"secret" in ok.stdout
    usage = run_cli("secret", "new")
    assert usage.returncode == 2
    unknown = run_cli("frobnicate")
    assert unknown.returncode == 2
    bad = run_cli("secret", "check", "--repo", str(tmp_path))
    assert bad.returncode == 1
    assert bad.stderr.decode().count("\n") == 1 and b"Traceback" not in bad.stderr
    debug = run_cli("--debug", "secret", "check", "--repo", str(tmp_path))
    assert debug.returncode == 1 and b"Traceback" in debug.stderr


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "nixmig.toml").write_text("[hosts.a]\nport = 1\n")
    proc = run_cli("secret", "check", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == (
        "nixmig: error: nixmig.toml: hosts.a.address: required key is missing — add address = a string"
    )


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from nixmig.cli import main\n"
        "sys.argv = ['nixmig', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'paramiko', 'docker', 'psycopg', 'pyrage', 'tree_sitter', 'cryptography', 'hvac', 'jinja2'}\n"
        "ours = {'nixmig.engine', 'nixmig.reencrypt.runner', 'nixmig.reencrypt.core', 'nixmig.reencrypt.catalog',"
        " 'nixmig.reencrypt.database', 'nixmig.nixsrc.scan', 'nixmig.nixsrc.patch'}\n"
        "print(sorted(({m.split('.')[0] for m in sys.modules} & heavy) | (set(sys.modules) & ours)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_reencrypt_table_is_accepted_and_kept_raw(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, EXAMPLE_TOML + '\n[reencrypt]\ntables = { users = { columns = ["email"] } }\n')
    assert cfg.reencrypt == {"tables": {"users": {"columns": ["email"]}}}
