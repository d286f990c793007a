{ config, lib, pkgs, ... }:
{
  services.mastodon = {
    enable = true;
    localDomain = "social.example.org";
    smtp.passwordFile = "/run/agenix/mastodon-smtp";
    extraConfig = {
      SINGLE_USER_MODE = "true";
      OTP_SECRET = "Masto-Otp-61";
      SECRET_KEY_BASE = "Masto-Skb-62";
      S3_ENABLED = "true";
      AWS_ACCESS_KEY_ID = "MASTOFAKEKEYID";
      AWS_SECRET_ACCESS_KEY = "Masto-S3-63";
    };
  };

  services.firefly-iii = {
    enable = true;
    settings = {
      APP_KEY = "base64:Ffiii-App-64";
      APP_KEY_FILE = null;
      DB_CONNECTION = "pgsql";
      DB_PASSWORD_FILE = "/run/agenix/firefly-db";
      MAIL_PASSWORD = "Ffiii-Mail-65";
    };
  };

  services.mysql = {
    enable = true;
    package = pkgs.mariadb;
    initialScript = pkgs.writeText "mysql-init.sql" ''
      CREATE USER 'app'@'localhost' IDENTIFIED BY 'My-Ident-66';
      GRANT ALL PRIVILEGES ON app.* TO 'app'@'localhost';
    '';
  };

  services.mongodb = {
    enable = true;
    enableAuth = true;
    initialRootPassword = "Mongo-Root-67";
  };

  services.rabbitmq = {
    enable = true;
    cookie = "Rabbit-Cookie-68";
    configItems."default_pass" = "Rabbit-Pass-69";
    configItems."default_user" = "admin";
  };

  services.couchdb = {
    enable = true;
    adminUser = "admin";
    adminPass = "Couch-Admin-70";
  };

  services.photoprism = {
    enable = true;
    passwordFile = config.age.secrets.photoprism.path;
    settings = {
      PHOTOPRISM_ADMIN_USER = "admin";
      PHOTOPRISM_DATABASE_PASSWORD = "Pprism-Db-71";
      PHOTOPRISM_SITE_URL = "https://photos.example.org/";
    };
  };

  services.mediawiki = {
    enable = true;
    passwordFile = "/run/agenix/mediawiki-admin";
    extraConfig = ''
      $wgSMTP = [
        'host' => 'smtp.example.org',
        'auth' => true,
        'username' => 'wiki@example.org',
        'password' => 'Mw-Smtp-72',
      ];
      $wgSecretKey = "Mw-Secret-73";
      $wgEnableEmail = true;
    '';
  };

  services.mautrix-telegram = {
    enable = true;
    settings = {
      homeserver.address = "http://localhost:8008";
      appservice = {
        as_token = "Mtg-As-74";
        hs_token = "Mtg-Hs-75";
      };
      telegram = {
        api_id = 12345;
        api_hash = "0123456789abcdef0123456789abcdef";
        bot_token = "disabled";
      };
    };
  };

  services.powerdns = {
    enable = true;
    extraConfig = ''
      launch=gpgsql
      gpgsql-host=127.0.0.1
      gpgsql-user=pdns
      gpgsql-password=Pdns-Db-76
      api=yes
      api-key=Pdns-Api-77
      webserver-allow-from=127.0.0.1
    '';
  };

  services.frp = {
    enable = true;
    role = "client";
    settings = {
      serverAddr = "frp.example.org";
      serverPort = 7000;
      auth.method = "token";
      auth.token = "Frp-Tok-78";
    };
  };

  services.tt-rss = {
    enable = true;
    selfUrlPath = "https://rss.example.org";
    database = {
      type = "pgsql";
      password = "Ttrss-Db-79";
      passwordFile = null;
    };
  };
}
