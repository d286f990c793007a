{ config, pkgs, ... }:
{
  services.postgresql = {
    enable = true;
    package = pkgs.postgresql_16;
    enableTCPIP = true;
    settings = {
      password_encryption = "scram-sha-256";
      listen_addresses = pkgs.lib.mkForce "*";
    };
    authentication = ''
      # TYPE  DATABASE  USER  ADDRESS      METHOD
      local   all       all                peer
      host    all       all   10.0.0.0/8   scram-sha-256
    '';
    ensureDatabases = [ "app" "metabase" ];
    ensureUsers = [
      { name = "app"; ensureDBOwnership = true; }
    ];
    initialScript = pkgs.writeText "init.sql" ''
      CREATE ROLE metabase WITH LOGIN PASSWORD 'Mb-db-pass-2024';
      CREATE USER reporting WITH ENCRYPTED PASSWORD 'report-Ro-33';
      ALTER ROLE legacy PASSWORD 'SCRAM-SHA-256$4096:c2FsdHNhbHQ=$stored:server';
      GRANT CONNECT ON DATABASE app TO reporting;
    '';
  };

  systemd.services.postgresql.postStart = ''
    $PSQL -tAc "ALTER ROLE app WITH PASSWORD '$(cat ${config.age.secrets.app-db.path})'"
  '';

  services.postgresqlBackup = {
    enable = true;
    databases = [ "app" ];
    location = "/var/backup/postgresql";
  };
}
