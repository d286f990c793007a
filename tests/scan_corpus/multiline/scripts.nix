{ config, pkgs, lib, ... }:
{
  systemd.services.db-bootstrap = {
    after = [ "postgresql.service" ];
    serviceConfig.Type = "oneshot";
    script = ''
      set -eu
      export PGPASSWORD=$(cat ${config.age.secrets.pg-admin.path})
      psql -h localhost -U admin -c "select 1"
      export PGPASSWORD="Script-Pg-15"
      mysql -u root --password=Script-My-16 -e "FLUSH PRIVILEGES"
      curl -fsS -H "Authorization: Bearer $TOKEN" https://api.example.org/ping
      curl -fsS -u "admin:$(cat /run/agenix/api)" https://api.example.org/
      ${pkgs.rclone}/bin/rclone sync /srv remote:backup --password-command "cat /run/agenix/rclone"
      echo "Please set the admin password in the web UI"
    '';
  };

  systemd.services.legacy-sync = {
    path = [ pkgs.rsync ];
    script = ''
      RSYNC_PASSWORD='Rsync-Sq-17' rsync -a /data rsync://sync@backup.example.org/data
      wget --user=ci --password Wget-Pass-18 https://ci.example.org/artifact.tar
      git clone https://deploy:Git-Token-19@git.example.org/infra.git /tmp/infra
    '';
  };
}
