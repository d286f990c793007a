{ config, lib, pkgs, ... }:
{
  services.k3s = {
    enable = true;
    role = "server";
    token = "K10f3c9a1d2e4b5c6a7d8e9f0a1b2c3d4e5::server:9e8d7c6b5a4f3e2d";
    extraFlags = toString [ "--disable=traefik" "--write-kubeconfig-mode=0644" ];
  };

  services.github-runners.builder = {
    enable = true;
    url = "https://github.com/example/infra";
    tokenFile = "/run/agenix/github-runner-token";
    name = "builder";
  };

  services.borgbackup.jobs.home = {
    paths = [ "/home" ];
    repo = "ssh://borg@backup.example.org/./home";
    encryption = {
      mode = "repokey-blake2";
      passphrase = "correct horse battery staple";
    };
    compression = "auto,zstd";
    startAt = "daily";
  };

  services.borgbackup.jobs.etc = {
    paths = [ "/etc" ];
    repo = "borg@backup.example.org:etc";
    encryption = {
      mode = "repokey";
      passCommand = "cat /run/agenix/borg-etc";
    };
  };

  services.restic.backups.b2 = {
    repository = "s3:https://s3.eu-central-003.backblazeb2.com/example-backups";
    passwordFile = "/run/agenix/restic";
    environmentFile = "/run/agenix/restic-b2-env";
    paths = [ "/srv" ];
  };

  services.restic.backups.rest = {
    repository = "rest:https://restic:Rst-http-5531@backup.example.org:8000/newton";
    passwordFile = config.age.secrets.restic.path;
    paths = [ "/var/lib" ];
  };

  services.invidious = {
    enable = true;
    settings = {
      db = {
        user = "kemal";
        password = "kemal";
      };
      hmac_key = "c7f2e1d9b8a74f6e";
    };
  };

  services.openvpn.servers.office = {
    config = "config /etc/openvpn/office.ovpn";
    authUserPass = {
      username = "jdoe";
      password = "Vpn-Office-2210";
    };
  };

  services.openssh = {
    enable = true;
    settings = {
      PasswordAuthentication = false;
      KbdInteractiveAuthentication = false;
      PermitRootLogin = "prohibit-password";
    };
  };

  services.gitea = {
    enable = true;
    database = {
      type = "postgres";
      passwordFile = config.age.secrets.gitea-db.path;
      password = "";
    };
    settings.mailer = {
      ENABLED = true;
      PASSWD = "Gitea-Mail-771";
      USER = "gitea@example.org";
    };
  };

  services.matrix-synapse = {
    enable = true;
    settings = {
      server_name = "example.org";
      registration_shared_secret = "Rg4s7Kq2Zx9Lm3Np";
      macaroon_secret_key = "Mac-8c1f0e5d2b4a";
      form_secret = "Frm-4e7d2c9b1a0f";
      database = {
        name = "psycopg2";
        args = {
          user = "synapse";
          password = "syn-Db-4410";
          database = "synapse";
          host = "localhost";
        };
      };
      turn_shared_secret_path = "/run/agenix/turn";
    };
    extraConfigFiles = [ "/run/agenix/synapse-extra.yaml" ];
  };

  services.coturn = {
    enable = true;
    use-auth-secret = true;
    static-auth-secret-file = "/run/agenix/turn";
    realm = "turn.example.org";
  };
}
