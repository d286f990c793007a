"""bench/patch_coverage.py: its verdicts, from the real CLI and from a CLI that lies.

The lying CLIs are fakes, named so: they stand for a broken nixmig (success claimed with the
literal left, an exit code outside 0/1/2, a second run that edits again), which the real one
must never be, so they cannot be produced with it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES, load_bench

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed"),
]

SHAPES = FIXTURES / "shapes"


def _bench() -> Any:
    return load_bench("patch_coverage", "nixmig_bench_patch_coverage")


bench = _bench()


def _case(expect: str) -> Path:
    for d in sorted(SHAPES.iterdir()):
        meta = d / "case.json"
        if meta.is_file() and json.loads(meta.read_text()).get("expect") == expect:
            return d
    raise AssertionError(f"tests/fixtures/shapes has no case expected to be {expect}")


def _fake_cli(tmp_path: Path, name: str, body: str) -> list[str]:
    script = tmp_path / f"{name}.py"
    script.write_text("import pathlib, sys\nargs = sys.argv[1:]\n" + body)
    return [sys.executable, str(script)]


@pytest.mark.parametrize("expect", ["patched", "refused"])
def test_the_real_cli_gets_the_verdict_its_shape_case_expects(tmp_path: Path, expect: str) -> None:
    res = bench.run_case(bench.nixmig_command(), _case(expect), tmp_path)
    assert res.outcome == expect, (res.reason, res.problems)
    assert res.exit_codes["write"] == (0 if expect == "patched" else 1)
    if expect == "patched":
        assert res.changed_files and not res.literals_left and res.exit_codes["check"] == 0
        assert res.eval == "ok", res.eval_detail  # the written module evaluates with the stubs, as its original


def test_success_claimed_with_the_literal_left_is_wrong(tmp_path: Path) -> None:
    cli = _fake_cli(tmp_path, "fake_nixmig_claims_success", "print('nothing to change: the tree is patched')\n")
    res = bench.run_case(cli, _case("patched"), tmp_path / "work")
    assert res.outcome == "wrong"
    assert "write exit 0 with the literal left at " in res.reason
    assert res.literals_left and all("(literal #" in x for x in res.literals_left)


def test_an_exit_code_outside_0_1_2_is_wrong(tmp_path: Path) -> None:
    cli = _fake_cli(tmp_path, "fake_nixmig_exit_3", "sys.exit(3)\n")
    res = bench.run_case(cli, _case("refused"), tmp_path / "work")
    assert res.outcome == "wrong" and "exit 3" in res.reason


def test_a_second_write_that_edits_again_is_wrong(tmp_path: Path) -> None:
    # appends a line to one .nix file on every --write, and says it succeeded
    body = (
        "if '--write' in args:\n"
        "    f = sorted(pathlib.Path('.').rglob('*.nix'))[0]\n"
        "    f.write_text(f.read_text() + '# edited\\n')\n"
    )
    cli = _fake_cli(tmp_path, "fake_nixmig_not_idempotent", body)
    res = bench.run_case(cli, _case("refused"), tmp_path / "work")
    assert res.outcome == "wrong"
    assert any(p.startswith("second --write changed ") for p in res.problems)


def test_a_changed_file_that_does_not_parse_is_wrong(tmp_path: Path) -> None:
    body = (
        "if '--write' in args and not pathlib.Path('.broken').exists():\n"
        "    pathlib.Path('.broken').write_text('')\n"
        "    f = sorted(pathlib.Path('.').rglob('*.nix'))[0]\n"
        "    f.write_text(f.read_text() + '{ unclosed = ;\\n')\n"
        "    sys.exit(1)\n"
    )
    cli = _fake_cli(tmp_path, "fake_nixmig_writes_garbage", body)
    res = bench.run_case(cli, _case("refused"), tmp_path / "work")
    assert res.outcome == "wrong" and "does not parse" in res.reason


def test_literals_left_name_file_line_and_never_the_value() -> None:
    left = bench.literals_left({"a.nix": b'x = 1;\npw = "s3cret";\n'}, ["s3cret"])
    assert left == ["a.nix:2 (literal #1)"]


def test_draft_runs_patch_on_inits_draft_as_the_readme_says(tmp_path: Path) -> None:
    """--draft: the case's nixmig.toml is replaced by `nixmig init`'s draft (the MySQL case: strategy
    move, root's password as the companion patch finds); patch runs every migration of the draft."""
    case = SHAPES / "oci-mysql-user-and-root-no-also"
    res = bench.run_case(bench.nixmig_command(), case, tmp_path, draft=True)
    assert res.outcome == "patched", (res.reason, res.problems)
    drafted = (tmp_path / case.name / "nixmig.toml").read_text()
    assert "nixmig init" in drafted and 'strategy = "move"' in drafted
    assert 'also = { MYSQL_ROOT_PASSWORD = "' in drafted  # added by patch --write


def test_draft_with_nothing_drafted_is_refused_with_inits_line(tmp_path: Path) -> None:
    cli = _fake_cli(tmp_path, "init-nothing", "pathlib.Path('nixmig.toml').write_text('# check: not drafted: x\\n')\n")
    res = bench.run_case(cli, _case("patched"), tmp_path, draft=True)
    assert res.outcome == "refused" and res.reason == "init drafted no migration: # check: not drafted: x"


def test_a_case_with_no_literal_is_invalid_unless_it_says_none_is_expected(tmp_path: Path) -> None:
    import shutil

    gone = SHAPES / "native-initialscript-sql-file-clause-gone"  # the user deleted the SQL file's clause
    res = bench.run_case(bench.nixmig_command(), gone, tmp_path / "a")
    assert res.outcome == "patched", (res.reason, res.problems)
    case = tmp_path / "case"
    shutil.copytree(gone, case)
    meta = json.loads((case / "case.json").read_text())
    del meta["no_literal"]
    (case / "case.json").write_text(json.dumps(meta))
    res = bench.run_case(bench.nixmig_command(), case, tmp_path / "b")
    assert (res.outcome, res.reason) == ("invalid", "case.json lists no literal")
