# lib.deployRs: run nixmig's on-host phases as part of a deploy-rs activation.
#
#   deploy.nodes.newton.profiles.system.path =
#     nixmig.lib.deployRs.activateWithMigrations {
#       base = deploy-rs.lib.x86_64-linux.activate.nixos self.nixosConfigurations.newton;
#       migrations = [ "twenty-db-password" ];
#     };
#
# deploy-rs has no pre/post hooks; its supported extension point is activate.custom,
# whose result is a profile holding `deploy-rs-activate` (the script deploy-rs runs
# with PROFILE set, and DRY_ACTIVATE=1 or BOOT=1 for those modes) and `activate-rs`.
# activateWithMigrations takes such a profile (what activate.nixos / activate.custom
# return) and returns the same layout with its own deploy-rs-activate around the
# original one:
#
#   dry-activate   the base's (switch-to-configuration dry-activate), then
#                  `nixmig plan --on-host` for each migration: nothing is changed
#   boot           the base's (switch-to-configuration boot) only; with the NixOS
#                  module the nixmig-NAME units run the migrations at that boot
#   switch         `nixmig plan --on-host` for each migration (a wrong nixmig.toml
#                  stops the deploy before anything changes), the base's
#                  (switch-to-configuration switch), then `nixmig apply --on-host`
#                  for each. If one fails the activation fails, and deploy-rs (with
#                  autoRollback) activates the previous generation again. With
#                  rollbackIdentity set, `nixmig rollback --on-host -i IDENTITY` first
#                  undoes the failed migration and the ones applied before it, in
#                  reverse, so the previous generation finds the old passwords; without
#                  it the message says what to run (on-host rollback needs the
#                  operator's key, which a server usually does not hold).
#
# The config is the new generation's /etc/nixmig/nixmig.toml (from the NixOS module;
# set `runOnActivation = false` on its migrations to leave them to this hook).
#
# Only builtins here: everything from nixpkgs comes in through pkgsFor, so
# tests/unit/test_nix_files.py evaluates this file with stubs and runs the script.
{
  # system -> an attrset with runtimeShell, writeShellScript, runCommand (nixpkgs)
  pkgsFor,
  # system -> the nixmig package for that system
  nixmigFor,
}:

let
  escape = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";
  words = list: builtins.concatStringsSep " " (map escape list);

  hookScript =
    {
      nixmig,
      base,
      migrations,
      config,
      rollbackIdentity,
    }:
    ''
      set -euo pipefail

      nixmig=${escape "${nixmig}/bin/nixmig"}
      base=${escape "${base}"}
      config=${if config == null then ''"$PROFILE/etc/nixmig/nixmig.toml"'' else escape config}
      migrations=(${words migrations})
      rollback_identity=${if rollbackIdentity == null then "''" else escape rollbackIdentity}

      say() { printf 'nixmig: %s\n' "$*" >&2; }

      if [[ "''${DRY_ACTIVATE:-}" == 1 ]]; then
        "$base/deploy-rs-activate"
        for m in "''${migrations[@]}"; do
          "$nixmig" plan --on-host -c "$config" --migration "$m"
        done
        exit 0
      fi

      if [[ "''${BOOT:-}" == 1 ]]; then
        "$base/deploy-rs-activate"
        say "boot activation: the migrations (''${migrations[*]}) run when this generation boots (the nixmig-NAME units of services.nixmig), not now"
        exit 0
      fi

      # Before anything changes: the new generation's nixmig.toml must be valid and name them all.
      for m in "''${migrations[@]}"; do
        if ! "$nixmig" plan --on-host -c "$config" --migration "$m" >/dev/null; then
          say "plan failed for migration $m with $config; not switching (nothing was changed)"
          exit 1
        fi
      done

      "$base/deploy-rs-activate"

      applied=()
      for m in "''${migrations[@]}"; do
        if "$nixmig" apply --on-host -c "$config" --migration "$m" --yes; then
          applied+=("$m")
          continue
        fi
        say "apply failed for migration $m after the switch (\`nixmig status --on-host -c $config --migration $m\` shows how far it got)"
        undo=("$m")
        for ((i = ''${#applied[@]} - 1; i >= 0; i--)); do undo+=("''${applied[i]}"); done
        if [[ -n "$rollback_identity" ]]; then
          for u in "''${undo[@]}"; do
            say "rolling back migration $u"
            "$nixmig" rollback --on-host -c "$config" --migration "$u" --yes -i "$rollback_identity" ||
              say "rollback of $u failed: see \`nixmig status --on-host -c $config --migration $u\`"
          done
        else
          say "if a password was already changed, the previous generation cannot log in until you run, on this host:"
          for u in "''${undo[@]}"; do
            say "  nixmig rollback --on-host -c $config --migration $u -i OPERATOR_KEY"
          done
          say "or deploy this generation again: nixmig apply --on-host resumes where it stopped"
        fi
        say "activation failed: deploy-rs rolls the profile back to the previous generation"
        exit 1
      done
    '';

  activateWithMigrations =
    {
      # the profile deploy-rs would deploy: deploy-rs.lib.<system>.activate.nixos <nixosConfiguration>
      # (or anything activate.custom returned)
      base,
      # names under [migrations] in the new generation's nixmig.toml, run in this order
      migrations,
      # nixmig.toml to use; default: the one the new generation puts in /etc
      config ? null,
      # the nixmig package; default: this flake's, for base's system
      nixmig ? nixmigFor base.system,
      # an operator identity (ssh or age key) on the target: when set, a failed apply is
      # rolled back with it before the activation fails, so deploy-rs's rollback to the
      # previous generation finds the database as that generation expects it
      rollbackIdentity ? null,
    }:
    let
      pkgs = pkgsFor base.system;
      script = pkgs.writeShellScript "nixmig-deploy-rs-activate" (hookScript {
        inherit
          nixmig
          base
          migrations
          config
          rollbackIdentity
          ;
      });
    in
    assert builtins.isList migrations && migrations != [ ]
      || throw "lib.deployRs.activateWithMigrations: migrations must be a non-empty list of names from nixmig.toml";
    pkgs.runCommand "nixmig-${base.name}"
      {
        inherit base script;
        preferLocalBuild = true;
        allowSubstitutes = false;
      }
      ''
        for f in deploy-rs-activate activate-rs; do
          if [ ! -e "$base/$f" ]; then
            echo "activateWithMigrations: $base has no $f; pass base = deploy-rs.lib.<system>.activate.nixos <config> (or activate.custom ...)" >&2
            exit 1
          fi
        done
        mkdir -p "$out"
        for entry in "$base"/* "$base"/.[!.]*; do
          [ -e "$entry" ] || [ -L "$entry" ] || continue
          name="''${entry##*/}"
          [ "$name" = deploy-rs-activate ] && continue
          ln -s "$entry" "$out/$name"
        done
        cp "$script" "$out/deploy-rs-activate"
        chmod 0555 "$out/deploy-rs-activate"
      '';
in
{
  inherit activateWithMigrations;
}
