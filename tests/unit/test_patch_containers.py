"""Container kinds and image families (nixmig/nixsrc/containers.py) as `patch` sees them.

linuxserver.io images read a variable from a file only through the ``FILE__VAR`` prefix (their
s6-overlay init); ``VAR_FILE`` is ignored by them (linuxserver/docker-mariadb PR #36 closed
unmerged). quadlet-nix keeps a container's settings under ``containerConfig``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.containers import base_variable, env_container, file_variable
from nixmig.nixsrc.scan import scan_source
from tests.helpers import FIXTURES

ROOT_ONLY = """_: {{
  virtualisation.oci-containers.containers."mariadb" = {{
    image = "{image}";
    environment = {{
      PUID = "1000";
      MYSQL_ROOT_PASSWORD = "root-pw-5";
    }};
    volumes = [ "mariadb:/config" ];
  }};
}}
"""


def _plan(text: str, **spec: str) -> tuple[pt.Plan, dict[str, bytes], dict[str, bytes]]:
    sources = {"hosts/box/db.nix": text.encode()}
    plan = pt.plan(sources, pt.Spec(**{"secret": "db-pw", **spec}))  # type: ignore[arg-type]
    return plan, sources, {**sources, **plan.results(sources)}


@pytest.mark.parametrize(
    ("image", "var"),
    [
        ("lscr.io/linuxserver/mariadb:latest", "FILE__MYSQL_ROOT_PASSWORD"),
        ("linuxserver/mariadb", "FILE__MYSQL_ROOT_PASSWORD"),
        ("ghcr.io/linuxserver/mariadb:11.4.5", "FILE__MYSQL_ROOT_PASSWORD"),
        ("mariadb:11", "MYSQL_ROOT_PASSWORD_FILE"),
        ("docker.io/library/mysql:8", "MYSQL_ROOT_PASSWORD_FILE"),
    ],
)
def test_the_database_image_family_decides_the_file_variable(image: str, var: str) -> None:
    """realcfg 05's shape: the old code wrote MYSQL_ROOT_PASSWORD_FILE for lscr.io/linuxserver/mariadb,
    which that image never reads (the root password would be empty at initialisation)."""
    plan, _, after = _plan(ROOT_ONLY.format(image=image), role="root", strategy="move")
    assert plan.manual == ()
    out = after["hosts/box/db.nix"].decode()
    assert f'{var} = "/run/secrets/db-pw";' in out
    other = "MYSQL_ROOT_PASSWORD_FILE" if var.startswith("FILE__") else "FILE__MYSQL_ROOT_PASSWORD"
    assert other not in out and "root-pw-5" not in out
    assert '"/run/agenix/db-pw:/run/secrets/db-pw:ro"' in out
    again = pt.plan(after, pt.Spec(secret="db-pw", role="root", strategy="move"))
    assert again.edits == () and again.manual == ()
    assert scan_source(after["hosts/box/db.nix"], "db.nix").findings == ()


APP = """{ config, ... }:
{
  virtualisation.oci-containers.containers.db = {
    image = "postgres:16";
    environment.POSTGRES_PASSWORD = "app-pw-9";
  };
  virtualisation.oci-containers.containers.mastodon = {
    image = "lscr.io/linuxserver/mastodon:glitch";
    environment = {
      DB_HOST = "db";
      DB_USER = "postgres";
      DB_PASS = "app-pw-9";
    };
  };
}
"""


def test_a_linuxserver_app_reads_its_password_through_file_prefix_not_an_env_file() -> None:
    """realcfg 32's shape (mastodon's DB_PASS): FILE__DB_PASS + the bind mount; no renderer unit,
    no env file (the old code rendered an env file, which also refuses passwords with other bytes
    than A-Z a-z 0-9 - . _ ~ at start)."""
    plan, _, after = _plan(APP, role="postgres")
    assert plan.manual == ()
    out = after["hosts/box/db.nix"].decode()
    assert 'FILE__DB_PASS = "/run/secrets/db-pw";' in out
    assert 'POSTGRES_PASSWORD_FILE = "/run/secrets/db-pw";' in out  # the official image: _FILE
    assert out.count('"${config.age.secrets.db-pw.path}:/run/secrets/db-pw:ro"') == 2
    assert "environmentFiles" not in out and "ExecStartPre" not in out and "app-pw-9" not in out
    again = pt.plan(after, pt.Spec(secret="db-pw", role="postgres"))
    assert again.edits == () and again.manual == ()


def test_file_variable_names() -> None:
    assert file_variable("DB_PASS", "lscr.io/linuxserver/mastodon") == "FILE__DB_PASS"
    assert file_variable("DB_PASS", None) == "DB_PASS_FILE"
    assert base_variable("FILE__DB_PASS") == base_variable("DB_PASS_FILE") == base_variable("DB_PASS") == "DB_PASS"
    assert base_variable("FILE__") == "FILE__"


def test_env_container_knows_each_kind() -> None:
    assert env_container(("virtualisation", "oci-containers", "containers", "a", "environment", "V")) == (
        "oci",
        "a",
        ("virtualisation", "oci-containers", "containers", "a"),
    )
    q = ("virtualisation", "quadlet", "containers", "pg")
    assert env_container((*q, "containerConfig", "environments", "V")) == ("quadlet", "pg", q)
    assert env_container((*q, "environment", "V")) is None
    assert env_container(("services", "db", "service", "environment", "V")) == (
        "arion",
        "db",
        ("services", "db", "service"),
    )


QUADLET_DB = """{
  config,
  ...
}:
let
  inherit (config.virtualisation.quadlet) networks volumes;
