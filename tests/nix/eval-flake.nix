# flake.nix's outputs with stub inputs: which outputs exist for which systems, without
# nixpkgs (nothing here forces a package). Used by tests/unit/test_nix_files.py.
let
  flake = import ../../flake.nix;
  noPkgs = system: throw "nixpkgs is not available in this test (${system})";
  nixpkgs.legacyPackages = {
    x86_64-linux = noPkgs "x86_64-linux";
    aarch64-linux = noPkgs "aarch64-linux";
  };
  outputs = flake.outputs {
    self = outputs;
    inherit nixpkgs;
    agenix.nixosModules.default = { };
  };
  names = builtins.mapAttrs (_: builtins.attrNames);
  module = outputs.nixosModules.default {
    lib.mkDefault = x: x;
    pkgs.stdenv.hostPlatform.system = "x86_64-linux";
  };
in
{
  inherit (flake) description;
  inputs = builtins.mapAttrs (_: i: i.url) flake.inputs;
  agenixFollows = flake.inputs.agenix.inputs.nixpkgs.follows;
  outputs = builtins.attrNames outputs;
  packages = names outputs.packages;
  apps = names outputs.apps;
  appType = builtins.mapAttrs (_: a: a.default.type) outputs.apps;
  devShells = names outputs.devShells;
  checks = names outputs.checks;
  formatter = builtins.attrNames outputs.formatter;
  nixosModules = builtins.attrNames outputs.nixosModules;
  moduleImports = map toString module.imports;
  deployRs = builtins.attrNames outputs.lib.deployRs;
}
