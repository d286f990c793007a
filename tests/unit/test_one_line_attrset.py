"""Several lines inserted into a one-line attrset (compose2nix writes `serviceConfig = { Restart = ...; };`)
go on lines of their own, indented under the attrset, the brace closing on its own line: a blind
configuration (stop 20) got the renderer glued after `Restart = ...;` and then at column 0."""

from __future__ import annotations

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc.parse import parse_checked

COMPOSE = b"""{ pkgs, lib, config, ... }:
{
  virtualisation.oci-containers.backend = "podman";
  virtualisation.oci-containers.containers."app-db" = {
    image = "postgres:16";
    environment = { POSTGRES_PASSWORD = "One-line-pw-77"; POSTGRES_USER = "postgres"; };
  };
  virtualisation.oci-containers.containers."app-web" = {
    image = "example/web:1";
    environment = { DATABASE_URL = "postgres://postgres:One-line-pw-77@app-db:5432/app"; };
  };
  systemd.services."podman-app-web" = {
    serviceConfig = { Restart = lib.mkOverride 90 "always"; };
  };
}
"""


def test_a_one_line_attrset_is_opened_for_the_renderer() -> None:
    src = {"compose.nix": COMPOSE}
    plan = pt.plan(src, pt.Spec(secret="app-db-password", container="app-db"))
    assert plan.manual == (), [m.what for m in plan.manual]
    out = plan.results(src)["compose.nix"].decode()
    parse_checked(out.encode(), "compose.nix")
    block = out[out.index('systemd.services."podman-app-web"') :]
    lines = block.splitlines()
    assert lines[1] == '    serviceConfig = { Restart = lib.mkOverride 90 "always";', lines[:3]
    assert lines[2].startswith("      # nixmig: ") or lines[2].startswith("      "), lines[2]
    body = lines[2 : lines.index("    };")]
    assert body and all(ln == "" or ln.startswith("      ") for ln in body), body  # nothing at column 0
