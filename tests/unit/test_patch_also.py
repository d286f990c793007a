"""Companion credentials (nixmig.toml's ``also``): a second credential of the containers a migration
patches (MySQL's root password beside the user's, an app's admin password holding the database's
value) moved onto its own agenix secret with its value kept. The shapes that patch are fixtures in
tests/fixtures/shapes (*-also*); here: the config's checks, the refusals (never a silent skip), and
the env-file renderer run for real."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from nixmig import config
from nixmig.errors import ConfigError
from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.quote import nix_indented
from nixmig.nixsrc.render import EnvFile, EnvLine, render_script, script_in_nix
from nixmig.remote.base import Transport
from tests.helpers import FIXTURES, copy_example, run_cli
from tests.unit.test_foundation import EXAMPLE_TOML, load_text

SHAPES = FIXTURES / "shapes"
DEPLOY = 'deploy = "deploy --skip-checks .#newton"\n'


def _with_also(value: str) -> str:
    return EXAMPLE_TOML.replace(DEPLOY, f"{DEPLOY}also = {value}\n")


# ---------------------------------------------------------------- nixmig.toml


def test_also_names_another_role_of_an_initial_script(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, _with_also('{ "role:blocky" = "blocky-db-password" }'))
    assert cfg.migrations["twenty-db-password"].also == {"role:blocky": "blocky-db-password"}
    assert config.also_name("role:blocky") == "blocky-db-password"


def test_also_is_read_as_var_to_secret(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, _with_also('{ MYSQL_ROOT_PASSWORD = "db-root", APP_SECRET = "app/secret" }'))
    mig = cfg.migrations["twenty-db-password"]
    assert mig.also == {"MYSQL_ROOT_PASSWORD": "db-root", "APP_SECRET": "app/secret"}
    spec = pt.spec_for(cfg, "twenty-db-password")
    assert spec.also == (("MYSQL_ROOT_PASSWORD", "db-root"), ("APP_SECRET", "app/secret"))
    assert spec.migration == "twenty-db-password"


@pytest.mark.parametrize(
    ("value", "message", "hint"),
    [
        ('{ "A-B" = "x" }', "also: 'A-B' is not an environment variable name", "letters, digits and _"),
        ('{ "1A" = "x" }', "also: '1A' is not an environment variable name", "letters, digits and _"),
        ('{ "role:a b" = "x" }', "also: 'role:a b' is not an environment variable name", '"role:blocky"'),
        ('{ A = "../x" }', "also.A: '../x' is not an agenix secret name", "nixmig secret new"),
        ('{ A = "" }', "also.A: '' is not an agenix secret name", "nixmig secret new"),
        (
            '{ NEXTAUTH_SECRET = "twenty-db-password" }',
            "also.NEXTAUTH_SECRET: 'twenty-db-password' is this migration's own secret",
            "its own (e.g. nextauth-secret)",
        ),
        ('{ A = "s", B = "s" }', "also.B: 's' is also the secret of A", "one secret per variable"),
        ("{ A = 1 }", "also.A: expected a string, got 1", None),
        ('"A=x"', "also: expected a table, got 'A=x'", None),
    ],
)
def test_a_bad_also_is_one_line_naming_the_key(tmp_path: Path, value: str, message: str, hint: str | None) -> None:
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, _with_also(value))
    line = str(exc.value)
    assert f"migrations.twenty-db-password.{message}" in line, line
    assert "nixmig.toml" in (exc.value.where or "")
    assert "\n" not in line
    if hint is not None:
        assert hint in (exc.value.hint or ""), exc.value.hint


def test_also_name_is_what_a_refusal_suggests() -> None:
    assert config.also_name("MYSQL_ROOT_PASSWORD") == "mysql-root-password"
    assert config.also_name("__X__Y") == "x-y"
    # a key under a service's secrets (gitlab's db_key_base), never to be read as the database's password
    assert config.also_name("services.gitlab.secrets.dbFile") == "gitlab-db-secret"
    assert config.also_name("services.gitlab.secrets.secretFile") == "gitlab-secret"


# ---------------------------------------------------------------- patch: never silently ignored


def _plan(
    tmp_path: Path, case: str, also: str, replace: tuple[str, str] | None = None
) -> tuple[pt.Plan, dict[str, bytes]]:
    """Plan ``case`` of the shape corpus with its ``also`` line replaced (and one text replaced in its .nix)."""
    root = SHAPES / case
    text = "\n".join(ln for ln in (root / "nixmig.toml").read_text().splitlines() if not ln.startswith("also"))
    cfg = load_text(tmp_path, text + f"\nalso = {also}\n")
    sources = pt.read_sources(root)
    if replace is not None:
        assert any(replace[0].encode() in v for v in sources.values()), replace[0]
        sources = {k: v.replace(replace[0].encode(), replace[1].encode()) for k, v in sources.items()}
    (migration,) = cfg.migrations
    return pt.plan(sources, pt.spec_for(cfg, migration)), sources


def test_a_var_set_nowhere_is_said_with_the_key_to_fix(tmp_path: Path) -> None:
    plan, _ = _plan(tmp_path, "oci-mysql-user-and-root-also", '{ MYSQL_ROOT_PASSWRD = "shop-db-root-password" }')
    whats = [m.what for m in plan.manual]
    assert any(
        "also names MYSQL_ROOT_PASSWRD (secret 'shop-db-root-password'), but no container this migration patches "
        "sets it (shop, shop-db): remove MYSQL_ROOT_PASSWRD from also in [migrations.shop-db-password]" in w
        for w in whats
    ), whats
    assert not plan.clean


def test_a_var_in_a_container_the_migration_does_not_patch_is_said_at_its_line(tmp_path: Path) -> None:
    plan, _ = _plan(
        tmp_path,
        "oci-mysql-user-and-root-also",
        '{ MYSQL_ROOT_PASSWORD = "shop-db-root-password", CACHE_TOKEN = "shop-cache-token" }',
        (
            "  virtualisation.oci-containers.containers.shop = {",
            '  virtualisation.oci-containers.containers.cache = {\n    image = "redis:7";\n'
            '    environment.CACHE_TOKEN = "tok-9";\n  };\n  virtualisation.oci-containers.containers.shop = {',
        ),
    )
    hits = [m for m in plan.manual if "CACHE_TOKEN is named in also" in m.what]
    assert len(hits) == 1 and hits[0].file == "hosts/box/shop.nix" and hits[0].line == 15, plan.manual
    assert "the cache container is not one this migration patches" in hits[0].what


def test_a_value_an_env_file_cannot_hold_is_refused_not_rendered(tmp_path: Path) -> None:
    plan, _ = _plan(
        tmp_path,
        "oci-app-admin-password-same-value-also",
        '{ PHOTOS_ADMIN_PASSWORD = "photos-admin-password" }',
        ('PHOTOS_ADMIN_PASSWORD = "photos-pw-42"', 'PHOTOS_ADMIN_PASSWORD = "a b$c"'),
    )
    hits = [m for m in plan.manual if "PHOTOS_ADMIN_PASSWORD (also: 'photos-admin-password')" in m.what]
    assert hits and "cannot hold unquoted" in hits[0].what and hits[0].line == 20, plan.manual
    assert "a b$c" not in "".join(m.what + m.snippet for m in plan.manual)


def test_a_var_outside_a_container_environment_is_said(tmp_path: Path) -> None:
    plan, _ = _plan(
        tmp_path,
        "oci-mysql-user-and-root-also",
        '{ MYSQL_ROOT_PASSWORD = "shop-db-root-password", ADMIN_TOKEN = "shop-admin-token" }',
        (
            "{ config, ... }:\n{\n",
            '{ config, ... }:\n{\n  systemd.services.shop-admin.environment.ADMIN_TOKEN = "t-1";\n',
        ),
    )
    hits = [m for m in plan.manual if "ADMIN_TOKEN" in m.what]
    assert len(hits) == 1 and hits[0].line == 3, plan.manual
    assert "only out of a container's environment" in hits[0].what


def test_a_db_container_var_without_a_file_twin_gets_an_env_file_of_its_own(tmp_path: Path) -> None:
    """MYSQL_ROOT_HOST has no _FILE twin and nothing rendered an env file for the database container
    (its password is read from a file): the container's unit renders one for the companion alone, and
    the container reads it (before: a by-hand item)."""
    plan, sources = _plan(
        tmp_path,
        "oci-mysql-user-and-root-also",
        '{ MYSQL_ROOT_PASSWORD = "shop-db-root-password", MYSQL_ROOT_HOST = "shop-root-host" }',
        ('MYSQL_USER = "shop";', 'MYSQL_USER = "shop";\n      MYSQL_ROOT_HOST = "h-1";'),
    )
    assert plan.manual == (), plan.manual
    after = {**sources, **plan.results(sources)}
    shop = after["hosts/box/shop.nix"]
    assert b"h-1" not in shop and b'environmentFiles = [ "/run/shop-db/shop-db-password.env" ];' in shop
    assert b"config.age.secrets.shop-root-host.path" in shop and b"MYSQL_ROOT_HOST" in shop


def test_without_also_the_main_plan_is_unchanged() -> None:
    """A companion named in also is left out of the migration's own variables (never its password)."""
    spec = pt.Spec(secret="s", role="postgres", strategy="move", also=(("MYSQL_ROOT_PASSWORD", "r"),))
    assert "MYSQL_ROOT_PASSWORD" not in spec.db_vars and "MYSQL_PASSWORD" in spec.db_vars
    assert "MYSQL_ROOT_PASSWORD" in pt.Spec(secret="s", role="postgres", strategy="move").db_vars


