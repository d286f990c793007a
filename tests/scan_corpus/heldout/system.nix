{ config, lib, pkgs, ... }:
{
  networking.supplicant.wlan0 = {
    configFile.path = "/etc/wpa_supplicant.conf";
    extraConf = ''
      network={
        ssid="Warehouse"
        key_mgmt=WPA-PSK
        psk="Supp-Psk-80"
      }
    '';
  };

  services.ddclient = {
    enable = true;
    extraConfig = ''
      protocol=dyndns2
      server=dyn.example.org
      login=home
      password=Ddc-Pass-81
      home.example.org
    '';
  };

  environment.etc."nix/netrc".text = ''
    machine cache.example.org password Attic-Tok-82
  '';

  nix.settings = {
    netrc-file = "/etc/nix/netrc";
    substituters = [ "https://cache.example.org/main" ];
  };

  programs.ssh.extraConfig = ''
    Host *.internal
      PasswordAuthentication no
      PubkeyAuthentication yes
      IdentityFile ~/.ssh/id_internal
  '';

  services.openssh.settings.PermitEmptyPasswords = "no";

  virtualisation.oci-containers.containers.app = {
    image = "ghcr.io/example/app:1.4";
    login = {
      registry = "ghcr.io";
      username = "example-bot";
      passwordFile = "/run/agenix/ghcr";
    };
    environment = {
      APP_ENV = "prod";
      APP_DEBUG = "false";
      KEYCLOAK_CLIENT_SECRET = "Kc-Client-83";
      KEYCLOAK_REALM = "main";
    };
  };

  programs.msmtp.accounts.default = {
    host = "smtp.example.org";
    auth = true;
    user = "host@example.org";
    passwordeval = "cat /run/agenix/msmtp";
  };

  services.zigbee2mqtt.settings = {
    mqtt = {
      server = "mqtt://localhost:1883";
      user = "z2m";
      password = "!secret.yaml mqtt_password";
    };
    frontend.auth_token = "Z2m-Front-84";
  };

  services.vaultwarden.config = {
    DOMAIN = "https://vault.example.org";
    ADMIN_TOKEN = "Vw-Admin-85";
    YUBICO_CLIENT_ID = "12345";
    YUBICO_SECRET_KEY = "Vw-Yubico-86";
  };

  systemd.services.healthcheck = {
    startAt = "*:0/5";
    script = ''
      ${pkgs.curl}/bin/curl -fsS -m 10 --retry 5 https://hc.example.org/ping/0d5fake0-aaaa-bbbb-cccc-0123456789ab
      ${pkgs.curl}/bin/curl -fsS -H "X-Api-Key: Hc-Api-87" https://hc.example.org/api/v3/checks/
    '';
  };
}
