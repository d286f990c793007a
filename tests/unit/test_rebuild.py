"""strategy rebuild, the pure parts: the plan (no connection, no secret), the patcher's
volume and image switch (byte-exact, nix-instantiate --parse, idempotent, evaluated), the
config checks, and the fingerprint comparison."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from nixmig import config, engine
from nixmig.db import fingerprint as fp
from nixmig.db import ops
from nixmig.errors import ConfigError
from nixmig.nixsrc import patch as pt
from nixmig.nixsrc import validate
from nixmig.remote.base import Transport
from nixmig.sensitive import Secret
from tests.helpers import ADMIN_PUB, EXAMPLE, NEWTON_PUB, copy_example

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed")

PHASES = ["preflight", "backup", "stage", "provision", "freeze", "copy", "compare", "switch", "verify", "cleanup"]
COMPOSE = "modules/system/linux/twenty/arion-compose.nix"


def write_cfg(repo: Path, extra: str = "", service_extra: str = 'volume = "twenty_db-data"') -> config.Config:
    (repo / "nixmig.toml").write_text(
        f"""[operator]
recipients = ["{ADMIN_PUB}"]
[hosts.newton]
address = "newton.example.org"
age_recipient = "{NEWTON_PUB}"
[services.twenty-db]
host = "newton"
container = "twenty-db-1"
{service_extra}
database = "default"
[migrations.twenty-db-password]
service = "twenty-db"
secret = "twenty-db-password"
strategy = "rebuild"
deploy = "deploy --skip-checks .#newton"
{extra}"""
    )
    return config.load(repo / "nixmig.toml")


def no_connect() -> Transport:
    raise AssertionError("plan must not connect")


def plan_text(cfg: config.Config) -> tuple[list[str], str]:
    ctx = engine.make_context(cfg, "twenty-db-password", connect=no_connect)
    steps = engine.plan(ctx)
    return [s.phase for s in steps], "\n".join(f"{s.phase}: {a.kind} {a.text}" for s in steps for a in s.actions)


# ---------------------------------------------------------------- the plan


def test_plan_lists_every_command_without_connecting(tmp_path: Path) -> None:
    cfg = write_cfg(copy_example(tmp_path))
    phases, text = plan_text(cfg)
    assert phases == PHASES
    today = time.strftime("%Y%m%d", time.gmtime())
    vol = f"twenty_db-data-{today}"
    # the new volume and a container nobody but nixmig reaches, initialised from the agenix file
    assert "provision: run docker volume create --label nixmig.migration=twenty-db-password" in text
    assert f"--label nixmig.role=new --label 'nixmig.run=<run>' {vol}" in text
    assert "docker run -d --name twenty-db-1-nixmig-new --network none" in text
    assert "-e POSTGRES_PASSWORD_FILE=/run/secrets/twenty-db-password" in text
    assert "-v /run/agenix/twenty-db-password:/run/secrets/twenty-db-password:ro" in text
    assert f"-v '{vol}:<data dir of the old volume>'" in text
    # the freeze, the stream (a pipe, no file), the exact comparison, the switch and the way back
    assert "freeze: run stop the app: docker stop -t 60 <the running containers of twenty-db-1's compose" in text
    assert "pg_terminate_backend(pid, 10000)" in text
    assert "pg_hba.conf of twenty-db-1: first rule `host all all all reject`" in text  # not only the app
    assert "twenty-db-1 still refuses new connections; the copy compared again" in text
    assert (
        "docker exec -u postgres twenty-db-1 pg_dump -Fc -Z0 --create -U postgres -d 'dbname=<db>' | "
        "docker exec -i -u postgres twenty-db-1-nixmig-new pg_restore --create --exit-on-error -U postgres "
        "-d dbname=template1"
    ) in text
    assert "pg_dumpall --roles-only -U postgres; } | docker exec -i -u postgres twenty-db-1-nixmig-new psql" in text
    # the verifiers in the pipe are neither logged nor tracked; an error there stops the copy
    assert "ON_ERROR_STOP 1" in text and "set_config(s.name, v.value, false)" in text
    assert all(name in text for name, _ in ops.HUSH)
    assert "PASSWORD 'SCRAM-SHA-256$4096:********'" in text
    assert "checksum of its rows" in text and "any difference: the app is started again on the old database" in text
    assert f"twenty-db-1 on volume {vol} (external)" in text
    assert "NIXMIG_PHASE=switch deploy --skip-checks .#newton" in text
    assert "retain volume twenty_db-data for 7 days" in text
    assert "writes made since the switch are copied back into twenty_db-data first" in text
    assert f"verify: check twenty-db-1 runs on {vol}" in text


def test_plan_with_configured_names_and_app_commands(tmp_path: Path) -> None:
    cfg = write_cfg(
        copy_example(tmp_path),
        'new_volume = "pgdata-16"\nnew_image = "postgres:16.4"\n'
        'app_stop = "systemctl stop twenty"\napp_start = "systemctl start twenty"\n',
    )
    _, text = plan_text(cfg)
    assert "pgdata-16" in text and "twenty_db-data-2" not in text
    assert "postgres:16.4" in text and "image postgres:16.4 is on the host" in text
    assert "freeze: run stop the app: sh -c 'systemctl stop twenty'" in text


@pytest.mark.parametrize(
    ("extra", "service_extra", "message"),
    [
        ("", "", 'strategy "rebuild" needs a docker service with its data volume'),
        ('new_volume = "twenty_db-data"', 'volume = "twenty_db-data"', "is not a new docker volume name"),
        ('new_volume = "a b"', 'volume = "twenty_db-data"', "is not a new docker volume name"),
        ('app_stop = "x"', 'volume = "twenty_db-data"', "app_stop and app_start go together"),
    ],
)
def test_config_errors(tmp_path: Path, extra: str, service_extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        write_cfg(copy_example(tmp_path), extra, service_extra)


def test_new_volume_only_with_rebuild(tmp_path: Path) -> None:
    repo = copy_example(tmp_path)
    assert write_cfg(repo, 'new_volume = "x"').migrations["twenty-db-password"].new_volume == "x"
    text = (repo / "nixmig.toml").read_text().replace('strategy = "rebuild"', 'strategy = "rotate"')
    (repo / "nixmig.toml").write_text(text)
    with pytest.raises(ConfigError, match='new_volume: only used with strategy = "rebuild"'):
        config.load(repo / "nixmig.toml")


# ---------------------------------------------------------------- the patch


def sources() -> dict[str, bytes]:
    return pt.read_sources(EXAMPLE)


REBUILD = pt.Spec(
    secret="twenty-db-password",
    host="newton",
    container="twenty-db-1",
    old_volume="twenty_db-data",
    new_volume="twenty_db-data-20261123",
)


def changed_lines(before: bytes, after: bytes) -> tuple[list[str], list[str]]:
    import difflib

    a, b = before.decode().splitlines(), after.decode().splitlines()
    removed, added = [], []
    for line in difflib.unified_diff(a, b, n=0, lineterm=""):
        if line.startswith("-") and not line.startswith("---"):
            removed.append(line[1:])
        elif line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:])
    return removed, added


def test_volume_switch_is_byte_exact_and_only_in_the_full_patch() -> None:
    src = sources()
    base = pt.plan(src, pt.Spec(secret="twenty-db-password", host="newton", container="twenty-db-1"))
    plan = pt.plan(src, REBUILD)
    extra = {(e.start, e.end) for e in plan.edits} - {(e.start, e.end) for e in base.edits}
    assert len(extra) == 1  # the declaration; the mount goes into the list the secret's mount rewrites
    full, without = plan.results(src)[COMPOSE], base.results(src)[COMPOSE]
    removed, added = changed_lines(without, full)
    assert removed == ['          "db-data:/var/lib/postgresql/data"']
    assert added == [
        '          "db-data-20261123:/var/lib/postgresql/data"',
        '    db-data-20261123 = { external = true; name = "twenty_db-data-20261123"; };',
    ]
    # the stage config (deploy 1) is the same as rotate's: only age.secrets
    assert plan.results(src, stage_only=True) == base.results(src, stage_only=True)
    why = " ".join(e.explanation for e in plan.edits if e.file == COMPOSE)
    assert "the old volume twenty_db-data is kept, untouched" in why and "never creates it empty" in why


@needs_nix
def test_volume_and_image_switch_parses_evaluates_and_converges(tmp_path: Path) -> None:
    src = sources()
    spec = pt.Spec(**{**REBUILD.__dict__, "new_image": 'postgres:16.4"x'})
    plan = pt.plan(src, spec)
    out = plan.results(src)
    for name, data in out.items():
        assert validate.problem(name, data, use_nix=True) is None, name
    # planning again over the result: nothing left to do
    again = pt.plan({**src, **out}, spec)
    assert again.clean, [e.explanation for e in again.edits]
    # evaluated, the compose file says what arion will run
    repo = tmp_path / "r"
    shutil.copytree(EXAMPLE, repo)
    for name, data in out.items():
        (repo / name).chmod(0o644)
        (repo / name).write_bytes(data)
    expr = (
        f"let c = import {repo / COMPOSE} {{ pkgs = {{}}; lib = {{}}; "
        'config = { port = 3000; serverUrl = "x"; storage.type = "local"; }; }; '
        "in { image = c.services.db.image.name; mounts = c.services.db.service.volumes; "
        "vols = c.docker-compose.volumes; }"
    )
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True, check=True
    )
    got = json.loads(proc.stdout)
    assert got["image"] == 'postgres:16.4"x'
    assert got["mounts"][0] == "db-data-20261123:/var/lib/postgresql/data"
    assert got["vols"]["db-data-20261123"] == {"external": True, "name": "twenty_db-data-20261123"}
    assert got["vols"]["db-data"] == {}  # the old one stays declared: the rollback deploys it again


OCI = """{ config, ... }:
{
  virtualisation.oci-containers.containers = {
    pg = {
      image = "postgres:15";
      volumes = [ "/srv/conf:/etc/x:ro" "pgdata:/var/lib/postgresql/data" ];
      environment.POSTGRES_PASSWORD_FILE = "/run/secrets/db";
    };
  };
}
"""


@needs_nix
def test_oci_containers_volume_is_renamed_in_place() -> None:
    src = {"host.nix": OCI.encode()}
    spec = pt.Spec(secret="db", container="pg", old_volume="pgdata", new_volume="pgdata-16", new_image="postgres:16")
    plan = pt.plan(src, spec)
    out = plan.results(src)["host.nix"]
    removed, added = changed_lines(src["host.nix"], out)
    assert removed == [
        '      image = "postgres:15";',
        '      volumes = [ "/srv/conf:/etc/x:ro" "pgdata:/var/lib/postgresql/data" ];',
    ]
    # the list also gets the agenix file's mount, one element per line
    assert added[:6] == [
        '      image = "postgres:16";',
        "      volumes = [",
        '        "/srv/conf:/etc/x:ro"',
        '        "pgdata-16:/var/lib/postgresql/data"',
        '        "${config.age.secrets.db.path}:/run/secrets/db:ro"',
        "      ];",
    ]
    assert added[6:] == ["  age.secrets.db = {", "    file = ./secrets/db.age;", '    mode = "0400";', "  };"]
    assert validate.problem("host.nix", out, use_nix=True) is None
    assert pt.plan({"host.nix": out}, spec).clean


def test_a_mount_nixmig_cannot_read_is_left_to_the_user() -> None:
    src = {
        "host.nix": OCI.replace('"pgdata:/var/lib', '"${vol}:/var/lib')
        .replace("{ config, ... }:", "{ config, vol, ... }:")
        .encode()
    }
    spec = pt.Spec(secret="db", container="pg", old_volume="pgdata", new_volume="pgdata-16")
    plan = pt.plan(src, spec)
    assert [m.what for m in plan.manual] == [
        "no literal mount of the volume pgdata in virtualisation.oci-containers.containers.pg.volumes"
    ]


def test_an_external_old_volume_keeps_its_declaration() -> None:
    text = (
        (EXAMPLE / COMPOSE)
        .read_text()
        .replace("db-data = { };", 'db-data = { external = true; name = "twenty_db-data"; };')
    )
    src = {**sources(), COMPOSE: text.encode()}
    out = pt.plan(src, REBUILD).results(src)
    compose = out[COMPOSE].decode()
    assert '"db-data-20261123:/var/lib/postgresql/data"' in compose
    assert 'db-data = { external = true; name = "twenty_db-data"; };' in compose
    assert pt.plan({**src, **out}, REBUILD).clean


def test_only_the_engines_switch_points_the_service_at_the_copy(tmp_path: Path) -> None:
    cfg = write_cfg(copy_example(tmp_path), 'new_volume = "v2"\nnew_image = "postgres:16"')
    spec = pt.spec_for(cfg, "twenty-db-password", new_volume="v2", new_image="postgres:16")
    assert (spec.old_volume, spec.new_volume, spec.new_image) == ("twenty_db-data", "v2", "postgres:16")
    # `nixmig patch` (and the stage config) never name a copy nobody verified yet
    plain = pt.spec_for(cfg, "twenty-db-password")
    assert (plain.new_volume, plain.new_image) == (None, None)
    assert not any("v2" in e.replacement.decode() for e in pt.plan(sources(), plain).edits)


# ---------------------------------------------------------------- the comparison


def fingerprint(items: dict[str, str], passwords: dict[str, str] | None = None) -> fp.Fingerprint:
    return fp.Fingerprint(items, {k: Secret(v) for k, v in (passwords or {}).items()})


def test_compare_names_each_difference_without_values_that_may_be_secret() -> None:
    old = fingerprint(
        {
            "d/table/public.a": "10 aa",
            "d/table/public.b": "5 bb",
            "d/table/public.c": "1 cc",
            "d/sequence/public.a_id_seq": "10",
            "*/role/app": "t t f",
            "*/file/pg_hba.conf": "x",
        },
        {"postgres": "p1", "app": "a1"},
    )
    new = fingerprint(
        {
            "d/table/public.a": "9 a2",
            "d/table/public.b": "5 b2",
            "d/sequence/public.a_id_seq": "9",
            "*/role/app": "t t f",
            "*/file/pg_hba.conf": "y",
            "d/relation/public.x": "r postgres -",
        },
        {"postgres": "p2", "app": "a2"},
    )
    diffs = fp.compare(old, new, skip_password="postgres")
    assert diffs == [
        "pg_hba.conf differs",
        "relation d: public.x is in the copy only",
        "sequence d: public.a_id_seq: '10' in the old database, '9' in the copy",
        "table d: public.a: 10 rows in the old database, 9 in the copy",
        "table d: public.b: same 5 rows, different content",
        "table d: public.c is missing from the copy",
        "role app: the stored password differs",
    ]
    assert all("a1" not in d and "a2" not in d for d in diffs)
    assert fp.compare(old, old) == []


def test_digest_covers_the_data_only() -> None:
    a = fingerprint({"d/table/public.a": "1 x", "d/sequence/s": "3", "d/relation/public.a": "r u -"})
    b = fingerprint({"d/table/public.a": "1 x", "d/sequence/s": "3", "d/relation/public.a": "r v -"})
    c = fingerprint({"d/table/public.a": "2 y", "d/sequence/s": "3", "d/relation/public.a": "r u -"})
    assert a.digest() == b.digest() != c.digest()
    assert a.tables() == {"d/public.a": 1}
    assert "secret-ish" not in repr(fingerprint({}, {"r": "secret-ish"}))


def test_parse_keeps_passwords_apart() -> None:
    items, pws = fp.parse("role\tapp\tt f\npassword\tapp\tabc\ntable\tpublic.a\t3 dd\n", "*")
    assert items == {"*/role/app": "t f", "*/table/public.a": "3 dd"}
    assert pws["app"].reveal_str() == "abc" and "abc" not in repr(pws)
    with pytest.raises(Exception, match="unexpected fingerprint line"):
        fp.parse("table\tx\n", "d")


def test_copy_errors_keep_only_the_error_line() -> None:
    from nixmig.db.rebuild import first_error

    stderr = (
        b"pg_restore: while PROCESSING TOC:\n"
        b'pg_restore: error: COPY failed for table "keys": ERROR:  value too long\n'
        b'CONTEXT:  COPY keys, line 1, column k: "sk_live_secret"\n'
        b"Command was: ALTER ROLE app PASSWORD 'SCRAM-SHA-256$4096:abc'\n"
    )
    line = first_error(stderr)
    assert line == 'pg_restore: error: COPY failed for table "keys": ERROR:  value too long'
    assert first_error(b"") == "(no error message)"


def test_rebuild_refuses_on_host_before_touching_anything(tmp_path: Path) -> None:
    from nixmig.phases.preflight import PreflightError
    from nixmig.phases.rebuild import RebuildPreflight

    cfg = write_cfg(copy_example(tmp_path))
    ctx = engine.make_context(cfg, "twenty-db-password", on_host=True, state_dir=tmp_path / "s", connect=no_connect)
    with pytest.raises(PreflightError, match="cannot run on-host"):
        RebuildPreflight().do(ctx)
