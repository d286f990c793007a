"""patch says when nothing in the repo brings in agenix's NixOS module: the patched host would not evaluate."""

from __future__ import annotations

import shutil
from pathlib import Path

from nixmig.cli.patch import agenix_in
from tests.helpers import run_cli

SHAPES = Path(__file__).resolve().parents[1] / "fixtures" / "shapes"
NOTE = "imports agenix's NixOS module"


def _explain(repo: Path) -> str:
    proc = run_cli("patch", "--explain", cwd=repo)
    assert proc.returncode in (0, 1), proc.stderr.decode()
    return proc.stdout.decode() + proc.stderr.decode()


def test_a_repo_without_agenix_s_module_is_told_to_add_it(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    shutil.copytree(SHAPES / "oci-let-bound-password", repo)
    assert NOTE in _explain(repo)
    (repo / "flake.nix").write_text(
        '{ inputs.agenix.url = "github:ryantm/agenix";\n'
        "  outputs = { nixpkgs, agenix, ... }: { nixosConfigurations.box = nixpkgs.lib.nixosSystem {\n"
        "    modules = [ ./hosts/box agenix.nixosModules.default ]; }; }; }\n"
    )
    assert NOTE not in _explain(repo)


def test_what_counts_as_agenix_s_module() -> None:
    assert agenix_in({"flake.nix": b"modules = [ inputs.ragenix.nixosModules.age ];"})
    assert agenix_in({"h.nix": b"imports = [ <agenix/modules/age.nix> ];"})
    assert agenix_in({"h.nix": b'imports = [ "${builtins.fetchTarball "https://x/agenix.tar.gz"}/modules/age.nix" ];'})
    assert agenix_in({"h.nix": b'age.identityPaths = [ "/etc/ssh/ssh_host_ed25519_key" ];'})
    assert agenix_in({"h.nix": b"imports = [ inputs.agenix-rekey.nixosModules.default ];"})
    # patch's own age.secrets is no sign of the module (a second run would take it for one), nor a README
    assert not agenix_in({"h.nix": b"age.secrets.x.file = ../secrets/x.age;", "README.md": b"agenix.nixosModules"})
