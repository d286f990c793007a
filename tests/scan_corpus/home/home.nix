{ config, pkgs, ... }:
{
  home.username = "jdoe";
  home.homeDirectory = "/home/jdoe";

  programs.git = {
    enable = true;
    userName = "Jane Doe";
    userEmail = "jdoe@example.org";
    extraConfig = {
      credential.helper = "store";
      url."https://oauth2:Git-Oauth-37@gitlab.example.org/".insteadOf = "https://gitlab.example.org/";
    };
  };

  accounts.email.accounts.work = {
    primary = true;
    address = "jdoe@example.org";
    userName = "jdoe@example.org";
    passwordCommand = "pass show email/work";
    imap.host = "imap.example.org";
    smtp.host = "smtp.example.org";
  };

  programs.password-store.enable = true;

  home.sessionVariables = {
    EDITOR = "nvim";
    OPENAI_API_KEY = "sk-FAKEfakeFAKEfakeFAKEfakeFAKEfake00";
    PASSWORD_STORE_DIR = "${config.xdg.dataHome}/password-store";
  };

  programs.ssh.matchBlocks."build" = {
    hostname = "build.example.org";
    identityFile = "~/.ssh/id_build";
  };

  xdg.configFile."rclone/rclone.conf".text = ''
    [b2]
    type = b2
    account = 000fake0000
    key = K000FakeKeyFakeKey
  '';
}
