"""The host's secret against the repo's (nixmig.phases.hostsecret): digests, never values.

The target is this machine through the local transport (`sha256sum` runs as it would on
the host); the repo is a copy of the worked example with a real age file. No database:
every refusal here happens before rotate, add-role or provision touch one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nixmig import config, engine
from nixmig.db import rebuild as rb
from nixmig.errors import NixmigError
from nixmig.phases import hostsecret
from nixmig.phases.base import Context
from nixmig.phases.deploy import Stage
from nixmig.phases.dualrole import AddRole, DualRoleError
from nixmig.phases.rebuild import Provision
from nixmig.phases.rotate import Rotate, RotateError
from nixmig.remote.local import LocalTransport
from nixmig.secrets import store
from nixmig.secrets.age import load_identities
from nixmig.sensitive import Secret
from tests.helpers import ADMIN_PUB, NEWTON_PUB, copy_example, private_key

NAME = "twenty-db-password"
NEW = "the-repo's-value-now"
OLDER = "an-older-value-from-before"


class Site:
    def __init__(self, root: Path, strategy: str = "rotate") -> None:
        self.repo = copy_example(root)
        self.agenix = root / "agenix"
        self.agenix.mkdir(mode=0o700)
        rules = self.repo / "secrets" / "secrets.nix"
        store.new_secret(rules, NAME, Secret(NEW), like="twenty-app-secret")
        (self.repo / "nixmig.toml").write_text(
            f"""[operator]
