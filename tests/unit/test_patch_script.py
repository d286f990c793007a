"""The env-file renderer, run for real: any password makes a valid URL, nothing leaks, modes are right.

The script is run as rendered by Python and as Nix produces it from the patched
module (evaluated with nix-instantiate and a stub nixpkgs), and both are the same bytes.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

import pytest
from psycopg import conninfo  # noqa: TID251 - libpq's own URL parser, as the judge of the encoding

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.quote import nix_string, shell_quote
from nixmig.nixsrc.render import EnvFile, EnvLine, render_script
from tests.helpers import EXAMPLE

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed")

SECRET = "twenty-db-password"
PREFIX, SUFFIX = "postgres://postgres:", "@db:5432/default"

PASSWORDS: list[bytes] = [
    b"postgres",
    b"/ + = @ : % ?",
    b"a/b+c=d@e:f%g?h",
    b"with space",
    b" leading and trailing ",
    b"single'quote",
    b'double"quote',
    b"back\\slash\\",
    b"dollar$HOME and ${HOME} and $(id) and `id`",
    b"hash # amp & semi ; pipe | lt < gt >",
    b"''${x}''",
    b"star * question ? brackets [a-z]",
    b"-n",
    b"-e \\n",
    b"new\nline",
    b"trailing newline\n",
    b"tab\there",
    "unicode é ü 中文 🙂".encode(),
    b"\xff\xfe not utf-8",
    b"~unreserved-._~",
    b"x" * 200,
    bytes(range(1, 256)),
]


def _rng_passwords(n: int) -> list[bytes]:
    rnd = random.Random(7)
    return [bytes(rnd.randrange(1, 256) for _ in range(rnd.randint(1, 64))) for _ in range(n)]


def _run(script: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    base = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        ["bash", "-c", script, "nixmig-env"],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        timeout=60,
        check=False,
    )


def _setup(tmp_path: Path, password: bytes) -> tuple[Path, Path]:
    pw = tmp_path / "agenix" / SECRET
    pw.parent.mkdir()
    pw.write_bytes(password)
    pw.chmod(0o400)
    run = tmp_path / "run" / "twenty"
    run.mkdir(parents=True, mode=0o700)
    return pw, run / f"{SECRET}.env"


def _script(pw: Path, env: Path, lines: tuple[EnvLine, ...] | None = None) -> str:
    lines = lines or (EnvLine("PG_DATABASE_URL", PREFIX, SUFFIX),)
    return render_script(SECRET, shell_quote(str(pw)), [EnvFile(str(env), lines)])


def _check_env_file(env: Path, password: bytes) -> str:
    assert stat.S_IMODE(env.stat().st_mode) == 0o400
    assert [p.name for p in env.parent.iterdir()] == [env.name]  # no temp file left behind
    data = env.read_bytes()
    assert data.isascii() and data.endswith(b"\n") and data.count(b"\n") == 1
    line = data.decode()[:-1]
    var, _, url = line.partition("=")
    assert var == "PG_DATABASE_URL"
    assert url.startswith(PREFIX) and url.endswith(SUFFIX)
    encoded = url[len(PREFIX) : -len(SUFFIX)]
    assert encoded == quote(password, safe="")  # RFC 3986: everything but A-Z a-z 0-9 - . _ ~, uppercase hex
    assert unquote_to_bytes(encoded) == password
    return url


@pytest.mark.parametrize("password", PASSWORDS + _rng_passwords(40), ids=lambda p: repr(p)[:40])
def test_any_password_makes_a_url_libpq_reads_back(tmp_path: Path, password: bytes) -> None:
    pw, env = _setup(tmp_path, password)
    proc = _run(_script(pw, env), tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"" and proc.stderr == b""
    password = password.rstrip(b"\n")  # the secret's value: the file less its final line breaks (below)
    url = _check_env_file(env, password)
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        return  # libpq takes bytes, psycopg wants text: the byte-exact check above covers it
    parsed = conninfo.conninfo_to_dict(url)
    assert parsed["password"] == text
    assert parsed["user"] == "postgres" and parsed["host"] == "db" and parsed["dbname"] == "default"


@pytest.mark.parametrize("ending", [b"\n", b"\n\n"])
def test_the_final_line_breaks_of_the_file_are_not_the_password(tmp_path: Path, ending: bytes) -> None:
    """`agenix -e` in an editor leaves a newline at the end of the file; the images' *_FILE, the
    shell's $(< FILE), psql's backquote and nixmig's own rotation (rotate.secret_value) read the
    password without it. The URL did carry it (%0A): the app then logged in with another password
    than the database's (realcfg20's review)."""
    pw, env = _setup(tmp_path, b"p@ss\nw" + ending)
    proc = _run(_script(pw, env), tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert _check_env_file(env, b"p@ss\nw").endswith("p%40ss%0Aw" + SUFFIX)  # a line break inside stays


def test_a_file_of_line_breaks_only_stops_the_unit(tmp_path: Path) -> None:
    pw, env = _setup(tmp_path, b"\n")
    proc = _run(_script(pw, env), tmp_path)
    assert proc.returncode == 1 and not env.exists()
    assert b"holds only line breaks" in proc.stderr


def test_several_files_and_lines(tmp_path: Path) -> None:
    pw, env = _setup(tmp_path, b"p@ss/w:rd")
    other = env.parent / "other.env"
    files = [
        EnvFile(
            str(env),
            (
                EnvLine("PG_DATABASE_URL", PREFIX, SUFFIX),
                EnvLine("DATABASE_URL", "postgresql+asyncpg://postgres:", "@db/app?sslmode=disable"),
            ),
        ),
        EnvFile(str(other), (EnvLine("X", "postgres://u:", "@h"),)),
    ]
    proc = _run(render_script(SECRET, shell_quote(str(pw)), files), tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert env.read_text() == (
        "PG_DATABASE_URL=postgres://postgres:p%40ss%2Fw%3Ard@db:5432/default\n"
        "DATABASE_URL=postgresql+asyncpg://postgres:p%40ss%2Fw%3Ard@db/app?sslmode=disable\n"
    )
    assert other.read_text() == "X=postgres://u:p%40ss%2Fw%3Ard@h\n"
    assert stat.S_IMODE(other.stat().st_mode) == 0o400


def test_rerun_replaces_a_0400_file(tmp_path: Path) -> None:
    pw, env = _setup(tmp_path, b"first")
    assert _run(_script(pw, env), tmp_path).returncode == 0
    pw.chmod(0o600)
    pw.write_bytes(b"second/")
    proc = _run(_script(pw, env), tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    _check_env_file(env, b"second/")


def test_the_password_is_in_no_argv(tmp_path: Path) -> None:
    """Every external command the script runs is wrapped and logs its argv: the password is in none."""
    password = b"NeverInArgv/+="
    pw, env = _setup(tmp_path, password)
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    log = tmp_path / "argv.log"
    for tool in ("od", "tr", "mktemp", "chmod", "mv", "rm", "cat", "printf", "echo"):
        real = shutil.which(tool)
        if real is None:
            continue
        w = wrappers / tool
        w.write_text(f'#!/bin/bash\nprintf "%s\\n" "{tool} $*" >> {shell_quote(str(log))}\nexec {real} "$@"\n')
        w.chmod(0o755)
    proc = _run(_script(pw, env), tmp_path, env={"PATH": f"{wrappers}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr.decode()
    _check_env_file(env, password)
    logged = log.read_bytes()
    assert b"od -An -v -tx1 --" in logged and b"mv -f --" in logged
    assert password not in logged
    assert quote(password, safe="").encode() not in logged
    assert b"NeverInArgv" not in logged


@pytest.mark.parametrize("content", [None, b""])
def test_missing_or_empty_password_file_fails_loudly(tmp_path: Path, content: bytes | None) -> None:
    pw, env = _setup(tmp_path, b"x")
    pw.chmod(0o600)
    if content is None:
        pw.unlink()
    else:
        pw.write_bytes(content)
    proc = _run(_script(pw, env), tmp_path)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert str(pw) in err and f"is the agenix secret {SECRET} deployed?" in err
    assert list(env.parent.iterdir()) == []


def test_unreadable_password_file_fails_and_leaves_nothing() -> None:
    # Root reads a 0000 file, so as root (CI) the script runs as nobody, the way a
    # service user that lacks the secret's owner would.
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        base = Path(d)
        base.chmod(0o755)
        pw, env = _setup(base, b"x")
        pw.chmod(0o000)
        script = _script(pw, env)
        if os.geteuid() == 0:
            nobody = 65534
            pw.parent.chmod(0o755)
            for p in (env.parent.parent, env.parent):
                os.chown(p, nobody, nobody)
            script = f"exec setpriv --reuid={nobody} --regid={nobody} --clear-groups bash -c {shlex.quote(script)}"
        proc = _run(script, base)
        assert proc.returncode != 0
        assert "Permission denied" in proc.stderr.decode()
        assert list(env.parent.iterdir()) == []


# ---------------------------------------------------------------- as Nix produces it

STUB = """
let
  lib = {
    mkIf = c: x: x; mkMerge = xs: xs; mkOption = x: x; mkEnableOption = x: x;
    types = { str = null; port = null; path = null; nullOr = x: x; enum = x: x; };
    # nixpkgs' escapeShellArg, verbatim
    escapeShellArg = arg: "'${builtins.replaceStrings ["'"] ["'\\\\''"] (toString arg)}'";
  };
  pkgs = { writeShellScript = name: text: { inherit name text; }; };
  config = {
    age.secrets.twenty-db-password.path = PWPATH;
    services.twenty-crm.enable = true;
  };
  m = import MODULE { inherit config lib pkgs; };
  age = builtins.mapAttrs (n: v: v // { file = toString v.file; }) m.config.age.secrets;
in m.config.systemd.services.twenty.serviceConfig // { inherit age; }
"""


def nix_eval_module(module: Path, pw_path: str) -> dict[str, object]:
    expr = STUB.replace("PWPATH", nix_string(pw_path)).replace("MODULE", str(module))
    # writeShellScript's result is interpolated into a string in the module: make it a string
    expr = expr.replace("{ inherit name text; }", '"#!name=${name}\\n${text}"')
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-"],
        input=expr.encode(),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@needs_nix
def test_the_script_nix_builds_is_the_rendered_one_and_works(tmp_path: Path) -> None:
    src = pt.read_sources(EXAMPLE)
    spec = pt.Spec(secret=SECRET, host="newton", container="twenty-db-1")
    out = {**src, **pt.plan(src, spec).results(src)}
    repo = tmp_path / "repo"
    for name, data in out.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    module = repo / "modules/system/linux/twenty-crm.nix"
    pw_path = str(tmp_path / "agenix dir" / "it's the secret")
    cfg = nix_eval_module(module, pw_path)
    assert cfg["RuntimeDirectory"] == "twenty"
    assert cfg["RuntimeDirectoryMode"] == "0700"
    # the relative path written into the module resolves to the secret file at the repo root
    assert cfg["age"] == {
        "twenty-app-secret": {"file": f"{repo}/secrets/twenty-app-secret.age", "mode": "0400"},
        SECRET: {"file": f"{repo}/secrets/{SECRET}.age", "mode": "0400"},
    }
    pre = cfg["ExecStartPre"]
    assert isinstance(pre, list) and len(pre) == 1
    head, script = str(pre[0]).split("\n", 1)
    assert head == "#!name=twenty-twenty-db-password-env"
    expected = render_script(
        SECRET,
        "'" + pw_path.replace("'", "'\\''") + "'",  # quoted as nixpkgs' lib.escapeShellArg does
        [EnvFile(f"/run/twenty/{SECRET}.env", (EnvLine("PG_DATABASE_URL", PREFIX, SUFFIX),))],
    )
    assert script == expected  # the Nix escaping round-trips byte for byte
    for password in (b"/ + = @ : % ?", b"q'uo\"te \\ ${x} ''", b"postgres"):
        case = tmp_path / f"case{len(password)}"
        case.mkdir()
        pw = Path(pw_path)
        pw.parent.mkdir(exist_ok=True)
        pw.write_bytes(password)
        run = case / "run" / "twenty"
        run.mkdir(parents=True, mode=0o700)
        proc = _run(script.replace("/run/twenty/", f"{run}/"), case)
        assert proc.returncode == 0, proc.stderr.decode()
        _check_env_file(run / f"{SECRET}.env", password)
        pw.unlink()


ALSO_OK = [b"plain", b"opfUryV5FBAD7]yT[7py73IsqmU3M[lN", b"a{b}*c?d!e^f", b"base64:Zm9v+/=", b"~x,y%z@h:1"]
ALSO_REFUSED = [b"", b"with space", b"a$b", b"a#b", b"a'b", b'a"b', b"a\\b", b"a&b", b"a|b", b"a;b", b"(x)", b"a\nb"]


@pytest.mark.parametrize("value", ALSO_OK + ALSO_REFUSED, ids=lambda v: repr(v)[:30])
def test_a_companion_value_is_written_as_it_is_or_refused_alike_by_shell_and_python(
    tmp_path: Path, value: bytes
) -> None:
    """A companion's line is VAR=value, unquoted (docker's and podman's --env-file read the rest of the
    line raw; compose and systemd unquote): the renderer's `case` pattern and patch's check at plan time
    (_ALSO_VALUE) take the same values. [ ] { } * ? ! ^ are plain there (a Laravel APP_KEY holds them)."""
    pw, env = _setup(tmp_path, b"dbpw")
    also = tmp_path / "agenix" / "app-key"
    also.write_bytes(value)
    lines = (EnvLine("PG_DATABASE_URL", PREFIX, SUFFIX), EnvLine("APP_KEY", "", "", secret="app-key"))
    script = render_script(
        SECRET, shell_quote(str(pw)), [EnvFile(str(env), lines)], [("app-key", shell_quote(str(also)))]
    )
    proc = _run(script, tmp_path)
    allowed = pt._ALSO_VALUE.fullmatch(value.decode("utf-8", "replace")) is not None
    assert allowed == (value in ALSO_OK)
    if allowed:
        assert proc.returncode == 0, proc.stderr.decode()
        assert env.read_bytes().splitlines()[1] == b"APP_KEY=" + value
    else:
        assert proc.returncode == 1 and not env.exists()
        assert b"cannot hold unquoted" in proc.stderr or b"missing or empty" in proc.stderr
        assert value.strip() == b"" or value not in proc.stderr


_UNQUOTABLE = (b"'", b"\\", b"\n", b"\r", b"\x00")


@pytest.mark.parametrize("value", [*PASSWORDS, b"nul\x00byte", *_rng_passwords(20)], ids=lambda p: repr(p)[:40])
def test_a_quoted_line_keeps_any_value_bash_and_systemd_read_back(tmp_path: Path, value: bytes) -> None:
    """A value strategy move keeps, for a file systemd's EnvironmentFile= and bash's `source` read: written
    single-quoted as it is; one that single quotes cannot hold in both (systemd's env-file parser reads a
    backslash in quotes as an escape in some versions) is refused at start, naming no value, writing no
    file. Bash reads the file back byte for byte."""
    pw, env = _setup(tmp_path, value)
    lines = (EnvLine("PAPERLESS_SECRET_KEY", "", "", quoted=True),)
    proc = _run(_script(pw, env, lines), tmp_path)
    assert value.strip(b"\n") == b"" or value not in proc.stdout + proc.stderr
    value = value.rstrip(b"\n")  # the secret's value: the file less its final line breaks
    if any(c in value for c in _UNQUOTABLE):
        assert proc.returncode == 1
        assert b"holds a quote, a backslash, a line break or a NUL byte" in proc.stderr
        assert not env.exists() and list(env.parent.iterdir()) == []
        return
    assert proc.returncode == 0, proc.stderr.decode()
    assert stat.S_IMODE(env.stat().st_mode) == 0o400
    assert env.read_bytes() == b"PAPERLESS_SECRET_KEY='" + value + b"'\n"
    back = subprocess.run(
        ["bash", "-c", 'set -a; source "$1"; printf %s "$PAPERLESS_SECRET_KEY"', "read", str(env)],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
        capture_output=True,
        check=True,
    )
    assert back.stdout == value
