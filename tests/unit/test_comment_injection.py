"""Names from nixmig.toml never break out of a comment of the Nix and bash nixmig writes.

Two layers: nixmig.config refuses a control character in any name (one clear line naming
the file and the key), strict patterns for the names that become unit, file and secret
names; and the templates pass every value they put in a `#` comment through
quote.comment_text, so even a name from elsewhere (a Nix file) stays on its comment line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nixmig.errors import ConfigError
from nixmig.nixsrc import parse
from nixmig.nixsrc.quote import Antiquote, comment_text, nix_comment, shell_quote
from nixmig.nixsrc.render import EnvFile, EnvLine, render_script, script_in_nix, template
from tests.helpers import run_cli
from tests.unit.test_foundation import EXAMPLE_TOML, load_text

# every character that ends a line for Nix (\n, \r), bash (\n) or an editor (the rest)
BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]
PAYLOAD = "touch INJECTED; #"


# ------------------------------------------------------------------ the config refuses them

MIG = "[migrations.twenty-db-password]\n"


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ((MIG, MIG + 'unit = "arion-twenty\\nrm -rf /"\n'), "migrations.twenty-db-password.unit"),
        ((MIG, MIG + 'env_file = "/run/twenty/db.env\\nrm -rf /"\n'), "migrations.twenty-db-password.env_file"),
        (('secret = "twenty-db-password"', 'secret = "twenty\\nrm -rf /"'), "migrations.twenty-db-password.secret"),
        ((MIG, MIG + 'db_service = "db\\r"\n'), "migrations.twenty-db-password.db_service"),
        ((MIG, MIG + 'app_services = ["server", "x\\u2028y"]\n'), "migrations.twenty-db-password.app_services[1]"),
        ((MIG, MIG + 'module = "modules/x.nix\\n"\n'), "migrations.twenty-db-password.module"),
        ((MIG, MIG + 'password_option = "services.x.passwordFile\\n"\n'), "migrations.twenty-db-password"),
        (('container = "twenty-db-1"', 'container = "twenty\\tdb"'), "services.twenty-db.container"),
        (('role = "postgres"', 'role = "post\\u0085gres"'), "services.twenty-db.role"),
        ((MIG, '[migrations."twenty\\nx"]\nservice = "twenty-db"\nsecret = "s"\n' + MIG), "migrations"),
        (("[hosts.newton]", '[hosts."new\\nton"]'), "hosts"),
    ],
)
def test_a_control_character_in_a_name_is_refused_in_one_line(tmp_path: Path, edit: tuple[str, str], key: str) -> None:
    text = EXAMPLE_TOML.replace(*edit)
    assert text != EXAMPLE_TOML
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, text)
    line = str(exc.value)
    assert line.startswith(f"{tmp_path / 'nixmig.toml'}: {key}"), line
    assert "control character" in line
    assert len(line.splitlines()) == 1 and "\r" not in line and "\t" not in line


def test_the_cli_says_it_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "nixmig.toml").write_text(EXAMPLE_TOML.replace(MIG, MIG + 'unit = "arion\\nrm -rf /"\n'))
    proc = run_cli("status", "-c", str(tmp_path / "nixmig.toml"), cwd=tmp_path)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "migrations.twenty-db-password.unit: control character '\\n'" in err, err


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("unit", "arion twenty", "is not a systemd unit name"),
        ("unit", "a;b", "is not a systemd unit name"),
        ("env_file", "/etc/twenty.env", "is not a file in a directory under /run"),
        ("env_file", "/run/../etc/x.env", "is not a file in a directory under /run"),
        ("env_file", "/run/x.env", "is not a file in a directory under /run"),
        ("db_service", "db $(x)", "is not a container or compose service name"),
    ],
)
def test_names_that_become_unit_file_and_secret_names_follow_a_strict_pattern(
    tmp_path: Path, key: str, value: str, what: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, EXAMPLE_TOML.replace(MIG, f'{MIG}{key} = "{value}"\n'))
    assert f"migrations.twenty-db-password.{key}: {value!r} {what}" in str(exc.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('secret = "twenty-db-password"', 'secret = "../x"'), "secret: '../x' is not an agenix secret name"),
        (("migrations.twenty-db-password", 'migrations."a/b"'), "migrations.a/b: 'a/b' is not a usable migration"),
        (("[hosts.newton]", '[hosts."new@ton"]'), "hosts.new@ton: 'new@ton' is not a usable host name"),
    ],
)
def test_secret_migration_and_host_names_are_strict(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, EXAMPLE_TOML.replace(*edit))
    assert message in str(exc.value)


def test_good_names_and_multi_line_commands_still_load(tmp_path: Path) -> None:
    extra = (
        'unit = "arion-twenty"\nenv_file = "/run/twenty/db.env"\ndb_service = "db"\n'
        'app_services = ["server", "worker"]\nstrategy = "rebuild"\n'
        'app_stop = """\nsystemctl stop a\n\tsystemctl stop b\n"""\napp_start = "systemctl start a b"\n'
    )
    text = EXAMPLE_TOML.replace('strategy = "rotate"\n', "").replace(MIG, MIG + extra)
    mig = load_text(tmp_path, text).migrations["twenty-db-password"]
    assert mig.unit == "arion-twenty" and mig.env_file == "/run/twenty/db.env"
    assert mig.app_stop == "systemctl stop a\n\tsystemctl stop b\n"  # TOML drops the newline after """


