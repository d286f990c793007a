"""Containers named through a let (``${svc}``, ``"${svc}-db"``): the renderer's unit, runtime directory and
env file use the name itself. Before, a real configuration got a unit named ``podman-${svc}`` (escaped)
and a renderer writing to ``/run/${svc}`` (a shell variable there: ``/run/``)."""

from __future__ import annotations

import shutil

import pytest

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc import validate

SRC = b"""{ config, lib, pkgs, ... }:
let
  svc = "forge";
in
{
  virtualisation.oci-containers.containers = {
    ${svc} = {
      image = "example/forge:1";
      environment.DATABASE_URL = "postgres://forge:Forge-pw-4@forge-db/forge";
    };
    "${svc}-db" = {
      image = "postgres:16";
      user = svc;
      environment.POSTGRES_USER = "forge";
      environment.POSTGRES_PASSWORD = "Forge-pw-4";
    };
  };
}
"""


def test_a_let_bound_container_name_is_read() -> None:
    plan = pt.plan({"f.nix": SRC}, pt.Spec(secret="forge-db", role="forge", container="forge-db"))
    out = plan.results({"f.nix": SRC})["f.nix"].decode()
    assert plan.manual == (), plan.manual
    assert 'systemd.services."${config.virtualisation.oci-containers.backend}-forge".serviceConfig' in out
    assert 'environmentFiles = [ "/run/forge/forge-db.env" ];' in out
    assert "${svc}" not in out.split("in\n{", 1)[1].replace("${svc} = {", "").replace('"${svc}-db" = {', "")
    # user = svc, the let's value "forge": a name the image resolves, which agenix would resolve on the host
    # (another uid, or none): the database's password goes into the env file its unit renders, no owner
    assert 'environmentFiles = [ "/run/forge-db/forge-db.env" ];' in out and "owner =" not in out
    if shutil.which("nix-instantiate"):
        validate.check_all(plan.results({"f.nix": SRC}), use_nix=True)


@pytest.mark.parametrize("name", [b"${config.networking.hostName}", b"${lib.toLower svc}"])
def test_a_computed_container_name_is_said_not_guessed(name: bytes) -> None:
    src = SRC.replace(b"    ${svc} = {", b"    " + name + b" = {")
    plan = pt.plan({"f.nix": src}, pt.Spec(secret="forge-db", role="forge", container="forge-db"))
    assert any("name is computed" in m.what for m in plan.manual), plan.manual
    out = plan.results({"f.nix": src}).get("f.nix", src)
    assert b"/run/${" not in out and b"\\${" not in out
