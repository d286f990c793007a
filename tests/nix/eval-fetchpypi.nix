# What the Nix files that fetch from PyPI ask fetchPypi for, as data: nix/pyrage.nix
# (the sdist, and the Cargo.lock copied beside it) and nix/types-docker.nix (the wheel),
# called the way callPackage would, with stub arguments. Used by scripts/check-nix-hashes,
# which downloads the same files from PyPI and compares.
{
  # the repository to read (scripts/check-nix-hashes --root)
  root ? ../..,
}:

let
  stubs = import ./stubs.nix;
  fake = name: {
    pname = name;
    outPath = "/fake/${name}";
  };
  args = {
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
    types-requests = fake "types-requests";
    urllib3 = fake "urllib3";
  };
  # callPackage without nixpkgs: only the arguments the function names
  call =
    file:
    let
      f = import file;
    in
    f (builtins.intersectAttrs (builtins.functionArgs f) args);
  describe =
    rel:
    let
      pkg = call (root + "/${rel}");
    in
    {
      file = rel;
      src = pkg.src;
      lockFile = if pkg ? cargoDeps then toString pkg.cargoDeps.lockFile else null;
    };
in
map describe [
  "nix/pyrage.nix"
  "nix/types-docker.nix"
]