# ---------------------------------------------------------------- the renderer, run


def _render(tmp_path: Path, admin: bytes | None) -> tuple[subprocess.CompletedProcess[bytes], Path]:
    pw = tmp_path / "pw"
    pw.write_bytes(b"db-pw_1")
    also = tmp_path / "admin"
    if admin is not None:
        also.write_bytes(admin)
    out = tmp_path / "run" / "app.env"
    out.parent.mkdir()
    lines = (EnvLine("DB_PASSWORD", "", "", raw=True), EnvLine("ADMIN_PASSWORD", "", "", secret="app-admin"))
    script = render_script(
        "app-db", shlex.quote(str(pw)), [EnvFile(str(out), lines)], [("app-admin", shlex.quote(str(also)))]
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, check=False)
    return proc, out


@pytest.mark.parametrize("value", [b"Zx9+/=:@,%-._~", b"xxxxxx", b"kq7z\n"])
def test_the_companion_line_is_its_own_secret_as_it_is(tmp_path: Path, value: bytes) -> None:
    """As it is, less the file's final line breaks (`agenix -e` leaves one; every reader drops it)."""
    proc, out = _render(tmp_path, value)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == b"DB_PASSWORD=db-pw_1\nADMIN_PASSWORD=" + value.rstrip(b"\n") + b"\n"
    assert oct(out.stat().st_mode & 0o777) == "0o400"


