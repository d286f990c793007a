"""How a lost connection's message names the command: a `sh -c SCRIPT sh ARGS` wrapper by the
program it wraps, a long command cut in the middle (its program and its last arguments kept)."""

from __future__ import annotations

from nixmig.remote.base import ConnectionLost, short


def test_a_sh_wrapper_is_named_by_what_it_runs() -> None:
    script = "set -e; " * 40 + 'exec "$@"'
    shown = short(["sh", "-c", script, "sh", "docker", "exec", "db", "pg_dump", "-Fc", "-d", "dbname=default"])
    assert shown == "sh -c '…' sh docker exec db pg_dump -Fc -d dbname=default"


def test_a_long_command_keeps_its_head_and_tail() -> None:
    argv = ["docker", "-H", "unix:///run/docker.sock", *(f"--opt{i}" for i in range(60)), "pg_dump", "-d", "app"]
    shown = short(argv)
    assert len(shown) <= 160 and shown.endswith("pg_dump -d app")
    assert shown.startswith("docker -H unix:///run/docker.sock")
    assert " … " in shown and "\n" not in shown


def test_connection_lost_is_one_line_saying_apply_resumes() -> None:
    line = ConnectionLost("the connection to newton was lost (x) while running `true`", where="newton").line()
    assert line.startswith("newton: the connection to newton was lost") and "`nixmig apply` resumes" in line
