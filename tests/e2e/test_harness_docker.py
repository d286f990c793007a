"""The e2e tier's Docker engine runs the local PostgreSQL image like the official one."""

from __future__ import annotations

import docker  # noqa: TID251
import psycopg  # noqa: TID251
import pytest

from tests.harness.dockerd import DockerEngine, PgContainerFactory, wait_for_postgres
from tests.harness.postgres import conninfo

pytestmark = pytest.mark.e2e


def test_engine_answers(docker_engine: DockerEngine, docker_client: docker.DockerClient) -> None:
    assert docker_client.ping()
    assert docker_engine.version


def test_image_is_tagged_with_its_inputs(docker_client: docker.DockerClient, pg_image: str) -> None:
    assert pg_image == "nixmig-test/postgres:15"
    image = docker_client.images.get(pg_image)
    assert len(image.labels["nixmig.test.build-inputs"]) == 64
    config = image.attrs["Config"]
    assert config["Entrypoint"] == ["docker-entrypoint.sh"]
    assert config["Cmd"] == ["postgres"]
    assert "/var/lib/postgresql/data" in config["Volumes"]


def test_password_file_tcp_login_and_wrong_password(pg_container: PgContainerFactory) -> None:
    server = pg_container(user="app", dbname="appdb", password_via_file=True)
    with psycopg.connect(server.dsn) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), current_setting('server_version_num'),"
            " inet_server_addr()::text, (SELECT rolsuper FROM pg_roles WHERE rolname = 'app')"
        ).fetchone()
        assert row is not None
        assert row[:2] == ("app", "appdb")
        assert int(row[2]) // 10000 == 15
        assert row[3].startswith(server.host)
        assert row[4] is True
        hba = conn.execute(
            "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' AND address = 'all'"
        ).fetchall()
        assert hba == [("scram-sha-256",)]
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").fetchone()
        assert stored is not None and stored[0].startswith("SCRAM-SHA-256$")
        assert conn.execute("SHOW listen_addresses").fetchone() == ("*",)
    # the same server through the port published on 127.0.0.1
    via_loopback = conninfo(
        host="127.0.0.1", port=server.host_port, user="app", password=server.password,
        dbname="appdb",
    )  # fmt: skip
    with psycopg.connect(via_loopback) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=server.host, port=server.port, user="app", password=server.password + "x",
            dbname="appdb", connect_timeout=10,
        )  # fmt: skip


def test_password_env_and_default_db(pg_container: PgContainerFactory) -> None:
    server = pg_container(password="s3cret pass'word", password_via_file=False)
    assert server.dbname == "postgres"
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_data_survives_restart_and_recreate_on_the_same_volume(
    pg_container: PgContainerFactory, docker_client: docker.DockerClient
) -> None:
    first = pg_container(user="app", dbname="appdb")
    with psycopg.connect(first.dsn) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('before restart')")

    container = docker_client.containers.get(first.id)
    container.restart(timeout=20)
    restarted = pg_container.refresh(first)
    wait_for_postgres(container, restarted.dsn)
    with psycopg.connect(restarted.dsn) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("before restart",)]

    container.remove(force=True)
    # a new container on the same volume: POSTGRES_* only apply to an empty PGDATA,
    # so the new password is ignored and the old one still works
    second = pg_container(user="app", dbname="appdb", volume=first.volume, password="ignored", wait=False)
    old_password = conninfo(host=second.host, port=5432, user="app", password=first.password, dbname="appdb")
    wait_for_postgres(docker_client.containers.get(second.id), old_password)
    with psycopg.connect(old_password) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("before restart",)]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(second.dsn, connect_timeout=10)


def test_uninitialised_without_password_refuses_to_start(
    pg_container: PgContainerFactory, docker_client: docker.DockerClient
) -> None:
    server = pg_container(password="", password_via_file=False, wait=False)
    container = docker_client.containers.get(server.id)
    result = container.wait(timeout=60)
    assert result["StatusCode"] == 1
    assert b"superuser password is not specified" in container.logs()


def test_containers_reach_each_other_on_the_bridge(
    pg_container: PgContainerFactory, docker_client: docker.DockerClient
) -> None:
    server = pg_container()
    client_box = pg_container()
    out = docker_client.containers.get(client_box.id).exec_run(
        ["pg_isready", "-h", server.host, "-p", "5432", "-t", "10"]
    )
    assert out.exit_code == 0, out.output