@pytest.mark.parametrize("value", [b"has space", b"q'uote", b"a$b", b"kq\n7z", b"#c", None, b""])
def test_a_companion_the_env_file_cannot_hold_stops_the_unit(tmp_path: Path, value: bytes | None) -> None:
    proc, out = _render(tmp_path, value)
    assert proc.returncode == 1 and not out.exists()
    assert (b"missing or empty" if not value else b"cannot hold unquoted") in proc.stderr
    if value:
        assert value.strip() not in proc.stderr


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-instantiate not installed")
def test_the_script_in_nix_is_the_script(tmp_path: Path) -> None:
    """The Nix indented string (``read -d ''`` inside it) evaluates to the script itself."""
    files = [EnvFile("/run/app/x.env", (EnvLine("DB", "", "", raw=True), EnvLine("ADMIN", "", "", secret="adm")))]
    script = render_script("s", "/p/s", files, [("adm", "/p/adm")])
    in_nix = script_in_nix("s", "/p/s", files, also=[("adm", "/p/adm")])
    assert in_nix != nix_indented([script]) or "''" in script
    got = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", in_nix],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    import json

    assert json.loads(got) == script


# ---------------------------------------------------------------- plan and preflight


def _move_repo(tmp_path: Path, also: str) -> tuple[Path, config.Config]:
    from tests.unit.test_move import write_cfg

    repo = copy_example(tmp_path)
    path = write_cfg(repo, service='container = "shop-mariadb"', migration=f"also = {also}")
    new = run_cli("secret", "new", "shop-db-password", "--repo", str(repo), "--like", "twenty-app-secret")
    assert new.returncode == 0, new.stderr
    return repo, config.load(path)


