"""One template per pattern: each renders Nix that parses, and each pattern patches a small repo end to end.

Patterns: arion service (the worked example, see test_patch_example), virtualisation.oci-containers
with environmentFiles, a NixOS module option with passwordFile, a plain systemd service with
LoadCredential. The shell each one renders is run here, as Nix builds it.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from nixmig.nixsrc import patch as pt
from nixmig.nixsrc import validate
from nixmig.nixsrc.quote import Antiquote, nix_string, shell_quote
from nixmig.nixsrc.render import TEMPLATES, EnvFile, EnvLine, render_script, script_in_nix, template

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-bin not installed")

SECRET = "app-db"
PASSWORD = "s3cret/+="
ENCODED = quote(PASSWORD, safe="")

BOX = f"""{{ config, pkgs, ... }}:
{{
  age.secrets.other.file = ../../secrets/other.age;

  virtualisation.oci-containers.backend = "docker";
  virtualisation.oci-containers.containers = {{
    db = {{
      image = "postgres:16";
      environment = {{ POSTGRES_PASSWORD = "{PASSWORD}"; }};
    }};
    app = {{
      image = "app:1";
      environment.DATABASE_URL = "postgresql://postgres:{ENCODED}@db:5432/app?sslmode=disable";
      environment.OTHER = "x";
    }};
  }};

  systemd.services.myapp = {{
    wantedBy = [ "multi-user.target" ];
    environment.DATABASE_URL = "postgres://postgres:{ENCODED}@127.0.0.1:5432/app";
    serviceConfig.ExecStart = "${{pkgs.hello}}/bin/hello";
  }};
}}
"""

SPEC = pt.Spec(secret=SECRET, host="box", container="db")


def _parse(text: str) -> None:
    proc = subprocess.run(["nix-instantiate", "--parse", "-"], input=text.encode(), capture_output=True, check=False)
    assert proc.returncode == 0, f"{proc.stderr.decode()}\n---\n{text}"


def _eval(expr: str) -> object:
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-"], input=expr.encode(), capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


# ---------------------------------------------------------------- every template parses


def _files() -> list[EnvFile]:
    return [EnvFile("/run/u/s.env", (EnvLine("DATABASE_URL", "postgres://u:", "@h:5432/d?x=1&y=2"),))]


def rendered_snippets() -> dict[str, str]:
    """Every macro of every template, rendered with awkward values, as a Nix expression."""
    arion = template("arion-service.nix.j2")
    oci = template("oci-containers.nix.j2")
    sysd = template("systemd-credential.nix.j2")
    age = template("agenix-secret.nix.j2")
    opt = template("module-option.nix.j2")
    script = script_in_nix("s", Antiquote("lib.escapeShellArg config.age.secrets.s.path"), _files())
    cred_script = script_in_nix("s", pt.credential_word("s"), _files())
    return {
        "agenix-secret.nix.j2": "{ " + str(age.entry('age.secrets."we\'ird"', "../secrets/x.age")) + " }",
        "module-option.nix.j2": "{ " + str(opt.password_file("services.x.passwordFile", "s")) + " }",
        "arion-service.nix.j2": "{ "
        + "\n".join(
            [
                str(arion.password_file_env("POSTGRES_PASSWORD_FILE", '/run/secrets/"q"')),
                str(arion.volumes("volumes", "/run/agenix/s", "/run/secrets/s")),
                str(arion.env_file("env_file", ["/run/u/s.env", "/run/u/$x.env"])),
                str(arion.external_volume('docker-compose.volumes."d-2"', 'v"${x}')),
                str(arion.unit("systemd.services.u.serviceConfig", "u", "u", ["/run/u/s.env"], "u-s-env", script)),
            ]
        )
        + " }",
        "oci-containers.nix.j2": "{ "
        + "\n".join(
            [
                str(oci.environment_files("environmentFiles", ["/run/c/s.env"])),
                str(oci.volumes("volumes", "${config.age.secrets.s.path}", "/run/secrets/s")),
                str(oci.password_file_env("POSTGRES_PASSWORD_FILE", "/run/secrets/s")),
                str(
                    oci.unit(
                        'systemd.services."${config.virtualisation.oci-containers.backend}-c".serviceConfig',
                        "c",
                        "c",
                        ["/run/c/s.env"],
                        "c-s-env",
                        script,
                    )
                ),
            ]
        )
        + " }",
        "systemd-credential.nix.j2": "{ "
        + str(
            sysd.unit("systemd.services.u.serviceConfig", "u", "s", "s", "u", ["/run/u/s.env"], "u-s-env", cred_script)
        )
        + " }",
        "_renderer.nix.j2": "{ " + str(template("_renderer.nix.j2").service_config("", "u", "n", script)) + " }",
        "env-file-unit.nix.j2": "{ "
        + str(
            template("env-file-unit.nix.j2").unit(
                'systemd.services."s-env"',
                'we"ird',
                "s-env",
                ["a", 'b"${x}'],
                "config.services.x.user",
                "s",
                "s",
                "s-env",
                "/run/s-env/s.env",
                "s-env-render",
                cred_script,
            )
        )
        + " }",
        "pgpass-unit.nix.j2": "{ "
        + str(
            template("pgpass-unit.nix.j2").unit(
                "systemd.services.u.serviceConfig",
                'we"ird',
                's"${x}',
                "s",
                "/run/u/s.pgpass",
                "u-s-pgpass",
                cred_script,
            )
        )
        + " }",
        "container-secret.nix.j2": "{ "
        + "\n".join(
            [
                str(template("container-secret.nix.j2").bind_mount('containers.c.bindMounts."/run/a/s"', "s")),
                str(
                    template("container-secret.nix.j2").copy_unit(
                        'containers.c.config.systemd.services."s-copy"',
                        's"${x}',
                        "s",
                        "/run/s/s",
                        "nextcloud",
                        ["nextcloud-setup", 'we"ird'],
                        "''\n  install -- /run/a/s /run/s/s\n''",
                    )
                ),
            ]
        )
        + " }",
        "mysql-user-password.nix.j2": "{ "
        + str(
            template("mysql-user-password.nix.j2").unit(
                'systemd.services."nixmig-s-password"', "s", "s", 'we"ird', ["'we'@'localhost'", "'b'@'%'"], "s"
            )
        )
        + " }",
        "role-password.nix.j2": "{ "
        + str(
            template("role-password.nix.j2").unit(
                'systemd.services."nixmig-s-password"', "s", "s", 'we"ird', '"we""ird" \'\'${x}', "s"
            )
        )
        + " }",
        "role-password-exec.nix.j2": "{ "
        + str(
            template("role-password-exec.nix.j2").unit(
                'systemd.services."nixmig-s-password"',
                "s",
                "s",
                'we"ird',
                '\\"we""ird\\" \'\'${x}',
                "s",
                "${pkgs.podman}/bin/podman exec",
                "postgres",
                "pg",
                ["make-db.service", "podman-pg.service"],
                "make-db",
            )
        )
        + " }",
    }


@needs_nix
def test_every_template_renders_nix_that_parses() -> None:
    snippets = rendered_snippets()
    # shell, not Nix: run by bash in the env file and let_script tests (percent-encode.sh.j2 is a macro of both)
    assert set(snippets) | {"env-file.sh.j2", "percent-encode.sh.j2"} == {p.name for p in TEMPLATES.iterdir()}
    for text in snippets.values():
        # nix-instantiate --parse also resolves variables: the snippets need exactly what modules give
        _parse("{ config, lib, pkgs, ... }: " + text)


def test_templates_escape_values_explicitly() -> None:
    arion = template("arion-service.nix.j2")
    assert str(arion.env_file("env_file", ['/run/a "b"/${x}.env'])) == 'env_file = [ "/run/a \\"b\\"/\\${x}.env" ];'
    sysd = template("systemd-credential.nix.j2")
    out = str(sysd.unit("serviceConfig", "u", 'we"ird', "s", "u", ["/run/u/s.env"], "n", "''\n''"))
    assert 'LoadCredential = [ "we\\"ird:${config.age.secrets.s.path}" ];' in out
    assert 'EnvironmentFile = [ "-/run/u/s.env" ];' in out
    script = render_script("s", shell_quote("/p w"), [EnvFile("/run/it's/s.env", (EnvLine("V", "a'b", "$c"),))])
    assert "password_file='/p w'" in script
    assert "printf '%s=%s%s%s\\n' V 'a'\"'\"'b' \"$password\" '$c'" in script
    assert "mv -f -- \"$tmp\" '/run/it'\"'\"'s/s.env'" in script


# ---------------------------------------------------------------- oci-containers and systemd


def _box(tmp_path: Path) -> tuple[dict[str, bytes], pt.Plan]:
    src = {"hosts/box/default.nix": BOX.encode()}
    return src, pt.plan(src, SPEC)


def test_oci_containers_and_systemd_patterns(tmp_path: Path) -> None:
    src, plan = _box(tmp_path)
    assert plan.manual == ()
    out = plan.results(src)["hosts/box/default.nix"].decode()
    # formals gain lib (before the ellipsis); the age secret sits beside the existing one
    assert out.startswith(
        "{ config, pkgs, lib, ... }:\n{\n  age.secrets.other.file = ../../secrets/other.age;\n"
        '  age.secrets.app-db = {\n    file = ../../secrets/app-db.age;\n    mode = "0400";\n  };\n'
    )
    # database container: a password file, bind-mounted read-only
    assert 'environment = { POSTGRES_PASSWORD_FILE = "/run/secrets/app-db"; };' in out
    assert 'volumes = [ "${config.age.secrets.app-db.path}:/run/secrets/app-db:ro" ];' in out
    # app container: the URL leaves environment for environmentFiles, rendered by its unit
    assert 'DATABASE_URL = "postgresql' not in out
    assert 'environmentFiles = [ "/run/app/app-db.env" ];' in out
    assert 'systemd.services."${config.virtualisation.oci-containers.backend}-app".serviceConfig = {' in out
    # systemd unit: LoadCredential + EnvironmentFile + the renderer, inside the unit's attrset
    assert 'LoadCredential = [ "app-db:${config.age.secrets.app-db.path}" ];' in out
    assert 'EnvironmentFile = [ "-/run/myapp/app-db.env" ];' in out
    assert 'password_file="$CREDENTIALS_DIRECTORY"/app-db' in out
    assert PASSWORD not in out and ENCODED not in out
    assert "readFile" not in out


@needs_nix
def test_oci_and_systemd_results_parse_and_converge(tmp_path: Path) -> None:
    src, plan = _box(tmp_path)
    results = plan.results(src)
    validate.check_all(results, use_nix=True)
    again = pt.plan({**src, **results}, SPEC)
    assert again.edits == () and again.manual == ()


STUB = """
let
  lib.escapeShellArg = arg: "'${builtins.replaceStrings ["'"] ["'\\\\''"] (toString arg)}'";
  lib.mkBefore = xs: xs;  # nixpkgs' mkOrder 500: an order among definitions, none to merge here
  pkgs = { writeShellScript = name: text: text; hello = "/hello"; };
  config = {
    age.secrets.app-db.path = PWPATH;
    virtualisation.oci-containers.backend = "docker";
  };
  m = import MODULE { inherit config lib pkgs; };
