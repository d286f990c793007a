# services.nixmig (option values, defaults applied) -> the attribute set written to
# /etc/nixmig/nixmig.toml, in the schema nixmig/config.py reads (README: "nixmig.toml").
#
# Builtins only, no nixpkgs: tests/unit/test_nix_files.py evaluates this file with
# `nix-instantiate --eval` against the module's own option defaults, renders the
# result to TOML and loads it with nixmig.config.load.
#
# The machine itself is the one host (transport "local": on-host mode); every
# migration gets a database service of the same name.
cfg:

let
  # drop nulls: TOML has none, and nixmig's defaults apply to absent keys
  compact = attrs: builtins.removeAttrs attrs (builtins.filter (k: attrs.${k} == null) (builtins.attrNames attrs));

  # lib.recursiveUpdate, without lib: `settings` wins, table by table
  recursiveUpdate =
    lhs: rhs:
    lhs
    // builtins.mapAttrs (
      k: v: if builtins.isAttrs v && builtins.isAttrs (lhs.${k} or null) then recursiveUpdate lhs.${k} v else v
    ) rhs;

  enabled = builtins.removeAttrs cfg.migrations (
    builtins.filter (n: !cfg.migrations.${n}.enable) (builtins.attrNames cfg.migrations)
  );

  host = compact {
    address = "localhost";
    transport = "local";
    agenix_dir = cfg.host.agenixDir;
    lock_dir = cfg.host.lockDir;
    age_recipient = cfg.host.ageRecipient;
  };

  service =
    db:
    compact {
      host = cfg.host.name;
      runtime = db.runtime;
      container = db.container;
      volume = db.volume;
      database = db.name;
      role = db.role;
      admin_role = db.adminRole;
      docker_host = db.dockerHost;
      log_file = db.logFile;
      port = db.port;
      socket_dir = db.socketDir;
      os_user = db.osUser;
    };

  healthCheck =
    hc:
    compact {
      inherit (hc)
        type
        url
        command
        retries
        ;
      # nixmig reads a number of seconds; an integer is a valid TOML float there
      timeout = hc.timeout;
    };

  migration =
    name: m:
    compact {
      service = name;
      secret = m.secret;
      strategy = m.strategy;
      new_role = m.newRole;
      new_volume = m.newVolume;
      new_image = m.newImage;
      app_stop = m.appStop;
      app_start = m.appStart;
      retention_days = m.retentionDays;
      # on the host there is no repository to patch: the NixOS config is already the new one
      patch_repo = false;
      health_checks = map healthCheck m.healthChecks;
    };

  rendered = {
    operator.recipients = cfg.operator.recipients;
    hosts.${cfg.host.name} = host;
    services = builtins.mapAttrs (_: m: service m.database) enabled;
    migrations = builtins.mapAttrs migration enabled;
  };
in
recursiveUpdate rendered cfg.settings
