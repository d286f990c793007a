# The deploy-rs hook on one node: lib.deployRs.activateWithMigrations wraps the new
# generation's profile, and the test runs its deploy-rs-activate the way deploy-rs's
# `activate` does: with PROFILE set, and DRY_ACTIVATE=1 for --dry-activate, BOOT=1 for
# --boot (refused here: nothing in the new generation would run the migration). The target
# is the native app of native-postgresql.nix; the new generation declares the
# migration with runOnActivation = false, so the hook is what runs it.
#
# deploy-rs itself is not an input of this flake (inputs: nixpkgs, agenix), so the base
# profile comes from fakeActivateNixos below, which builds what
# deploy-rs.lib.<system>.activate.nixos builds (same layout and the same
# deploy-rs-activate logic; only activate-rs, deploy-rs's own binary, is a stub).
{
  pkgs,
  common,
  nixosModule,
  deployRs,
  ...
}:

let
  # Fake: deploy-rs's activate.nixos (a buildEnv of the system's top level plus
  # deploy-rs-activate and activate-rs), for a VM test without the deploy-rs input.
  fakeActivateNixos =
    toplevel:
    pkgs.buildEnv {
      name = "activatable-${toplevel.name}";
      paths = [
        toplevel
        (pkgs.writeTextFile {
          name = "${toplevel.name}-activate-path";
          destination = "/deploy-rs-activate";
          executable = true;
          text = ''
            #!${pkgs.runtimeShell}
            set -euo pipefail
            if [[ "''${DRY_ACTIVATE:-}" == "1" ]]; then
              $PROFILE/bin/switch-to-configuration dry-activate
            elif [[ "''${BOOT:-}" == "1" ]]; then
              $PROFILE/bin/switch-to-configuration boot
            else
              cd /tmp
              $PROFILE/bin/switch-to-configuration switch
            fi
          '';
        })
        (pkgs.writeTextFile {
          name = "${toplevel.name}-activate-rs";
          destination = "/activate-rs";
          executable = true;
          text = ''
            #!${pkgs.runtimeShell}
            echo "fake activate-rs: this VM test runs deploy-rs-activate itself" >&2
            exit 1
          '';
        })
      ];
    };
in
pkgs.testers.runNixOSTest {
  name = "nixmig-deploy-rs-hook";

  nodes.machine = {
    imports = [
      common.nativeModule
      nixosModule
    ];

    specialisation.migrated.configuration = {
      appDb.migrated = true;
      age.secrets.app-db-password.file = common.appSecret;
      services.nixmig = {
        enable = true;
        operator.recipients = [ common.adminPub ];
        migrations.app-db = {
          secret = "app-db-password";
          database = {
            runtime = "native";
            name = "app";
            role = "app";
          };
          runOnActivation = false;
        };
      };
    };
  };

  testScript =
    { nodes, ... }:
    let
      profile = deployRs.activateWithMigrations {
        base = fakeActivateNixos nodes.machine.specialisation.migrated.configuration.system.build.toplevel;
        migrations = [ "app-db" ];
      };
    in
    ''
      import shlex

      def sql(query):
          return machine.succeed(
              "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d app -f - <<'SQL'\n" + query + "\nSQL"
          ).strip()

      def login(password):
          return f"PGPASSWORD={shlex.quote(password)} psql -XAtq -h 127.0.0.1 -U app -d app -c 'SELECT 1' 2>&1"

      machine.start()
      machine.wait_for_unit("postgresql.target")  # postgresql-setup.service ran initialScript
      machine.succeed("runuser -u postgres -- psql -XAq -v ON_ERROR_STOP=1 -d app < ${common.seedSql}")
      sql("ALTER TABLE writes OWNER TO app; ALTER TABLE people OWNER TO app")  # their sequences follow
      machine.wait_for_unit("app.service")
      machine.wait_until_succeeds("app-healthy", timeout=60)
      checksum = sql("${common.checksumSql}")

      with subtest("the wrapped profile keeps deploy-rs's layout"):
          machine.succeed("test -x ${profile}/deploy-rs-activate -a -e ${profile}/activate-rs")
          machine.succeed("test -x ${profile}/bin/switch-to-configuration -a -e ${profile}/etc/nixmig/nixmig.toml")

      with subtest("deploy --dry-activate: the plan, and nothing changes"):
          out = machine.succeed("DRY_ACTIVATE=1 PROFILE=${profile} ${profile}/deploy-rs-activate 2>&1")
          print(out)
          assert "app-db" in out, out
          machine.succeed(login("hardcoded-app-password"))
          machine.fail("test -e /run/agenix/app-db-password")  # no activation ran

      with subtest("deploy --boot is refused: runOnActivation = false, so nothing would run it at boot"):
          out = machine.fail("BOOT=1 PROFILE=${profile} ${profile}/deploy-rs-activate 2>&1")
          print(out)
          assert "deploy --boot" in out and "app-db" in out and "nothing was changed" in out, out
          machine.succeed(login("hardcoded-app-password"))
          machine.fail("test -e /run/agenix/app-db-password")  # the base's activation did not run

      with subtest("deploy: switch-to-configuration, then nixmig apply --on-host"):
          # what deploy-rs's activate does: point the system profile at the new profile,
          # then run its deploy-rs-activate with PROFILE set
          machine.succeed(
              "ln -sfn ${profile} /nix/var/nix/profiles/system-99-link",
              "ln -sfn system-99-link /nix/var/nix/profiles/system",
          )
          out = machine.succeed("PROFILE=/nix/var/nix/profiles/system /nix/var/nix/profiles/system/deploy-rs-activate 2>&1")
          print(out)
          machine.succeed(login("${common.appPassword}"))
          refused = machine.fail(login("hardcoded-app-password"))
          assert "password authentication failed" in refused, refused
          assert sql("${common.checksumSql}") == checksum
          machine.wait_until_succeeds("app-healthy", timeout=60)
          machine.succeed("! journalctl -q | grep -qF ${common.appPassword}")

      with subtest("deploying the same generation again is a no-op for the database"):
          out = machine.succeed("PROFILE=/nix/var/nix/profiles/system /nix/var/nix/profiles/system/deploy-rs-activate 2>&1")
          assert "nothing to do" in out, out
          machine.succeed(login("${common.appPassword}"))
    '';
}
