"""The worked example is kept once: nixmig/examples/newton-dotfiles (shipped for `nixmig demo`).

Tests, the e2e stack, the scan corpus and the benches use that tree; what only the tests add
lives in tests/fixtures/newton-dotfiles-overlay, which never replaces a file of the example.
"""

from __future__ import annotations

from pathlib import Path

from nixmig import demo
from tests.helpers import EXAMPLE, EXAMPLE_OVERLAY, copy_example

ROOT = Path(__file__).resolve().parents[2]


def test_the_tests_use_the_tree_the_demo_ships() -> None:
    assert EXAMPLE == demo.EXAMPLE
    assert EXAMPLE.parts[-3:] == ("nixmig", "examples", "newton-dotfiles")
    assert sorted(p.relative_to(EXAMPLE).as_posix() for p in EXAMPLE.rglob("*") if p.is_file()) == [
        "flake.nix",
        "hosts/newton/default.nix",
        "modules/system/linux/twenty-crm.nix",
        "modules/system/linux/twenty/arion-compose.nix",
        "secrets/secrets.nix",
    ]


def test_no_second_copy_of_an_example_file_in_the_tests_or_benches() -> None:
    shipped = {p.read_bytes(): p.relative_to(EXAMPLE).as_posix() for p in EXAMPLE.rglob("*") if p.is_file()}
    copies = [
        f"{p.relative_to(ROOT)} is a copy of {shipped[p.read_bytes()]}"
        for top in ("tests", "bench")  # the Nix package's source has no bench/: rglob finds nothing there
        for p in sorted((ROOT / top).rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.read_bytes() in shipped
    ]
    assert copies == [], "use tests.helpers.EXAMPLE / copy_example instead"


def test_the_overlay_only_adds_files(tmp_path: Path) -> None:
    added = sorted(p.relative_to(EXAMPLE_OVERLAY).as_posix() for p in EXAMPLE_OVERLAY.rglob("*") if p.is_file())
    assert added == ["secrets/twenty-app-secret.age"]
    assert not any((EXAMPLE / rel).exists() for rel in added)
    repo = copy_example(tmp_path)
    for rel in added:
        assert (repo / rel).read_bytes() == (EXAMPLE_OVERLAY / rel).read_bytes()
    for p in EXAMPLE.rglob("*"):
        if p.is_file():
            assert (repo / p.relative_to(EXAMPLE)).read_bytes() == p.read_bytes()
    # the overlay's .age is the one the example's module points at
    module = (repo / "modules/system/linux/twenty-crm.nix").read_text()
    assert "file = ../../../secrets/twenty-app-secret.age;" in module
    assert '"twenty-app-secret.age".publicKeys' in (repo / "secrets/secrets.nix").read_text()
