# Shapes seen in NixOS VM tests and small servers.
{ config, lib, pkgs, ... }:
let
  secrets = import ./secrets-plain.nix;
in
{
  services.gitlab = {
    enable = true;
    initialRootPasswordFile = pkgs.writeText "rootPassword" "Gl-Root-51";
    secrets = {
      secretFile = pkgs.writeText "secret" "Gl-Secret-52";
      otpFile = "/run/agenix/gitlab-otp";
      dbFile = "/run/agenix/gitlab-db";
      jwsFile = pkgs.runCommand "oidcKeyBase" { } "${pkgs.openssl}/bin/openssl genrsa 2048 > $out";
    };
    databasePasswordFile = config.age.secrets.gitlab-db.path;
  };

  services.miniflux = {
    enable = true;
    adminCredentialsFile = pkgs.writeText "miniflux-admin" ''
      ADMIN_USERNAME=admin
      ADMIN_PASSWORD=Mflux-Admin-53
    '';
  };

  services.postfix = {
    enable = true;
    mapFiles.sasl_passwd = pkgs.writeText "sasl_passwd" "[smtp.example.org]:587 relay@example.org:Postfix-Sasl-54";
    config.smtp_sasl_auth_enable = "yes";
  };

  services.deluge = {
    enable = true;
    declarative = true;
    authFile = pkgs.writeTextFile {
      name = "deluge-auth";
      text = ''
        localclient:Deluge-Auth-55:10
      '';
    };
  };

  services.nginx.virtualHosts."legacy.example.org".locations."/api/".extraConfig = ''
    proxy_set_header Authorization "Basic YXBpOkxlZ2FjeS1CYXNpYy01Ng==";
    proxy_pass http://10.0.0.5:8080;
  '';

  services.keepalived.vrrpInstances.VI_1 = {
    interface = "eth0";
    virtualRouterId = 51;
    extraConfig = ''
      authentication {
        auth_type PASS
        auth_pass Kalived-57
      }
    '';
  };

  services.k3s.manifests.app-secret.content = {
    apiVersion = "v1";
    kind = "Secret";
    metadata.name = "app";
    stringData = {
      DATABASE_PASSWORD = "K8s-Db-58";
      username = "app";
    };
  };

  services.wordpress-like = {
    dbPassword = secrets.wordpress;
    adminEmail = "admin@example.org";
  };

  networking.wg-quick.interfaces.wg0 = {
    address = [ "10.0.0.2/24" ];
    privateKey = "WGq1iPr1v4teFAKEfakeFAKEfakeFAKEfake0000YE=";
    peers = [ { publicKey = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="; endpoint = "vpn.example.org:51820"; } ];
  };

  boot.initrd.luks.devices.cryptroot.keyFile = "/dev/disk/by-id/usb-key";
  security.acme.defaults.environmentFile = "/run/agenix/acme-dns";
  services.nix-serve.secretKeyFile = "/var/lib/nix-serve/cache-priv-key.pem";
  services.cloudflared.tunnels."00000000-0000-0000-0000-000000000000".credentialsFile = "/run/agenix/cf";
}
