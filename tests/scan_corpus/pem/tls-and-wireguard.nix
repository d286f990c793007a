{ config, pkgs, ... }:
{
  networking.wireguard.interfaces.wg0 = {
    ips = [ "10.100.0.1/24" ];
    listenPort = 51820;
    privateKey = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    peers = [
      {
        publicKey = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        presharedKey = "7u1O9h6Cq2/0sKwJ3pQ5vXy8ZbN4mR6tL0eA1dF3gH8=";
        allowedIPs = [ "10.100.0.2/32" ];
      }
    ];
  };

  networking.wireguard.interfaces.wg1 = {
    privateKeyFile = "/run/agenix/wg1";
    peers = [
      {
        publicKey = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
        presharedKeyFile = config.age.secrets.wg1-psk.path;
        allowedIPs = [ "10.101.0.0/24" ];
      }
    ];
  };

  services.nginx.virtualHosts."intranet.example.org" = {
    onlySSL = true;
    sslCertificate = ./intranet.crt;
    sslCertificateKey = "/var/lib/acme/intranet/key.pem";
  };

  environment.etc."ssl/private/intranet.key".text = ''
    -----BEGIN PRIVATE KEY-----
    MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj
    MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu
    NMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCFGeJZ
    -----END PRIVATE KEY-----
  '';

  environment.etc."ssl/certs/intranet.crt".text = ''
    -----BEGIN CERTIFICATE-----
    MIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJ
    RTESMBAGA1UEChMJQmFsdGltb3JlMRMwEQYDVQQLEwpDeWJlclRydXN0MSIwIAYD
    -----END CERTIFICATE-----
  '';

  programs.ssh.knownHosts.backup = {
    hostNames = [ "backup.example.org" ];
    publicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG8IX+GbwvuhhTIXuwLJpZ4x7RNzQwb4yKIOiP1pQGSi";
  };

  services.openssh.hostKeys = [
    { path = "/etc/ssh/ssh_host_ed25519_key"; type = "ed25519"; }
  ];

  environment.etc."deploy/id_ed25519" = {
    mode = "0600";
    text = ''
      -----BEGIN OPENSSH PRIVATE KEY-----
      b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
      QyNTUxOQAAACDNxr0lR2yXhkV0A5ggi0a1EfMzmwtVQwzPdRnJ4D8h9wAAAJg0T3KENE9y
      -----END OPENSSH PRIVATE KEY-----
    '';
  };

  environment.variables.SOPS_AGE_KEY_FILE = "/var/lib/sops/age.key";
  environment.etc."sops/age.key".text = "AGE-SECRET-KEY-1QFWKNHVL4NYX3E4ZQ9J2W5D6N4MKT0LS8R7CH3QJ0VFWXGN5ZP2QS9L0VK";
}
