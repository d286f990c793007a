# Two nodes: `deployer` (nixmig, the operator's key, the repo) and `newton` (docker, the
# compose project "twenty" like the worked example, agenix). The deployer runs the
# whole flow over SSH, as an operator would: `nixmig secret new`, `plan`, `apply`,
# then `rollback`; the test asserts what tests/e2e asserts: the new password works,
# the old one is refused, the data is intact, the writer kept writing, the health check
# is green, no password in the journal or the logs, the backup is age-encrypted.
#
# strategy "rotate" (vm-password-migration) or "rebuild" (vm-rebuild-strategy: the data
# moves to the volume twenty_db-data-v2, the old volume stays for the rollback).
{
  pkgs,
  nixmig,
  common,
  strategy,
  ...
}:

let
  rebuild = strategy == "rebuild";
  newVolume = "twenty_db-data-v2";
in
pkgs.testers.runNixOSTest {
  name = "nixmig-${strategy}";

  nodes = {
    newton = common.newtonModule { rebuildVolume = if rebuild then newVolume else null; };

    deployer =
      { nodes, ... }:
      {
        virtualisation.memorySize = 1024;
        environment.systemPackages = [
          nixmig
          pkgs.curl
          pkgs.openssh
        ];
        programs.ssh.knownHosts.newton.publicKey = common.hostPub;
        environment.etc."nixmig-vm/repo".source = common.repo {
          inherit strategy;
          deploy = common.deployScript nodes.newton.system.build.toplevel;
          extraMigration = if rebuild then { new_volume = newVolume; } else { };
        };
      };
  };

  testScript = ''
    import shlex

    def db(query):
        return newton.succeed(
            "docker exec -i -u postgres twenty-db-1 psql -XAtq -v ON_ERROR_STOP=1 -d default -f - <<'SQL'\n"
            + query + "\nSQL"
        ).strip()

    def writes():
        return int(db("SELECT count(*) FROM writes"))

    def tcp_login(password_expr):
        ip = newton.succeed(
            "docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' twenty-db-1"
        ).split()[0]
        return f"PGPASSWORD={password_expr} psql -XAtq -h {ip} -U postgres -d default -c 'SELECT 1' 2>&1"

    start_all()

    with subtest("the worked example runs, with the password `postgres`"):
        newton.wait_for_unit("twenty.service")
        newton.wait_until_succeeds("docker exec -u postgres twenty-db-1 pg_isready -q", timeout=600)
        newton.succeed("docker exec -i -u postgres twenty-db-1 psql -XAq -v ON_ERROR_STOP=1 -d default < ${common.seedSql}")
        newton.wait_until_succeeds("curl -fsS http://127.0.0.1:3000/cgi-bin/healthz", timeout=300)
        newton.wait_until_succeeds("test $(docker exec -u postgres twenty-db-1 psql -XAtq -d default -c 'SELECT count(*) FROM writes') -gt 5", timeout=120)
        checksum = db("${common.checksumSql}")
        newton.succeed(tcp_login("postgres"))

    with subtest("the operator's side: keys, the repo, a new secret"):
        deployer.wait_for_unit("multi-user.target")
        deployer.succeed(
            "install -D -m 0600 ${common.sshKeys.snakeOilPrivateKey} /root/.ssh/id_ecdsa",
            "install -D -m 0600 ${common.adminKey} /root/admin_ed25519",
            "cp -rL /etc/nixmig-vm/repo /root/repo && chmod -R u+w /root/repo",
        )
        deployer.succeed("cd /root/repo && nixmig secret new twenty-db-password --like twenty-app-secret")
        deployer.succeed("grep -q twenty-db-password.age /root/repo/secrets/secrets.nix")
        deployer.succeed("cd /root/repo && nixmig plan >&2")

    with subtest("nixmig apply (strategy ${strategy})"):
        before = writes()
        deployer.succeed(
            "cd /root/repo && nixmig apply --yes -i /root/admin_ed25519 > /tmp/apply.log 2>&1"
            " || { cat /tmp/apply.log >&2; exit 1; }"
        )
        log = deployer.succeed("cat /tmp/apply.log")
        print(log)
        assert "done in" in log, "apply did not report completion"
        deployer.succeed("cd /root/repo && nixmig status >&2")

    with subtest("the new password works, the old one is refused"):
        newton.succeed("test -s /run/agenix/twenty-db-password")
        newton.succeed(tcp_login('"$(cat /run/agenix/twenty-db-password)"'))
        refused = newton.fail(tcp_login("postgres"))
        assert "password authentication failed" in refused, refused

    with subtest("the data is intact and the writer kept writing"):
        assert db("${common.checksumSql}") == checksum
        after = writes()
        assert after > before, f"writes: {before} before apply, {after} after"
        newton.wait_until_succeeds(f"test $(docker exec -u postgres twenty-db-1 psql -XAtq -d default -c 'SELECT count(*) FROM writes') -gt {after}", timeout=120)
        if ${if rebuild then "True" else "False"}:
            mounts = newton.succeed("docker inspect -f '{{range .Mounts}}{{.Name}} {{end}}' twenty-db-1").split()
            assert "${newVolume}" in mounts, mounts
            newton.succeed("docker volume inspect twenty_db-data")  # kept for the rollback

    with subtest("the health check is green"):
        deployer.wait_until_succeeds("curl -fsS http://newton:3000/cgi-bin/healthz", timeout=120)

    with subtest("no password in the journal, the logs or a clear-text backup"):
        password = newton.succeed("cat /run/agenix/twenty-db-password")
        assert len(password) >= 32
        deployer.succeed(f"! grep -rqF -- {shlex.quote(password)} /root/repo/.nixmig /tmp/apply.log")
        newton.succeed(f"! journalctl -q | grep -qF -- {shlex.quote(password)}")
        backups = deployer.succeed("find /root/repo/.nixmig -path '*backups*' -type f").split()
        assert backups, "no backup written"
        for b in backups:
            deployer.succeed(f"head -c 21 {shlex.quote(b)} | grep -q '^age-encryption.org/v1'")

    with subtest("nixmig rollback restores the old password and config"):
        deployer.succeed(
            "cd /root/repo && nixmig rollback --yes -i /root/admin_ed25519 > /tmp/rollback.log 2>&1"
            " || { cat /tmp/rollback.log >&2; exit 1; }"
        )
        newton.wait_until_succeeds("docker exec -u postgres twenty-db-1 pg_isready -q", timeout=300)
        newton.succeed(tcp_login("postgres"))
        newton.fail(tcp_login(shlex.quote(password)))
        assert db("${common.checksumSql}") == checksum
        deployer.wait_until_succeeds("curl -fsS http://newton:3000/cgi-bin/healthz", timeout=300)
  '';
}
