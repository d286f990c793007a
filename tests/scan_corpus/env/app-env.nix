{ config, lib, pkgs, ... }:

let
  # Shared between the API and the worker.
  env = {
    NODE_ENV = "production";
    DB_HOST = "127.0.0.1";
    DB_USER = "outline";
    DB_PASSWORD = "Outl1ne-db!pass";
    DATABASE_URL = "postgres://outline:Outl1ne-db!pass@127.0.0.1:5432/outline";
    REDIS_URL = "redis://127.0.0.1:6379";
    SECRET_KEY = "4f0c5f7d2b8e41a6b3d9c0e7f1a2b4c6d8e0f2a4b6c8d0e2f4a6b8c0d2e4f6a8";
    UTILS_SECRET = "9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a";
    SLACK_VERIFICATION_TOKEN = "";
    AWS_ACCESS_KEY_ID = "AKIAEXAMPLE0000000000";
    AWS_SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    AWS_S3_UPLOAD_BUCKET_URL = "https://s3.example.org";
  };

  workerEnv = env // {
    WORKER_CONCURRENCY = "4";
    SMTP_PASSWORD = "Smtp-Outline-31";
  };

  dbPassword = "Outl1ne-db!pass";
  apiToken = config.sops.placeholder."outline/api-token";
in
{
  systemd.services.outline-api = {
    wantedBy = [ "multi-user.target" ];
    environment = env;
    script = "exec ${pkgs.outline}/bin/outline-server";
  };

  systemd.services.outline-worker = {
    wantedBy = [ "multi-user.target" ];
    environment = workerEnv // {
      API_TOKEN = apiToken;
      DB_PASSWORD = dbPassword;
    };
  };
}
