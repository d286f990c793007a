"""Containers that use the database with a password nixmig cannot see (nixsrc/clients.py)."""

from __future__ import annotations

from pathlib import Path

from nixmig.nixsrc.clients import silent_clients
from nixmig.nixsrc.model import model

SHAPES = Path(__file__).parent.parent / "fixtures" / "shapes"


def clients(text: str, db: str = "db", kind: str = "oci") -> list[str]:
    return [c.name for c in silent_clients({"m.nix": model("m.nix", text.encode())}, kind, db)]


def test_the_fixture_names_the_app_and_not_adminer() -> None:
    src = (SHAPES / "oci-app-image-default-password" / "hosts" / "box" / "docs.nix").read_bytes()
    (c,) = silent_clients({"docs.nix": model("docs.nix", src)}, "oci", "docs-db")
    assert c.name == "docs" and c.default == ("PAPERLESS_DBPASS", "paperless")
    assert "default the password today" in c.what("docs-db", "paperless")
    assert "default 'paperless'" in c.what("docs-db", "other")


def test_a_client_with_a_credential_in_sight_is_not_named() -> None:
    base = 'virtualisation.oci-containers.containers.app = {{ image = "x/app:1"; dependsOn = [ "db" ]; {} }};'
    assert clients("{ " + base.format('environment.DB_HOST = "db";') + " }") == ["app"]
    for seen in (
        'environment = { DB_HOST = "db"; DB_PASSWORD = "pw"; };',
        'environment = { DB_HOST = "db"; DATABASE_URL = cfg.url; };',
        'environment = { DB_HOST = "db"; CONN = "postgres://u:p@db/x"; };',
        'environment.DB_HOST = "db"; environmentFiles = [ "/run/app.env" ];',
        'environment.REDIS_URL = "redis://r:6379";',  # no sign it talks to the database
    ):
        assert clients("{ " + base.format(seen) + " }") == [], seen


def test_only_clients_of_this_database_and_compose_depends_on() -> None:
    other = (
        '{ virtualisation.oci-containers.containers.app = { dependsOn = [ "cache" ]; environment.DB_HOST = "x"; }; }'
    )
    assert clients(other) == []
    arion = (
        '{ services.app.service = { depends_on = { db = { condition = "service_healthy"; }; }; '
        'environment.PGHOST = "db"; }; }'
    )
    assert clients(arion, kind="arion") == ["app"]
    assert clients(arion, kind="oci") == []


def test_a_mounted_settings_file_is_a_sign_it_logs_in() -> None:
    base = '{{ virtualisation.oci-containers.containers.app = {{ dependsOn = [ "db" ]; volumes = [ {} ]; }}; }}'
    (c,) = silent_clients(
        {"m.nix": model("m.nix", base.format('"${dir}/config.properties:/app/config.properties:ro"').encode())},
        "oci",
        "db",
    )
    assert c.settings == "config.properties" and "mounts config.properties" in c.what("db", "pw")
    for other in ('"app-data:/var/lib/app"', '"/srv/app/media:/media"'):  # data, not settings
        assert clients(base.format(other)) == [], other
    # every settings file it mounts is named (a blind case, stop 23: the credentials were in the second of four,
    # Config2.pm, and the line named only log.conf, the first with a known extension)
    mounts = '"./conf/Config.pm:/opt/Config.pm" "./conf/Config2.pm:/opt/Config2.pm" "./conf/log.conf:/mnt/log.conf"'
    (c,) = silent_clients({"m.nix": model("m.nix", base.format(mounts).encode())}, "oci", "db")
    assert c.settings == "Config.pm, Config2.pm, log.conf" and "in one of them" in c.what("db", "pw")


def test_the_image_default_is_set_from_the_secret_only_for_a_client_of_this_role() -> None:
    """paperless logs in as PAPERLESS_DBUSER (default paperless) with PAPERLESS_DBPASS (default paperless):
    patch sets PAPERLESS_DBPASS in its env file only when that role is the migration's; a client of another
    role keeps its default and is said (the rotation is not its)."""
    from nixmig.nixsrc import patch as pt

    src = (SHAPES / "oci-app-image-default-password" / "hosts" / "box" / "docs.nix").read_bytes()
    spec = pt.Spec(secret="docs-db-password", role="paperless", container="docs-db", db_service="docs-db")
    (c,) = silent_clients({"docs.nix": model("docs.nix", src)}, "oci", "docs-db")
    assert c.login == "paperless"  # the image's default role
    plan = pt.plan({"docs.nix": src}, spec)
    assert plan.manual == () and b"PAPERLESS_DBPASS" in plan.results({"docs.nix": src})["docs.nix"]
    other = src.replace(
        b'PAPERLESS_DBHOST = "docs-db";', b'PAPERLESS_DBHOST = "docs-db";\n        PAPERLESS_DBUSER = "reader";'
    )
    plan = pt.plan({"docs.nix": other}, spec)
    assert any("PAPERLESS_DBPASS" in m.what for m in plan.manual), plan.manual
    assert b"PAPERLESS_DBPASS '''" not in plan.results({"docs.nix": other}).get("docs.nix", b"")
