"""A native NixOS option as a companion credential (nixsrc/shapes/option_companion.py): nextcloud's
adminpassFile naming a store or /etc file, photoprism's admin password in its settings. `nixmig patch`
moves each onto its own agenix secret (value kept), keyed in nixmig.toml's ``also`` by the option that
takes the file. The golden diffs are fixtures in tests/fixtures/shapes (native-option-companions-
writetext-photoprism, native-etc-dbpass-and-adminpass-placeholder; the refusal that stays:
native-option-companion-no-file-variant); here: the key in nixmig.toml, the engine's refusal, a key
that names nothing, and the user's path through the real CLI."""

from __future__ import annotations

import dataclasses
import shutil
import tomllib
from pathlib import Path

import pytest

from nixmig import config
from nixmig.errors import ConfigError
from nixmig.nixsrc import patch as pt
from nixmig.tomledit import add_also
from tests.helpers import FIXTURES, run_cli, snapshot

SHAPES = FIXTURES / "shapes"
CASE = "native-option-companions-writetext-photoprism"
ADMIN = "services.nextcloud.config.adminpassFile"
PHOTOS = "services.photoprism.passwordFile"
BASE = '[hosts.a]\naddress = "a"\n\n[migrations.m]\nservice = "db"\nsecret = "m-pw"\n'


def _spec(root: Path) -> tuple[dict[str, bytes], pt.Spec]:
    cfg = config.load(root / "nixmig.toml")
    (migration,) = cfg.migrations
    return pt.read_sources(root), pt.spec_for(cfg, migration)


@pytest.mark.parametrize(
    "text",
    [
        BASE,
        BASE + 'also = { B = "b" }\n',
        BASE + '\n[migrations.m.also]\nB = "b"\n',
    ],
)
def test_an_option_key_is_written_quoted_and_reads_back_as_one_key(text: str) -> None:
    """Unquoted, the dots would make nested tables (also.services.nextcloud...): add_also refuses that."""
    new = add_also(text, "m", [(ADMIN, "nextcloud-adminpass")])
    also = tomllib.loads(new)["migrations"]["m"]["also"]
    assert also[ADMIN] == "nextcloud-adminpass" and f'"{ADMIN}" = "nextcloud-adminpass"' in new


def test_config_takes_an_option_key_and_names_its_secret_by_service_and_option(tmp_path: Path) -> None:
    (tmp_path / "nixmig.toml").write_text(
        '[hosts.a]\naddress = "a"\n[services.db]\nhost = "a"\nruntime = "native"\nrole = "nextcloud"\n'
        '[migrations.m]\nservice = "db"\nsecret = "m-pw"\n'
        f'also = {{ "{ADMIN}" = "nextcloud-adminpass", "{PHOTOS}" = "photos" }}\n'
    )
    cfg = config.load(tmp_path / "nixmig.toml")
    assert cfg.migrations["m"].also == {ADMIN: "nextcloud-adminpass", PHOTOS: "photos"}
    assert config.also_name(ADMIN) == "nextcloud-adminpass"
    assert config.also_name(PHOTOS) == "photoprism-password"
    assert config.also_name("MYSQL_ROOT_PASSWORD") == "mysql-root-password"  # unchanged
    (tmp_path / "nixmig.toml").write_text(
        (tmp_path / "nixmig.toml").read_text().replace(f'"{PHOTOS}"', '"services..x"')
    )
    with pytest.raises(ConfigError, match="is not an environment variable name"):
        config.load(tmp_path / "nixmig.toml")


def test_the_engine_still_refuses_an_option_companion_nixmig_toml_does_not_name() -> None:
    """apply's own patch (no find_companions) cannot make the .age: each stays by hand, its key said."""
    sources, spec = _spec(SHAPES / CASE)
    plan = pt.plan(sources, spec)
    assert plan.auto_also == ()
    assert {m.companion for m in plan.manual} == {ADMIN, PHOTOS}
    assert {m.line for m in plan.manual} == {10, 31}


def test_also_written_by_hand_gets_the_same_edits_as_found() -> None:
    sources, spec = _spec(SHAPES / CASE)
    found = pt.plan(sources, spec, find_companions=True)
    by_hand = pt.plan(sources, dataclasses.replace(spec, also=found.auto_also))
    assert found.edits == by_hand.edits and by_hand.manual == ()
    assert dict(by_hand.kept) == {
        "nextcloud-adminpass": ("hosts/lab/apps.nix:31",),
        "photoprism-password": ("hosts/lab/apps.nix:10",),
    }


def test_an_option_key_that_names_nothing_is_said() -> None:
    sources, spec = _spec(SHAPES / CASE)
    plan = pt.plan(sources, dataclasses.replace(spec, also=(("services.nextcloud.config.secretFile", "x"),)))
    assert any(
        "also names the option services.nextcloud.config.secretFile (secret 'x')" in m.what
        and "remove it from also" in m.what
        for m in plan.manual
    )


