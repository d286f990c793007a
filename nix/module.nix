# services.nixmig: declare a migration in Nix; it is rendered to /etc/nixmig/nixmig.toml
# (the schema nixmig reads, see nix/render.nix) and a oneshot unit nixmig-NAME runs
# `nixmig apply --on-host` on this machine when the new configuration is activated:
# after the database's unit, before the application's. The journal in /var/lib/nixmig
# makes it idempotent: once a migration is done, the unit exits 0 at once.
#
# flake.nix exposes this as nixosModules.default, with services.nixmig.package
# defaulting to the flake's own package.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types literalExpression;
  cfg = config.services.nixmig;
  toml = pkgs.formats.toml { };

  configFile = toml.generate "nixmig.toml" (import ./render.nix cfg);

  # The point where a native database's roles and databases exist. Current nixpkgs runs
  # initialScript, ensureUsers and ensureDatabases in postgresql-setup.service, after
  # postgresql.service is already active; postgresql.target is reached once both are.
  # Older nixpkgs have no such target (and do that work in postgresql.service itself).
  postgresqlReady =
    if config.services.postgresql.enable && (config.systemd.targets or { }) ? postgresql then
      "postgresql.target"
    else
      "postgresql.service";

  enabled = lib.filterAttrs (_: m: m.enable) cfg.migrations;
  withUnit = lib.filterAttrs (_: m: m.runOnActivation) enabled;

  healthCheckType = types.submodule {
    options = {
      type = mkOption {
        type = types.enum [
          "http"
          "command"
        ];
        description = "`http`: `url` must answer 2xx. `command`: `command` must exit 0.";
      };
      url = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "http://127.0.0.1:3000/healthz";
        description = "URL fetched by an `http` check.";
      };
      command = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "systemctl is-active arion-twenty.service";
        description = "Command run by a `command` check (split like a shell would, not run by one).";
      };
      timeout = mkOption {
        type = types.ints.positive;
        default = 30;
        description = "Seconds one attempt may take.";
      };
      retries = mkOption {
        type = types.ints.positive;
        default = 5;
        description = "Attempts before the check counts as failed.";
      };
    };
  };

  databaseType = types.submodule {
    options = {
      runtime = mkOption {
        type = types.enum [
          "docker"
          "native"
        ];
        default = "docker";
        description = ''
          Where PostgreSQL runs: `docker` (a container, e.g. from arion or
          `virtualisation.oci-containers`) or `native` (`services.postgresql`).
        '';
      };
      container = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "twenty-db-1";
        description = "The database container (`docker ps` NAMES). Required when `runtime` is `docker`.";
      };
      volume = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "twenty_db-data";
        description = "The container's data volume; nixmig checks the container mounts it.";
      };
      dockerHost = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "unix:///run/user/1000/docker.sock";
        description = "The docker engine's socket, when not the default one (rootless docker).";
      };
      name = mkOption {
        type = types.str;
        default = "postgres";
        example = "default";
        description = "The database whose tables are counted and backed up.";
      };
      role = mkOption {
        type = types.str;
        default = "postgres";
        description = "The login role whose password moves to the agenix secret.";
      };
      adminRole = mkOption {
        type = types.str;
        default = "postgres";
        description = ''
          The superuser nixmig connects as over the local socket (for the official
          image: its `POSTGRES_USER`).
        '';
      };
      port = mkOption {
        type = types.port;
        default = config.services.postgresql.settings.port or 5432;
        defaultText = literalExpression "config.services.postgresql.settings.port or 5432";
        description = "`native`: the server's port.";
      };
      socketDir = mkOption {
        type = types.str;
        default = "/run/postgresql";
        description = "`native`: the server's unix socket directory.";
      };
      osUser = mkOption {
        type = types.str;
        default = "postgres";
        description = "`native`: the system user psql and pg_dump run as.";
      };
      logFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "`native`: the server's log file, when it logs to a file rather than the journal.";
      };
    };
  };

  migrationType = types.submodule (
    { name, config, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = "Whether this migration is written to nixmig.toml (and run, see `runOnActivation`).";
        };
        secret = mkOption {
          type = types.str;
          default = name;
          defaultText = literalExpression "<name>";
          example = "twenty-db-password";
          description = ''
            The agenix secret holding the new password: `age.secrets.<secret>`, decrypted
            to `''${services.nixmig.host.agenixDir}/<secret>` by activation.
          '';
        };
        strategy = mkOption {
          type = types.enum [
            "rotate"
            "rebuild"
            "dual-role"
          ];
          default = "rotate";
          description = ''
            `rotate`: change the role's password in place (ALTER ROLE with a SCRAM verifier).
            `rebuild`: a new data volume restored from a live dump, switched over by the config.
            `dual-role`: a second role with the new password, then the old one disabled.
          '';
        };
        newRole = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "`dual-role`: the second login role (default `<role>_v2`).";
        };
        newVolume = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "twenty_db-data-v2";
          description = "`rebuild`: the docker volume the data is copied to (default `<volume>-YYYYMMDD`).";
        };
        newImage = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "postgres:17";
          description = "`rebuild`: the image of the new server (default: the old container's; a newer major version upgrades).";
        };
        appStop = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "systemctl stop twenty-server.service";
          description = ''
            `rebuild`: command (run with `sh -c`) that stops the application before the copy;
            with `appStart`. Default: docker stop / start of the compose project's other containers.
          '';
        };
        appStart = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "`rebuild`: command (run with `sh -c`) that starts the application again.";
        };
        retentionDays = mkOption {
          type = types.ints.positive;
          default = 7;
          description = "How long encrypted backups are kept.";
        };
        healthChecks = mkOption {
          type = types.listOf healthCheckType;
          default = [ ];
          example = literalExpression ''[ { type = "http"; url = "http://127.0.0.1:3000/healthz"; timeout = 60; } ]'';
          description = ''
            Checks that must pass after the switch, written to nixmig.toml for `nixmig apply`
            run from an operator's machine. The on-host run (the `nixmig-<name>` unit, the
            deploy-rs hook) leaves them out: the application starts after it.
          '';
        };
        database = mkOption {
          type = databaseType;
          default = { };
          description = "The PostgreSQL server and role this migration works on.";
        };
        runOnActivation = mkOption {
          type = types.bool;
          default = true;
          description = ''
            Create the `nixmig-<name>` oneshot unit, started on activation and at boot.
            Turn it off when a deploy hook runs the migration instead
            (`lib.deployRs.activateWithMigrations`), or to run `nixmig apply --on-host` by hand.
            Keep it on to deploy with `deploy --boot`: the unit is then what runs the
            migration (the hook refuses `--boot` for a migration without one).
          '';
        };
        after = mkOption {
          type = types.listOf types.str;
          default = if config.database.runtime == "native" then [ postgresqlReady ] else [ "docker.service" ];
          defaultText = literalExpression ''
            native: [ "postgresql.target" ] (where services.postgresql defines it: the roles and
            databases of initialScript / ensureUsers / ensureDatabases exist then), else
            [ "postgresql.service" ]; docker: [ "docker.service" ]
          '';
          example = [ "arion-twenty.service" ];
          description = ''
            Units that must be started before the migration runs: the database's. For
            arion add its unit (`arion-<project>.service`), for oci-containers
            `docker-<container>.service`. The unit also waits (up to `readyTimeout`)
            until the server accepts connections.
          '';
        };
        before = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "twenty-server.service" ];
          description = ''
            The application's units: they start only after the migration has run, so
            they come up with the new password already in place. (With arion the
            database and the application share one unit; the application's containers
            reconnect once the role has its new password.)
          '';
        };
        requiredByApp = mkOption {
          type = types.bool;
          default = true;
          description = ''
            Whether the units in `before` require this one (`RequiredBy=`): if the
            migration fails they are not started against a database in an unknown
            state. `journalctl -u nixmig-<name>` and `nixmig status --on-host` say why.
          '';
        };
        readyTimeout = mkOption {
          type = types.ints.positive;
          default = 120;
          description = "Seconds to wait for the database to accept connections before failing.";
        };
        timeout = mkOption {
          type = types.str;
          default = "2h";
          description = "`TimeoutStartSec=` of the unit: a backup of a large database takes a while.";
        };
      };
    }
  );

  # what the local transport runs on this machine: docker exec, or psql / pg_dump
  runtimeTools =
    m:
    if m.database.runtime == "docker" then
      [ config.virtualisation.docker.package ]
    else if config.services.postgresql.enable then
      [ config.services.postgresql.package ]
    else
      [ pkgs.postgresql ];

  readyCommand =
    m:
    let
      db = m.database;
      hostArg = lib.optionalString (db.dockerHost != null) "-H ${lib.escapeShellArg db.dockerHost} ";
    in
    if db.runtime == "docker" then
      "docker ${hostArg}exec -u postgres ${lib.escapeShellArg db.container} pg_isready -q"
    else
      "pg_isready -q -h ${lib.escapeShellArg db.socketDir} -p ${toString db.port}";

  waitScript =
    name: m:
    pkgs.writeShellScript "nixmig-${name}-wait" ''
      # The ordering only says the database's unit has started; wait until it answers.
      deadline=$((SECONDS + ${toString m.readyTimeout}))
      until ${readyCommand m}; do
        if ((SECONDS >= deadline)); then
          echo "nixmig-${name}: the database did not accept connections within ${toString m.readyTimeout}s (${readyCommand m}); start it, then: systemctl restart nixmig-${name}" >&2
          exit 1
        fi
        sleep 1
      done
    '';

  unitFor = name: m: {
    description = "nixmig: move ${name} onto the agenix secret ${m.secret}";
    wantedBy = [ "multi-user.target" ];
    requiredBy = lib.optionals m.requiredByApp m.before;
    inherit (m) before after;
    wants = m.after;
    # a changed nixmig.toml (a new migration, another strategy) runs it again
    restartTriggers = [ configFile ];
    path = [
      cfg.package
      pkgs.util-linux # flock (the host lock), runuser
      pkgs.coreutils
    ] ++ runtimeTools m;
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      ExecStartPre = "${waitScript name m}";
      ExecStart = "${lib.getExe cfg.package} apply --on-host -c ${cfg.configFile} --migration ${name} --yes";
      # the journal and the encrypted backups
      StateDirectory = "nixmig";
      StateDirectoryMode = "0700";
      UMask = "0077";
      TimeoutStartSec = m.timeout;
      PrivateTmp = true;
      ProtectHome = true;
      NoNewPrivileges = true;
    };
  };
