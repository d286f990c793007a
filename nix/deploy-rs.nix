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
#   boot           only when the new generation has a nixmig-NAME unit for every
#                  migration (services.nixmig, runOnActivation = true): those run them
#                  when it boots. Then `nixmig plan --on-host` for each, the base's
#                  (switch-to-configuration boot). Without such a unit nothing would
#                  run the migration, yet the generation expects the new password: the
#                  hook refuses, before anything changes, and says what to do.
#   switch         `nixmig plan --on-host` for each migration (a wrong nixmig.toml
#                  stops the deploy before anything changes), each one's journal read
#                  (`nixmig status --json`), the base's (switch-to-configuration
#                  switch), then `nixmig apply --on-host` for each. If one fails the
#                  activation fails, and deploy-rs (with autoRollback) activates the
#                  previous generation again. With rollbackIdentity set,
#                  `nixmig rollback --on-host -i IDENTITY` first undoes, in reverse, the
#                  failed migration and the ones before it, but only those whose journal
#                  this activation changed: one done in an earlier deploy is what the
#                  previous generation expects, and stays. Without rollbackIdentity the
#                  message says what to run (on-host rollback needs the operator's key,
#                  which a server usually does not hold).
#
# deploy-rs runs this inside its activation: with magic rollback (its default) it gives
# up after activationTimeout (240 s unless set) and the host then deactivates the
# profile, whatever the migrations did. Pass the node's activationTimeout here too: as a
# backup starts, the hook warns when preflight's database size (at backupMiBPerSecond)
# makes it likely to outlast what remains.
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
      activationTimeout,
      backupMiBPerSecond,
    }:
    ''
      set -euo pipefail

      nixmig=${escape "${nixmig}/bin/nixmig"}
      base=${escape "${base}"}
      config=${if config == null then ''"$PROFILE/etc/nixmig/nixmig.toml"'' else escape config}
      migrations=(${words migrations})
      rollback_identity=${if rollbackIdentity == null then "''" else escape rollbackIdentity}
      activation_timeout=${if activationTimeout == null then "''" else toString activationTimeout}
      backup_rate=${toString backupMiBPerSecond}

      say() { printf 'nixmig: %s\n' "$*" >&2; }

      # Before anything changes: the new generation's nixmig.toml must be valid and name them all.
      plan_all() {
        local m
        for m in "''${migrations[@]}"; do
          if ! "$nixmig" plan --on-host -c "$config" --migration "$m" >/dev/null; then
            say "plan failed for migration $m with $config; not activating (nothing was changed)"
            exit 1
          fi
        done
      }

      if [[ "''${DRY_ACTIVATE:-}" == 1 ]]; then
        "$base/deploy-rs-activate"
        for m in "''${migrations[@]}"; do
          "$nixmig" plan --on-host -c "$config" --migration "$m"
        done
        exit 0
      fi

      if [[ "''${BOOT:-}" == 1 ]]; then
        # deploy --boot: this hook cannot run them now (the new generation's secrets are not
        # decrypted until it is active), so only the new generation's own nixmig-NAME units
        # (services.nixmig, runOnActivation = true) can, when it boots. Without them it would
        # boot expecting passwords nothing has set: refuse before anything changes.
        missing=()
        for m in "''${migrations[@]}"; do
          [[ -e "$PROFILE/etc/systemd/system/nixmig-$m.service" ]] || missing+=("$m")
        done
        if ((''${#missing[@]})); then
          say "deploy --boot: the new generation has no unit that runs migration(s) ''${missing[*]} at boot (services.nixmig.migrations.<name>.runOnActivation = false), yet it expects their new passwords; not activating (nothing was changed). Deploy without --boot (this hook then runs them during the switch), or set runOnActivation = true for them"
          exit 1
        fi
        plan_all
        "$base/deploy-rs-activate"
        say "boot activation: the new generation's nixmig-NAME units run the migrations (''${migrations[*]}) when it boots, not now"
        exit 0
      fi

      plan_all

      # What each migration's journal says before this activation: afterwards, only the
      # migrations whose journal changed are this activation's to undo. One that was done
      # in an earlier deploy is expected by the generation deploy-rs would go back to.
      declare -A before=()
      journal_of() { "$nixmig" status --on-host -c "$config" --migration "$1" --json 2>/dev/null || true; }
      for m in "''${migrations[@]}"; do before[$m]="$(journal_of "$m")"; done
      changed_now() {
        local now
        now="$(journal_of "$1")"
        # a status that could not be read counts as changed: undoing too much is safer here
        [[ -z "''${before[$1]}" || -z "$now" || "''${before[$1]}" != "$now" ]]
      }

      # apply, its output passed through. With deploy-rs's activationTimeout known, warn as
      # the backup starts when preflight's database size makes it likely to outlast it.
      watch_backup() {
        local line mib="" est left
        while IFS= read -r line; do
          printf '%s\n' "$line"
          if [[ $line =~ ^\ +[0-9]+\ tables,\ ([0-9]+)\ MiB$ ]]; then
            mib=''${BASH_REMATCH[1]}
          elif [[ -n $mib && $line =~ ^==\>\ \[[0-9]+/[0-9]+\]\ backup:\ running ]]; then
            est=$(((mib + backup_rate - 1) / backup_rate))
            left=$((activation_timeout - SECONDS))
            if ((est >= left)); then
              say "migration $1: the backup of $mib MiB may take ''${est}s (at $backup_rate MiB/s) and ''${left}s remain of deploy-rs's activationTimeout (''${activation_timeout}s): if it runs out, deploy-rs gives up and (magic rollback) the host deactivates this generation although the password may have changed; raise activationTimeout on the deploy-rs node and here, or run \`nixmig apply\` before the deploy"
            fi
            mib=""
          fi
        done
      }
      apply() {
        if [[ -z "$activation_timeout" ]]; then
          "$nixmig" apply --on-host -c "$config" --migration "$1" --yes
          return
        fi
        local rc=0
        "$nixmig" apply --on-host -c "$config" --migration "$1" --yes | watch_backup "$1" || {
          rc=''${PIPESTATUS[0]}
          ((rc)) || rc=1
        }
        return "$rc"
      }

      "$base/deploy-rs-activate"

      for i in "''${!migrations[@]}"; do
        m=''${migrations[i]}
        if apply "$m"; then
          continue
        fi
        say "apply failed for migration $m after the switch (\`nixmig status --on-host -c $config --migration $m\` shows how far it got)"
        # this one and those before it whose journal this activation changed, in reverse
        undo=()
        for ((j = i; j >= 0; j--)); do
          u=''${migrations[j]}
          if changed_now "$u"; then undo+=("$u"); else say "migration $u: nothing changed by this activation (done before), left as it is"; fi
        done
        if ((''${#undo[@]} == 0)); then
          say "nothing this activation changed needs undoing"
        elif [[ -n "$rollback_identity" ]]; then
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
      # deploy-rs's activationTimeout for this node (its default: 240 s), or null with
      # magicRollback = false. With magic rollback deploy-rs gives up on an activation that
      # takes longer and the host then deactivates the generation: the hook warns when a
      # backup is estimated to outlast what remains of it
      activationTimeout ? 240,
      # the backup speed the estimate assumes (pg_dump, then age encryption, on the host)
      backupMiBPerSecond ? 20,
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
          activationTimeout
          backupMiBPerSecond
          ;
      });
    in
    assert builtins.isList migrations && migrations != [ ]
      || throw "lib.deployRs.activateWithMigrations: migrations must be a non-empty list of names from nixmig.toml";
    assert activationTimeout == null || builtins.isInt activationTimeout && activationTimeout > 0
      || throw "lib.deployRs.activateWithMigrations: activationTimeout must be deploy-rs's activationTimeout in seconds, or null";
    assert builtins.isInt backupMiBPerSecond && backupMiBPerSecond > 0
      || throw "lib.deployRs.activateWithMigrations: backupMiBPerSecond must be a positive integer";
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
