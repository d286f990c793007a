"""`nixmig patch` without --migration patches every migration of nixmig.toml (init drafts one per database)."""

from __future__ import annotations

import shutil
from pathlib import Path

from nixmig import config
from tests.helpers import run_cli

SHAPES = Path(__file__).resolve().parents[1] / "fixtures" / "shapes"
ADMIN = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIWGQejmv1vqcqb2xrIuLEd6YFeWLHzeobl7s3js0eT3"
BOX = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG8IX+GbwvuhhTIXuwLJpZ4x7RNzQwb4yKIOiP1pQGSi"

MODULE = """{ config, ... }:
{
  virtualisation.oci-containers.containers = {
    photos-db = {
      image = "postgres:16";
      environment = { POSTGRES_USER = "photos"; POSTGRES_PASSWORD = "photos-pw-1"; };
    };
    photos = {
      image = "example/photos:2";
      environment.DATABASE_URL = "postgres://photos:photos-pw-1@photos-db/photos";
    };
    rss-db = {
      image = "postgres:16";
      environment = { POSTGRES_USER = "rss"; POSTGRES_PASSWORD = "rss-pw-2"; };
    };
    cloud-db = {
      image = "mariadb:11";
      environment = { MYSQL_USER = "cloud"; MYSQL_PASSWORD = "cloud-pw-3"; MYSQL_ROOT_PASSWORD = "cloud-root-4"; };
    };
  };
}
"""

TOML = f"""[operator]
recipients = ["{ADMIN}"]

[hosts.box]
address = "box.example.org"
age_recipient = "{BOX}"

[services.photos-db]
host = "box"
container = "photos-db"
database = "photos"
role = "photos"

[services.rss-db]
host = "box"
container = "rss-db"
database = "rss"
role = "rss"

[migrations.photos-db-password]
service = "photos-db"
secret = "photos-db-password"

[migrations.rss-db-password]
service = "rss-db"
secret = "rss-db-password"
"""


CLOUD = """    cloud-db = {
      image = "mariadb:11";
      environment = { MYSQL_USER = "cloud"; MYSQL_PASSWORD = "cloud-pw-3"; MYSQL_ROOT_PASSWORD = "cloud-root-4"; };
    };
"""


def _repo(tmp_path: Path, *, cloud: bool = False) -> Path:
    repo = tmp_path / "r"
    (repo / "hosts" / "box").mkdir(parents=True)
    shutil.copytree(SHAPES / "oci-mariadb" / "secrets", repo / "secrets")
    (repo / "hosts" / "box" / "apps.nix").write_text(MODULE if cloud else MODULE.replace(CLOUD, ""))
    (repo / "nixmig.toml").write_text(TOML)
    return repo


def test_every_migration_is_patched_in_turn_and_checked_together(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    explained = run_cli("patch", "--explain", cwd=repo)
    err = explained.stderr.decode()
    assert "== migration photos-db-password" in err and "== migration rss-db-password" in err
    wrote = run_cli("patch", "--write", cwd=repo)
    assert wrote.returncode == 0, wrote.stdout.decode() + wrote.stderr.decode()
    text = (repo / "hosts" / "box" / "apps.nix").read_text()
    assert "photos-pw-1" not in text and "rss-pw-2" not in text
    assert run_cli("patch", "--check", "-m", "photos-db-password", cwd=repo).returncode == 0
    assert run_cli("patch", "--check", cwd=repo).returncode == 0


def test_another_database_s_root_password_in_the_same_file_is_no_companion(tmp_path: Path) -> None:
    repo = _repo(tmp_path, cloud=True)
    run_cli("patch", "--write", "-m", "photos-db-password", cwd=repo)
    cfg = config.load(repo / "nixmig.toml")
    assert dict(cfg.migrations["photos-db-password"].also) == {}  # not cloud-db's MYSQL_ROOT_PASSWORD


def test_another_migration_s_container_is_said_as_such(tmp_path: Path) -> None:
    """Another stack's database in the same file is another migration's: it no longer blocks this one
    (realcfg29/03, where three stacks' migrations blocked each other); its note names that migration."""
    repo = _repo(tmp_path)
    done = run_cli("patch", "--explain", "-m", "photos-db-password", cwd=repo)
    assert done.returncode == 0, done.stderr.decode()
    err = done.stderr.decode()
    assert not [ln for ln in done.stdout.decode().splitlines() if ln.startswith("by hand:")]
    line = next(ln for ln in err.splitlines() if ln.startswith("note: ") and "rss-db.environment" in ln)
    assert "holds another hardcoded password (not this migration's value)" in line
    assert "migration rss-db-password of nixmig.toml moves it (`nixmig patch -m rss-db-password`" in line


def test_a_value_one_of_them_keeps_is_taken_before_any_writes(tmp_path: Path) -> None:
    repo = _repo(tmp_path, cloud=True)
    toml = repo / "nixmig.toml"
    toml.write_text(
        toml.read_text()
        + '\n[services.cloud-db]\nhost = "box"\ncontainer = "cloud-db"\nrole = "cloud"\n\n'
        + '[migrations.cloud-db-password]\nservice = "cloud-db"\nsecret = "cloud-db-password"\nstrategy = "move"\n'
    )
    before = (repo / "hosts" / "box" / "apps.nix").read_bytes()
    refused = run_cli("patch", "--write", cwd=repo)
    assert refused.returncode != 0
    err = refused.stderr.decode()
    assert "nothing written" in err and "nixmig secret new cloud-db-password --from hosts/box/apps.nix:" in err
    # the first migrations did not write either: a run that stops half-way is none
    assert (repo / "hosts" / "box" / "apps.nix").read_bytes() == before
    assert "wrote" not in err


def test_something_left_after_every_migration_writes_nothing_at_all(tmp_path: Path) -> None:
    """Several migrations' --write is all or nothing too: photos' and rss' edits are planned in a copy of
    the tree, and a literal still there once both are in (an rss URL in a unit's ExecStart, no shape
    nixmig edits) writes nothing, neither migration's nor nixmig.toml."""
    repo = _repo(tmp_path)
    module = repo / "hosts" / "box" / "apps.nix"
    module.write_text(
        module.read_text().replace(
            "  };\n}\n",
            '  };\n  systemd.services.rss-ping.serviceConfig.ExecStart = "/bin/ping-db rss:rss-pw-2@rss-db";\n}\n',
        )
    )
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    wrote = run_cli("patch", "--write", cwd=repo)
    err = wrote.stderr.decode()
    assert wrote.returncode == 1, err
    assert "== migration photos-db-password: would write" in err and "nothing written" in err
    assert "systemd.services.rss-ping.serviceConfig.ExecStart" in wrote.stdout.decode()
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    # and without that line the same run writes both
    module.write_bytes(
        before[module]
        .replace(b"  systemd.services.rss-ping.serviceConfig.ExecStart", b"  # ")
        .replace(b"rss:rss-pw-2@rss-db", b"")
    )
    assert run_cli("patch", "--write", cwd=repo).returncode == 0
    assert "rss-pw-2" not in module.read_text() and "photos-pw-1" not in module.read_text()
