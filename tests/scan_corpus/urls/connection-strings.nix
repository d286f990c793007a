{ config, lib, pkgs, ... }:
let
  dbPass = config.sops.placeholder."db/password";
  host = "db.internal";
in
{
  services.app.settings = {
    database_url = "postgresql://app:App-Url-20@localhost:5432/app";
    readonly_url = "postgresql://reader@localhost:5432/app";
    socket_url = "postgresql:///app?host=/run/postgresql&user=app";
    cache_url = "redis://:Redis-Url-21@cache:6379/0";
    queue_url = "amqp://guest:guest@rabbitmq:5672/%2F";
    mongo_url = "mongodb://root:Mongo-Url-22@mongo:27017/?authSource=admin";
    templated_url = "postgres://app:${dbPass}@${host}/app";
    interpolated_host = "postgres://app:Interp-Host-23@${host}:5432/app";
    env_url = "postgres://app:$DB_PASSWORD@db/app";
    upstream = "http://[::1]:8080/";
    git_repo = "git+ssh://git@github.com/example/private-flake.git";
    webhook = "https://hooks.example.org/services/T000/B000/notasecret";
    ldap_uri = "ldaps://ldap.example.org:636";
    smtp_url = "smtp://alerts%40example.org:Smtp-Url-24@smtp.example.org:587";
    sentry_dsn = "https://public@sentry.example.org/3";
    proxy = "http://proxyuser:Proxy-Url-25@proxy.example.org:3128";
    docs_hint = "Format: postgres://USER:PASSWORD@HOST/DB";
  };

  nix.settings.substituters = [ "https://cache.example.org" ];
  networking.proxy.default = "http://proxy.example.org:3128";
  services.influxdb2.settings.http-bind-address = "127.0.0.1:8086";
}
