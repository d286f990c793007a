{ config, pkgs, ... }:
{
  environment.etc."outline/outline.env" = {
    mode = "0400";
    text = ''
      # written by NixOS
      DB_HOST=db
      DB_PASSWORD=Etc-Env-Pass-11
      export API_TOKEN="etc-Api-Token-22"
      SMTP_PASSWORD_FILE=/run/agenix/smtp
      SENTRY_DSN=
      OIDC_CLIENT_SECRET='oidc-Etc-33'
    '';
  };

  environment.etc."homeassistant/secrets.yaml".text = ''
    mqtt_password: Mqtt-Yaml-44
    latitude: 52.52
    api_password: !secret ha_api
    db_url: postgresql://hass:Hass-Yaml-55@db/hass
  '';

  environment.etc."app/config.toml".text = ''
    [server]
    listen = "0.0.0.0:8080"

    [database]
    host = "db"
    user = "app"
    password = "Toml-Pass-66"
    password_file = "/run/agenix/app-db"

    [auth]
    # password = "commented-out"
    token = "${config.sops.placeholder.app-token}"
    session_secret = "Toml-Session-77"
  '';

  environment.etc."app/settings.json".text = ''
    {
      "database": { "user": "app", "password": "Json-Pass-88" },
      "apiKey": "json-Api-Key-99",
      "publicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIWGQejmv1vqcqb2xrIuLEd6YFeWLHzeobl7s3js0eT3",
      "help": "Set password: in the UI"
    }
  '';

  services.rspamd.locals."worker-controller.inc".text = ''
    password = "$2$8hn4c88rmafsueo4h3yckiirwh4gs3wa$nhaiknd7h3cqxj7r6c4ghdsqs8iigdxwpeaf9bsfd7pmpdfqdhyb";
    enable_password = "Rspamd-Enable-10";
  '';

  environment.etc."msmtprc".text = ''
    account default
    host smtp.example.org
    port 587
    auth on
    user alerts@example.org
    password Msmtp-Plain-12
    from alerts@example.org
  '';

  environment.etc."netrc".text = ''
    machine git.example.org login deploy password Netrc-Pass-13
  '';

  services.redis.servers.cache.settings = {
    maxmemory = "256mb";
  };

  environment.etc."redis/extra.conf".text = ''
    requirepass Redis-Conf-14
    masterauth Redis-Conf-14
  '';
}
