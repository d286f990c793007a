"""patch on the shapes of stop 31's second blind set (realcfg30): the file a systemd-tmpfiles rule writes the
password into (30/09: the rule's text, with a let's string in it, is in the Nix store), read by an option."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixmig.nixsrc.scan import scan_source
from tests.unit.test_patch_realcfg26 import _repo

pytestmark = pytest.mark.unit

LET = """{ config, pkgs, ... }:
let
  devRootPassword = "Mongo-let-77";
in
{
  systemd.tmpfiles.rules = [
    "d /var/lib/mongodb-secrets 0700 mongodb mongodb - -"
    "f /var/lib/mongodb-secrets/root-password 0600 mongodb mongodb - ${devRootPassword}"
  ];
  services.mongodb = {
    enable = true;
    initialRootPasswordFile = "/var/lib/mongodb-secrets/root-password";
  };
}
"""


def _plan(tmp_path: Path, src: str):  # type: ignore[no-untyped-def]
    return _repo(tmp_path, {"hosts/box/mongodb.nix": src}, db="admin", role="root", secret="mongodb-root-password",
                 strategy="move")  # fmt: skip


def test_a_let_the_rule_interpolates_goes_with_the_rule(tmp_path: Path) -> None:
    plan = _plan(tmp_path, LET)
    assert not plan.manual, [m.what for m in plan.manual]
    sources = {"hosts/box/mongodb.nix": LET.encode()}
    after = plan.results(sources)["hosts/box/mongodb.nix"].decode()
    assert "Mongo-let-77" not in after and "devRootPassword" not in after
    assert '"d /var/lib/mongodb-secrets 0700 mongodb mongodb - -"' in after  # the directory's rule stays
    assert "initialRootPasswordFile = config.age.secrets.mongodb-root-password.path;" in after
    assert any("stays on the host with the old value" in n for n in plan.notes)


def test_a_file_something_else_reads_too_is_not_taken(tmp_path: Path) -> None:
    src = LET.replace(
        "  services.mongodb = {",
        '  systemd.services.backup.script = "mongodump -p $(cat /var/lib/mongodb-secrets/root-password)";\n'
        "  services.mongodb = {",
    )
    plan = _plan(tmp_path, src)
    assert plan.manual
    assert not any(b"config.age.secrets" in e.replacement for e in plan.edits)


def test_scan_finds_a_password_a_tmpfiles_rule_writes_by_the_files_name() -> None:
    src = b"""{ ... }:
{
  systemd.tmpfiles.rules = [
    "f /run/app/db-password 0400 app app - Rule-pw-12"
    "f /run/app/motd 0644 root root - Hello-there-12"
    "L+ /run/app/password-link - - - - /etc/app/x"
  ];
}
"""
    found = scan_source(src, "t.nix").findings
    assert [(f.rule, f.value.reveal()) for f in found] == [("tmpfiles", b"Rule-pw-12")]