def test_preflight_refuses_a_missing_companion_secret_before_anything(tmp_path: Path) -> None:
    from nixmig import engine
    from nixmig.phases.move import MovePreflight
    from nixmig.phases.preflight import PreflightError

    repo, cfg = _move_repo(tmp_path, '{ MYSQL_ROOT_PASSWORD = "shop-root-password" }')
    ctx = engine.make_context(cfg, "shop-db-password", connect=_no_connect)
    with pytest.raises(PreflightError) as exc:
        MovePreflight().do(ctx)
    line = str(exc.value)
    assert "secret shop-root-password.age (also: MYSQL_ROOT_PASSWORD) is not in secrets.nix" in line, line
    assert "nixmig secret new shop-root-password --from FILE:LINE" in line and "\n" not in line
    made = run_cli("secret", "new", "shop-root-password", "--repo", str(repo), "--like", "twenty-app-secret")
    assert made.returncode == 0, made.stderr
    from nixmig.phases.preflight import Preflight

    Preflight()._secret_listed(ctx)  # both listed, for the host's key: no error


def test_the_plan_says_the_companions_were_public(tmp_path: Path) -> None:
    from nixmig import engine

    _, cfg = _move_repo(tmp_path, '{ MYSQL_ROOT_PASSWORD = "shop-root-password" }')
    steps = engine.plan(engine.make_context(cfg, "shop-db-password", connect=_no_connect))
    texts = [a.text for s in steps for a in s.actions]
    assert "secrets.nix lists shop-root-password.age for this host's key (also: MYSQL_ROOT_PASSWORD)" in texts
    notes = [t for t in texts if "also moves MYSQL_ROOT_PASSWORD (shop-root-password)" in t]
    assert len(notes) == 1 and "public in the repository's history" in notes[0] and "rotate" in notes[0]


def _no_connect() -> Transport:
    raise AssertionError("must not connect")


# ---------------------------------------------------------------- the refusals name the fix


def test_another_variable_with_the_database_value_is_told_how_to_move(tmp_path: Path) -> None:
    """PHOTOS_API_TOKEN (no pass/secret word: no "another credential" line from the builder) holding the
    database's value: the verdict names the also line for it."""
    plan, _ = _plan(
        tmp_path,
        "oci-app-admin-password-same-value-also",
        '{ OTHER = "photos-other" }',
        ("PHOTOS_ADMIN_PASSWORD", "PHOTOS_API_TOKEN"),
    )
    hits = [m for m in plan.manual if m.what.startswith("virtualisation.oci-containers.containers.photos-server")]
    assert len(hits) == 1 and hits[0].line == 20, plan.manual
    assert "PHOTOS_API_TOKEN is no database variable nixmig knows" in hits[0].what
    assert (
        "run `nixmig secret new photos-api-token --from hosts/box/photos.nix:20` (keeps its value), then add "
        'also = { PHOTOS_API_TOKEN = "photos-api-token" } to [migrations.photos-db-password]' in hits[0].what
    )


