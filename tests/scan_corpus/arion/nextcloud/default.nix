{ config, lib, pkgs, ... }:

{
  virtualisation.arion = {
    backend = "podman-socket";
    projects.nextcloud = {
      serviceName = "nextcloud-arion";
      settings = {
        services.db = {
          service = {
            image = "mariadb:10.11";
            command = [ "--transaction-isolation=READ-COMMITTED" "--log-bin=binlog" "--binlog-format=ROW" ];
            environment = {
              MYSQL_ROOT_PASSWORD = "r00t-Maria-2023";
              MYSQL_PASSWORD = "nc_db_Secret!";
              MYSQL_DATABASE = "nextcloud";
              MYSQL_USER = "nextcloud";
            };
            volumes = [ "/srv/nextcloud/db:/var/lib/mysql" ];
          };
        };

        services.redis.service = {
          image = "redis:alpine";
          command = [ "redis-server" "--requirepass" "k8Hh2bRedisPass" ];
        };

        services.app = {
          service = {
            image = "nextcloud:28-apache";
            ports = [ "8080:80" ];
            environment = {
              MYSQL_PASSWORD_FILE = "/run/secrets/nextcloud-db";
              MYSQL_DATABASE = "nextcloud";
              MYSQL_USER = "nextcloud";
              MYSQL_HOST = "db";
              NEXTCLOUD_ADMIN_USER = "admin";
              NEXTCLOUD_ADMIN_PASSWORD = "admin-Initial-77";
              REDIS_HOST = "redis";
              REDIS_HOST_PASSWORD = "k8Hh2bRedisPass";
              NEXTCLOUD_TRUSTED_DOMAINS = "cloud.example.org";
            };
            volumes = [
              "/srv/nextcloud/html:/var/www/html"
              "${config.age.secrets.nextcloud-db.path}:/run/secrets/nextcloud-db:ro"
            ];
          };
        };
      };
    };
  };

  age.secrets.nextcloud-db.file = ../../secrets/nextcloud-db.age;
}
