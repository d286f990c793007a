"""Integration tier (marked ``integration`` by tests/conftest.py): a real PostgreSQL
cluster through ``pg`` (session) or ``pg_db`` (fresh database per test)."""

from __future__ import annotations

from tests.harness.postgres import PgServer, pg, pg_db

__all__ = ["PgServer", "pg", "pg_db"]
