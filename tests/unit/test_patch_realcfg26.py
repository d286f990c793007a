"""patch on the shapes of realcfg26 (stop 30): a value equal to the password under an identifier's name
(mautrix's ``appservice.id = "telegram"`` beside the password "telegram") is no copy of it; a string of a
plain file read inside an initialScript's SQL or a URL; the app units the configuration orders after a
unit whose psql sets the password."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nixmig import config
from nixmig.nixsrc import patch as pt
from tests.helpers import FIXTURES

pytestmark = pytest.mark.unit

SHAPES = FIXTURES / "shapes"


def _plan(tmp_path: Path, case: str, edit: list[tuple[str, str, str]], secret: str) -> pt.Plan:
    root = tmp_path / "repo"
    shutil.copytree(SHAPES / case, root)
    for rel, old, new in edit:
        f = root / rel
        text = f.read_text()
        assert old in text, (rel, old)
        f.write_text(text.replace(old, new))
    cfg = config.load(root / "nixmig.toml")
    return pt.plan(pt.read_sources(root), pt.spec_for(cfg, secret))


BRIDGE = "hosts/box/bridge.nix"


def test_an_identifier_equal_to_the_password_is_no_copy_of_it(tmp_path: Path) -> None:
    case = "native-mautrix-telegram-settings-database-url"
    edit = [(BRIDGE, "Tg-bridge-pw-4", "telegram")]  # both places: the password is the word the id holds
    plan = _plan(tmp_path, case, edit, "mautrix-telegram-db-password")
    assert not plan.manual, [m.what for m in plan.manual]
    assert plan.edits


@pytest.mark.parametrize("attr", ["token", "secret_key"])
def test_a_credential_name_equal_to_the_password_still_is(tmp_path: Path, attr: str) -> None:
    case = "native-mautrix-telegram-settings-database-url"
    edit = [(BRIDGE, 'id = "telegram";', f'{attr} = "Tg-bridge-pw-4";')]
    plan = _plan(tmp_path, case, edit, "mautrix-telegram-db-password")
    assert any(m.line == 20 for m in plan.manual), [(m.line, m.what) for m in plan.manual]


def test_the_url_goes_into_the_variable_the_bridge_reads(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "native-mautrix-telegram-settings-database-url", [], "mautrix-telegram-db-password")
    added = b"".join(e.replacement for e in plan.edits)
    assert b"MAUTRIX_TELEGRAM_APPSERVICE_DATABASE postgresql://mautrix-telegram:" in added
    assert b"systemd.services.mautrix-telegram.serviceConfig" in added


def test_a_setting_name_that_makes_no_variable_is_not_moved(tmp_path: Path) -> None:
    # a key with a dash is no environment variable name: the bridge could not read it from one
    case = "native-mautrix-telegram-settings-database-url"
    edit = [(BRIDGE, "appservice = {", '"app-service" = {')]
    plan = _plan(tmp_path, case, edit, "mautrix-telegram-db-password")
    assert plan.manual and not any(b"MAUTRIX_TELEGRAM_" in e.replacement for e in plan.edits)


def test_units_ordered_after_the_sql_unit_are_ordered_after_the_password_oneshot(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "native-unit-sql-app-ordered-after", [], "ledger-db-password")
    unit = next(e.replacement for e in plan.edits if b"nixmig-ledger-db-password-password = {" in e.replacement)
    assert b'before = [ "ledger.service" "ledger-report.service" ];' in unit


def test_no_unit_ordered_after_the_sql_unit_no_before(tmp_path: Path) -> None:
    ledger = "hosts/box/ledger.nix"
    app = (ledger, '"ledger-db-init.service" ];\n    requires = [ "ledger-db-init.service" ];', "];")
    report = (ledger, '  systemd.services.ledger-report.wants = [ "ledger-db-init.service" ];\n', "")
    plan = _plan(tmp_path, "native-unit-sql-app-ordered-after", [app], "ledger-db-password")
    unit = next(e.replacement for e in plan.edits if b"nixmig-ledger-db-password-password = {" in e.replacement)
    assert b'before = [ "ledger-report.service" ];' in unit
    plan = _plan(tmp_path / "2", "native-unit-sql-app-ordered-after", [app, report], "ledger-db-password")
    unit = next(e.replacement for e in plan.edits if b"nixmig-ledger-db-password-password = {" in e.replacement)
    assert b"before =" not in unit
