"""Which files are NixOS modules whatever their formals: named by an `imports` list, called by no one."""

from __future__ import annotations

from nixmig.nixsrc.edits import imported_modules
from nixmig.nixsrc.model import model


def modules(files: dict[str, bytes]) -> list[str]:
    return sorted(imported_modules({n: model(n, t) for n, t in files.items()}))


def test_named_by_imports_and_not_called() -> None:
    assert modules(
        {
            "h/default.nix": b"{ ... }: { imports = [ ./a.nix (./b.nix) ../c ./d.nix ./e.nix ./f.nix <nixpkgs/x> ]; }",
            "h/x.nix": b"{ pkgs, ... }: { d = import ./d.nix { x = 1; }; e = (import ./e.nix); "
            b"f = import ./f.nix args; }",
        }
    ) == ["c/default.nix", "h/a.nix", "h/b.nix", "h/e.nix"]


def test_callpackage_and_a_caller_elsewhere_make_it_a_function() -> None:
    assert modules({"default.nix": b"{ imports = [ ./m.nix ]; p = pkgs.callPackage ./m.nix { }; }"}) == []
    assert modules({"default.nix": b"{ imports = [ ./m.nix ]; }"}) == ["m.nix"]
    assert modules({"default.nix": b"{ imports = [ ./m ]; x = import ./m { }; }"}) == []  # a directory: m/default.nix
