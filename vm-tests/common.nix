# Shared parts of the NixOS VM tests (pkgs.testers.runNixOSTest): TEST ONLY keys, the
# PostgreSQL image, the compose project shaped like the worked example (Twenty on
# newton), the native services.postgresql application, the operator's repo.
#
# Keys: nixpkgs' snake-oil keys (nixos/tests/ssh-keys.nix). The Ed25519 one is
# newton's ssh host key and so its agenix identity (age recipient); the ECDSA one logs
# the deployer in as root. The operator's key is the repo's test key
# (tests/fixtures/test-keys/admin_ed25519): backups and rollback material are
# encrypted to it.
{ pkgs, agenix }:

let
  inherit (pkgs) lib;

  sshKeys = import (pkgs.path + "/nixos/tests/ssh-keys.nix") pkgs;
  # "type base64 comment" -> "type base64", as secrets.nix and nixmig.toml list keys
  keyOnly = k: lib.concatStringsSep " " (lib.take 2 (lib.splitString " " (lib.trim k)));
  hostPub = keyOnly sshKeys.snakeOilEd25519PublicKey;
  adminPub = keyOnly (builtins.readFile ../tests/fixtures/test-keys/admin_ed25519.pub);
  adminKey = ../tests/fixtures/test-keys/admin_ed25519;

  pg = pkgs.postgresql_16;

  # ---------------------------------------------------------------- the image

  # The same entrypoint as the e2e tests' image (tests/harness/pgimage): it behaves
  # like the official postgres image (POSTGRES_PASSWORD / _FILE only matter at initdb).
  entrypoint = pkgs.writeTextFile {
    name = "docker-entrypoint.sh";
    destination = "/bin/docker-entrypoint.sh";
    executable = true;
    text = builtins.readFile ../tests/harness/pgimage/docker-entrypoint.sh;
  };

  # TEST stand-in for Twenty's server and worker containers (same image as the
  # database: no pulls in a VM). server: /cgi-bin/healthz answers 200 when
  # $PG_DATABASE_URL logs in, else 503. worker: a row into `writes` every 200 ms.
  twentyApp = pkgs.writeTextFile {
    name = "twenty-app";
    destination = "/bin/twenty-app";
    executable = true;
    text = ''
      #!/bin/sh
      set -u
      umask 077
      printf '%s' "$PG_DATABASE_URL" > /tmp/db-url
      unset PG_DATABASE_URL
      case "$1" in
        server)
          mkdir -p /tmp/www/cgi-bin
          cat > /tmp/www/cgi-bin/healthz <<'EOF'
      #!/bin/sh
      if ${pg}/bin/psql "$(/bin/cat /tmp/db-url)" -XAtqc 'select 1' >/dev/null 2>&1; then
        printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nok\n'
      else
        printf 'HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\ndatabase login failed\n'
      fi
      EOF
          chmod 0755 /tmp/www/cgi-bin/healthz
          exec ${pkgs.busybox}/bin/busybox httpd -f -p 3000 -h /tmp/www
          ;;
        worker)
          while :; do
            ${pg}/bin/psql "$(/bin/cat /tmp/db-url)" -XAtqc 'insert into writes (at) values (now())' >/dev/null 2>&1 || sleep 1
            sleep 0.2
          done
          ;;
        *)
          echo "twenty-app: server or worker" >&2
          exit 2
          ;;
      esac
    '';
  };

  # run in the image's root directory by dockerTools (tests/unit/test_nix_files.py runs it too)
  imageExtraCommands = ''
    mkdir -p -m 1777 tmp
    mkdir -p run var/lib/postgresql
    ln -s ../run var/run
  '';

  pgImage = pkgs.dockerTools.buildLayeredImage {
    name = "nixmig-vm/postgres";
    tag = "16";
    contents = [
      (pkgs.buildEnv {
        name = "nixmig-vm-postgres-root";
        paths = [
          pg
          pkgs.bashInteractive # /bin/sh
          pkgs.coreutils
          pkgs.util-linux # setpriv
          entrypoint
          twentyApp
        ];
        pathsToLink = [ "/bin" ];
        ignoreCollisions = true;
      })
      # `docker exec -u postgres` and the entrypoint's setpriv need the user in the image
      (pkgs.writeTextDir "etc/passwd" ''
        root:x:0:0:root:/root:/bin/sh
        postgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh
      '')
      (pkgs.writeTextDir "etc/group" ''
        root:x:0:
        postgres:x:999:
      '')
    ];
    # nixpkgs builds PostgreSQL on Linux with its socket directory in /run/postgresql
    # (patches/socketdir-in-run), and docker creates no /run in a container: the image
    # has /run, and /var/run -> ../run as in the e2e image (tests/harness/pgimage), so
    # the entrypoint's `mkdir -p /var/run/postgresql` makes the socket directory.
    extraCommands = imageExtraCommands;
    config = {
      Entrypoint = [ "/bin/docker-entrypoint.sh" ];
      Cmd = [ "postgres" ];
      Env = [
        # pg's own bin first: from 16 on nixpkgs' PostgreSQL finds its share/ and lib/
        # relative to the path it was started by (patches/relative-to-symlinks-16+,
        # normalize_exec_path disabled), and /bin holds symlinks whose ../share is not pg's
        "PATH=${pg}/bin:/bin"
        "PGDATA=/var/lib/postgresql/data"
      ];
      ExposedPorts."5432/tcp" = { };
    };
  };

  # ------------------------------------------------- the compose project "twenty"

  dbUrlHardcoded = "postgres://postgres:postgres@db:5432/default";
  envFile = "/run/twenty/twenty-db-password.env";

  # Like the ExecStartPre `nixmig patch` adds to the arion unit: the URL with the
  # password percent-encoded, in a 0400 file under the unit's runtime directory.
  renderEnv = pkgs.writeText "render-env.py" ''
    import os, sys, urllib.parse
    src, dest = sys.argv[1], sys.argv[2]
    pw = open(src, "rb").read()
    if not pw:
        sys.exit(f"{src} is empty")
    url = "postgres://postgres:" + urllib.parse.quote(pw, safe="") + "@db:5432/default"
    tmp = dest + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    os.write(fd, ("PG_DATABASE_URL=" + url + "\n").encode())
    os.close(fd)
    os.replace(tmp, dest)
  '';

  # phase "before": the worked example as it is (password `postgres` in the compose
  # file). "stage": the same project (only age.secrets is added). "switch": what
  # `nixmig patch` makes of it: POSTGRES_PASSWORD_FILE, URLs from the env file; and for
  # the rebuild strategy the data volume nixmig copied the database to.
  composeFile =
    { phase, volume }:
    let
      switched = phase == "switch";
      app =
        role:
        {
          image = "nixmig-vm/postgres:16";
          command = [
            "/bin/twenty-app"
            role
          ];
          depends_on.db.condition = "service_healthy";
          restart = "always";
        }
        // (if switched then { env_file = [ envFile ]; } else { environment.PG_DATABASE_URL = dbUrlHardcoded; });
    in
    # "before" and "stage" are the same file (the stage deploy must not restart the project)
    pkgs.writeText "twenty-compose-${if switched then "switch" else "before"}.json" (
      builtins.toJSON {
        name = "twenty";
        services = {
          db = {
            image = "nixmig-vm/postgres:16";
            volumes = [
              "db-data:/var/lib/postgresql/data"
            ] ++ lib.optional switched "/run/agenix/twenty-db-password:/run/secrets/db-password:ro";
            environment = {
              POSTGRES_USER = "postgres";
              POSTGRES_DB = "default";
            }
            // (
              if switched then
                { POSTGRES_PASSWORD_FILE = "/run/secrets/db-password"; }
              else
                { POSTGRES_PASSWORD = "postgres"; }
            );
            healthcheck = {
              test = [
                "CMD"
                "pg_isready"
                "-U"
                "postgres"
                "-h"
                "localhost"
                "-d"
                "postgres"
              ];
              interval = "2s";
              timeout = "5s";
              retries = 60;
            };
            restart = "always";
          };
          server = app "server" // {
            ports = [ "3000:3000" ];
          };
          worker = app "worker";
        };
        volumes.db-data =
          if volume == null then
            { }
          else
            {
              external = true;
              name = volume;
            };
      }
    );

  # newton: docker, the compose project run by a unit named like arion's, agenix with
  # the snake-oil host key. Specialisations "stage" and "switch" are the configurations
  # the deploy command switches to (see deployScript).
  newtonModule =
    { rebuildVolume ? null }:
    { config, lib, ... }:
    {
      imports = [ agenix.nixosModules.default ];

      options.twenty = {
        phase = lib.mkOption {
          type = lib.types.enum [
            "before"
            "stage"
            "switch"
          ];
          default = "before";
        };
        volume = lib.mkOption {
          type = lib.types.nullOr lib.types.str;
          default = null;
        };
      };

      config = {
        virtualisation.memorySize = 2048;
        virtualisation.diskSize = 4096;
        virtualisation.docker.enable = true;

        services.openssh.enable = true;
        users.users.root.openssh.authorizedKeys.keys = [ sshKeys.snakeOilPublicKey ];
        # a known host key: the deployer verifies it, and agenix decrypts with it
        environment.etc."ssh/ssh_host_ed25519_key" = {
          source = sshKeys.snakeOilEd25519PrivateKey;
          mode = "0600";
        };
        age.identityPaths = [ "/etc/ssh/ssh_host_ed25519_key" ];
        systemd.tmpfiles.rules = [ "d /var/lib/twenty-secrets 0700 root root -" ];

        networking.firewall.allowedTCPPorts = [ 3000 ];
        environment.systemPackages = [
          pg
          pkgs.curl
        ];

        systemd.services.twenty = {
          description = "compose project twenty (TEST stand-in for arion-twenty)";
          wantedBy = [ "multi-user.target" ];
          after = [ "docker.service" ];
          requires = [ "docker.service" ];
          path = [
            config.virtualisation.docker.package
            pkgs.docker-compose
            pkgs.python3
          ];
          preStart =
            ''
              docker load -i ${pgImage}
            ''
            + lib.optionalString (config.twenty.phase == "switch") ''
              python3 ${renderEnv} /run/agenix/twenty-db-password ${envFile}
            '';
          script = ''
            exec docker-compose -p twenty -f ${
              composeFile {
                inherit (config.twenty) phase volume;
              }
            } up --remove-orphans
          '';
          postStop = ''
            docker-compose -p twenty -f ${
              composeFile {
                inherit (config.twenty) phase volume;
              }
            } down
          '';
          serviceConfig = {
            RuntimeDirectory = "twenty";
            RuntimeDirectoryMode = "0700";
            Restart = "on-failure";
            TimeoutStartSec = 600;
          };
        };

        specialisation.stage.configuration = {
          twenty.phase = lib.mkForce "stage";
          # a runtime path, not the store: the deploy copies the .age file nixmig made
          age.secrets.twenty-db-password.file = "/var/lib/twenty-secrets/twenty-db-password.age";
        };
        specialisation.switch.configuration = {
          twenty.phase = lib.mkForce "switch";
          twenty.volume = lib.mkForce rebuildVolume;
          age.secrets.twenty-db-password.file = "/var/lib/twenty-secrets/twenty-db-password.age";
        };
      };
    };

  # The deploy command of the deployer's nixmig.toml. In real life `deploy .#newton`
  # (or colmena, nixos-rebuild) builds the patched flake; a VM cannot evaluate the
  # flake, so newton's configurations are prebuilt as specialisations and this switches
  # to the one NIXMIG_PHASE names, after copying the .age file nixmig wrote (the repo's
  # secrets/ travels with the configuration in a real deploy).
  deployScript =
    newtonToplevel:
    pkgs.writeShellScript "vm-deploy" ''
      set -euo pipefail
      top=${newtonToplevel}
      case "$NIXMIG_PHASE" in
        stage) target="$top/specialisation/stage" ;;
        switch) target="$top/specialisation/switch" ;;
        rollback) target="$top" ;;
        *) echo "vm-deploy: unknown NIXMIG_PHASE=$NIXMIG_PHASE" >&2; exit 2 ;;
      esac
      if [ -e secrets/twenty-db-password.age ]; then
        ${pkgs.openssh}/bin/scp -q secrets/twenty-db-password.age root@newton:/var/lib/twenty-secrets/twenty-db-password.age
      fi
      ${pkgs.openssh}/bin/ssh root@newton "$target/bin/switch-to-configuration test"
    '';

  # The operator's repo on the deployer: nixmig.toml and secrets/secrets.nix, in the
  # shape of the worked example (patch_repo = false: the configurations are prebuilt).
  repo =
    {
      strategy,
      deploy,
      extraMigration ? { },
    }:
    let
      nixmigToml = (pkgs.formats.toml { }).generate "nixmig.toml" {
        secrets_dir = "secrets";
        operator.recipients = [ adminPub ];
        hosts.newton = {
          address = "newton";
          user = "root";
          identity = "/root/.ssh/id_ecdsa";
          known_hosts = "/etc/ssh/ssh_known_hosts";
          age_recipient = hostPub;
        };
        services.twenty-db = {
          host = "newton";
          runtime = "docker";
          container = "twenty-db-1";
          volume = "twenty_db-data";
          database = "default";
          role = "postgres";
        };
        migrations.twenty-db-password = {
          service = "twenty-db";
          secret = "twenty-db-password";
          inherit strategy;
          deploy = "${deploy}";
          patch_repo = false;
          health_checks = [
            {
              type = "http";
              url = "http://newton:3000/cgi-bin/healthz";
              timeout = 10;
              retries = 12;
            }
          ];
        }
        // extraMigration;
      };
      secretsNix = pkgs.writeText "secrets.nix" ''
        let
          # newton's host key (nixpkgs' snake-oil Ed25519 key: TEST ONLY)
          newton = "${hostPub}";
          # the operator (tests/fixtures/test-keys/admin_ed25519: TEST ONLY)
          admin = "${adminPub}";
          servers = [ newton ];
        in
        {
          "twenty-app-secret.age".publicKeys = servers ++ [ admin ];
        }
      '';
    in
    pkgs.runCommand "nixmig-vm-repo" { } ''
      mkdir -p "$out/secrets"
      cp ${nixmigToml} "$out/nixmig.toml"
      cp ${secretsNix} "$out/secrets/secrets.nix"
    '';

  # -------------------------------------------- a native services.postgresql target

  # The new password of the native tests, encrypted to the host key at build time
  # (TEST ONLY: it is in the store; a real one comes from `nixmig secret new`).
  appPassword = "vm-only-" + builtins.substring 0 24 (builtins.hashString "sha256" "nixmig vm test app");
  appSecret = pkgs.runCommand "app-db-password.age" { nativeBuildInputs = [ pkgs.age ]; } ''
    printf %s ${lib.escapeShellArg appPassword} | age -r ${lib.escapeShellArg hostPub} -o "$out"
  '';

  appHealthy = pkgs.writeShellScriptBin "app-healthy" ''
    # healthy: the app logged in and wrote within the last 5 seconds
    test -n "$(find /run/app/healthy -newermt '5 seconds ago' 2>/dev/null)"
  '';

  # machine: services.postgresql with the role `app` created with a hardcoded password,
  # and an app unit writing a row every 200 ms. appDb.migrated = true is the patched
  # configuration: the agenix secret, the app reading it through LoadCredential.
  nativeModule =
    { config, lib, ... }:
    {
      imports = [ agenix.nixosModules.default ];

      options.appDb.migrated = lib.mkOption {
        type = lib.types.bool;
        default = false;
      };

      config = {
        virtualisation.memorySize = 1536;
        services.openssh.enable = true;
        environment.etc."ssh/ssh_host_ed25519_key" = {
          source = sshKeys.snakeOilEd25519PrivateKey;
          mode = "0600";
        };
        age.identityPaths = [ "/etc/ssh/ssh_host_ed25519_key" ];

        services.postgresql = {
          enable = true;
          package = pg;
          enableTCPIP = true;
          authentication = lib.mkForce ''
            local all all peer
            host all all 127.0.0.1/32 scram-sha-256
            host all all ::1/128 scram-sha-256
          '';
          # the hardcoded password this migration removes
          initialScript = pkgs.writeText "app-init.sql" ''
            CREATE ROLE app LOGIN PASSWORD 'hardcoded-app-password';
            CREATE DATABASE app OWNER app;
          '';
        };

        environment.systemPackages = [
          pg
          appHealthy
        ];

        systemd.services.app = {
          description = "TEST app: writes a row every 200 ms";
          wantedBy = [ "multi-user.target" ];
          # postgresql.target: reached once postgresql-setup.service has run initialScript
          # (the role `app` and its database exist); postgresql.service is active before that
          after = [ "postgresql.target" ];
          requires = [ "postgresql.target" ];
          path = [
            pg
            pkgs.coreutils
          ];
          environment = {
            PGHOST = "127.0.0.1";
            PGUSER = "app";
            PGDATABASE = "app";
          }
          // lib.optionalAttrs (!config.appDb.migrated) { PGPASSWORD = "hardcoded-app-password"; };
          script =
            lib.optionalString config.appDb.migrated ''
              PGPASSWORD="$(cat "$CREDENTIALS_DIRECTORY/db-password")"
              export PGPASSWORD
            ''
            + ''
              while :; do
                if psql -XAtqc 'insert into writes (at) values (now())' >/dev/null 2>&1; then
                  touch /run/app/healthy
                else
                  sleep 1
                fi
                sleep 0.2
              done
            '';
          serviceConfig = {
            RuntimeDirectory = "app";
            LoadCredential = lib.optional config.appDb.migrated "db-password:/run/agenix/app-db-password";
          };
        };
      };
    };

  # the seeded data whose checksum must survive every migration
  seedSql = pkgs.writeText "seed.sql" ''
    CREATE TABLE IF NOT EXISTS writes (id bigserial PRIMARY KEY, at timestamptz NOT NULL);
    CREATE TABLE people (id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL);
    INSERT INTO people (name, email)
      SELECT 'person ' || g, 'p' || g || '@example.org' FROM generate_series(1, 5000) g;
  '';
  checksumSql = "SELECT count(*) || ':' || md5(string_agg(id || ',' || name || ',' || email, ';' ORDER BY id)) FROM people";
in
{
  inherit
    sshKeys
    hostPub
    adminPub
    adminKey
    pg
    pgImage
    imageExtraCommands
    newtonModule
    deployScript
    repo
    appPassword
    appSecret
    appHealthy
    nativeModule
    seedSql
    checksumSql
    ;
}
