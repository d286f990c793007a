{ pkgs, ... }:
{
  project.name = "gitea";
  services.server.service = {
    image = "gitea/gitea:1.21";
    # compose-style list environment
    environment = [
      "USER_UID=1000"
      "GITEA__database__DB_TYPE=postgres"
      "GITEA__database__HOST=db:5432"
      "GITEA__database__NAME=gitea"
      "GITEA__database__USER=gitea"
      "GITEA__database__PASSWD=gitea-Db-Pa55"
      "GITEA__security__SECRET_KEY_FILE=/run/secrets/gitea-secret-key"
    ];
    ports = [ "3000:3000" "222:22" ];
  };
  services.db.service = {
    image = "postgres:14";
    environment = [
      "POSTGRES_USER=gitea"
      "POSTGRES_PASSWORD=gitea-Db-Pa55"
      "POSTGRES_DB=gitea"
    ];
  };
}
