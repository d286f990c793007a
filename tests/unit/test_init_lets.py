"""`nixmig init` follows a password bound once in a let (``let dbPassword = "..."; in``).

Each use of the name is read as the password written there: the database's POSTGRES_PASSWORD,
an app's variable, a URL only let literals fill, a nixpkgs option; names, roles and databases
bound in the same let are read as their values. The shape cases are
tests/fixtures/shapes/oci-let-bound-password*; the others are written here, in memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nixmig.draft import draft
from nixmig.nixsrc.patch import read_sources
from tests.helpers import FIXTURES
from tests.unit.test_init import checked_keys, load, repo

pytestmark = pytest.mark.unit

SHAPES = FIXTURES / "shapes"


def _with(module: str) -> dict[str, bytes]:
    files = repo("{ outputs = _: { }; }\n")
    files["modules/db.nix"] = module.encode()
    return files


def test_the_shape_case_drafts_the_database_and_lists_each_use(tmp_path: Path) -> None:
    d = draft(read_sources(SHAPES / "oci-let-bound-password"))
    cfg = load(tmp_path, d.toml)
    assert d.migrations == ("notes-db-password",) and d.other_findings == 0
    svc = cfg.services["notes-postgres"]
    assert (svc.runtime, svc.container, svc.database, svc.role) == ("docker", "notes-postgres", "notes", "notes")
    assert not {"container", "database", "role"} & checked_keys(d.toml)["services.notes-postgres"]
    assert 'role = "notes"  # from hosts/box/notes.nix:12 (= dbUser of line 3) (POSTGRES_USER)' in d.toml
    assert "# the hardcoded password: hosts/box/notes.nix:13" in d.toml
    for line, var in ((21, "DB_PASSWORD"), (22, "DATABASE_URL")):
        app = f"# the same password in an app: hosts/box/notes.nix:{line} "
        assert f"{app}virtualisation.oci-containers.containers.notes.environment.{var}" in d.toml
    let = "dbPassword, bound once in a let at hosts/box/notes.nix:4, holds the password"
    assert f"{let} and is read at lines 13, 21, 22:" in d.toml
    assert "notes-let-pw-8" not in d.toml


def test_a_use_patch_has_no_edit_for_is_listed_with_the_apps() -> None:
    """The command-line argument: patch refuses it (test_patch_shapes); the draft still names the
    database and lists that use where the user reviews it."""
    d = draft(read_sources(SHAPES / "oci-let-bound-password-other-use"))
    assert d.migrations == ("notes-db-password",) and d.other_findings == 0
    app = "# the same password in an app: hosts/box/notes.nix:19 "
    assert f"{app}virtualisation.oci-containers.containers.notes.cmd" in d.toml


def test_a_let_bound_password_only_an_apps_url_reads(tmp_path: Path) -> None:
    d = draft(
        _with("""{ ... }: let pw = "l3t-url-pw"; user = "app"; in {
  virtualisation.oci-containers.containers.app = {
    image = "example/app:1";
    environment.DATABASE_URL = "postgresql://${user}:${pw}@db.example.org:5432/appdb";
  };
}
""")
    )
    cfg = load(tmp_path, d.toml)
    svc = cfg.services["appdb-db"]
    assert (svc.runtime, svc.role, svc.database) == ("native", "app", "appdb")
    assert "the database is at db.example.org" in d.toml
    assert "runtime" in checked_keys(d.toml)["services.appdb-db"]
    assert "pw, bound once in a let at modules/db.nix:1, holds the password and is read at line 4:" in d.toml
    assert "l3t-url" not in d.toml


def test_a_let_bound_url_read_whole(tmp_path: Path) -> None:
    d = draft(
        _with("""{ ... }: let dbUrl = "postgresql://app:urlpw-77@db.example.org/appdb"; in {
  virtualisation.oci-containers.containers.app = { image = "example/app:1"; environment.DATABASE_URL = dbUrl; };
}
""")
    )
    cfg = load(tmp_path, d.toml)
    svc = cfg.services["appdb-db"]
    assert (svc.runtime, svc.role, svc.database) == ("native", "app", "appdb")
    assert "the database is at db.example.org" in d.toml
    assert "urlpw" not in d.toml


def test_a_let_bound_password_read_by_a_nixpkgs_option(tmp_path: Path) -> None:
    d = draft(
        _with("""{ ... }: let dbPass = "gitea-l3t-pw"; in {
  services.postgresql = { enable = true; ensureDatabases = [ "gitea" ]; ensureUsers = [ { name = "gitea"; } ]; };
  services.gitea.database.password = dbPass;
}
""")
    )
    cfg = load(tmp_path, d.toml)
    (svc,) = cfg.services.values()
    assert (svc.runtime, svc.role, svc.database) == ("native", "gitea", "gitea")
    assert "# the hardcoded password: modules/db.nix:3" in d.toml
    assert "gitea-l3t" not in d.toml


def test_a_container_name_only_let_literals_fill_is_read(tmp_path: Path) -> None:
    """``containers."${svc}-db"`` with ``svc = "forge"`` in a let: the container is forge-db, no guess
    (a name computed from anything else stays CONTAINER and a # check:, test_init)."""
    d = draft(
        _with("""{ ... }: let svc = "forge"; in {
  virtualisation.oci-containers.backend = "docker";
  virtualisation.oci-containers.containers."${svc}-db" = {
    image = "postgres:16";
    environment = { POSTGRES_USER = svc; POSTGRES_PASSWORD = "f0rge-pw"; };
  };
}
""")
    )
    cfg = load(tmp_path, d.toml)
    svc = cfg.services["forge-db"]
    assert (svc.container, svc.role, svc.database) == ("forge-db", "forge", "forge")
    assert not {"container", "role", "database"} & checked_keys(d.toml).get("services.forge-db", set())
    assert '(virtualisation.oci-containers.containers."${svc}-db" (= svc of line 1))' in d.toml


def test_a_let_bound_secret_no_database_reads_is_not_drafted() -> None:
    d = draft(
        _with("""{ ... }: let apiPassword = "n0t-a-db-pw-55"; in {
  services.app.settings.admin_password = apiPassword;
}
""")
    )
    assert d.empty and d.toml == "" and d.other_findings == 1


def test_an_environment_bound_in_a_let_and_merged_into_containers(tmp_path: Path) -> None:
    """``base.environment`` in a let (``// base`` in each container): the variables beside the password
    name the role and the database; host.containers.internal is the machine that runs the containers,
    here with services.postgresql."""
    d = draft(
        _with("""{ config, ... }: let
  dbpassword = "sh4red-pw";
  base = {
    environment = {
      DB_HOSTNAME = "host.containers.internal";
      DB_USERNAME = "photos";
      DB_PASSWORD = dbpassword;
      DB_DATABASE_NAME = "photos";
    };
  };
in {
  services.postgresql = { enable = true; ensureDatabases = [ "photos" ]; };
  virtualisation.oci-containers.containers.photos-server = base // { image = "example/photos:1"; };
  virtualisation.oci-containers.containers.photos-ml = base // { image = "example/photos-ml:1"; };
}
""")
    )
    cfg = load(tmp_path, d.toml)
    svc = cfg.services["photos-db"]
    assert (svc.runtime, svc.role, svc.database, svc.container) == ("native", "photos", "photos", None)
    assert "runtime" in checked_keys(d.toml)["services.photos-db"]  # is it services.postgresql on this host?
    assert "a local server; services.postgresql at modules/db.nix:12" in d.toml
    assert "sh4red" not in d.toml