recipients = ["{ADMIN_PUB}"]
[hosts.newton]
address = "newton.example.org"
age_recipient = "{NEWTON_PUB}"
agenix_dir = "{self.agenix}"
[services.twenty-db]
host = "newton"
container = "twenty-db-1"
volume = "twenty_db-data"
database = "default"
[migrations.{NAME}]
service = "twenty-db"
secret = "{NAME}"
strategy = "{strategy}"
deploy = "deploy .#newton"
"""
        )
        self.admin_key = private_key(root, "admin_ed25519")
        self.said: list[str] = []

    def ctx(self, *, identity: bool = True) -> Context:
        cfg = config.load(self.repo / "nixmig.toml")
        return engine.make_context(
            cfg,
            NAME,
            identities=load_identities([self.admin_key]) if identity else [],
            emit=self.said.append,
            connect=LocalTransport,
        )

    def host_holds(self, value: str | None) -> None:
        f = self.agenix / NAME
        f.unlink(missing_ok=True)
        if value is not None:
            f.write_text(value)
            f.chmod(0o400)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no agenix default key of the test runner
    return Site(tmp_path)


def test_compare_says_same_only_when_the_host_holds_the_repos_value(site: Site) -> None:
    ctx = site.ctx()
    site.host_holds(NEW)
    hs = hostsecret.compare(ctx)
    assert hs.same and not hs.differs and hs.present
    site.host_holds(OLDER)
    hs = hostsecret.compare(ctx)
    assert hs.present and not hs.same and hs.differs
    site.host_holds("")  # empty: as missing
    assert not hostsecret.compare(ctx).present
    site.host_holds(None)
    hs = hostsecret.compare(ctx)
    assert not hs.present and hs.differs and not hs.same
    # digests only: nothing in the result shows a value
    assert NEW not in repr(hs) and OLDER not in repr(hs)
    (site.agenix / NAME).mkdir()  # there, but not a file it can hash: said, not taken for missing
    with pytest.raises(hostsecret.HostSecretError, match=f"cannot hash {site.agenix / NAME}"):
        hostsecret.compare(ctx)


def test_without_an_identity_the_repo_value_is_unknown(site: Site) -> None:
    site.host_holds(NEW)
    hs = hostsecret.compare(site.ctx(identity=False))
    assert hs.repo is None and not hs.same and not hs.differs
    assert "no operator identity" in hs.unknown


def test_stage_is_in_effect_only_with_the_repos_value(site: Site) -> None:
    site.host_holds(OLDER)
    assert Stage().check(site.ctx()) is False  # an older value: stage must deploy
    assert any("holds another value than secrets/twenty-db-password.age: deploying" in m for m in site.said)
    site.host_holds(NEW)
    assert Stage().check(site.ctx()) is True
    # no identity: not proven, so stage deploys (a deploy is harmless, skipping it is not)
    assert Stage().check(site.ctx(identity=False)) is False


def _journal_stage_done(ctx: Context) -> None:
    ctx.journal.begin("stage")
    ctx.journal.finish("stage", {"patched": []})


@pytest.mark.parametrize(
    ("strategy", "phase", "error"),
    [("rotate", Rotate, RotateError), ("dual-role", AddRole, DualRoleError), ("rebuild", Provision, rb.RebuildError)],
)
def test_phases_refuse_an_older_value_before_any_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str, phase: Callable[[], Any], error: type[NixmigError]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    site = Site(tmp_path, strategy)
    site.host_holds(OLDER)
    ctx = site.ctx()
    _journal_stage_done(ctx)
    p = phase()
    # check() says "not in effect" without asking the database (there is none here)
    assert p.check(ctx) is False
    with pytest.raises(error) as exc:
        p.do(ctx)
    line = exc.value.line()
    assert f"{site.agenix / NAME} does not hold the value of secrets/{NAME}.age" in line
    assert "refused before changing anything" in line and "run `nixmig apply` again" in line
    assert NEW not in line and OLDER not in line
    for digest in (hostsecret.host_digest(ctx), hostsecret.repo_digest(ctx)[0]):
        assert digest is not None and digest not in line
    # stage reopened in the journal: apply again deploys the repo's value first
    saved = json.loads(ctx.journal.path.read_text())
    stage = next(s for s in saved["steps"] if s["phase"] == "stage")
    assert stage["state"] == "failed" and "not the repo's" in stage["error"]


def test_rotate_refuses_a_missing_file_and_proceeds_unchecked_without_identity(site: Site) -> None:
    site.host_holds(None)
    ctx = site.ctx()
    _journal_stage_done(ctx)
    with pytest.raises(RotateError, match="is missing: rotate refused"):
        Rotate().do(ctx)
    site.host_holds(NEW)
    hostsecret.require_repo_value(site.ctx(), "rotate", RotateError)  # the repo's value: passes
    site.said.clear()
    site.host_holds(OLDER)
    hostsecret.require_repo_value(site.ctx(identity=False), "rotate", RotateError)  # cannot tell: says so
    assert site.said and "cannot check" in site.said[0] and "--identity" in site.said[0]


def test_on_host_compares_nothing(tmp_path: Path, site: Site) -> None:
    cfg = config.load(site.repo / "nixmig.toml")
    ctx = engine.make_context(cfg, NAME, on_host=True, state_dir=tmp_path / "state", connect=LocalTransport)
    site.host_holds(OLDER)  # on-host the activation running nixmig just wrote the deployed value
    assert Stage().check(ctx) is True
    hostsecret.require_repo_value(ctx, "rotate", RotateError)
    assert hostsecret.describe(ctx) == []


def test_verify_checks_each_companion_file_on_the_host(site: Site) -> None:
    """nixmig.toml's also: every strategy's verify ends with each companion's host file against its
    .age (before: only the migration's own secret was compared; a companion agenix never deployed
    passed verify, and the container reading it failed after)."""
    from nixmig.phases.verify import health_rows

    cfg = site.repo / "nixmig.toml"
    cfg.write_text(cfg.read_text() + 'also = { ROOT_PASSWORD = "db-root" }\n')
    store.new_secret(site.repo / "secrets" / "secrets.nix", "db-root", Secret("root-kept"), like="twenty-app-secret")
    ctx = site.ctx()
    (row,) = health_rows(ctx)
    assert row == {
        "check": f"{site.agenix / 'db-root'} holds the value of db-root.age",
        "ok": False,
        "detail": "missing or empty on the host",
    }
    (site.agenix / "db-root").write_text("another")
    assert health_rows(ctx)[0]["detail"] == "another value (their sha256 differ)"
    (site.agenix / "db-root").write_text("root-kept")
    assert health_rows(ctx)[0]["ok"] is True
    assert "root-kept" not in repr(health_rows(ctx))
    (no_id,) = health_rows(site.ctx(identity=False))  # rotate runs without -i: presence, said as such
    assert no_id["ok"] is True and no_id["check"].startswith(
        f"{site.agenix / 'db-root'} exists (its value not compared"
    )
    (site.agenix / "db-root").unlink()
    assert health_rows(site.ctx(identity=False))[0]["ok"] is False
    from nixmig.phases.verify import Verify

    said = [a.text for a in Verify().describe(ctx)]
    assert f"{site.agenix}/db-root holds the value of db-root.age (also: ROOT_PASSWORD)" in said