in
{
  options.services.nixmig = {
    enable = lib.mkEnableOption "nixmig on this host: its migrations in /etc/nixmig/nixmig.toml and a `nixmig-<name>` unit for each";

    package = mkOption {
      type = types.package;
      defaultText = literalExpression "nixmig.packages.\${pkgs.stdenv.hostPlatform.system}.default";
      description = "The nixmig package (the flake's `nixosModules.default` sets it to its own).";
    };

    configFile = mkOption {
      type = types.str;
      default = "/etc/nixmig/nixmig.toml";
      readOnly = true;
      description = "Where the rendered nixmig.toml lands (the default config of `nixmig --on-host`).";
    };

    operator.recipients = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIWGQejmv1vqcqb2xrIuLEd6YFeWLHzeobl7s3js0eT3 admin" ];
      description = ''
        Public keys (`ssh-ed25519`, `ssh-rsa` or `age1…`) of the people who may need the
        backups and the rollback material: both are age-encrypted to them, never
        stored in clear on the host.
      '';
    };

    host = {
      name = mkOption {
        type = types.str;
        default = config.networking.hostName;
        defaultText = literalExpression "config.networking.hostName";
        description = "This machine's name in nixmig.toml (`[hosts.<name>]`).";
      };
      ageRecipient = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG8IX+GbwvuhhTIXuwLJpZ4x7RNzQwb4yKIOiP1pQGSi";
        description = "This machine's age recipient (its ssh-ed25519 host key), as listed in secrets.nix.";
      };
      agenixDir = mkOption {
        type = types.str;
        default = config.age.secretsDir or "/run/agenix";
        defaultText = literalExpression ''config.age.secretsDir or "/run/agenix"'';
        description = "Where agenix decrypts secrets on this machine.";
      };
      lockDir = mkOption {
        type = types.str;
        default = "/run/nixmig";
        description = "Where nixmig's per-host lock lives (a tmpfs, so a reboot clears it).";
      };
    };

    migrations = mkOption {
      type = types.attrsOf migrationType;
      default = { };
      example = literalExpression ''
        {
          twenty-db-password = {
            secret = "twenty-db-password";
            database = {
              runtime = "docker";
              container = "twenty-db-1";
              volume = "twenty_db-data";
              name = "default";
            };
            after = [ "arion-twenty.service" ];
            healthChecks = [ { type = "http"; url = "http://127.0.0.1:3000/healthz"; } ];
          };
        }
      '';
      description = ''
        Migrations to run on this machine, by name. Each moves one database role onto
        one agenix secret; the name is used for the migration, its database service in
        nixmig.toml and the unit `nixmig-<name>`.
      '';
    };

    settings = mkOption {
      type = toml.type;
      default = { };
      example = literalExpression ''{ migrations.twenty-db-password.retention_days = 30; }'';
      description = ''
        Raw nixmig.toml, merged over what the options above render (README: "nixmig.toml"),
        for keys they do not cover.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = enabled == { } || cfg.operator.recipients != [ ];
        message = "services.nixmig.operator.recipients is empty: the backups and the rollback material of a migration are age-encrypted to these keys; add yours (ssh-ed25519 ... or age1...).";
      }
    ]
    ++ lib.concatLists (
      lib.mapAttrsToList (name: m: [
        {
          assertion = builtins.match "[A-Za-z0-9_][A-Za-z0-9_.-]*" name != null;
          message = "services.nixmig.migrations.${name}: use letters, digits, '_', '.' and '-' in the name (it becomes a unit name and an argument).";
        }
        {
          assertion = m.database.runtime != "docker" || m.database.container != null;
          message = "services.nixmig.migrations.${name}.database.container must be set when database.runtime = \"docker\".";
        }
        {
          assertion = m.strategy == "rebuild" || (m.newVolume == null && m.newImage == null);
          message = "services.nixmig.migrations.${name}.newVolume / newImage are only used with strategy = \"rebuild\".";
        }
        {
          assertion = (m.appStop == null) == (m.appStart == null);
          message = "services.nixmig.migrations.${name}: set appStop and appStart together (or neither).";
        }
        {
          assertion = m.newRole == null || m.strategy == "dual-role";
          message = "services.nixmig.migrations.${name}.newRole is only used with strategy = \"dual-role\".";
        }
        {
          assertion = !(options ? age) || config.age.secrets ? ${m.secret};
          message = "services.nixmig.migrations.${name}.secret = \"${m.secret}\", but age.secrets.${m.secret} is not declared: add it (file = ./secrets/${m.secret}.age).";
        }
        {
          assertion = builtins.all (hc: (hc.type == "http" && hc.url != null) || (hc.type == "command" && hc.command != null)) m.healthChecks;
          message = "services.nixmig.migrations.${name}.healthChecks: an http check needs url, a command check needs command.";
        }
      ]) enabled
    );

    environment.systemPackages = [ cfg.package ];
    environment.etc."nixmig/nixmig.toml".source = configFile;

    systemd.services = lib.mapAttrs' (name: m: lib.nameValuePair "nixmig-${name}" (unitFor name m)) withUnit;
  };
}
