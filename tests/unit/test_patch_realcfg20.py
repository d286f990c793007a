"""patch's refusals and edits that realcfg20's by-eye review found misleading or missing.

`nixmig patch` under strategy move with no .age yet names the `secret new --from FILE:LINE` that keeps
the value. With no line the plan took the value from, it comes from the by-hand items: the one that
alone can be this migration's, never just the first (realcfg20/22: nextcloud's adminpassFile came
before its dbpassFile, and the printed command would have stored the admin password as the database's).
"""

from __future__ import annotations

from types import SimpleNamespace

from nixmig.cli.patch import _kept_line
from nixmig.nixsrc.patch import Manual
from tests.helpers import FIXTURES

FIXTURES_SHAPES = FIXTURES / "shapes"


def _plan(*items: tuple[str, int, str]) -> SimpleNamespace:
    return SimpleNamespace(manual=tuple(Manual(f, line, 1, what, "") for f, line, what in items))


HELD = "still holds a hardcoded password"
ADMIN = ("c.nix", 27, f"containers.cloud.config.services.nextcloud.config.adminpassFile {HELD}")
DB = ("c.nix", 31, f"containers.cloud.config.services.nextcloud.config.dbpassFile {HELD}")


def test_the_item_whose_attribute_names_a_database_is_the_line() -> None:
    assert _kept_line(_plan(ADMIN, DB)) == ("c.nix:31", ["c.nix:27", "c.nix:31"])


def test_one_item_is_the_line() -> None:
    assert _kept_line(_plan(ADMIN)) == ("c.nix:27", ["c.nix:27"])


def test_two_that_both_or_neither_name_a_database_give_no_line_but_the_candidates() -> None:
    both = ("c.nix", 40, "services.postgresql.initialScript still holds a hardcoded password")
    other = ("c.nix", 44, "services.mysql.initialScript still holds a hardcoded password")
    assert _kept_line(_plan(both, other)) == (None, ["c.nix:40", "c.nix:44"])
    token = ("c.nix", 50, "services.foo.apiToken still holds a hardcoded password")
    assert _kept_line(_plan(ADMIN, token)) == (None, ["c.nix:27", "c.nix:50"])


def test_no_item_with_a_line() -> None:
    assert _kept_line(_plan(("flake.lock", 0, "x"))) == (None, [])


def test_a_wrapper_s_container_gets_no_unit_recipe() -> None:
    """realcfg20/19: a variable of the repo's own container option (a wrapper of oci-containers) got the
    generic recipe, a systemd EnvironmentFile= on a unit named UNIT, which never reaches the container.
    Now the reason names the wrapper and the container, and no recipe is printed."""
    from nixmig import config
    from nixmig.nixsrc import patch as pt

    root = FIXTURES_SHAPES / "oci-wrapper-own-container-option"
    cfg = config.load(root / "nixmig.toml")
    plan = pt.plan(pt.read_sources(root), pt.spec_for(cfg, "forum-db-password"))
    items = {
        m.what.split(" of the container ")[1].split(" ")[0]: m for m in plan.manual if " of the container " in m.what
    }
    assert set(items) == {"forum", "forum-db"}, [m.what for m in plan.manual]
    for m in items.values():
        assert "never the container" in m.what and m.snippet == ""
    assert plan.edits == ()


def test_an_underscore_head_read_in_the_body_keeps_its_name() -> None:
    """`_: { ... }` becomes `{ config, ... }: { ... }`; where the body reads `_` (a name like any other)
    it stays bound: `{ config, ... }@_:`."""
    from tests.helpers import plan_shape_case

    case, file = "native-underscore-module-head", "hosts/metrics/grafana.nix"
    text = (FIXTURES_SHAPES / case / file).read_text()
    reads = text.replace("_: {\n", "_: {\n  _module.args.seen = builtins.attrNames _;\n", 1)
    _, out = plan_shape_case(case, file, reads.encode())
    assert out.startswith(b"{ config, ... }@_: {\n  _module.args.seen = builtins.attrNames _;\n")
    _, plain = plan_shape_case(case, file, text.encode())
    assert plain.startswith(b"{ config, ... }: {\n")


def test_a_rec_sibling_that_interpolates_the_password_is_named() -> None:
    """realcfg20/23: `let database = rec { password = "..."; full-url = "...${password}..."; }`, full-url
    read by a unit's ExecStart: the reason said nothing reads the password; it names full-url now."""
    from nixmig.nixsrc.leftover import rec_readers

    src = (
        b'let\n  db = rec {\n    user = "u";\n    password = "Rec-pw-1";\n'
        b'    url = "postgres://${user}:${password}@h/d";\n    other = "${user}";\n  };\nin { }\n'
    )
    assert rec_readers(src, src.index(b"Rec-pw-1")) == ["url"]
    plain = src.replace(b"rec {", b"{")  # no rec: a sibling cannot read it by its bare name
    assert rec_readers(plain, plain.index(b"Rec-pw-1")) == []
    assert rec_readers(src, src.index(b'"u"')) == ["url", "other"]