in
{
  virtualisation.quadlet = {
    containers.pg.containerConfig = {
      image = "ghcr.io/immich-app/postgres:16";
      volumes = [ "${volumes.pg.ref}:/var/lib/postgresql" ];
      environments = {
        POSTGRES_USER = "postgres";
        POSTGRES_PASSWORD = "quad-pw-3";
      };
    };
    volumes.pg = { };
  };
}
"""


def test_a_quadlet_database_reads_the_file_through_containerconfig() -> None:
    """realcfg 13's shape: the old code refused it ("no template for this shape")."""
    plan, _, after = _plan(QUADLET_DB)
    assert plan.manual == (), [m.what for m in plan.manual]
    out = after["hosts/box/db.nix"].decode()
    assert 'POSTGRES_PASSWORD_FILE = "/run/secrets/db-pw";' in out
    assert '"${config.age.secrets.db-pw.path}:/run/secrets/db-pw:ro"' in out
    assert "age.secrets.db-pw = {" in out and "quad-pw-3" not in out
    again = pt.plan(after, pt.Spec(secret="db-pw"))
    assert again.edits == () and again.manual == ()


def _nix_eval(expr: str) -> str:
    nix = shutil.which("nix-instantiate")
    if nix is None:
        pytest.skip("nix-instantiate is not installed")
    proc = subprocess.run(
        [nix, "--eval", "--strict", "--json", "-E", expr], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_quadlet_app_gets_its_env_file_from_its_own_unit(tmp_path: Path) -> None:
    """The app's password and URL leave containerConfig.environments; the env file is named in
    containerConfig.environmentFiles and rendered by the container's own unit (NAME.service) through
    the container's serviceConfig (quadlet-nix writes it into the unit's [Service]), never through
    systemd.services. Checked by evaluating the patched module with stub arguments."""
    case = FIXTURES / "shapes" / "quadlet-db-and-app"
    sources = pt.read_sources(case)
    plan = pt.plan(sources, pt.Spec(secret="photos-db-password", role="photos"))
    assert plan.manual == ()
    out = {**sources, **plan.results(sources)}["modules/photos.nix"]
    assert b"systemd.services" not in out
    (tmp_path / "photos.nix").write_bytes(out)
    args = (
        '{ config = { virtualisation.quadlet.networks.photos.ref = "photos.network";'
        ' age.secrets.photos-db-password.path = "/run/agenix/photos-db-password"; };'
        ' lib = { escapeShellArg = x: x; }; pkgs = { writeShellScript = n: t: "/nix/store/x-" + n; }; }'
    )
    expr = (
        f"let m = import {tmp_path / 'photos.nix'} {args}; c = m.virtualisation.quadlet.containers; in"
        " { app = c.photos.containerConfig.environments; files = c.photos.containerConfig.environmentFiles;"
        " svc = c.photos.serviceConfig; db = c.photos-db.containerConfig; }"
    )
    got = json.loads(_nix_eval(expr))
    assert got["app"] == {"DB_HOSTNAME": "photos-db", "DB_USERNAME": "photos"}
    assert got["files"] == ["/run/photos/photos-db-password.env"]
    assert got["svc"]["RuntimeDirectory"] == "photos" and got["svc"]["RuntimeDirectoryMode"] == "0700"
    assert got["svc"]["ExecStartPre"] == ["/nix/store/x-photos-photos-db-password-env"]
    assert got["db"]["environments"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/photos-db-password"
    assert "/run/agenix/photos-db-password:/run/secrets/photos-db-password:ro" in got["db"]["volumes"]


APP_ONLY = """{ config, ... }:
{
  virtualisation.oci-containers.containers."mastodon" = {
    image = "lscr.io/linuxserver/mastodon:4";
    environment = {
      DB_HOST = "pgroonga";
      DB_USER = "mastodon";
      DB_PASS = "app-pw-77";
      ES_PASS = "app-pw-77";
    };
    volumes = [ "mastodon:/config" ];
  };
}
"""


def test_a_linuxserver_app_without_its_database_in_the_repo_is_patched_once() -> None:
    """realcfg 32: the database runs elsewhere, the password comes from DB_USER/DB_PASS. One bind mount
    for both variables; the second run must not take FILE__DB_PASS's path for the password (it wrote
    FILE__FILE__DB_PASS before the fix)."""
    plan, _, after = _plan(APP_ONLY, role="mastodon")
    assert plan.manual == ()
    out = after["hosts/box/db.nix"].decode()
    assert 'FILE__DB_PASS = "/run/secrets/db-pw";' in out and 'FILE__ES_PASS = "/run/secrets/db-pw";' in out
    assert out.count(":/run/secrets/db-pw:ro") == 1 and "age.secrets.db-pw = {" in out
    again = pt.plan(after, pt.Spec(secret="db-pw", role="mastodon"))
    assert again.edits == () and again.manual == (), again.diff(after)


def test_init_drafts_a_quadlet_database() -> None:
    """`nixmig init` on quadlet-nix: the container, podman's socket and the secret's name come from
    containerConfig (it stopped with KeyError 'quadlet' once the kind existed)."""
    from nixmig.draft import draft

    toml = draft(pt.read_sources(FIXTURES / "shapes" / "quadlet-db-and-app")).toml
    assert 'container = "photos-db"  # from modules/photos.nix:7 (virtualisation.quadlet.containers.photos-db)' in toml
    assert 'docker_host = "unix:///run/podman/podman.sock"  # from modules/photos.nix:7 (quadlet-nix runs' in toml
    assert 'database = "photos"' in toml and "[migrations.photos-db-password]" in toml


NEXTCLOUD = """{ config, ... }:
{
  virtualisation.oci-containers.containers.cloud-db = {
    image = "postgres:16";
    environment = { POSTGRES_USER = "cloud"; POSTGRES_PASSWORD = "cloud-pw-31"; };
  };
  virtualisation.oci-containers.containers.cloud = {
    image = "%s";
    environment = {
      POSTGRES_HOST = "cloud-db";
      POSTGRES_USER = "cloud";
      POSTGRES_PASSWORD = "cloud-pw-31";
    };
    volumes = [ "/srv/cloud:/var/www/html" ];
  };
}
"""


@pytest.mark.parametrize("image", ["nextcloud:29-apache", "docker.io/library/nextcloud:stable", "nextcloud"])
def test_nextcloud_reads_the_database_password_at_install_only_so_a_rotation_is_by_hand(image: str) -> None:
    """realcfg34/08, realcfg35/06: the nextcloud image reads POSTGRES_PASSWORD only when it installs; the
    running Nextcloud logs in with config.php's dbuser/dbpassword. Under rotate, patch used to render the
    new password into its env file and call it done, while apply would lock Nextcloud out (or change
    nothing it uses): the client is by hand, said at its line; the database's own edit is planned."""
    plan, _, _ = _plan(NEXTCLOUD % image, role="cloud", db_service="cloud-db")
    held = [m for m in plan.manual if "reads it only when it installs nextcloud" in m.what]
    assert [m.line for m in held] == [12], [m.what for m in plan.manual]
    assert "occ config:system:get dbuser" in held[0].what and 'strategy = "move"' in held[0].what
    assert not any("environmentFiles" in e.replacement.decode() for e in plan.edits)


def test_nextcloud_under_move_keeps_the_value_so_its_env_file_is_patched() -> None:
    """Under move the value is kept, so what config.php holds stays right: the env file is rendered."""
    plan, _, after = _plan(NEXTCLOUD % "nextcloud:29-apache", role="cloud", strategy="move", db_service="cloud-db")
    assert plan.manual == (), [m.what for m in plan.manual]
    out = after["hosts/box/db.nix"].decode()
    assert "cloud-pw-31" not in out and "environmentFiles" in out


def test_an_image_named_like_nextcloud_elsewhere_is_no_install_only_client() -> None:
    """Only the official image is known to read it at install only (a vendor's own build may not)."""
    from nixmig.nixsrc.containers import install_only

    assert install_only("nextcloud:29", "POSTGRES_PASSWORD") == "nextcloud"
    assert install_only("nextcloud:29", "NEXTCLOUD_ADMIN_PASSWORD") is None
    assert install_only("ghcr.io/someone/nextcloud:29", "POSTGRES_PASSWORD") is None
    assert install_only(None, "POSTGRES_PASSWORD") is None
