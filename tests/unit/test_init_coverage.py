"""bench/init_coverage.py: its verdicts on shape cases, through the real `nixmig init`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES, load_bench

pytestmark = pytest.mark.unit

SHAPES = FIXTURES / "shapes"


def _bench() -> Any:
    return load_bench("init_coverage", "nixmig_bench_init_coverage")


bench = _bench()


def test_a_draft_that_agrees_is_a_match_and_no_database_is_nothing(tmp_path: Path) -> None:
    cli = bench.nixmig_command()
    res = bench.run_case(cli, SHAPES / "oci-let-bound-password", tmp_path)
    assert (res.outcome, res.migrations, res.differing) == ("match", 1, []), res.reason
    res = bench.run_case(cli, SHAPES / "native-etc-text-password-file", tmp_path)
    assert res.outcome == "nothing", res.reason


def test_a_difference_not_marked_check_is_wrong(tmp_path: Path) -> None:
    """The hand-written service names another container: the draft's (read from the repo, no
    `# check:` on it) differs unmarked, which the bench must call wrong."""
    case = tmp_path / "cases" / "renamed"
    shutil.copytree(SHAPES / "oci-let-bound-password", case)
    toml = case / "nixmig.toml"
    toml.write_text(toml.read_text().replace('container = "notes-postgres"', 'container = "elsewhere"'))
    work = tmp_path / "work"
    work.mkdir()
    res = bench.run_case(bench.nixmig_command(), case, work)
    assert res.outcome == "wrong" and "container" in res.reason, res.reason
    assert res.differing == ["container: 'notes-postgres' != 'elsewhere'"]
