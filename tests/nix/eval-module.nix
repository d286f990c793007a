# nix/module.nix evaluated through the stubs: its option declarations applied to
# `settings` (a JSON file: what a user writes under services.nixmig), rendered by
# nix/render.nix and written as TOML by toml.nix. Used by tests/unit/test_nix_files.py.
{
  settingsFile,
  # a JSON file merged into the stub NixOS config (networking.hostName, age, ...)
  hostConfigFile ? null,
  # a .nix file whose value replaces settings.migrations (the option's documented example)
  migrationsFile ? null,
}:

let
  stubs = import ./stubs.nix;
  readJSON = f: builtins.fromJSON (builtins.readFile f);
  config = {
    networking.hostName = "newton";
    services.postgresql = {
      enable = false;
      settings.port = 5432;
    };
  }
  // (if hostConfigFile == null then { } else readJSON hostConfigFile);
  module = import ../../nix/module.nix {
    inherit config;
    options = { };
    lib = stubs.fakeLib;
    pkgs = stubs.fakePkgs;
  };
  decls = module.options.services.nixmig;
  given = readJSON settingsFile;
  settings = if migrationsFile == null then given else given // { migrations = import migrationsFile; };
  cfg = stubs.evalOptions decls settings "services.nixmig";
  attrs = import ../../nix/render.nix cfg;
in
{
  inherit attrs;
  toml = import ./toml.nix attrs;
  undocumented = stubs.undocumented decls "services.nixmig";
  migrationsExample = decls.migrations.example.text;
  # what the nixmig-NAME units would be ordered against, per migration
  units = builtins.mapAttrs (_: m: {
    inherit (m)
      after
      before
      runOnActivation
      requiredByApp
      ;
  }) cfg.migrations;
}
