{ pkgs, ... }:
{
  virtualisation.oci-containers.containers.minio = {
    image = "quay.io/minio/minio:RELEASE.2024-01-16T16-07-38Z";
    cmd = [ "server" "/data" "--console-address" ":9001" ];
    ports = [ "9000:9000" "9001:9001" ];
    extraOptions = [
      "-e" "MINIO_ROOT_USER=minioadmin"
      "-e" "MINIO_ROOT_PASSWORD=minio-Root-4471"
      "--health-cmd=curl -f http://localhost:9000/minio/health/live"
    ];
    volumes = [ "/srv/minio:/data" ];
  };

  virtualisation.oci-containers.containers.mc-mirror = {
    image = "minio/mc";
    entrypoint = "/bin/sh";
    cmd = [
      "-c"
      "mc alias set local http://minio:9000 minioadmin minio-Root-4471 && mc mirror --watch local/photos /backup"
    ];
  };
}
