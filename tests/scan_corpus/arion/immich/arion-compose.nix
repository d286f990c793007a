# Immich photo server, run by arion. The database password is hardcoded below on
# purpose: this file is part of nixmig's scanner corpus.
{ pkgs, lib, config, ... }:

let
  dbUser = "immich";
  uploadDir = "/srv/immich/upload";
in
{
  project.name = "immich";

  services = {
    immich-server = {
      image.name = "ghcr.io/immich-app/immich-server:release";
      service = {
        volumes = [ "${uploadDir}:/usr/src/app/upload" "/etc/localtime:/etc/localtime:ro" ];
        environment = {
          DB_HOSTNAME = "database";
          DB_USERNAME = dbUser;
          DB_PASSWORD = "Zp4rQ9vLx2TmW7";
          DB_DATABASE_NAME = "immich";
          REDIS_HOSTNAME = "redis";
          UPLOAD_LOCATION = uploadDir;
        };
        ports = [ "2283:2283" ];
        depends_on = [ "redis" "database" ];
        restart = "always";
      };
    };

    immich-machine-learning = {
      image.name = "ghcr.io/immich-app/immich-machine-learning:release";
      service = {
        volumes = [ "model-cache:/cache" ];
        environment = {
          DB_PASSWORD = "${config.services.immich-server.service.environment.DB_PASSWORD}";
          MACHINE_LEARNING_CACHE_FOLDER = "/cache";
        };
        restart = "always";
      };
    };

    redis = {
      image.name = "docker.io/redis:6.2-alpine";
      service.healthcheck.test = [ "CMD-SHELL" "redis-cli ping || exit 1" ];
    };

    database = {
      image.name = "docker.io/tensorchord/pgvecto-rs:pg14-v0.2.0";
      service = {
        environment = {
          POSTGRES_PASSWORD = "Zp4rQ9vLx2TmW7";
          POSTGRES_USER = dbUser;
          POSTGRES_DB = "immich";
          POSTGRES_INITDB_ARGS = "--data-checksums";
        };
        volumes = [ "pgdata:/var/lib/postgresql/data" ];
        healthcheck = {
          test = [ "CMD-SHELL" "pg_isready --dbname='immich' --username='immich' || exit 1" ];
          interval = "5m";
        };
      };
    };
  };

  docker-compose.volumes = {
    pgdata = { };
    model-cache = { };
  };
}
