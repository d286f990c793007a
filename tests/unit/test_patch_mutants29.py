"""patch on rewrites of real cases that bench/patch_mutants.py (stop 29, realcfg20..24) found refused or
pointed wrong: a password read from a second plain .nix file (``(import ./plain.nix).pw``, or through a let
of the file) was "computed: nixmig cannot tell where the password comes from", though the file and the key
are in the repository; and under strategy move a let-bound password's `secret new --from` line was another
literal of the same file (root's password, realcfg20/14 with MYSQL_PASSWORD let-bound)."""

from __future__ import annotations

import shutil
from pathlib import Path

from nixmig import config
from nixmig.cli.patch import _missing_kept_values
from nixmig.nixsrc import patch as pt
from tests.helpers import FIXTURES

CASE = FIXTURES / "shapes" / "oci-bare-attrset-module"  # jobs-db (POSTGRES_PASSWORD) and jobs (a URL)
MODULE = "hosts/box/jobs.nix"
PLAIN = '# kept out of the module\n{\n  jobs = { db = "jobs-pw-5"; };\n}\n'


def _plan(tmp_path: Path, case: Path, edit: dict[str, tuple[str, str]], secret: str) -> tuple[pt.Plan, Path]:
    root = tmp_path / "repo"
    shutil.copytree(case, root)
    for rel, (old, new) in edit.items():
        f = root / rel
        text = f.read_text() if f.exists() else ""
        f.write_text(text.replace(old, new) if old else new)
    cfg = config.load(root / "nixmig.toml")
    return pt.plan(pt.read_sources(root), pt.spec_for(cfg, secret)), root


def test_a_password_imported_from_a_plain_file_is_patched_and_its_key_goes(tmp_path: Path) -> None:
    edit = {"hosts/box/plain.nix": ("", PLAIN), MODULE: ('"jobs-pw-5";\n', "(import ./plain.nix).jobs.db;\n")}
    plan, root = _plan(tmp_path, CASE, edit, "jobs-db-password")
    assert not plan.manual, [m.what for m in plan.manual]
    files = {e.file for e in plan.edits}
    assert files == {MODULE, "hosts/box/plain.nix"}
    sources = pt.read_sources(root)
    assert "jobs-pw-5" not in plan.diff(sources)  # masked, in the plain file too


def test_a_key_something_else_reads_stays_and_is_said(tmp_path: Path) -> None:
    other = '{ config, ... }: { environment.etc."jobs-db".text = (import ./plain.nix).jobs.db; }\n'
    edit = {
        "hosts/box/plain.nix": ("", PLAIN),
        "hosts/box/other.nix": ("", other),
        MODULE: ('"jobs-pw-5";\n', "(import ./plain.nix).jobs.db;\n"),
    }
    plan, _ = _plan(tmp_path, CASE, edit, "jobs-db-password")
    said = [m for m in plan.manual if m.file == "hosts/box/plain.nix"]
    assert said and "still read at hosts/box/other.nix:1:" in said[0].what, [m.what for m in plan.manual]
    assert not any(e.file == "hosts/box/plain.nix" for e in plan.edits)


def test_an_expression_that_is_no_import_stays_computed(tmp_path: Path) -> None:
    plan, _ = _plan(tmp_path, CASE, {MODULE: ('"jobs-pw-5";\n', 'builtins.getEnv "PW";\n')}, "jobs-db-password")
    said = next(m.what for m in plan.manual if "POSTGRES_PASSWORD" in m.what)
    assert "is computed, not a literal" in said


def test_the_kept_value_s_line_is_the_let_that_holds_it_not_a_companion_s(tmp_path: Path) -> None:
    """MYSQL_PASSWORD let-bound, MYSQL_ROOT_PASSWORD a literal of the same file (moved as a companion):
    `secret new --from` must read the let's line, never root's."""
    case = FIXTURES / "shapes" / "oci-mysql-user-and-root-no-also"
    rel = "hosts/box/shop.nix"
    edit = {rel: ('MYSQL_PASSWORD = "shop-pw-51";', "MYSQL_PASSWORD = shopPw;")}
    _, root = _plan(tmp_path, case, edit, "shop-db-password")
    let = '{ config, ... }:\nlet shopPw = "shop-pw-51"; in\n{'
    text = (root / rel).read_text().replace("{ config, ... }:\n{", let, 1)
    (root / rel).write_text(text)
    cfg = config.load(root / "nixmig.toml")
    sources = pt.read_sources(root)
    plan = pt.plan(sources, pt.spec_for(cfg, "shop-db-password"), find_companions=True)
    at = dict(_missing_kept_values(root, cfg.secrets_dir, plan, {k: v for k, v in sources.items()}))
    assert at["shop-db-password"].startswith(f"{rel}:2"), at  # the let, line 2; root's is further down
