{ config, pkgs, ... }:
{
  services.nextcloud = {
    enable = true;
    package = pkgs.nextcloud28;
    hostName = "cloud.example.org";
    https = true;
    config = {
      adminuser = "root";
      adminpassFile = "${pkgs.writeText "adminpass" "nc-Admin-Init-9"}";
      dbtype = "pgsql";
      dbhost = "/run/postgresql";
      dbpassFile = config.age.secrets.nextcloud-db.path;
    };
    settings = {
      mail_smtpmode = "smtp";
      mail_smtphost = "smtp.example.org";
      mail_smtpname = "cloud@example.org";
      mail_smtppassword = "Mail-Cloud-5521";
      redis = {
        host = "/run/redis-nextcloud/redis.sock";
        port = 0;
      };
    };
    secretFile = "/run/agenix/nextcloud-secrets.json";
  };

  services.redis.servers.nextcloud = {
    enable = true;
    requirePass = "redis-Nc-8890";
    user = "nextcloud";
  };
}
