"""apply's fixed cost (issue 14): what a run pays before and between its round trips."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nixmig.nixsrc import validate


def test_ssh_transport_does_not_import_invoke() -> None:
    # paramiko.config tries `import invoke` (for ssh_config's Match exec, which nixmig never
    # reads): ~35 ms of every apply's start-up; nixmig.remote.ssh keeps it out, for that import only
    code = (
        "import sys\n"
        "import nixmig.remote.ssh\n"
        "print('invoke' in sys.modules, 'paramiko' in sys.modules)\n"
        "import invoke\n"
        "print(invoke.__name__, sys.modules['invoke'] is invoke)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "invoke", "True"], out.stdout + out.stderr


def test_ssh_transport_keeps_an_invoke_already_imported() -> None:
    code = "import sys, invoke\nimport nixmig.remote.ssh\nprint(sys.modules['invoke'] is invoke)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stdout + out.stderr


# A probe, not a fake: it records that it started, waits (up to 3 s) until every process of
# the check has started, then runs the real nix-instantiate with the same arguments and stdin.
_PROBE = """#!/bin/sh
dir=$(dirname "$0")
: > "$dir/started.$$"
i=0
while [ "$(ls "$dir" | grep -c '^started\\.')" -lt {n} ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
ls "$dir" | grep -c '^started\\.' >> "$dir/seen"
exec {real} "$@"
"""


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-instantiate not installed")
def test_the_files_of_a_patch_are_parsed_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # nix-instantiate takes ~40 ms to start: each deploy's patch checks its files with it, and
    # one after the other they were most of the patch's time (validate._nix_parse)
    real = shutil.which("nix-instantiate")
    probe = tmp_path / "bin" / "nix-instantiate"
    probe.parent.mkdir()
    probe.write_text(_PROBE.format(n=3, real=real))
    probe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{probe.parent}{os.pathsep}{os.environ['PATH']}")
    files = {"a.nix": b"{ a = 1; }\n", "b.nix": b"{ b = 2; }\n", "c.nix": b"{ c = 3; }\n"}
    assert validate.check_all(files) == "nix-instantiate --parse"
    assert (probe.parent / "seen").read_text().split() == ["3", "3", "3"]  # each saw all three started
    # and a file that does not parse is still named, with nix-instantiate's position
    for f in probe.parent.glob("started.*"):
        f.unlink()
    (probe.parent / "seen").unlink()
    bad = {**files, "b.nix": b"{ b = ; }\n"}
    with pytest.raises(validate.WouldNotParse) as exc:
        validate.check_all(bad)
    assert exc.value.where == "b.nix:1:7", exc.value.line()
    assert "(nix-instantiate --parse)" in str(exc.value)


# A process ending through nixmig.entry: an object whose __del__ says when the interpreter
# tears its modules down, an atexit handler, and (optionally) a thread that is not a daemon.
_ENDING = """
import atexit, sys, threading, time
class Teardown:
    def __del__(self):
        print("module teardown", flush=True)
kept = Teardown()
atexit.register(lambda: print("atexit handlers ran", flush=True))
import nixmig.entry
if sys.argv[1] == "thread":  # alive when the command has returned (however slow the machine), then ends
    returned = threading.Event()
    threading.Thread(target=lambda: (returned.wait(30), time.sleep(1.0))).start()
    real_exit = nixmig.entry._exit
    def _exit(code):
        returned.set()
        real_exit(code)
    nixmig.entry._exit = _exit
sys.argv = ["nixmig", *sys.argv[2:]]
from nixmig.entry import main
main()
"""


@pytest.mark.parametrize(
    ("args", "code"), [(["--version"], 0), (["apply", "--yes", "-c", "{tmp}/none.toml"], 1), (["apply", "--x"], 2)]
)
def test_a_finished_command_ends_without_the_teardown_of_every_module(
    tmp_path: Path, args: list[str], code: int
) -> None:
    # ~50 ms of an apply's fixed cost (paramiko, psycopg, jinja2, tree-sitter loaded): skipped,
    # with output flushed, atexit handlers run and the exit status kept
    argv = [a.format(tmp=tmp_path) for a in args]
    r = subprocess.run([sys.executable, "-c", _ENDING, "-", *argv], capture_output=True, text=True, check=False)
    assert r.returncode == code, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "atexit handlers ran", r.stdout
    assert "module teardown" not in r.stdout
    if code == 1:
        assert r.stderr.startswith("nixmig: error: "), r.stderr  # the error line got out before the end


def test_a_thread_still_running_gets_the_interpreters_own_exit() -> None:
    r = subprocess.run(
        [sys.executable, "-c", _ENDING, "thread", "--version"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == ["atexit handlers ran", "module teardown"], r.stdout


def test_apply_parses_its_options_without_pydantic(tmp_path: Path) -> None:
    # typer 0.2x coerces each option's value with a pydantic TypeAdapter: the import of
    # pydantic was ~60-90 ms of every apply's start-up (nixmig.cli.plain)
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('pydantic' in sys.modules, flush=True))\n"
        "sys.argv = ['nixmig', *sys.argv[1:]]\n"
        "from nixmig.entry import main\n"
        "main()\n"
    )
    argv = ["--debug", "apply", "--yes", "-c", str(tmp_path / "none.toml"), "-i", str(tmp_path / "key")]
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "none.toml" in r.stderr, r.stdout + r.stderr  # parsed, then the config
    assert r.stdout.split() == ["False"], r.stdout + r.stderr


def test_the_backup_s_pipes_hold_a_mebibyte() -> None:
    # Linux's 64 KiB pipe switched the backup's threads (the dump's reader, age's encryption,
    # the test-decryption) every 64 KiB: CPU taken from the pg_dump beside them on a busy machine
    from nixmig.phases import backup

    r, w = backup._pipe()
    assert isinstance(r, io.BufferedReader)
    with r, w:
        os.set_blocking(w.fileno(), False)
        assert os.write(w.fileno(), b"x" * (768 << 10)) == 768 << 10  # 64 KiB without: EAGAIN after
        assert len(r.read(8192)) == 8192  # age's read size
        assert len(r.peek()) == (768 << 10) - 8192  # the rest is in the reader's buffer: no more syscalls