# ------------------------------------------------------------------ the comment helper


@pytest.mark.parametrize("brk", [*BREAKS, "\x00", "\x1b", "\x7f", "\t"])
def test_comment_text_keeps_a_comment_on_one_line(brk: str) -> None:
    value = f"name{brk}{PAYLOAD}"
    line = nix_comment(value)
    assert len(line.splitlines()) == 1
    assert not any(c in line for c in [*BREAKS, "\x00", "\x1b", "\x7f", "\t"])
    assert line.startswith("# name\\") and line.endswith(PAYLOAD)
    assert comment_text("plain /run/x.env, é ü 名") == "plain /run/x.env, é ü 名"  # printable text is kept


# ------------------------------------------------------------------ the templates use it


def _comment_lines(text: str) -> list[str]:
    return [ln for ln in text.split("\n") if ln.lstrip().startswith("#")]


def _snippets(hostile: str) -> dict[str, str]:
    """Every template macro that writes a comment, with ``hostile`` in each value it puts there."""
    files = [f"/run/u/{hostile}.env"]
    env_files = [EnvFile(files[0], (EnvLine("URL", "postgres://u:", "@h/d"),))]
    script = script_in_nix(hostile, Antiquote("lib.escapeShellArg config.age.secrets.s.path"), env_files)
    arion, oci = template("arion-service.nix.j2"), template("oci-containers.nix.j2")
    sysd = template("systemd-credential.nix.j2")
    return {
        "arion": str(arion.unit("systemd.services.u.serviceConfig", hostile, "u", files, "n", script)),
        "oci": str(oci.unit("systemd.services.c.serviceConfig", hostile, "c", files, "n", script)),
        "systemd": str(sysd.unit("systemd.services.u.serviceConfig", hostile, hostile, "s", "u", files, "n", script)),
    }


@pytest.mark.parametrize("brk", BREAKS)
def test_templates_never_end_a_comment_early(brk: str) -> None:
    hostile = f"x{brk}{PAYLOAD}"
    benign = _snippets("x")
    for name, text in _snippets(hostile).items():
        comments = _comment_lines(text)
        assert len(comments) == len(_comment_lines(benign[name])), (name, text)
        for ln in comments:
            assert not any(c in ln for c in BREAKS), (name, ln)
        # every comment that names the value holds all of it, escaped, on its own line
        assert any(comment_text(hostile) in ln for ln in comments), (name, text)
        # and the rendered Nix parses with no binding or error more than the benign one
        tree = parse.parse(("{ config, lib, pkgs, ... }: { " + text + " }").encode())
        benign_tree = parse.parse(("{ config, lib, pkgs, ... }: { " + benign[name] + " }").encode())
        assert parse.first_error(tree) is None
        assert _count(tree.root_node, "binding") == _count(benign_tree.root_node, "binding")


def _count(node: object, kind: str) -> int:
    n = 1 if getattr(node, "type", None) == kind else 0
    return n + sum(_count(c, kind) for c in getattr(node, "children", []))


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize("brk", ["\n", "\r\n", "\u2028"])
def test_the_env_file_script_runs_no_injected_command(tmp_path: Path, brk: str) -> None:
    """The renderer script as bash runs it: a secret name and an env file path with a
    newline and a command after it, in its `#` comment; the command never runs."""
    pw = tmp_path / "pw"
    pw.write_bytes(b"s3cret")
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    out = out_dir / f"a{brk}{PAYLOAD}.env"
    files = [EnvFile(str(out), (EnvLine("URL", "postgres://u:", "@h/d"),))]
    script = render_script(f"s{brk}{PAYLOAD}", shell_quote(str(pw)), files)
    assert _comment_lines(script)[0].count(PAYLOAD) == 2
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert not (tmp_path / "INJECTED").exists()
    assert out.read_text() == "URL=postgres://u:s3cret@h/d\n"


@pytest.mark.parametrize(("value", "ok"), [("0", True), ("60", True), ("3600", True), ("-1", False), ("3601", False)])
def test_verify_watch_is_a_bounded_number_of_seconds(tmp_path: Path, value: str, ok: bool) -> None:
    text = EXAMPLE_TOML.replace(MIG, f"{MIG}verify_watch = {value}\n")
    if ok:
        assert load_text(tmp_path, text).migrations["twenty-db-password"].verify_watch == int(value)
        return
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, text)
    assert f"migrations.twenty-db-password.verify_watch: '{value}' is not 0 to 3600 seconds" in str(exc.value)
