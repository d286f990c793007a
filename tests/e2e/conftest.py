"""E2E tier (marked ``e2e`` by tests/conftest.py): real sshd servers on 127.0.0.1,
a real Docker engine with a locally built PostgreSQL image, and the integration
tier's throwaway PostgreSQL cluster."""

from __future__ import annotations

from tests.harness.dockerd import (
    DockerEngine,
    PgContainer,
    PgContainerFactory,
    docker_client,
    docker_engine,
    pg_container,
    pg_image,
)
from tests.harness.postgres import PgServer, pg, pg_db
from tests.harness.sshd import SshServer, StartSshd, sshd, sshd_factory

__all__ = [
    "DockerEngine",
    "PgContainer",
    "PgContainerFactory",
    "PgServer",
    "SshServer",
    "StartSshd",
    "docker_client",
    "docker_engine",
    "pg",
    "pg_container",
    "pg_db",
    "pg_image",
    "sshd",
    "sshd_factory",
]
