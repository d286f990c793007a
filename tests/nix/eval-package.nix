# nix/package.nix (and nix/pyrage.nix through its callPackage) with stub nixpkgs: the
# Python dependencies it asks nixpkgs for, its check phase and its wrapper, as data.
# Used by tests/unit/test_nix_files.py to hold it to pyproject.toml.
let
  stubs = import ./stubs.nix;
  fake = name: {
    pname = name;
    outPath = "/fake/${name}";
  };
  pyNames = [
    "typer"
    "rich"
    "tree-sitter"
    "paramiko"
    "psycopg"
    "cryptography"
    "hvac"
    "jinja2"
    "hatchling"
    "pytest"
  ];
  py = builtins.listToAttrs (map (n: { name = n; value = fake n; }) pyNames) // {
    # nixpkgs: python3Packages.tree-sitter-grammars.tree-sitter-nix (module tree_sitter_nix)
    tree-sitter-grammars.tree-sitter-nix = fake "tree-sitter-nix";
    buildPythonApplication = attrs: attrs;
    callPackage = f: args: import f (pyArgs // args);
  };
  pyArgs = {
    lib = stubs.fakeLib;
    buildPythonPackage = attrs: attrs;
    fetchPypi = attrs: attrs;
    rustPlatform = {
      importCargoLock = attrs: attrs;
      cargoSetupHook = fake "cargoSetupHook";
      maturinBuildHook = fake "maturinBuildHook";
    };
    cargo = fake "cargo";
    rustc = fake "rustc";
  };
  pkg = import ../../nix/package.nix {
    lib = stubs.fakeLib;
    python3Packages = py;
    makeWrapper = fake "makeWrapper";
    age = fake "age";
    openssh = fake "openssh";
    nix = fake "nix";
    bash = fake "bash";
  };
  pyrage = pkg.passthru.pyrage;
in
{
  inherit (pkg) pname version makeWrapperArgs checkPhase;
  dependencies = map (d: d.pname) pkg.dependencies;
  buildSystem = map (d: d.pname) pkg.build-system;
  checkInputs = map (d: d.pname) pkg.nativeCheckInputs;
  mainProgram = pkg.meta.mainProgram;
  pyrage = {
    inherit (pyrage) pname version;
    hash = pyrage.src.hash;
    lockFile = toString pyrage.cargoDeps.lockFile;
  };
}
