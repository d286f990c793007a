# ruff: noqa: B008  (typer.Option(...) defaults are typer's idiom, as in nixmig/cli)
"""nixmig.cli.plain: option values coerced without pydantic are the values (and the errors,
and the help) typer gives: one app of every kind of option nixmig uses, run with typer's own
coercion and with plain's, compared."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from nixmig.cli import plain


class Color(enum.Enum):
    red = "red"
    blue = "blue"


def _app(cls: Any, seen: list[dict[str, Any]]) -> typer.Typer:
    app = typer.Typer(cls=cls, add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})

    @app.callback()
    def _root(debug: bool = typer.Option(False, "--debug")) -> None:
        pass

    @app.command("run")
    def run(
        name: str = typer.Argument(...),
        rest: list[str] | None = typer.Argument(None),
        config: Path | None = typer.Option(None, "-c", "--config"),
        must: Path | None = typer.Option(None, "--must", exists=True, dir_okay=False, resolve_path=True),
        folder: Path | None = typer.Option(None, "--folder", file_okay=False, writable=True),
        dash: Path | None = typer.Option(None, "--dash", allow_dash=True),
        ident: list[Path] | None = typer.Option(None, "-i"),
        tag: list[str] | None = typer.Option(None, "--tag"),
        text: str | None = typer.Option(None, "--text"),
        count: int = typer.Option(4, "--count", min=1),
        size: int | None = typer.Option(None, "--size", max=10),
        ratio: float = typer.Option(0.5, "--ratio"),
        color: Color = typer.Option(Color.red, "--color"),
        flag: bool = typer.Option(False, "--flag"),
    ) -> None:
        seen.append({k: (v, type(v).__name__) for k, v in locals().items() if k != "seen"})

    @app.command("other")
    def other(n: int = typer.Option(3, "--n")) -> None:
        seen.append({"n": (n, type(n).__name__)})

    return app


def _run(cls: Any, argv: list[str]) -> tuple[int, str, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    r = CliRunner().invoke(_app(cls, seen), argv)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.output, seen


def _cases(tmp: Path) -> list[list[str]]:
    f = tmp / "file"
    f.write_text("x")
    d = tmp / "dir"
    d.mkdir()
    return [
        ["run", "a"],
        ["run", "a", "b", "c", "-c", str(f), "--text", "t", "--tag", "x", "--tag", "", "-i", "k1", "-i", str(d)],
        ["run", "a", "-c", "", "--config", "rel//x/./y/"],
        ["run", "a", "--must", str(f)],
        ["run", "a", "--must", str(tmp / "missing")],
        ["run", "a", "--must", str(d)],
        ["run", "a", "--folder", str(f)],
        ["run", "a", "--folder", str(d)],
        ["run", "a", "--dash", "-"],
        ["run", "a", "--count", "2", "--size", "10"],
        ["run", "a", "--count", "0"],
        ["run", "a", "--count", "x"],
        ["run", "a", "--size", "11"],
        ["run", "a", "--ratio", "2", "--color", "blue", "--flag"],
        ["run", "a", "--color", "green"],
        ["run"],
        ["run", "--help"],
        ["--help"],
        ["other"],
        ["other", "--n", "-1", "--debug"],
        ["--debug", "other", "-h"],
    ]


def test_values_errors_and_help_are_typers(tmp_path: Path) -> None:
    for argv in _cases(tmp_path):
        theirs = _run(None, argv)
        ours = _run(plain.Group, argv)
        assert ours == theirs, argv


def test_the_plain_values_need_no_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what apply is given (paths, a list of paths, a str, an int default, flags, --help): no
    # adapter of typer's is built, so pydantic is not imported for them
    from typer import _coercion

    built: list[Any] = []
    real = _coercion.build_runtime_param

    def build(descriptor: Any) -> Any:
        built.append(descriptor.annotation)
        return real(descriptor)

    monkeypatch.setattr(_coercion, "build_runtime_param", build)
    f = tmp_path / "f"
    f.write_text("x")
    code, _, seen = _run(plain.Group, ["--debug", "run", "a", "-c", str(f), "-i", "k", "--text", "t", "--must", str(f)])
    assert code == 0 and seen and built == [float, Color], built  # a float and an enum: typer's own
    assert seen[0]["config"] == (f, "PosixPath") and seen[0]["ident"] == ([Path("k")], "list")
    assert _run(plain.Group, ["run", "-h"])[0] == 0 and built == [float, Color], built


def test_an_eof_out_of_a_command_is_a_lost_connection_not_click_s_aborted() -> None:
    """paramiko raises EOFError when the transport closes under a read; click's standalone mode took it
    for a closed stdin and printed a bare "Aborted!" (e2e test_cut_during_the_backup_then_apply_resumes,
    once in CI): now nixmig's main reports it in one line as a ConnectionLost."""
    import typer

    from nixmig.cli import plain
    from nixmig.remote.base import ConnectionLost

    app = typer.Typer(cls=plain.Group)

    @app.command()
    def cut() -> None:
        raise EOFError

    @app.command()
    def other() -> None:
        pass

    with pytest.raises(ConnectionLost, match="ended while a command ran"):
        app(["cut"], prog_name="nixmig")
