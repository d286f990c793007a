{ config, ... }:
{
  virtualisation.oci-containers.containers.vaultwarden = {
    image = "vaultwarden/server:1.30.5";
    ports = [ "127.0.0.1:8222:80" ];
    volumes = [ "/srv/vaultwarden:/data" ];
    environment = {
      DOMAIN = "https://vault.example.org";
      SIGNUPS_ALLOWED = "false";
      ADMIN_TOKEN = "$argon2id$v=19$m=65540,t=3,p=4$bXBGMENBZUVzT3VUSFErTzQzK25Jck1BN2Z0amFuWjdSdVlIQVZqYzAzYz0$T9m73OdD2mz9+aJKLuOAdbvoARdaKxtOZ+jZcSL9/N0";
      SMTP_HOST = "smtp.example.org";
      SMTP_USERNAME = "vault@example.org";
      SMTP_PASSWORD = "Smtp!Vault-991";
      DATABASE_URL = "postgresql://vaultwarden:vw-db-8812@10.88.0.1:5432/vaultwarden";
      PUSH_INSTALLATION_KEY = "Xk3q9Lm2Pz7Rt5Vw";
      PUSH_INSTALLATION_ID = "b4a3a5e2-8c1d-4f6e-9a0b-1c2d3e4f5a6b";
    };
    extraOptions = [ "--network=vaultwarden-net" "--label=io.containers.autoupdate=registry" ];
  };

  virtualisation.oci-containers.containers.vw-backup = {
    image = "bruceforce/vaultwarden-backup";
    environmentFiles = [ "/run/agenix/vw-backup.env" ];
    environment = {
      ENCRYPTION_PASSWORD_FILE = "/run/agenix/vw-backup-pass";
      CRON_TIME = "0 3 * * *";
    };
  };
}
