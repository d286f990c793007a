# nix/deploy-rs.nix's activateWithMigrations through the stubs: the activation script it
# writes and the build command of the wrapped profile, as text the test then runs with
# bash against a fake base profile and a fake nixmig. Used by tests/unit/test_nix_files.py.
{
  # directories standing in for the nixmig package and the base profile
  nixmig,
  base,
  # a JSON list of migration names
  migrations,
  rollbackIdentity ? null,
  config ? null,
  # JSON: a number or null (deploy-rs's activationTimeout); unset: the helper's default
  activationTimeout ? null,
  backupMiBPerSecond ? null,
}:

let
  stubs = import ./stubs.nix;
  helper = import ../../nix/deploy-rs.nix {
    pkgsFor = _system: stubs.fakePkgs;
    nixmigFor = system: {
      outPath = nixmig;
      inherit system;
    };
  };
  drv = helper.activateWithMigrations (
    {
      base = {
        outPath = base;
        name = "activatable-nixos-system-newton";
        system = "x86_64-linux";
      };
      migrations = builtins.fromJSON migrations;
    }
    // (if rollbackIdentity == null then { } else { inherit rollbackIdentity; })
    // (if config == null then { } else { inherit config; })
    // (if activationTimeout == null then { } else { activationTimeout = builtins.fromJSON activationTimeout; })
    // (if backupMiBPerSecond == null then { } else { backupMiBPerSecond = builtins.fromJSON backupMiBPerSecond; })
  );
in
{
  inherit (drv) name buildCommand;
  scriptName = drv.env.script.name;
  script = drv.env.script.text;
  base = drv.env.base.outPath;
  helper = builtins.attrNames helper;
}
