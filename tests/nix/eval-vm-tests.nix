# The parts of vm-tests/ that need no nixpkgs, through the stubs: the PostgreSQL image's
# extraCommands and config (run and checked by tests/unit/test_nix_files.py), the native
# app unit's ordering, and the Python test scripts of the native and deploy-rs VM tests
# with their Nix values filled in. The VM tests themselves need nixpkgs and KVM.
let
  stubs = import ./stubs.nix;
  inherit (stubs) fakeDrv fakePkgs fakeLib;
  common = import ../../vm-tests/common.nix {
    pkgs = fakePkgs;
    agenix = throw "agenix is not needed for these values";
  };

  # nativeModule as the module system would call it, for the values read below
  native =
    migrated:
    common.nativeModule {
      config.appDb.migrated = migrated;
      lib = fakeLib;
    };

  toplevel = fakeDrv "nixos-system-machine" { };
  args = {
    pkgs = fakePkgs;
    inherit common;
    nixosModule = throw "the NixOS module is not needed for the test script";
    deployRs.activateWithMigrations = a: fakeDrv "nixmig-${a.base.name}" { inherit (a) migrations; };
  };
  nodes.machine = {
    system.build.toplevel = toplevel;
    specialisation.migrated.configuration.system.build.toplevel = toplevel;
  };
  script = file: (import file args).testScript { inherit nodes; };
in
{
  pg = "${common.pg}";
  image = {
    inherit (common.pgImage) extraCommands config;
    contents = map (c: c.name) common.pgImage.contents;
  };
  imageExtraCommands = common.imageExtraCommands;
  app = {
    inherit ((native false).config.systemd.services.app) after requires;
  };
  scripts = {
    native-postgresql = script ../../vm-tests/native-postgresql.nix;
    deploy-rs-hook = script ../../vm-tests/deploy-rs-hook.nix;
  };
}