def test_a_mysql_migration_that_found_nothing_is_not_told_also() -> None:
    """strategy rotate on MariaDB: the migration's own password is the MySQL one: the line says
    strategy move, not also (which would move a second credential of a migration that has none)."""
    root = SHAPES / "oci-mariadb"
    cfg = config.load(root / "nixmig.toml")
    (migration,) = cfg.migrations
    plan = pt.plan(pt.read_sources(root), pt.spec_for(cfg, migration))
    whats = [m.what for m in plan.manual]
    assert any('strategy = "move"' in w for w in whats), whats
    assert not any("also =" in w for w in whats), whats


def test_patch_notes_a_missing_companion_age_file(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(SHAPES / "oci-mysql-user-and-root-also", repo)
    r = run_cli("patch", "--repo", str(repo))
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert (
        "secrets/shop-db-root-password.age (also: MYSQL_ROOT_PASSWORD) does not exist yet: create it with its "
        "current value, `nixmig secret new shop-db-root-password --from hosts/box/shop.nix:9`" in err
    ), err
    assert (
        "secrets/shop-db-password.age does not exist yet: create it with `nixmig secret new shop-db-password "
        "--from hosts/box/shop.nix:8` (strategy move keeps the value" in err
    ), err
    assert b"shop-root-52" not in r.stdout + r.stderr


def test_a_second_run_over_several_env_file_companions_changes_nothing(tmp_path: Path) -> None:
    """Two companions in one renderer (also_1, also_2): the patched tree plans no edit and no by-hand item."""
    both = '{ PHOTOS_ADMIN_PASSWORD = "photos-admin-password", PHOTOS_SESSION_SECRET = "photos-session-secret" }'
    plan, sources = _plan(
        tmp_path,
        "oci-app-admin-password-same-value-also",
        both,
        (
            'PHOTOS_ADMIN_PASSWORD = "photos-pw-42";',
            'PHOTOS_ADMIN_PASSWORD = "photos-pw-42";\n        PHOTOS_SESSION_SECRET = "s-3";',
        ),
    )
    assert plan.manual == (), plan.manual
    after = {**sources, **plan.results(sources)}
    assert b'"$also_2"' in after["hosts/box/photos.nix"]
    cfg_text = (SHAPES / "oci-app-admin-password-same-value-also" / "nixmig.toml").read_text()
    cfg = load_text(
        tmp_path,
        cfg_text.replace(
            'also = { PHOTOS_ADMIN_PASSWORD = "photos-admin-password" }',
            f"also = {both}",
        ),
    )
    again = pt.plan(after, pt.spec_for(cfg, "photos-db-password"))
    assert again.edits == () and again.manual == (), again.manual


def test_also_added_after_a_refused_write_converges(tmp_path: Path) -> None:
    """The user's path: `patch --write` without also (root's literal refused, the rest written), then
    also added: the second write moves root's, its age.secrets entry goes beside the first (not inside
    it), and a third plan changes nothing."""
    root = SHAPES / "oci-mysql-user-and-root-no-also"
    sources = pt.read_sources(root)
    text = (root / "nixmig.toml").read_text()
    first = pt.plan(sources, pt.spec_for(load_text(tmp_path, text), "shop-db-password"))
    assert first.manual and first.edits
    once = {**sources, **first.results(sources)}
    cfg = load_text(tmp_path, text + 'also = { MYSQL_ROOT_PASSWORD = "mysql-root-password" }\n')
    second = pt.plan(once, pt.spec_for(cfg, "shop-db-password"))
    assert second.manual == (), second.manual
    twice = {**once, **second.results(once)}
    shop = twice["hosts/box/shop.nix"].decode()
    assert "shop-root-52" not in shop and 'MYSQL_ROOT_PASSWORD_FILE = "/run/secrets/mysql-root-password";' in shop
    assert "\n  age.secrets.mysql-root-password = {" in shop  # at the module's top level
    assert shop.count("\n  age.secrets.") == 2 and "\n    age.secrets." not in shop  # two entries, none nested
    if shutil.which("nix-instantiate"):
        from nixmig.nixsrc import validate

        validate.check_all(second.results(once), use_nix=True)
    third = pt.plan(twice, pt.spec_for(cfg, "shop-db-password"))
    assert third.edits == () and third.manual == (), third.manual
