# Everything here reads its secrets at runtime: nothing should be reported.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.shop;
  secretsDir = "/run/agenix";
in
{
  age.secrets = {
    shop-db-password = {
      file = ../secrets/shop-db-password.age;
      owner = "shop";
      mode = "0400";
    };
    "shop-api-token".file = ../secrets/shop-api-token.age;
  };

  sops.defaultSopsFile = ../secrets/shop.yaml;
  sops.secrets."shop/db_password" = { owner = "shop"; };
  sops.secrets.smtp-password = {
    key = "smtp/password";
    sopsFile = ../secrets/smtp.yaml;
  };
  sops.templates."shop.env" = {
    content = ''
      DB_PASSWORD=${config.sops.placeholder."shop/db_password"}
      SMTP_PASSWORD=${config.sops.placeholder.smtp-password}
      API_TOKEN=${config.sops.placeholder."shop/api_token"}
    '';
    owner = "shop";
  };

  services.shop = {
    enable = true;
    database.passwordFile = config.age.secrets.shop-db-password.path;
    database.password = null;
    apiTokenFile = "${secretsDir}/shop-api-token";
    smtp.password = "";
    smtp.passwordFile = config.sops.secrets.smtp-password.path;
    adminPasswordHashFile = "/run/agenix/shop-admin-hash";
  };

  virtualisation.arion.projects.shop.settings.services.db.service.environment = {
    POSTGRES_PASSWORD_FILE = "/run/secrets/db-password";
    POSTGRES_PASSWORD = "${cfg.database.password}";
  };

  systemd.services.shop = {
    environment = {
      DB_PASSWORD = cfg.database.password;
      SECRET_KEY = toString cfg.secretKey;
      TOKEN_PATH = config.age.secrets.shop-api-token.path;
    };
    serviceConfig = {
      EnvironmentFile = config.sops.templates."shop.env".path;
      LoadCredential = [
        "db-password:${config.age.secrets.shop-db-password.path}"
        "api-token:/run/agenix/shop-api-token"
      ];
      ExecStart = "${pkgs.shop}/bin/shop --password-file \${CREDENTIALS_DIRECTORY}/db-password --token-file /run/agenix/shop-api-token";
    };
    preStart = ''
      export DB_PASSWORD="$(< "$CREDENTIALS_DIRECTORY/db-password")"
      export API_TOKEN=$(cat ${config.age.secrets.shop-api-token.path})
    '';
  };

  # password = "hunter2";  <- old config, moved to agenix
  # POSTGRES_PASSWORD = "postgres";

  services.home-assistant.config = {
    http.server_port = 8123;
    recorder.db_url = "!secret recorder_db_url";
    mqtt.password = "!secret mqtt_password";
  };

  services.hydra.extraConfig = ''
    <git-input>
      timeout = 3600
    </git-input>
  '';

  environment.etc."substitute/app.conf".source = pkgs.substituteAll {
    src = ./app.conf.in;
    password = "@dbpass@";
  };

  services.shop.settings = {
    passwordMinLength = "12";
    password_policy = "strong";
    PASSWORD_RESET_TIMEOUT = "3600";
    token_expiry = "24h";
    secretsPath = "/var/lib/shop/secrets";
    key = "shop";
    keyFile = "/var/lib/shop/key.pem";
    hostKey = "/etc/ssh/ssh_host_ed25519_key";
    passwordHashAlgorithm = "argon2id";
    passwordless = "true";
    SECRET_NAME = "shop-secret";
    credentialsDirectory = "/run/credentials/shop.service";
  };
}
