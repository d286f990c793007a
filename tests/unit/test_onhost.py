"""The on-host fast path: it answers only when the journal says done and the secret is the
one applied, imports nothing heavy (not even typer), and declines everything else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nixmig import onhost
from nixmig.journal import Journal

TOML = """\
[operator]
recipients = []
[hosts.newton]
address = "localhost"
transport = "local"
agenix_dir = "{agenix}"
lock_dir = "{lock}"
[hosts.other]
address = "other.example.org"
[services.db]
host = "newton"
runtime = "native"
[migrations.db-password]
service = "db"
secret = "db-password"
"""

PHASES = ["preflight", "backup", "stage", "rotate", "switch", "verify", "cleanup"]


def make(tmp_path: Path, *, secret: bytes = b"s3cret-value", applied: bytes | None = None) -> tuple[Path, Path]:
    agenix = tmp_path / "agenix"
    agenix.mkdir()
    (agenix / "db-password").write_bytes(secret)
    cfg = tmp_path / "nixmig.toml"
    cfg.write_text(TOML.format(agenix=agenix, lock=tmp_path / "lock"))
    state = tmp_path / "state"
    j = Journal.open(state / "journal", "newton", "db-password")
    for p in PHASES:
        j.begin(p)
        j.finish(p)
    j.meta["secret"] = onhost.secret_tag(secret if applied is None else applied)
    j.complete()
    onhost.remember(state, cfg, None, None, j, agenix / "db-password")  # what a completed run leaves
    return cfg, state


def fast(cfg: Path, state: Path, *extra: str) -> str | None:
    return onhost.fast_path(["apply", "--on-host", "-c", str(cfg), "--state-dir", str(state), *extra])


def test_done_and_same_secret_is_answered(tmp_path: Path) -> None:
    cfg, state = make(tmp_path)
    line = fast(cfg, state)
    assert (
        line == f"nixmig: db-password on newton: done, nothing to do (journal {state}/journal/newton/db-password.json)"
    )
    assert fast(cfg, state, "--yes") == line
    # other options: the full command answers once (and leaves the index for them)
    assert fast(cfg, state, "-m", "db-password", "--host=newton") is None
    j = Journal.open(state / "journal", "newton", "db-password")
    onhost.remember(state, cfg, "db-password", "newton", j, tmp_path / "agenix" / "db-password")
    assert fast(cfg, state, "-m", "db-password", "--host=newton") == line


def test_declines_when_the_config_changed(tmp_path: Path) -> None:
    cfg, state = make(tmp_path)
    cfg.write_text(cfg.read_text() + "\n# an edit\n")
    assert fast(cfg, state) is None


def test_host_from_the_environment_is_part_of_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, state = make(tmp_path)
    monkeypatch.setenv("NIXMIG_HOST", "other")
    assert fast(cfg, state) is None


def test_declines_whenever_the_full_command_must_decide(tmp_path: Path) -> None:
    cfg, state = make(tmp_path)
    assert fast(cfg, state, "-i", "key") is None  # an option it does not know
    assert fast(cfg, state, "--help") is None
    assert fast(cfg, state, "--host", "other") is None  # another host's journal: not there
    assert fast(cfg, state, "-m", "nope") is None
    assert onhost.fast_path(["status", "--on-host", "-c", str(cfg)]) is None
    assert onhost.fast_path(["apply", "-c", str(cfg)]) is None  # not on-host
    assert fast(tmp_path / "missing.toml", state) is None
    j = Journal.open(state / "journal", "newton", "db-password")
    j.rolled_back = True
    j.save()
    assert fast(cfg, state) is None


def test_declines_when_the_secret_changed_or_is_gone(tmp_path: Path) -> None:
    cfg, state = make(tmp_path, applied=b"the-previous-one")
    assert fast(cfg, state) is None
    (tmp_path / "agenix" / "db-password").unlink()
    assert fast(cfg, state) is None


def test_declines_an_unfinished_journal(tmp_path: Path) -> None:
    cfg, state = make(tmp_path)
    path = state / "journal" / "newton" / "db-password.json"
    raw = json.loads(path.read_text())
    raw["steps"][3]["state"] = "failed"
    path.write_text(json.dumps(raw))
    assert fast(cfg, state) is None
    raw["steps"][3]["state"] = "done"
    raw["completed"] = None
    path.write_text(json.dumps(raw))
    assert fast(cfg, state) is None


def test_secret_tag_is_salted_and_checks() -> None:
    a, b = onhost.secret_tag(b"pw"), onhost.secret_tag(b"pw")
    assert a != b and a.startswith("pbkdf2-sha256$4096$")
    assert onhost.tag_matches(a, b"pw") and onhost.tag_matches(b, b"pw")
    assert not onhost.tag_matches(a, b"pw2")
    assert not onhost.tag_matches(None, b"pw") and not onhost.tag_matches("garbage", b"pw")
    assert not onhost.tag_matches(a.replace("$4096$", "$1$"), b"pw")


def test_the_executable_answers_without_heavy_imports(tmp_path: Path) -> None:
    cfg, state = make(tmp_path)
    code = (
        "import sys\n"
        "from nixmig.entry import main\n"
        f"sys.argv = ['nixmig', 'apply', '--on-host', '-c', {str(cfg)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = {'typer', 'click', 'rich', 'paramiko', 'docker', 'psycopg', 'pyrage', 'cryptography', 'jinja2',\n"
        "         'pathlib', 'tomllib', 'dataclasses', 'base64', 'socket'}\n"
        "ours = {'nixmig.engine', 'nixmig.cli', 'nixmig.config', 'nixmig.journal', 'nixmig.onhost'}\n"
        "print(code, sorted(({m.split('.')[0] for m in sys.modules} & heavy) | (set(sys.modules) & ours)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NIXMIG_STATE_DIR": str(state)},
    )
    lines = out.stdout.strip().splitlines()
    assert lines[0].endswith("done, nothing to do (journal " + f"{state}/journal/newton/db-password.json)")
    assert lines[-1] == "0 []"


def test_this_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nixmig import config
    from nixmig.errors import UsageError

    cfg_path, _ = make(tmp_path)
    cfg = config.load(cfg_path)
    assert onhost.this_host(cfg, "db-password") == "newton"  # the service's only host
    assert onhost.this_host(cfg, "db-password", "other") == "other"
    monkeypatch.setenv("NIXMIG_HOST", "other")
    assert onhost.this_host(cfg, "db-password") == "other"
    monkeypatch.setenv("NIXMIG_HOST", "nowhere")
    with pytest.raises(UsageError, match="unknown host 'nowhere'"):
        onhost.this_host(cfg, "db-password")


def test_state_dir_and_config_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NIXMIG_STATE_DIR", raising=False)
    assert onhost.state_dir() == Path("/var/lib/nixmig")
    monkeypatch.setenv("NIXMIG_STATE_DIR", str(tmp_path))
    assert onhost.state_dir() == tmp_path
    assert onhost.state_dir(tmp_path / "x") == tmp_path / "x"
    expected = Path("/etc/nixmig/nixmig.toml") if Path("/etc/nixmig/nixmig.toml").exists() else Path("nixmig.toml")
    assert onhost.config_path() == expected
    assert onhost.config_path(tmp_path / "c.toml") == tmp_path / "c.toml"
