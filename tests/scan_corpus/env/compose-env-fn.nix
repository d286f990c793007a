# Helpers that build arion/compose environments.
{ lib }:

rec {
  mkPostgresEnv = { user, db, password ? "postgres" }: {
    POSTGRES_USER = user;
    POSTGRES_DB = db;
    POSTGRES_PASSWORD = password;
  };

  defaults = mkPostgresEnv {
    user = "app";
    db = "app";
    password = "defaults-Pg-55";
  };

  mkUrl = { user, password, host, db }: "postgres://${user}:${password}@${host}:5432/${db}";

  appUrl = mkUrl {
    user = "app";
    password = "url-Builder-66";
    host = "db";
    db = "app";
  };

  jwt = {
    JWT_SECRET = lib.mkDefault "jwt-Default-Secret-0";
    JWT_EXPIRES_IN = "7d";
  };

  envList = [
    { name = "SESSION_SECRET"; value = "sess-Val-8181"; }
    { name = "LOG_LEVEL"; value = "debug"; }
    (lib.nameValuePair "MAILER_PASSWORD" "mailer-Nvp-42")
  ];
}
