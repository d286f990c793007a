"""Precision and recall of `nixmig scan` over the labelled corpus in tests/scan_corpus.

Labels (tests/scan_corpus/expected.json) are keyed file:line:col:kind, col being the
first character of the secret value. A finding matches a label when file, line and
kind agree and the finding's span covers that column; each label matches once.
Unmatched findings are false positives, unmatched labels false negatives.

The corpus is every .nix file under tests/scan_corpus plus the files expected.json names
with a ../ path: files kept elsewhere in the repository (the worked example's compose
file, kept once in nixmig/examples) and scanned where they live, under that name.

Prints precision, recall and each miss. Targets: precision >= 0.95, recall >= 0.95.
Exit status 1 when a target is missed (use --no-fail to only print).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nixmig.nixsrc.scan import Finding, scan_source  # noqa: E402

CORPUS = ROOT / "tests" / "scan_corpus"
TARGET = 0.95


@dataclass(frozen=True)
class Label:
    file: str
    line: int
    col: int
    kind: str

    @classmethod
    def parse(cls, key: str) -> Label:
        file, line, col, kind = key.rsplit(":", 3)
        return cls(file, int(line), int(col), kind)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}:{self.kind}"


@dataclass(frozen=True)
class Score:
    true_positives: int
    false_positives: list[Finding]
    false_negatives: list[Label]

    @property
    def precision(self) -> float:
        found = self.true_positives + len(self.false_positives)
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + len(self.false_negatives)
        return self.true_positives / expected if expected else 1.0


def covers(f: Finding, label: Label) -> bool:
    if f.file != label.file or str(f.kind) != label.kind:
        return False
    if f.line == f.end_line:
        return f.line == label.line and f.col <= label.col < max(f.end_col, f.col + 1)
    return (f.line, f.col) <= (label.line, label.col) < (f.end_line, f.end_col)


def load_labels(corpus: Path = CORPUS) -> tuple[list[str], list[Label]]:
    doc = json.loads((corpus / "expected.json").read_text())
    return list(doc["files"]), [Label.parse(k) for k in doc["secrets"]]


def corpus_files(corpus: Path = CORPUS) -> list[str]:
    """The corpus's files, relative to it: the .nix files under it and the ../ files expected.json names."""
    listed = json.loads((corpus / "expected.json").read_text())["files"]
    elsewhere = [f for f in listed if f.startswith("../")]
    return sorted([p.relative_to(corpus).as_posix() for p in corpus.rglob("*.nix")] + elsewhere)


def scan_corpus(corpus: Path = CORPUS) -> list[Finding]:
    findings: list[Finding] = []
    for rel in corpus_files(corpus):
        result = scan_source((corpus / rel).read_bytes(), rel)
        if result.problem is not None:
            raise SystemExit(f"corpus file does not parse: {result.problem}")
        findings.extend(result.findings)
    return findings


def score(findings: list[Finding], labels: list[Label]) -> Score:
    unmatched = list(labels)
    false_positives: list[Finding] = []
    tp = 0
    for f in findings:
        hit = next((lab for lab in unmatched if covers(f, lab)), None)
        if hit is None:
            false_positives.append(f)
        else:
            unmatched.remove(hit)
            tp += 1
    return Score(tp, false_positives, unmatched)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when a target is missed")
    args = parser.parse_args()
    files, labels = load_labels()
    if files != corpus_files():
        raise SystemExit("expected.json lists other files than tests/scan_corpus holds: update it")
    result = score(scan_corpus(), labels)
    print(f"corpus: {len(files)} files, {len(labels)} labelled secrets")
    print(f"true positives:  {result.true_positives}")
    print(f"false positives: {len(result.false_positives)}")
    for f in result.false_positives:
        print(f"  FP {f.file}:{f.line}:{f.col}:{f.kind}  {f.attr_path}  ({f.rule})")
    print(f"false negatives: {len(result.false_negatives)}")
    for lab in result.false_negatives:
        print(f"  FN {lab}")
    print(f"precision: {result.precision:.3f}  (target >= {TARGET})")
    print(f"recall:    {result.recall:.3f}  (target >= {TARGET})")
    ok = result.precision >= TARGET and result.recall >= TARGET
    return 0 if ok or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
