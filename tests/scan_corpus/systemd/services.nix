{ config, lib, pkgs, ... }:
let
  app = pkgs.writeShellScriptBin "metrics-push" "exec curl -fsS --data-binary @- https://push.example.org";
in
{
  systemd.services.metrics-push = {
    description = "Push metrics (needs the API key)";
    wantedBy = [ "multi-user.target" ];
    environment = {
      PUSH_ENDPOINT = "https://push.example.org/api/v1";
      PUSH_API_KEY = "pk_live_7d2f9a1c4e6b8d0f";
      HTTP_PROXY = "http://proxy.example.org:3128";
    };
    serviceConfig = {
      ExecStart = "${app}/bin/metrics-push --api-key=Cli-Key-26 --verbose";
      Environment = [
        "LOG_LEVEL=info"
        "DB_PASS=Sd-Env-Pass-27"
      ];
      DynamicUser = true;
      StateDirectory = "metrics-push";
    };
  };

  systemd.services.mailer = {
    serviceConfig = {
      Environment = "MAILER_HOST=smtp.example.org MAILER_SECRET=Sd-Secret-28 MAILER_PORT=587";
      EnvironmentFile = "/run/agenix/mailer.env";
      LoadCredential = "smtp-password:/run/agenix/smtp";
      ExecStart = "${pkgs.coreutils}/bin/true";
    };
  };

  systemd.services.backup-upload = {
    startAt = "daily";
    environment.RCLONE_CONFIG_REMOTE_PASS = "Rclone-Obsc-29";
    environment.RCLONE_CONFIG_REMOTE_USER = "backup";
    environment.RCLONE_CONFIG_REMOTE_TYPE = "webdav";
    serviceConfig.ExecStart = lib.concatStringsSep " " [
      "${pkgs.rclone}/bin/rclone"
      "copy"
      "/var/backup"
      "remote:newton"
      "--webdav-pass"
      "Rclone-Arg-30"
    ];
  };

  systemd.user.services.notify = {
    environment.GOTIFY_TOKEN = "AqX7-k2Lm9Pz";
    script = ''
      ${pkgs.curl}/bin/curl "https://gotify.example.org/message?token=Gotify-Query-31" -F "title=backup" -F "message=done"
    '';
  };
}
