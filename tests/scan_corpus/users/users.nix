{ config, pkgs, lib, ... }:
{
  users.mutableUsers = false;

  users.users = {
    root.hashedPassword = "$6$rounds=656000$YQKz5/RsLW8b7Sf8$1Yj3bq2tWc0mBC1gGm3iTCBCuXnWj1xu5gR7xS9TQBKn8wB5Q9yE0FhG4xQ8B5v6m2mXuW1Cm3Vh0eE7q/9X1";

    alice = {
      isNormalUser = true;
      description = "Alice (password managed in agenix)";
      extraGroups = [ "wheel" "docker" ];
      hashedPasswordFile = config.age.secrets.alice-password.path;
      openssh.authorizedKeys.keys = [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIWGQejmv1vqcqb2xrIuLEd6YFeWLHzeobl7s3js0eT3 alice@laptop"
      ];
    };

    bob = {
      isNormalUser = true;
      initialPassword = "bob-changeme";
      extraGroups = [ "users" ];
    };

    carol = {
      isNormalUser = true;
      initialHashedPassword = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o7dGq2DhKXU/LHYhjUH5h4wnZ2PqmZRv6";
    };

    backup = {
      isSystemUser = true;
      group = "backup";
      hashedPassword = "!";
    };

    kiosk = {
      isNormalUser = true;
      password = "kiosk";
    };

    guest = {
      isNormalUser = true;
      password = null;
      hashedPassword = null;
    };
  };

  users.groups.backup = { };

  security.sudo.wheelNeedsPassword = false;
  services.getty.autologinUser = "kiosk";
}
