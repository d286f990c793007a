"""patch on rewrites of real cases that bench/patch_mutants.py (stop 29, realcfg20..24) found refused with a
misleading reason: a password read from a second plain .nix file was called "computed: nixmig cannot tell
where the password comes from", though the file and the key are right there in the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

from nixmig import config
from nixmig.nixsrc import patch as pt
from tests.helpers import FIXTURES

CASE = FIXTURES / "shapes" / "oci-bare-attrset-module"  # jobs-db (POSTGRES_PASSWORD) and jobs (a URL)
MODULE = "hosts/box/jobs.nix"
PLAIN = '# kept out of the module\n{\n  jobs = { db = "jobs-pw-5"; };\n}\n'


def _items(tmp_path: Path, old: str, new: str, head: str = "") -> list[str]:
    root = tmp_path / "repo"
    shutil.copytree(CASE, root)
    (root / "hosts/box/plain.nix").write_text(PLAIN)
    module = root / MODULE
    module.write_text(head + module.read_text().replace(old, new))
    cfg = config.load(root / "nixmig.toml")
    plan = pt.plan(pt.read_sources(root), pt.spec_for(cfg, "jobs-db-password"))
    assert plan.edits == () or plan.manual, "refused: said"
    return [m.what for m in plan.manual]


def test_a_database_password_imported_from_a_plain_file_names_the_file_and_key(tmp_path: Path) -> None:
    items = _items(tmp_path, '"jobs-pw-5";\n', "(import ./plain.nix).jobs.db;\n")
    said = next(w for w in items if "POSTGRES_PASSWORD" in w)
    assert "reads the password from hosts/box/plain.nix:3:" in said and "(jobs.db)" in said, said
    assert "cannot tell" not in said
    assert "write the literal here instead" in said


def test_through_a_let_of_the_file_too(tmp_path: Path) -> None:
    head = "let plain = import ./plain.nix; in\n"  # the module is a bare attrset: the let goes around it
    items = _items(tmp_path, '"jobs-pw-5";\n', "plain.jobs.db;\n", head=head)
    said = next(w for w in items if "POSTGRES_PASSWORD" in w)
    assert "reads the password from hosts/box/plain.nix:3:" in said and "(jobs.db)" in said, said


def test_an_expression_that_is_no_import_stays_computed(tmp_path: Path) -> None:
    items = _items(tmp_path, '"jobs-pw-5";\n', 'builtins.getEnv "PW";\n')
    said = next(w for w in items if "POSTGRES_PASSWORD" in w)
    assert "is computed, not a literal" in said
