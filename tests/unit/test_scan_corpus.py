"""The labelled corpus (tests/scan_corpus): well-formed, valid Nix, and scanned at >= 0.95 P/R."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nixmig.nixsrc.scan import Kind, scan_source
from tests.helpers import load_bench

pytestmark = pytest.mark.unit


def _bench() -> Any:
    return load_bench("scan_quality", "nixmig_bench_scan_quality")


quality = _bench()
CORPUS: Path = quality.CORPUS
TARGET: float = quality.TARGET
Label, corpus_files, covers, load_labels, scan_corpus, score = (
    quality.Label,
    quality.corpus_files,
    quality.covers,
    quality.load_labels,
    quality.scan_corpus,
    quality.score,
)

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed")


def test_labels_are_well_formed() -> None:
    files, labels = load_labels()
    assert files == corpus_files()
    assert all((CORPUS / f).is_file() for f in files), "a ../ file names a file that is not there"
    assert len(labels) >= 150
    assert len({str(lab) for lab in labels}) == len(labels)
    kinds = {lab.kind for lab in labels}
    assert kinds == {k.value for k in Kind}, "every kind is represented"
    for lab in labels:
        lines = (CORPUS / lab.file).read_text().splitlines()
        assert 1 <= lab.line <= len(lines), lab
        assert 1 <= lab.col <= len(lines[lab.line - 1]), lab
        assert not lines[lab.line - 1][lab.col - 1].isspace(), lab
    # near-miss files exist and carry no label
    labelled = {lab.file for lab in labels}
    assert {"nearmiss/agenix-sops.nix"} <= set(files) - labelled


@needs_nix
def test_corpus_is_valid_nix() -> None:
    for rel in corpus_files():
        path = CORPUS / rel
        proc = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, check=False)
        assert proc.returncode == 0, f"{path}: {proc.stderr.decode()}"


def test_precision_and_recall_meet_the_bar() -> None:
    _, labels = load_labels()
    result = score(scan_corpus(), labels)
    missed = [str(lab) for lab in result.false_negatives]
    wrong = [f"{f.file}:{f.line}:{f.col}:{f.kind} {f.attr_path}" for f in result.false_positives]
    assert result.precision >= TARGET, wrong
    assert result.recall >= TARGET, missed


def test_near_misses_report_nothing() -> None:
    for name in ("nearmiss/agenix-sops.nix", "nearmiss/options-docs.nix"):
        found = scan_source((CORPUS / name).read_bytes(), name).findings
        # options-docs.nix has exactly one real default token; the rest are docs and options
        expected = 1 if name.endswith("options-docs.nix") else 0
        assert len(found) == expected, [(f.line, f.attr_path) for f in found]


def test_matching_is_by_span() -> None:
    """The scorer itself: a finding covers a label only on the same line, kind and span."""
    src = b'{ password = "abc"; }'
    (f,) = scan_source(src, "a.nix").findings
    assert covers(f, Label("a.nix", 1, 15, "password"))
    assert not covers(f, Label("a.nix", 1, 18, "password"))
    assert not covers(f, Label("a.nix", 1, 15, "token"))
    assert not covers(f, Label("b.nix", 1, 15, "password"))
    one = score([f], [Label("a.nix", 1, 15, "password")])
    assert (one.true_positives, one.precision, one.recall) == (1, 1.0, 1.0)
    none = score([f], [Label("a.nix", 1, 3, "password")])
    assert (none.true_positives, none.precision, none.recall) == (0, 0.0, 0.0)
