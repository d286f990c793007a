"""Every case of the shape corpus (tests/fixtures/shapes): written for nixmig, one shape each.

A case is a small repo with its nixmig.toml and a case.json (shape, expect = patched|refused,
the hardcoded literals, for a refusal the words its reason must hold). A patched case has its
golden diff in expected.diff (NIXMIG_UPDATE_GOLDEN=1 rewrites it): the output parses with
nix-instantiate, a second plan changes nothing, no literal is left and a scan of the patched
tree finds nothing. A refused case writes nothing by itself and says why, at file:line.
bench/patch_coverage.py runs the real CLI over the same corpus.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from nixmig import config
from nixmig.nixsrc import patch as pt
from nixmig.nixsrc import validate
from nixmig.nixsrc.render import EnvFile, EnvLine, render_script
from nixmig.nixsrc.scan import scan_source
from tests.helpers import FIXTURES

SHAPES = FIXTURES / "shapes"
CASES = sorted(p.name for p in SHAPES.iterdir() if (p / "case.json").is_file())


def _load(name: str) -> tuple[dict[str, object], dict[str, bytes], pt.Spec]:
    case = SHAPES / name
    meta = json.loads((case / "case.json").read_text())
    cfg = config.load(case / "nixmig.toml")
    (migration,) = cfg.migrations
    return meta, pt.read_sources(case), pt.spec_for(cfg, migration)


def _texts(name: str, sources: dict[str, bytes]) -> dict[str, bytes]:
    return pt.read_texts(SHAPES / name, sources)  # the SQL files the .nix files name, as `nixmig patch` reads


def test_the_corpus_has_both_outcomes() -> None:
    outcomes = {json.loads((SHAPES / n / "case.json").read_text())["expect"] for n in CASES}
    assert outcomes == {"patched", "refused"} and len(CASES) >= 5


NL = b"\n"


@pytest.mark.parametrize("name", CASES)
def test_shape(name: str) -> None:
    meta, sources, spec = _load(name)
    texts = _texts(name, sources)
    plan = pt.plan(sources, spec, find_companions=True, texts=texts)  # as `nixmig patch` plans
    assert dict(plan.auto_also) == meta.get("auto_also", {}), "the companions patch finds by itself"
    literals = [str(x).encode() for x in meta["literals"]]  # type: ignore[attr-defined]
    if meta["expect"] == "refused":
        assert plan.manual, "a refused shape must be said"
        assert any(str(meta["why"]) in m.what and m.file and m.line > 0 for m in plan.manual), plan.manual
        assert not any(lit in plan.diff(sources).encode() for lit in literals)
        if plan.edits and shutil.which("nix-instantiate"):  # what a refusal still writes must parse
            validate.check_all(plan.results(sources), use_nix=True)
        if plan.edits:  # what a refusal writes is written once: a second --write changes nothing more
            after = {**sources, **plan.results(sources)}
            spec2 = dataclasses.replace(spec, also=spec.also + plan.auto_also)
            assert pt.plan(after, spec2, find_companions=True, texts=texts).edits == ()
        return
    assert meta["expect"] == "patched"
    assert plan.manual == (), [m.what for m in plan.manual]
    diff = plan.diff(sources)
    golden = SHAPES / name / "expected.diff"
    if os.environ.get("NIXMIG_UPDATE_GOLDEN"):
        golden.write_text(diff)
    assert diff == golden.read_text()
    after = {**sources, **plan.results(sources)}
    for lit in literals:
        assert not any(lit in text for text in after.values()), "a literal is left"
    # another app's secrets in the file (case.json's "others"): left, each named in a note, and all scan finds
    others = {str(x).encode() for x in meta.get("others", ())}  # type: ignore[attr-defined]
    for f, text in after.items():
        left = {x.value.reveal() for x in scan_source(text, f).findings}
        assert left <= others, (f, len(left - others))
    for other in others:
        at = [f"{f}:{text.count(NL, 0, text.index(other)) + 1}:" for f, text in sources.items() if other in text]
        assert at and any(n.startswith(at[0]) and "holds another" in n for n in plan.notes), (at, plan.notes)
    again = pt.plan(
        after, dataclasses.replace(spec, also=spec.also + plan.auto_also), find_companions=True, texts=texts
    )
    assert again.edits == () and again.manual == ()
    if shutil.which("nix-instantiate"):
        validate.check_all(plan.results(sources), use_nix=True)


@pytest.mark.parametrize(("password", "ok"), [(b"Ab0-_.~x", True), (b"has space", False), (b"p%w", False)])
def test_a_bare_password_line_is_written_as_is_or_refused(tmp_path: Path, password: bytes, ok: bool) -> None:
    """DB_PASSWORD=... in an env file: docker, compose and systemd read an unquoted value alike only
    for unreserved characters; anything else stops the unit at start with one line, nothing written."""
    pw = tmp_path / "pw"
    pw.write_bytes(password)
    out = tmp_path / "run" / "app.env"
    out.parent.mkdir()
    files = [EnvFile(str(out), (EnvLine("DB_PASSWORD", "", "", raw=True), EnvLine("URL", "pg://u:", "@h/d")))]
    script = render_script("app-db", shlex.quote(str(pw)), files)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, check=False)
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == b"DB_PASSWORD=" + password + b"\nURL=pg://u:" + password + b"@h/d\n"
    else:
        assert proc.returncode == 1 and not out.exists()
        assert b"cannot hold unquoted" in proc.stderr and password not in proc.stderr


def test_an_etc_text_let_whose_name_says_nothing_goes_with_the_etc_file_it_filled() -> None:
    """`let v = "..."; in { environment.etc."db-pass".text = v; }` read by dbpassFile (a rewrite of a real case by
    bench/patch_mutants.py): the binding goes once the /etc entry goes, whatever its name; patch had taken the
    admin's /etc file onto the database's secret (a rotation) and, with the database's text found, kept the
    binding with the password (exit 0)."""
    _meta, sources, spec = _load("native-etc-text-let-bound-beside-admin")
    sources = {f: text.replace(b"ncDbPassword", b"textValue") for f, text in sources.items()}
    plan = pt.plan(sources, spec, find_companions=True)
    assert plan.manual == (), [m.what for m in plan.manual]
    after = {**sources, **plan.results(sources)}
    assert not any(b"nc-let-db-pw-7" in text for text in after.values())
    assert b"textValue" not in b"".join(after.values())
    assert any(b"dbpassFile = config.age.secrets.nextcloud-db-password.path;" in t for t in after.values())
    assert any(b'adminpassFile = "/etc/nextcloud-admin-pass";' in t for t in after.values())


def test_a_moved_let_bound_etc_text_is_taken_from_the_line_the_let_binds_it() -> None:
    """Under move, `secret new --from FILE:LINE` must name the let's line (the value), not the /etc entry that
    reads it by name (`--from` there found no secret: a rewrite of a real case by bench/patch_mutants.py)."""
    _meta, sources, spec = _load("native-etc-text-let-bound-beside-admin")
    plan = pt.plan(sources, dataclasses.replace(spec, strategy="move"), find_companions=True)
    (file,) = [f for f in sources if f.endswith("cloud.nix")]
    places = [at for name, ats in plan.kept if name == spec.secret for at in ats]
    assert places and all(at.startswith(f"{file}:3") for at in places), places


def test_a_computed_app_password_built_from_strings_is_never_shown() -> None:
    """The by-hand item for a computed DB_PASSWORD quotes the expression only when no string is in it: a
    `"s3cr" + "et-pw-44"` may be the password itself, and a message is printed and logged."""
    _meta, sources, spec = _load("oci-app-computed-password-import")
    sources = {
        f: t.replace(b"DB_PASSWORD = creds.photos;", b'DB_PASSWORD = "s3cr" + "et-pw-44";') for f, t in sources.items()
    }
    plan = pt.plan(sources, spec, find_companions=True)
    (item,) = [m for m in plan.manual if "DB_PASSWORD is computed" in m.what]
    assert "an expression with strings in it" in item.what
    assert b"s3cr" not in item.what.encode() and b"et-pw-44" not in item.what.encode()