in { oci = m.systemd.services.docker-app.serviceConfig; unit = m.systemd.services.myapp.serviceConfig; }
"""


def _run(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, check=False
    )


@needs_nix
@pytest.mark.parametrize("password", [b"/ + = @ : % ?", b"sp ace 'q' \"dq\" \\bs ${x}"])
def test_the_oci_and_systemd_renderers_run(tmp_path: Path, password: bytes) -> None:
    src, plan = _box(tmp_path)
    module = tmp_path / "box.nix"
    module.write_bytes(plan.results(src)["hosts/box/default.nix"])
    pw = tmp_path / "agenix" / SECRET
    pw.parent.mkdir()
    pw.write_bytes(password)
    expr = STUB.replace("PWPATH", nix_string(str(pw))).replace("MODULE", str(module))
    units = _eval(expr)
    assert isinstance(units, dict)
    oci, unit = units["oci"], units["unit"]
    assert oci["RuntimeDirectory"] == "app" and oci["RuntimeDirectoryMode"] == "0700"
    assert unit["LoadCredential"] == [f"{SECRET}:{pw}"]
    assert unit["EnvironmentFile"] == ["-/run/myapp/app-db.env"]
    assert unit["ExecStart"] == "/hello/bin/hello"
    want = quote(password, safe="")
    # oci: reads the agenix path; systemd: reads $CREDENTIALS_DIRECTORY/app-db (systemd's copy of it)
    creds = tmp_path / "credentials"
    creds.mkdir()
    shutil.copyfile(pw, creds / SECRET)
    for cfg, run_dir, line in (
        (oci, "app", f"DATABASE_URL=postgresql://postgres:{want}@db:5432/app?sslmode=disable\n"),
        (unit, "myapp", f"DATABASE_URL=postgres://postgres:{want}@127.0.0.1:5432/app\n"),
    ):
        (script,) = cfg["ExecStartPre"]
        target = tmp_path / "run" / run_dir
        target.mkdir(parents=True, mode=0o700)
        proc = _run(script.replace(f"/run/{run_dir}/", f"{target}/"), tmp_path, {"CREDENTIALS_DIRECTORY": str(creds)})
        assert proc.returncode == 0, proc.stderr.decode()
        env = target / f"{SECRET}.env"
        assert env.read_text() == line
        assert stat.S_IMODE(env.stat().st_mode) == 0o400


# ---------------------------------------------------------------- module option with passwordFile

MODULE_OPT = """{ config, lib, ... }:
{
  options.services.foo.database = {
    password = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; };
    passwordFile = lib.mkOption { type = lib.types.nullOr lib.types.path; default = null; };
  };
  config = { };
}
"""

HOST_OPT = """{ config, ... }:
{
  imports = [ ../modules/foo.nix ];
  services.foo = {
    enable = true;
    database.password = "hunter2"; # set by hand in 2019
  };
}
"""


@needs_nix
def test_module_option_literal_becomes_password_file() -> None:
    src = {"modules/foo.nix": MODULE_OPT.encode(), "hosts/h.nix": HOST_OPT.encode()}
    spec = pt.Spec(secret="foo-db", role="foo", module="modules/foo.nix")
    plan = pt.plan(src, spec)
    assert plan.manual == ()
    out = plan.results(src)
    host = out["hosts/h.nix"].decode()
    assert "    database.passwordFile = config.age.secrets.foo-db.path; # set by hand in 2019\n" in host
    assert "hunter2" not in host and "hunter2" not in plan.diff(src)
    # `config = { };` was empty: the entry goes on lines of its own inside it
    assert (
        out["modules/foo.nix"]
        .decode()
        .endswith(
            '  config = {\n    age.secrets.foo-db = {\n      file = ../secrets/foo-db.age;\n      mode = "0400";\n'
            "    };\n  };\n}\n"
        )
    )
    validate.check_all(out, use_nix=True)
    assert pt.plan({**src, **out}, spec).edits == ()
    (edit,) = [e for e in plan.edits if e.file == "hosts/h.nix"]
    assert "replaces the hardcoded services.foo.database.password" in edit.explanation


def test_password_file_is_added_where_the_host_sets_the_service() -> None:
    host = HOST_OPT.replace('    database.password = "hunter2"; # set by hand in 2019\n', "")
    src = {"modules/foo.nix": MODULE_OPT.encode(), "hosts/h.nix": host.encode()}
    plan = pt.plan(src, pt.Spec(secret="foo-db", role="foo", module="modules/foo.nix"))
    new = plan.results(src)["hosts/h.nix"].decode()
    assert "    enable = true;\n    database.passwordFile = config.age.secrets.foo-db.path;\n  };" in new
