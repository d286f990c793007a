{ config, lib, pkgs, ... }:
{
  services.authelia.instances.main = {
    enable = true;
    secrets = {
      jwtSecretFile = "/run/agenix/authelia-jwt";
      storageEncryptionKeyFile = "/run/agenix/authelia-storage";
    };
    settings = {
      theme = "dark";
      storage.postgres = {
        address = "unix:///run/postgresql";
        database = "authelia";
        username = "authelia";
        password = "Authelia-Pg-40";
      };
      notifier.smtp = {
        address = "submission://smtp.example.org:587";
        username = "auth@example.org";
        password = "Authelia-Smtp-41";
        sender = "Authelia <auth@example.org>";
      };
      identity_providers.oidc.clients = [
        {
          client_id = "grafana";
          client_name = "Grafana";
          client_secret = "$pbkdf2-sha512$310000$c8p78n7pUMln0jzvd4aK4Q$JNRBzwAo0ek5qKn50cFzzvE9RXV88h1wJn5KGiHrD0YKtZaR/nCb2CJPOsKaPK0hjf.9yHxzQGZziziccp6Yng";
          redirect_uris = [ "https://grafana.example.org/login/generic_oauth" ];
        }
      ];
    };
  };

  services.prometheus = {
    enable = true;
    exporters.postgres = {
      enable = true;
      dataSourceName = "user=postgres password=Pg-Dsn-42 host=/run/postgresql sslmode=disable";
    };
    scrapeConfigs = [
      {
        job_name = "remote-node";
        scheme = "https";
        basic_auth = {
          username = "prometheus";
          password = "Prom-Basic-43";
        };
        static_configs = [ { targets = [ "node.example.org:9100" ]; } ]; 
      }
      {
        job_name = "api";
        bearer_token = "Prom-Bearer-44";
        static_configs = [ { targets = [ "api.example.org:443" ]; } ];
      }
      {
        job_name = "federate";
        bearer_token_file = "/run/agenix/prom-federate";
        static_configs = [ { targets = [ "fed.example.org:443" ]; } ];
      }
    ];
    alertmanager = {
      enable = true;
      configuration.global = {
        smtp_smarthost = "smtp.example.org:587";
        smtp_auth_username = "alerts@example.org";
        smtp_auth_password = "Am-Smtp-45";
      };
    };
  };

  services.headscale.settings.oidc = {
    issuer = "https://sso.example.org";
    client_id = "headscale";
    client_secret = "Hs-Oidc-46";
    client_secret_path = null;
  };

  services.openldap.settings.children."olcDatabase={1}mdb".attrs = {
    olcSuffix = "dc=example,dc=org";
    olcRootDN = "cn=admin,dc=example,dc=org";
    olcRootPW = "{SSHA}3Rj7Kp0Yx2FAKEfakeFAKEfake+bB9cD";
  };

  services.transmission.settings = {
    rpc-authentication-required = true;
    rpc-username = "admin";
    rpc-password = "Trans-Rpc-47";
    rpc-whitelist = "127.0.0.1,192.168.*.*";
  };

  services.syncthing.settings.gui = {
    user = "admin";
    password = "Sync-Gui-48";
  };

  services.hedgedoc.settings = {
    domain = "pad.example.org";
    db = {
      dialect = "postgres";
      host = "/run/postgresql";
      username = "hedgedoc";
      password = "Hedge-Db-49";
    };
    sessionSecret = "Hedge-Session-50";
  };
}
