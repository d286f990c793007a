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


REC_CASE, REC_FILE = "native-let-rec-url-script-and-execstart", "hosts/box/ledger.nix"


def _rec_variant(old: str, new: str) -> tuple[object, bytes]:
    from tests.helpers import plan_shape_case

    text = (FIXTURES_SHAPES / REC_CASE / REC_FILE).read_text()
    assert old in text
    return plan_shape_case(REC_CASE, REC_FILE, text.replace(old, new, 1).encode())


def test_a_rec_password_field_read_elsewhere_in_the_rec_stays_and_is_said() -> None:
    """The URL field a unit reads is followed; a second reader nixmig does not follow (a function call
    inside the rec) keeps the password field, and the verdict names the literal: nothing claims success."""
    plan, out = _rec_variant(
        '    host = "127.0.0.1";\n', '    host = "127.0.0.1";\n    hashed = builtins.hashString "sha256" password;\n'
    )
    assert b'password = "l3dger-Url-pw";' in out
    assert plan.manual, "the literal left must be said"  # type: ignore[attr-defined]
    assert any("ledger.nix:5" in f"{m.file}:{m.line}" for m in plan.manual)  # type: ignore[attr-defined]


def test_a_role_name_equal_to_the_password_is_no_password() -> None:
    """realcfg20/23 had user = password = "nostodon": the user field a URL also reads is kept, and no
    by-hand item is made of its other reads (ensureUsers, User=)."""
    plan, out = _rec_variant('    password = "l3dger-Url-pw";\n', '    password = "ledger";\n')
    assert b'user = "ledger";' in out and b'name = "ledger";' in out and b'password = "' not in out
    assert b"NIXMIG_DB_URL" in out
    assert not plan.manual, [m.what for m in plan.manual]  # type: ignore[attr-defined]


def test_a_plain_attrset_s_field_is_no_rec_reader() -> None:
    """Without rec, `${password}` in a sibling reads a let or an argument named password, not the field:
    nothing is followed through it (the URL field is no URL nixmig could resolve)."""
    _, out = _rec_variant("  db = rec {\n", "  db = {\n")
    assert b"url = " in out


def test_another_role_with_a_hyphen_is_a_companion_too() -> None:
    """realcfg22/02: `CREATE ROLE "matrix-synapse" ... PASSWORD` beside the migration's role was refused as
    "a quote in its value, or a statement that never ran", false: the also key `role:NAME` took no hyphen.
    It is offered as a companion now, and its oneshot quotes the role in SQL."""
    import dataclasses

    from nixmig import config
    from nixmig.nixsrc import patch as pt

    case = "native-initialscript-other-role"
    root = FIXTURES_SHAPES / case
    cfg = config.load(root / "nixmig.toml")
    sources = pt.read_sources(root)
    (file,) = [f for f, t in sources.items() if b"ALTER ROLE reports" in t]
    text = sources[file].replace(b"ALTER ROLE reports PASSWORD", b'ALTER ROLE "matrix-synapse" PASSWORD')
    spec = pt.spec_for(cfg, "ledger-db-password")
    sources = {**sources, file: text}
    plan = pt.plan(sources, spec, find_companions=True)
    assert dict(plan.auto_also) == {"role:matrix-synapse": "matrix-synapse-db-password"}, plan.manual
    assert plan.manual == ()
    moved = pt.plan(sources, dataclasses.replace(spec, also=plan.auto_also))
    out = moved.results(sources)[file]
    assert b"reports-pw" not in out and b'"matrix-synapse"' in out


def test_a_mail_client_s_password_with_the_database_s_value_is_another_credential() -> None:
    """realcfg24/08: msmtp's SMTP login shared keycloak's database value and was said as "this migration's
    password" with no hint that it is another credential (a rotation would break mail)."""
    from nixmig.nixsrc.leftover import unknown_shape
    from nixmig.nixsrc.patch import _other_credential

    assert _other_credential(("programs", "msmtp", "accounts", "default", "password"))
    assert not _other_credential(("services", "mailman", "database", "password"))  # a database's, by its words
    assert not _other_credential(("services", "keycloak", "database", "password"))
    assert "an option of programs.msmtp" in unknown_shape(("programs", "msmtp", "accounts", "default", "password"))


def test_only_nix_paths_name_a_file_that_goes_into_the_store() -> None:
    """The verdict reads the files a .nix file names by a Nix path (they go into the store with it): a
    path in a comment or inside a string's text is no such file, a .nix file is a source already, and
    a path built by interpolation names no file nixmig could read."""
    from nixmig.nixsrc.scan import text_paths

    src = b'{ a = ./x.conf; b = "${./s.sql} then ./no.txt"; # ./c.md\n c = ../d/e.txt; d = ./m.nix; e = ./${x}.y; }'
    assert sorted(text_paths(src, "h/f.nix")) == ["d/e.txt", "h/s.sql", "h/x.conf"]


def test_a_copy_in_a_named_file_is_said_at_its_line_and_where_it_is_named() -> None:
    """realcfg21/01: the value in a SQL file a unit feeds to psql and in a config file built into an image."""
    from nixmig.nixsrc.leftover import copies_in_texts
    from nixmig.nixsrc.model import model

    nix = b'{ pkgs, ... }:\n{\n  a.cmd = [ "x" ./conf/app.conf ];\n  b.script = "psql < ${./setup.sql}";\n}\n'
    texts = {
        "h/conf/app.conf": b'uri = "pg://u:Copy-pw-12@h/db"\n',
        "h/setup.sql": b"-- setup\nALTER ROLE u PASSWORD 'Copy-pw-12';\n",
    }
    out = copies_in_texts({"h/f.nix": model("h/f.nix", nix)}, texts, {b"Copy-pw-12"}, set())
    assert [(x.file, x.line, x.in_sql, x.ours) for x in out] == [
        ("h/conf/app.conf", 1, False, True),
        ("h/setup.sql", 2, True, True),
    ]
    assert "h/f.nix:3 names it" in out[0].what and "h/f.nix:4 names it" in out[1].what
    assert not copies_in_texts(
        {"h/f.nix": model("h/f.nix", nix)}, texts, {b"Copy-pw-12"}, {("h/setup.sql", 2), ("h/conf/app.conf", 1)}
    )


def test_an_item_whose_value_is_nobody_s_password_is_no_line_to_keep() -> None:
    """realcfg24/05: the ALTER that never ran was printed as the line `secret new --from` should read."""
    from nixmig.cli.patch import NOBODYS_PASSWORD

    never = (
        "m.nix",
        20,
        f"services.mysql.initialScript: ALTER USER ... never set a password ... {NOBODYS_PASSWORD}: x",
    )
    assert _kept_line(_plan(never)) == (None, [])
    assert _kept_line(_plan(never, DB)) == ("c.nix:31", ["c.nix:31"])


def test_a_built_url_another_rec_field_reads_stays() -> None:
    """`url2 = "${url}/x"` reads the built URL inside the rec: removing url would break url2, so url (and
    the password it reads) stay, and the verdict says the literal."""
    plan, out = _rec_variant(
        '    host = "127.0.0.1";\n', '    host = "127.0.0.1";\n    url2 = "${url}?sslmode=disable";\n'
    )
    assert b"url = " in out and b'password = "l3dger-Url-pw";' in out
    assert plan.manual  # type: ignore[attr-defined]
