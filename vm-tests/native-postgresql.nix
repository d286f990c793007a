# One node with services.postgresql (native runtime) and an app whose role has a
# hardcoded password. The specialisation "migrated" is the patched configuration: the
# agenix secret, the app reading it, and services.nixmig (this flake's NixOS module)
# declaring the migration. Switching to it runs the nixmig-app-db oneshot (on-host
# mode) after postgresql.target and before app.service; the test asserts the new
# password works, the old one is refused, the data is intact, the app is healthy, and
# that the unit is a no-op once done (journal in /var/lib/nixmig).
{
  pkgs,
  common,
  nixosModule,
  ...
}:

pkgs.testers.runNixOSTest {
  name = "nixmig-native-postgresql";

  nodes.machine =
    { ... }:
    {
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
            before = [ "app.service" ];
          };
        };
      };
    };

  testScript =
    { nodes, ... }:
    let
      migrated = "${nodes.machine.system.build.toplevel}/specialisation/migrated";
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
      machine.succeed(login("hardcoded-app-password"))

      with subtest("switching to the patched configuration runs nixmig-app-db before the app"):
          before = int(sql("SELECT count(*) FROM writes"))
          machine.succeed("${migrated}/bin/switch-to-configuration test >&2")
          machine.wait_for_unit("nixmig-app-db.service")
          machine.succeed("test -s /etc/nixmig/nixmig.toml")
          print(machine.succeed("journalctl -u nixmig-app-db.service --no-pager"))
          # app.service started after the migration finished (After=/RequiredBy=)
          done = int(machine.succeed("systemctl show -P ExecMainExitTimestampMonotonic nixmig-app-db.service"))
          started = int(machine.succeed("systemctl show -P ExecMainStartTimestampMonotonic app.service"))
          assert started >= done, f"app started at {started}, before nixmig finished at {done}"

      with subtest("the new password works, the old one is refused"):
          machine.succeed(login("${common.appPassword}"))
          refused = machine.fail(login("hardcoded-app-password"))
          assert "password authentication failed" in refused, refused

      with subtest("the data is intact, the app is healthy and writing"):
          assert sql("${common.checksumSql}") == checksum
          machine.wait_until_succeeds("app-healthy", timeout=60)
          machine.wait_until_succeeds(f"test $(runuser -u postgres -- psql -XAtq -d app -c 'SELECT count(*) FROM writes') -gt {before}", timeout=60)

      with subtest("no password in the journal or nixmig's state; the backup is encrypted"):
          machine.succeed("! journalctl -q | grep -qF ${common.appPassword}")
          machine.succeed("! grep -rqF ${common.appPassword} /var/lib/nixmig")
          backups = machine.succeed("find /var/lib/nixmig -path '*backups*' -type f").split()
          assert backups, "no backup written"
          for b in backups:
              machine.succeed(f"head -c 21 {shlex.quote(b)} | grep -q '^age-encryption.org/v1'")

      with subtest("once done, the unit is a no-op"):
          machine.succeed("systemctl restart nixmig-app-db.service")
          out = machine.succeed("journalctl -u nixmig-app-db.service --no-pager -n 20")
          assert "nothing to do" in out, out
          machine.succeed(login("${common.appPassword}"))
          assert sql("${common.checksumSql}") == checksum
    '';
}
