{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption types literalExpression;
  cfg = config.services.reportd;
in
{
  options.services.reportd = {
    enable = mkEnableOption "reportd, which needs a database password";

    database = {
      url = mkOption {
        type = types.str;
        default = "postgres:///reportd?host=/run/postgresql";
        example = "postgres://reportd:secret@db.example.org/reportd";
        description = ''
          Connection URL, for example postgres://user:password@host/db.
          Do not put the password here: it ends up in the Nix store. Use
          passwordFile instead.
        '';
      };

      password = mkOption {
        type = types.str;
        default = "";
        description = "The password (world-readable in the store; prefer passwordFile).";
      };

      passwordFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/agenix/reportd-db";
        description = "File with the database password, read at runtime.";
      };
    };

    adminToken = mkOption {
      type = types.str;
      default = "reportd-Default-Admin";
      description = "Token for the admin API.";
    };

    settings = mkOption {
      type = types.attrs;
      default = { };
      example = literalExpression ''
        {
          smtp_password = "hunter2";
          api_key = "abcdef";
        }
      '';
      description = "Extra settings; see https://reportd.example.org/docs#password.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.database.password == "" || cfg.database.passwordFile == null;
        message = "services.reportd: set database.password or database.passwordFile, not both";
      }
    ];
    warnings = lib.optional (cfg.database.password != "")
      "services.reportd.database.password is world-readable; use passwordFile";
    systemd.services.reportd.environment.REPORTD_DB_URL = cfg.database.url;
  };
}