def test_a_literal_beside_its_file_option_set_already_is_no_companion() -> None:
    """photoprism's passwordFile set and its settings literal too: which one it reads is not patch's guess."""
    sources, spec = _spec(SHAPES / CASE)
    nix = sources["hosts/lab/apps.nix"].replace(
        b"    port = 2342;\n", b'    port = 2342;\n    passwordFile = "/var/lib/secrets/photoprism";\n'
    )
    plan = pt.plan({**sources, "hosts/lab/apps.nix": nix}, spec, find_companions=True)
    assert dict(plan.auto_also) == {ADMIN: "nextcloud-adminpass"}
    (m,) = plan.manual
    assert m.what.startswith("services.photoprism.settings.PHOTOPRISM_ADMIN_PASSWORD still holds this migration's")


def test_patch_write_moves_option_companions_and_records_them(tmp_path: Path) -> None:
    """The user's path: refused until each kept value has its .age (nothing written, the commands named);
    then the Nix file and nixmig.toml's also are written; a second write and --check find it patched."""
    repo = tmp_path / "repo"
    shutil.copytree(SHAPES / CASE, repo)
    before = snapshot(repo)
    r = run_cli("patch", "--repo", str(repo), "--write")
    assert r.returncode == 1 and snapshot(repo) == before
    err = r.stderr.decode()
    for name, line in (("nextcloud-db-password", 29), ("nextcloud-adminpass", 31), ("photoprism-password", 10)):
        assert name == "nextcloud-db-password" or f"nixmig secret new {name} --from hosts/lab/apps.nix:{line}" in err
        args = ("--from", f"hosts/lab/apps.nix:{line}") if name != "nextcloud-db-password" else ()
        made = run_cli("secret", "new", name, *args, "--repo", str(repo))
        assert made.returncode == 0, made.stderr
    r = run_cli("patch", "--repo", str(repo), "--write")
    assert r.returncode == 0, r.stderr
    assert f"{ADMIN} reads a credential of its own from the Nix store" in r.stderr.decode()
    cfg = config.load(repo / "nixmig.toml")
    assert cfg.migrations["nextcloud-db-password"].also == {
        PHOTOS: "photoprism-password",
        ADMIN: "nextcloud-adminpass",
    }
    nix = (repo / "hosts/lab/apps.nix").read_bytes()
    assert b"lab-pw-31" not in nix
    assert b"adminpassFile = config.age.secrets.nextcloud-adminpass.path;" in nix
    assert b"passwordFile = config.age.secrets.photoprism-password.path;" in nix
    once = snapshot(repo)
    again = run_cli("patch", "--repo", str(repo), "--write")
    assert again.returncode == 0 and snapshot(repo) == once, again.stderr
    assert run_cli("patch", "--repo", str(repo), "--check").returncode == 0
    for out in (r, again):
        assert b"lab-pw-31" not in out.stdout + out.stderr


def test_a_kept_value_scan_reads_as_a_placeholder_is_taken_by_its_column(tmp_path: Path) -> None:
    """nextcloud's admin /etc file holds "CHANGE_ME_PASSWORD" (the database's value too): scan sees no
    secret there, so `secret new --from FILE:LINE` cannot take it. patch names FILE:LINE:COL of the
    string instead, which --from takes as pointed at; without the column it is still refused."""
    from nixmig.secrets import store
    from nixmig.secrets.age import load_identities
    from tests.helpers import private_key

    repo = tmp_path / "repo"
    shutil.copytree(SHAPES / "native-etc-dbpass-and-adminpass-placeholder", repo)
    r = run_cli("patch", "--repo", str(repo), "--write")
    assert r.returncode == 1
    assert "nixmig secret new nextcloud-adminpass --from hosts/box/cloud.nix:5:50;" in r.stderr.decode()
    bare = run_cli("secret", "new", "nextcloud-adminpass", "--from", "hosts/box/cloud.nix:5", "--repo", str(repo))
    assert bare.returncode == 2 and b"no hardcoded secret there" in bare.stderr
    for args in (("nextcloud-adminpass", "--from", "hosts/box/cloud.nix:5:50"), ("nextcloud-db-password",)):
        made = run_cli("secret", "new", *args, "--repo", str(repo))
        assert made.returncode == 0, made.stderr
        assert b"CHANGE_ME_PASSWORD" not in made.stdout + made.stderr
    ident = load_identities([private_key(tmp_path, "admin_ed25519")])
    assert store.show(repo / "secrets/secrets.nix", "nextcloud-adminpass", ident).reveal() == b"CHANGE_ME_PASSWORD"
    r = run_cli("patch", "--repo", str(repo), "--write")
    assert r.returncode == 0, r.stderr
    assert b"CHANGE_ME_PASSWORD" not in (repo / "hosts/box/cloud.nix").read_bytes()
    assert run_cli("patch", "--repo", str(repo), "--check").returncode == 0
