# The NixOS VM tests, as flake checks (checks.<system>.vm-*). They need a machine with
# Nix and KVM: `nix flake check`, or one at a time, e.g.
#   nix build .#checks.x86_64-linux.vm-password-migration -L
# (add `.driverInteractive` and run ./result/bin/nixos-test-driver to poke around).
{
  pkgs,
  agenix,
  nixmig,
  nixosModule,
  deployRs,
}:

let
  common = import ./common.nix { inherit pkgs agenix; };
  args = {
    inherit
      pkgs
      nixmig
      nixosModule
      deployRs
      common
      ;
  };
in
{
  # deployer + newton (docker, compose, agenix): a full `nixmig apply` over SSH, then rollback
  vm-password-migration = import ./password-migration.nix (args // { strategy = "rotate"; });
  # the same with strategy rebuild: the data moves to a new volume under a write freeze
  vm-rebuild-strategy = import ./password-migration.nix (args // { strategy = "rebuild"; });
  # services.postgresql and the NixOS module's nixmig-NAME oneshot (on-host mode)
  vm-native-postgresql = import ./native-postgresql.nix args;
  # lib.deployRs.activateWithMigrations: dry-activate plans, activate applies
  vm-deploy-rs-hook = import ./deploy-rs-hook.nix args;
}
