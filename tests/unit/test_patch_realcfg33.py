"""patch's by-hand items on stop 32's second blind set (realcfg33): home-manager's rootless containers get
home-manager's reason and no system unit's recipe, for the migration's own literals too (33/01)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_patch_realcfg26 import _repo

pytestmark = pytest.mark.unit

HOME = """{ ... }:
{
  services.podman.containers = {
    postgres = {
      image = "docker.io/library/postgres:16";
      environment = { POSTGRES_USER = "media"; POSTGRES_PASSWORD = "Hm-pod-pw-3"; };
    };
    miniflux = {
      image = "docker.io/miniflux/miniflux:2";
      environment.DATABASE_URL = "postgresql://media:Hm-pod-pw-3@postgres:5432/media";
    };
  };
}
"""


def test_home_manager_containers_get_its_reason_and_no_system_unit_recipe(tmp_path: Path) -> None:
    plan = _repo(tmp_path, {"home/user/containers.nix": HOME}, db="media", role="media", secret="media-db-password")
    items = [m for m in plan.manual if m.file == "home/user/containers.nix"]
    assert {m.line for m in items} == {6, 10}, [(m.line, m.what) for m in items]
    for m in items:
        assert "a container of home-manager's services.podman" in m.what, m.what
        assert "systemd.services" not in m.snippet
