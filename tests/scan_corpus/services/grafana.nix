{ config, pkgs, ... }:
{
  services.grafana = {
    enable = true;
    settings = {
      server = {
        http_addr = "127.0.0.1";
        http_port = 3000;
        domain = "grafana.example.org";
        root_url = "https://grafana.example.org/";
      };
      security = {
        admin_user = "admin";
        admin_password = "Graf-admin-0451";
        secret_key = "SW2YcwTIb9zpOOhoPsMm";
        disable_gravatar = true;
      };
      database = {
        type = "postgres";
        host = "/run/postgresql";
        user = "grafana";
        password = "$__file{${config.age.secrets.grafana-db.path}}";
      };
      smtp = {
        enabled = true;
        host = "smtp.example.org:587";
        user = "grafana@example.org";
        password = "$__file{/run/agenix/grafana-smtp}";
      };
      "auth.generic_oauth" = {
        enabled = true;
        client_id = "grafana";
        client_secret = "9c1b6f0e2a8d4c7b";
        auth_url = "https://sso.example.org/authorize";
      };
    };
    provision.datasources.settings.datasources = [
      {
        name = "Prometheus";
        type = "prometheus";
        url = "http://localhost:9090";
      }
      {
        name = "Postgres";
        type = "postgres";
        url = "localhost:5432";
        user = "grafana_ro";
        secureJsonData.password = "ro-Reader-77";
      }
      {
        name = "Loki";
        type = "loki";
        url = "http://localhost:3100";
        basicAuthPassword = "$__file{/run/agenix/loki}";
      }
    ];
  };

  age.secrets.grafana-db = {
    file = ../secrets/grafana-db.age;
    owner = "grafana";
  };
}
