"""bench/patch_coverage.py's evaluation step: changed .nix files evaluated with stub module args
(bench/nixstubs.nix), the original file as the control.

Real nix-instantiate on tiny synthetic modules. The one lying CLI is a fake, named so: it stands
for a broken nixmig that writes a module which parses but does not evaluate (a second binding of
a unit through the backend option), which the real one must never be.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import load_bench

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed"),
]


def _bench() -> Any:
    return load_bench("patch_coverage", "nixmig_bench_patch_coverage_eval")


bench = _bench()

MODULE = "hosts/box/app.nix"
# a compose2nix-like module: a literal unit name for the container
ORIGINAL = """{ config, lib, pkgs, ... }:
{
  virtualisation.oci-containers.containers."app" = {
    image = "app:1";
    environment = { DB_PASSWORD = "hunter2-literal"; };
  };
  systemd.services."docker-app" = {
    serviceConfig.Restart = lib.mkOverride 90 "always";
  };
}
"""
# the same unit bound a second time through the backend option: parses, does not evaluate
DUPLICATE_UNIT = """{ config, lib, pkgs, ... }:
{
  age.secrets.app-db.file = ../../secrets/app-db.age;
  virtualisation.oci-containers.containers."app" = {
    image = "app:1";
    environmentFiles = [ config.age.secrets.app-db.path ];
  };
  systemd.services."docker-app" = {
    serviceConfig.Restart = lib.mkOverride 90 "always";
  };
  systemd.services."${config.virtualisation.oci-containers.backend}-app".serviceConfig = {
    LoadCredential = "db:${config.age.secrets.app-db.path}";
  };
}
"""
# right: the secret declared and used, the unit bound once
GOOD = """{ config, lib, pkgs, ... }:
{
  age.secrets.app-db.file = ../../secrets/app-db.age;
  virtualisation.oci-containers.containers."app" = {
    image = "app:1";
    environmentFiles = [ config.age.secrets.app-db.path ];
  };
  systemd.services."docker-app" = {
    serviceConfig.Restart = lib.mkOverride 90 "always";
    serviceConfig.LoadCredential = "db:${config.age.secrets.app-db.path}";
  };
}
"""


def _trees(tmp_path: Path, original: str, patched: str) -> tuple[Path, Path, dict[str, bytes], dict[str, bytes]]:
    trees = []
    for side, text in (("orig", original), ("new", patched)):
        root = tmp_path / side
        (root / MODULE).parent.mkdir(parents=True)
        (root / MODULE).write_text(text)
        (root / "secrets").mkdir()
        trees.append(root)
    return trees[0], trees[1], bench.nix_files(trees[0]), bench.nix_files(trees[1])


def test_a_duplicate_dynamic_attribute_in_the_patched_file_fails_eval(tmp_path: Path) -> None:
    orig, new, before, after = _trees(tmp_path, ORIGINAL, DUPLICATE_UNIT)
    status, detail = bench.eval_changed(orig, new, [MODULE], before, after)
    assert status == "failed"
    assert detail.startswith(f"{MODULE} no longer evaluates (names; the original does): ")
    assert "dynamic attribute 'docker-app' already defined" in detail
    assert str(tmp_path) not in detail  # paths relative to the case


def test_the_same_patch_without_the_duplicate_evaluates(tmp_path: Path) -> None:
    orig, new, before, after = _trees(tmp_path, ORIGINAL, GOOD)
    assert bench.eval_changed(orig, new, [MODULE], before, after) == ("ok", "")


def test_a_reference_to_an_undeclared_secret_fails_at_values(tmp_path: Path) -> None:
    # age.secrets holds only what the file declares (or secrets.nix has a rule for): the stub
    # config does not make up a secret the host would not have
    undeclared = GOOD.replace("  age.secrets.app-db.file = ../../secrets/app-db.age;\n", "")
    orig, new, before, after = _trees(tmp_path, ORIGINAL, undeclared)
    status, detail = bench.eval_changed(orig, new, [MODULE], before, after)
    assert status == "failed" and "(values; the original does)" in detail
    assert "attribute 'app-db' missing" in detail
    # with a rule for it in secrets.nix, the reference is to a secret the repo has
    (new / "secrets" / "secrets.nix").write_text('{ "app-db.age".publicKeys = [ ]; }\n')
    assert bench.eval_changed(orig, new, [MODULE], before, bench.nix_files(new))[0] == "ok"


def test_an_original_that_does_not_evaluate_with_the_stubs_is_not_applicable(tmp_path: Path) -> None:
    # the top level needs a file the case does not hold: no stub can stand for it. The patched
    # file's duplicate unit is then not judged: the control failed, so the verdict is n/a, never failed
    gap = "(import ./not-in-the-case.nix) // "
    orig, new, before, after = _trees(
        tmp_path, ORIGINAL.replace("\n{\n", f"\n{gap}{{\n", 1), DUPLICATE_UNIT.replace("\n{\n", f"\n{gap}{{\n", 1)
    )
    status, detail = bench.eval_changed(orig, new, [MODULE], before, after)
    assert status == "n/a"
    assert detail.startswith(f"original does not evaluate with stubs: {MODULE}: error: ")
    assert "not-in-the-case.nix" in detail


def test_a_stub_gap_only_the_patched_file_reaches_through_config_is_not_applicable(tmp_path: Path) -> None:
    # options declared under a special arg's name: the stub stands for `prefix` but cannot be an
    # attribute name, so the stub config (built over the options' defaults) fails. The original
    # never reads config; the patched file does (the secret's path). Forcing the stub config on
    # both sides turns this into n/a, not a false "failed".
    header = '{ lib, config, prefix, ... }:\n{\n  options.${prefix}.box.enable = lib.mkEnableOption "box";\n'
    original = header + '  config.environment.etc."box/pw".text = "hunter2-literal";\n}\n'
    patched = (
        header
        + "  config.age.secrets.box-pw.file = ../../secrets/box-pw.age;\n"
        + '  config.environment.etc."box/pw".source = config.age.secrets.box-pw.path;\n}\n'
    )
    orig, new, before, after = _trees(tmp_path, original, patched)
    status, detail = bench.eval_changed(orig, new, [MODULE], before, after)
    assert status == "n/a", detail
    assert "value is a set while a string was expected" in detail


@pytest.mark.parametrize(
    ("original", "patched", "expected"),
    [
        ((2, ""), (2, ""), "ok"),
        ((1, "e0"), (1, "e1"), "ok"),  # the original reaches the names only: names are compared
        ((1, "e0"), (2, ""), "ok"),
        ((2, ""), (1, "e1"), "failed"),
        ((1, "e0"), (0, "e1"), "failed"),
        ((0, "e0"), (0, "e1"), "n/a"),
        ((0, "e0"), (2, ""), "n/a"),
        (None, (1, "e1"), "ok"),  # a file patch created: no control, its names must evaluate
        (None, (0, "e1"), "failed"),
    ],
)
def test_eval_verdict_compares_with_the_original(
    original: tuple[int, str] | None, patched: tuple[int, str], expected: str
) -> None:
    before = None if original is None else bench.FileEval(*original)
    status, detail = bench.eval_verdict("a.nix", before, bench.FileEval(*patched))
    assert status == expected
    if expected == "failed":
        assert detail.endswith(": e1")
    if expected == "n/a":
        assert detail == "original does not evaluate with stubs: a.nix: e0"


def test_stub_context_takes_the_backend_and_the_secret_names_from_both_trees() -> None:
    orig = {"hosts/a.nix": b'{ virtualisation.oci-containers.backend = "podman"; }', "secrets/old.age": b"x"}
    new = {"secrets/secrets.nix": b'{ "app-db.age".publicKeys = [ k ]; }'}
    assert bench.stub_context(orig, new) == ("podman", ["app-db", "old"])
    assert bench.stub_context({}, {}) == ("docker", [])


def test_a_patch_that_parses_but_does_not_evaluate_makes_the_case_wrong(tmp_path: Path) -> None:
    case = tmp_path / "case"
    (case / MODULE).parent.mkdir(parents=True)
    (case / MODULE).write_text(ORIGINAL)
    (case / "nixmig.toml").write_text("# the fake CLI does not read it\n")
    (case / "case.json").write_text(json.dumps({"shape": "synthetic", "literals": ["hunter2-literal"]}))
    patched = tmp_path / "patched.nix"
    patched.write_text(DUPLICATE_UNIT)
    script = tmp_path / "fake_nixmig_duplicate_unit.py"
    script.write_text(
        "import pathlib, shutil, sys\n"
        "if '--write' in sys.argv:\n"
        f"    shutil.copyfile({str(patched)!r}, {MODULE!r})\n"
        "    print('wrote 1 file')\n"
        "elif 'scan' in sys.argv:\n"
        "    print('{\"findings\": []}')\n"
    )
    res = bench.run_case([sys.executable, str(script)], case, tmp_path / "work")
    assert res.exit_codes["write"] == 0 and not res.literals_left  # all the parse-level checks pass
    assert res.outcome == "wrong", res.reason
    assert res.eval == "failed"
    assert "dynamic attribute 'docker-app' already defined" in res.reason
    assert bench.totals([res])["eval failed"] == 1


def test_stub_names_keep_identifiers_between_two_strings() -> None:
    # one regex for both would read `"; group = h.group; m = "` as a string and lose `group`
    names = bench.stub_names(b'{ a = "${x}/s"; group = h.group; m = "0755"; b = c."foo-bar"; }')
    assert {"group", "h", "foo-bar", "x", "docker", "podman"} <= set(names)
