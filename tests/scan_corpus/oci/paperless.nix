{ config, pkgs, lib, ... }:

let
  dataDir = "/var/lib/paperless";
in
{
  virtualisation.oci-containers = {
    backend = "podman";
    containers = {
      paperless-db = {
        image = "docker.io/library/postgres:16";
        volumes = [ "${dataDir}/pgdata:/var/lib/postgresql/data" ];
        environment = {
          POSTGRES_DB = "paperless";
          POSTGRES_USER = "paperless";
          POSTGRES_PASSWORD = "pPl3ss-db-2024";
        };
      };

      paperless-broker = {
        image = "docker.io/library/redis:7";
      };

      paperless = {
        image = "ghcr.io/paperless-ngx/paperless-ngx:latest";
        dependsOn = [ "paperless-db" "paperless-broker" ];
        ports = [ "127.0.0.1:8000:8000" ];
        volumes = [
          "${dataDir}/data:/usr/src/paperless/data"
          "${dataDir}/media:/usr/src/paperless/media"
        ];
        environment = {
          PAPERLESS_REDIS = "redis://paperless-broker:6379";
          PAPERLESS_DBHOST = "paperless-db";
          PAPERLESS_DBUSER = "paperless";
          PAPERLESS_DBPASS = "pPl3ss-db-2024";
          PAPERLESS_SECRET_KEY = "c2f8e1b7a94d4e0f9b6a3d5c7e8f1a2b";
          PAPERLESS_ADMIN_USER = "admin";
          PAPERLESS_ADMIN_PASSWORD = "Adm1n-paperless";
          PAPERLESS_URL = "https://paperless.example.org";
          PAPERLESS_OCR_LANGUAGE = "deu+eng";
        };
        environmentFiles = [ config.age.secrets.paperless-env.path ];
      };
    };
  };

  age.secrets.paperless-env = {
    file = ../secrets/paperless-env.age;
    mode = "0400";
  };
}
