"""The Nix side, checked with the nix-instantiate CI has (Debian's nix 2.8, no nixpkgs).

- every .nix file in the repository parses (`nix-instantiate --parse`);
- what needs no nixpkgs is evaluated (`nix-instantiate --eval --strict --json`) through
  the stubs in tests/nix: flake.nix's outputs, nix/package.nix against pyproject.toml,
  nix/module.nix's options rendered to nixmig.toml and loaded by nixmig.config, and the
  deploy-rs helper's activation script, which is then run with bash.

The NixOS VM tests (vm-tests/) need nixpkgs and KVM: `nix flake check` on such a machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from nixmig import config as cfgmod
from nixmig.errors import ConfigError
from tests.helpers import ADMIN_PUB, NEWTON_PUB

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "tests" / "nix"
NIX = "nix-instantiate"

needs_nix = pytest.mark.skipif(shutil.which(NIX) is None, reason="nix-bin not installed")
pytestmark = needs_nix

_SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".nixmig"}


def _nix_files() -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("result")]
        out += [Path(dirpath) / f for f in filenames if f.endswith(".nix")]
    return sorted(out)


def _eval(file: Path, *, args: dict[str, str] | None = None, check: bool = True) -> Any:
    argv = [NIX, "--eval", "--strict", "--json", str(file)]
    for k, v in (args or {}).items():
        argv += ["--argstr", k, v]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- parse


def test_every_nix_file_in_the_repo_parses() -> None:
    files = _nix_files()
    rel = {str(f.relative_to(ROOT)) for f in files}
    assert {"flake.nix", "nix/package.nix", "nix/module.nix", "nix/render.nix", "nix/deploy-rs.nix"} <= rel
    assert {f"vm-tests/{n}.nix" for n in ("default", "common", "password-migration", "native-postgresql")} <= rel
    failed = {}
    for f in files:
        proc = subprocess.run([NIX, "--parse", str(f)], capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            failed[str(f.relative_to(ROOT))] = proc.stderr.strip()
    assert not failed, failed
    assert len(files) >= 50


def test_a_syntax_error_is_caught(tmp_path: Path) -> None:
    """The parse check above would see a broken file (nix-instantiate exits non-zero)."""
    bad = tmp_path / "bad.nix"
    bad.write_text("{ a = 1; b = ; }\n")
    proc = subprocess.run([NIX, "--parse", str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "syntax error" in proc.stderr


# --------------------------------------------------------------------------- flake


def test_flake_outputs() -> None:
    out = _eval(STUBS / "eval-flake.nix")
    systems = ["aarch64-linux", "x86_64-linux"]
    assert out["inputs"] == {"agenix": "github:ryantm/agenix", "nixpkgs": "github:NixOS/nixpkgs/nixos-unstable"}
    assert out["agenixFollows"] == "nixpkgs"
    assert out["outputs"] == ["apps", "checks", "devShells", "formatter", "lib", "nixosModules", "packages"]
    for key in ("packages", "apps", "devShells", "checks"):
        assert sorted(out[key]) == systems, key
    for system in systems:
        assert "default" in out["packages"][system]
        assert out["apps"][system] == ["default"] and out["appType"][system] == "app"
        assert out["devShells"][system] == ["default"]
        assert set(out["checks"][system]) == {
            "package",
            "lint",
            "vm-password-migration",
            "vm-rebuild-strategy",
            "vm-native-postgresql",
            "vm-deploy-rs-hook",
        }
    assert out["formatter"] == systems
    assert out["nixosModules"] == ["default"]
    assert [Path(p).relative_to(ROOT).as_posix() for p in out["moduleImports"]] == ["nix/module.nix"]
    assert out["deployRs"] == ["activateWithMigrations"]


def test_no_flake_lock_with_made_up_hashes() -> None:
    """flake.lock is written by `nix flake lock` on a machine with Nix, never by hand."""
    lock = ROOT / "flake.lock"
    if lock.exists():
        nodes = json.loads(lock.read_text())["nodes"]
        for name, node in nodes.items():
            h = node.get("locked", {}).get("narHash")
            assert h is None or not re.fullmatch(r"sha256-A+=?", h), name


# --------------------------------------------------------------------------- package


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dist_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_package_asks_nixpkgs_for_every_dependency_of_pyproject() -> None:
    pkg = _eval(STUBS / "eval-package.nix")
    project = _pyproject()
    assert pkg["pname"] == project["project"]["name"]
    assert pkg["version"] == project["project"]["version"]
    assert sorted(pkg["dependencies"]) == sorted(_dist_name(r) for r in project["project"]["dependencies"])
    assert pkg["buildSystem"] == [_dist_name(r) for r in project["build-system"]["requires"]]
    assert pkg["mainProgram"] in project["project"]["scripts"]
    wrapper = " ".join(pkg["makeWrapperArgs"])
    for tool in ("age", "openssh", "nix"):
        assert f"/fake/{tool}/bin" in wrapper, tool
    for tool in ("pytest", "age", "openssh", "nix"):
        assert tool in pkg["checkInputs"], tool


def test_pyrage_build_matches_the_lock_file_and_pyproject() -> None:
    pyrage = _eval(STUBS / "eval-package.nix")["pyrage"]
    lock = tomllib.loads(Path(pyrage["lockFile"]).read_text())
    mine = [p for p in lock["package"] if p["name"] == "pyrage"]
    assert [p["version"] for p in mine] == [pyrage["version"]]
    assert all("checksum" in p for p in lock["package"] if p.get("source", "").startswith("registry+"))
    assert not [p for p in lock["package"] if p.get("source", "").startswith("git+")], "git crates need outputHashes"
    (req,) = [r for r in _pyproject()["project"]["dependencies"] if _dist_name(r) == "pyrage"]
    minimum = tuple(int(x) for x in req.split(">=")[1].split("."))
    assert tuple(int(x) for x in pyrage["version"].split(".")) >= minimum
    assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", pyrage["hash"])


def test_the_check_phase_runs_the_unit_tier_minus_the_sandbox_skips() -> None:
    pkg = _eval(STUBS / "eval-package.nix")
    skips = _eval(ROOT / "nix" / "sandbox-skips.nix")
    phase = pkg["checkPhase"]
    assert "pytest" in phase and "-m unit tests/unit" in phase
    for path in skips["paths"]:
        assert f"--ignore={path}" in phase
    (expr,) = re.findall(r"-k '([^']*)'", phase)
    assert expr == "not (" + " or ".join(sorted(skips["tests"])) + ")"


def test_sandbox_skips_name_tests_that_exist() -> None:
    skips = _eval(ROOT / "nix" / "sandbox-skips.nix")
    defined = set()
    for f in (ROOT / "tests" / "unit").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)\(", f.read_text(), re.M))
    assert skips["tests"], "empty skip list: drop the -k from package.nix instead"
    missing = sorted(set(skips["tests"]) - defined)
    assert not missing, f"nix/sandbox-skips.nix names tests that no longer exist: {missing}"
    for path, why in skips["paths"].items():
        assert (ROOT / path).exists(), path
        assert why


# --------------------------------------------------------------------------- module


def _module(
    tmp_path: Path,
    settings: dict[str, Any],
    host: dict[str, Any] | None = None,
    migrations_file: Path | None = None,
) -> dict[str, Any]:
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    args = {"settingsFile": str(tmp_path / "settings.json")}
    if host is not None:
        (tmp_path / "host.json").write_text(json.dumps(host))
        args["hostConfigFile"] = str(tmp_path / "host.json")
    if migrations_file is not None:
        args["migrationsFile"] = str(migrations_file)
    out: dict[str, Any] = _eval(STUBS / "eval-module.nix", args=args)
    return out


def _load(tmp_path: Path, text: str) -> cfgmod.Config:
    path = tmp_path / "etc-nixmig" / "nixmig.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return cfgmod.load(path)


WORKED_EXAMPLE = {
    "enable": True,
    "operator": {"recipients": [ADMIN_PUB]},
    "host": {"ageRecipient": NEWTON_PUB},
    "migrations": {
        "twenty-db-password": {
            "database": {"container": "twenty-db-1", "volume": "twenty_db-data", "name": "default"},
            "after": ["arion-twenty.service"],
            "healthChecks": [{"type": "http", "url": "http://127.0.0.1:3000/healthz", "timeout": 60}],
        }
    },
}


def test_the_module_renders_a_nixmig_toml_that_nixmig_loads(tmp_path: Path) -> None:
    out = _module(tmp_path, WORKED_EXAMPLE)
    assert tomllib.loads(out["toml"]) == out["attrs"]
    cfg = _load(tmp_path, out["toml"])
    host = cfg.hosts["newton"]
    assert (host.transport, host.address, host.agenix_dir, host.lock_dir) == (
        "local",
        "localhost",
        "/run/agenix",
        "/run/nixmig",
    )
    assert host.age_recipient == NEWTON_PUB
    assert cfg.operator.recipients == (ADMIN_PUB,)
    svc = cfg.services["twenty-db-password"]
    assert (svc.host, svc.runtime, svc.container, svc.volume) == ("newton", "docker", "twenty-db-1", "twenty_db-data")
    assert (svc.database, svc.role, svc.admin_role) == ("default", "postgres", "postgres")
    mig = cfg.migrations["twenty-db-password"]
    assert (mig.service, mig.secret, mig.strategy, mig.retention_days) == (
        "twenty-db-password",
        "twenty-db-password",
        "rotate",
        7,
    )
    assert mig.patch_repo is False and mig.deploy is None
    (hc,) = mig.health_checks
    assert (hc.type, hc.url, hc.timeout, hc.retries) == ("http", "http://127.0.0.1:3000/healthz", 60.0, 5)
    assert out["units"]["twenty-db-password"] == {
        "after": ["arion-twenty.service"],
        "before": [],
        "requiredByApp": True,
        "runOnActivation": True,
    }


def test_native_defaults_follow_the_host_config(tmp_path: Path) -> None:
    settings = {
        "enable": True,
        "operator": {"recipients": [ADMIN_PUB]},
        "migrations": {
            "app-db": {
                "secret": "app-db-password",
                "strategy": "dual-role",
                "newRole": "app_v2",
                "database": {"runtime": "native", "name": "app", "role": "app"},
                "before": ["app.service"],
                "healthChecks": [{"type": "command", "command": "app-healthy"}],
            },
            "off": {"enable": False, "database": {"container": "x"}},
        },
    }
    host = {
        "networking": {"hostName": "db1"},
        "age": {"secretsDir": "/run/secrets-age"},
        "services": {"postgresql": {"enable": True, "settings": {"port": 5433}}},
    }
    out = _module(tmp_path, settings, host)
    cfg = _load(tmp_path, out["toml"])
    assert list(cfg.hosts) == ["db1"] and cfg.hosts["db1"].agenix_dir == "/run/secrets-age"
    assert list(cfg.migrations) == ["app-db"], "a disabled migration is not rendered"
    svc = cfg.services["app-db"]
    assert (svc.host, svc.runtime, svc.port, svc.socket_dir, svc.os_user) == (
        "db1",
        "native",
        5433,
        "/run/postgresql",
        "postgres",
    )
    assert svc.container is None
    mig = cfg.migrations["app-db"]
    assert (mig.secret, mig.strategy, mig.new_role) == ("app-db-password", "dual-role", "app_v2")
    assert mig.health_checks[0].command == "app-healthy"
    assert out["units"]["app-db"]["after"] == ["postgresql.service"]
    assert out["units"]["app-db"]["before"] == ["app.service"]


def test_rebuild_options_reach_nixmig(tmp_path: Path) -> None:
    migration = dict(WORKED_EXAMPLE["migrations"]["twenty-db-password"])  # type: ignore[index]
    migration |= {
        "strategy": "rebuild",
        "newVolume": "twenty_db-data-v2",
        "newImage": "nixmig-vm/postgres:17",
        "appStop": "systemctl stop twenty-server",
        "appStart": "systemctl start twenty-server",
    }
    settings = WORKED_EXAMPLE | {"migrations": {"twenty-db-password": migration}}
    mig = _load(tmp_path, _module(tmp_path, settings)["toml"]).migrations["twenty-db-password"]
    assert (mig.strategy, mig.new_volume, mig.new_image) == ("rebuild", "twenty_db-data-v2", "nixmig-vm/postgres:17")
    assert (mig.app_stop, mig.app_start) == ("systemctl stop twenty-server", "systemctl start twenty-server")


def test_settings_are_merged_over_the_options(tmp_path: Path) -> None:
    settings = dict(WORKED_EXAMPLE)
    settings["settings"] = {
        "migrations": {"twenty-db-password": {"retention_days": 30}},
        "reencrypt": {"db": "postgres:///default"},
    }
    cfg = _load(tmp_path, _module(tmp_path, settings)["toml"])
    mig = cfg.migrations["twenty-db-password"]
    assert mig.retention_days == 30 and mig.secret == "twenty-db-password"
    assert cfg.reencrypt == {"db": "postgres:///default"}


def test_the_documented_example_is_a_valid_migration(tmp_path: Path) -> None:
    example = _module(tmp_path, {"enable": True})["migrationsExample"]
    f = tmp_path / "example.nix"
    f.write_text(example)
    out = _module(tmp_path, {"enable": True, "operator": {"recipients": [ADMIN_PUB]}}, migrations_file=f)
    cfg = _load(tmp_path, out["toml"])
    assert cfg.services["twenty-db-password"].container == "twenty-db-1"
    assert cfg.migrations["twenty-db-password"].health_checks[0].type == "http"


def test_a_wrong_value_in_the_rendered_file_is_refused_by_nixmig(tmp_path: Path) -> None:
    """The loader really checks what the module writes (not a test that cannot fail)."""
    text = _module(tmp_path, WORKED_EXAMPLE)["toml"].replace('strategy = "rotate"', 'strategy = "rotat"')
    with pytest.raises(ConfigError, match=r"migrations\.twenty-db-password\.strategy"):
        _load(tmp_path, text)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"migrations": {"m": {"healthcheck": []}}}, "services.nixmig.migrations.m.healthcheck' does not exist"),
        (
            {"migrations": {"m": {"strategy": "swap"}}},
            'services.nixmig.migrations.m.strategy: "swap" is not a valid enum',
        ),
        ({"migrations": {"m": {"database": {"port": "5432"}}}}, "services.nixmig.migrations.m.database.port"),
    ],
)
def test_option_typos_and_types_are_refused(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    (tmp_path / "s.json").write_text(json.dumps(settings))
    proc = _eval(STUBS / "eval-module.nix", args={"settingsFile": str(tmp_path / "s.json")}, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_every_option_has_a_description(tmp_path: Path) -> None:
    assert _module(tmp_path, {})["undocumented"] == []


def test_the_module_uses_markdown_descriptions_not_mddoc() -> None:
    text = (ROOT / "nix" / "module.nix").read_text()
    assert "mdDoc" not in text and "mkPackageOptionMD" not in text


def test_native_default_after_waits_for_postgresql_target_where_nixpkgs_has_it(tmp_path: Path) -> None:
    """Current nixpkgs creates initialScript's / ensureUsers' roles in postgresql-setup.service,
    after postgresql.service is active; postgresql.target waits for both. Without the target
    (older nixpkgs) the service is the right unit."""
    settings = {
        "enable": True,
        "operator": {"recipients": [ADMIN_PUB]},
        "migrations": {"app-db": {"database": {"runtime": "native", "name": "app", "role": "app"}}},
    }
    pg = {"services": {"postgresql": {"enable": True, "settings": {"port": 5432}}}}
    with_target = pg | {"systemd": {"targets": {"postgresql": {}, "multi-user": {}}}}
    assert _module(tmp_path, settings, with_target)["units"]["app-db"]["after"] == ["postgresql.target"]
    assert _module(tmp_path, settings, pg)["units"]["app-db"]["after"] == ["postgresql.service"]
    # a target of that name without services.postgresql (PostgreSQL run some other way): the service
    other: dict[str, Any] = {"systemd": {"targets": {"postgresql": {}}}}
    assert _module(tmp_path, settings, other)["units"]["app-db"]["after"] == ["postgresql.service"]


# --------------------------------------------------------------------------- vm-tests


def _vm() -> dict[str, Any]:
    out: dict[str, Any] = _eval(STUBS / "eval-vm-tests.nix")
    return out


def test_the_postgresql_image_has_run_for_the_socket_and_var_run_links_to_it(tmp_path: Path) -> None:
    """nixpkgs' PostgreSQL on Linux puts its socket in /run/postgresql (socketdir-in-run
    patch) and docker creates no /run: the image's extraCommands, run here with bash in an
    empty root as dockerTools runs them, must make run/ and var/run -> ../run, so that the
    entrypoint's `mkdir -p /var/run/postgresql` makes the directory the server binds in."""
    image = _vm()["image"]
    root = tmp_path / "root"
    root.mkdir()
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", image["extraCommands"]],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (root / "run").is_dir() and not (root / "run").is_symlink()
    assert (root / "var" / "run").is_symlink() and os.readlink(root / "var" / "run") == "../run"
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    entrypoint = (ROOT / "tests" / "harness" / "pgimage" / "docker-entrypoint.sh").read_text()
    assert "mkdir -p /var/run/postgresql" in entrypoint
    (root / "var" / "run" / "postgresql").mkdir(parents=True, exist_ok=True)  # what that line does, in the image
    assert (root / "run" / "postgresql").is_dir(), "the server's DEFAULT_PGSOCKET_DIR /run/postgresql"


def test_the_postgresql_image_starts_the_server_from_its_own_bin() -> None:
    """nixpkgs' PostgreSQL 16+ finds share/ and lib/ relative to the path it was started by
    (relative-to-symlinks patch): started as /bin/postgres (a buildEnv symlink) it would
    look in /share. The image's PATH must reach pg's own bin before /bin."""
    vm = _vm()
    env = dict(e.split("=", 1) for e in vm["image"]["config"]["Env"])
    path = env["PATH"].split(":")
    assert path[0] == f"{vm['pg']}/bin", path
    assert vm["image"]["config"]["Cmd"] == ["postgres"]  # found through PATH by the entrypoint's exec


def test_the_native_vm_tests_wait_for_postgresql_target() -> None:
    """The native VM tests use the role and database that initialScript makes, which exist
    once postgresql-setup.service has run: postgresql.target, not postgresql.service. The
    test scripts are evaluated with their Nix values and compiled as Python."""
    vm = _vm()
    assert vm["app"] == {"after": ["postgresql.target"], "requires": ["postgresql.target"]}
    for name, script in vm["scripts"].items():
        compile(script, f"vm-tests/{name}.nix testScript", "exec")
        waits = re.findall(r"wait_for_unit\(\"([^\"]+)\"\)", script)
        assert waits and waits[0] == "postgresql.target", (name, waits)
        assert "postgresql.service" not in waits, name
        start = script.index("machine.start()")
        first_use = script.index("machine.succeed(", start)  # the seed, through psql as postgres
        assert script.index('wait_for_unit("postgresql.target")', start) < first_use, name


# --------------------------------------------------------------------------- TOML writer


@pytest.mark.parametrize(
    "value",
    ['quote " backslash \\ end', "new\nline\ttab\rcr", "é ü ✓ 🙂", "\x01\x08\x1b\x1f\x7f", "'single' $x ${y} #", ""],
)
def test_the_toml_writer_round_trips_strings(tmp_path: Path, value: str) -> None:
    data = {
        "k": value,
        "t": {"weird key.x": [value, 1, 2.5, True], "n": {"deep": value}},
        "arr": [{"a": value}, {"a": "b"}],
    }
    f = tmp_path / "v.json"
    f.write_text(json.dumps(data))
    expr = f"import {STUBS / 'toml.nix'} (builtins.fromJSON (builtins.readFile {f}))"
    proc = subprocess.run(
        [NIX, "--eval", "--strict", "--json", "--expr", expr], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads(json.loads(proc.stdout)) == data


# --------------------------------------------------------------------------- deploy-rs


class FakeProfile:
    """Stand-ins for a deploy-rs profile and for nixmig, which cannot run here (no NixOS
    activation, no deploy-rs): the base profile's deploy-rs-activate and a fake `nixmig`
    only append what they were called with to a log. What the hook decides from their
    exit codes is what is tested; vm-tests/deploy-rs-hook.nix runs the real thing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "calls.log"
        self.base = root / "base"
        self.nixmig = root / "nixmig"
        (self.base / "bin").mkdir(parents=True)
        (self.base / "etc" / "nixmig").mkdir(parents=True)
        (self.base / "etc" / "nixmig" / "nixmig.toml").write_text("# new generation\n")
        (self.base / ".hidden").write_text("x")
        self._script(
            self.base / "deploy-rs-activate",
            'printf "base DRY_ACTIVATE=%s BOOT=%s PROFILE=%s\\n" \\\n'
            '  "${DRY_ACTIVATE:-}" "${BOOT:-}" "$PROFILE" >> "$CALLS"\n'
            "# a nixmig-NAME unit (runOnActivation = true) applying a migration during the switch\n"
            'if [ -n "${SWITCH_APPLIES:-}" ]; then echo done >> "$JOURNALS/$SWITCH_APPLIES"; fi',
        )
        self._script(self.base / "activate-rs", "exit 0")
        self._script(self.base / "bin" / "switch-to-configuration", "exit 0")
        (self.nixmig / "bin").mkdir(parents=True)
        self.journals = root / "journals"
        self.journals.mkdir()
        # logs its argv (fields separated by |); `status` prints the migration's fake
        # journal (journals/<name>, "not started" when absent); `apply` adds a line to it
        # unless it says "done" already (an earlier deploy's), printing FAKE_APPLY_OUT
        # first; a verb:<migration> in FAKE_FAIL exits 1 (an apply after changing its
        # journal, unless FAKE_FAIL_KEEPS_JOURNAL is set)
        self._script(
            self.nixmig / "bin" / "nixmig",
            'line=nixmig; for a in "$@"; do line="$line|$a"; done; printf "%s\\n" "$line" >> "$CALLS"\n'
            'm=""; prev=""; for a in "$@"; do [ "$prev" = --migration ] && m="$a"; prev="$a"; done\n'
            'j="$JOURNALS/$m"\n'
            'if [ "$1" = status ]; then if [ -e "$j" ]; then cat "$j"; else echo "not started"; fi; exit 0; fi\n'
            'if [ "$1" = apply ] && [ -n "${FAKE_APPLY_OUT:-}" ]; then printf "%s\\n" "$FAKE_APPLY_OUT"; fi\n'
            'case " ${FAKE_FAIL:-} " in *" $1:$m "*)\n'
            '  [ "$1" = apply ] && [ -z "${FAKE_FAIL_KEEPS_JOURNAL:-}" ] && echo "partly applied" >> "$j"; exit 1 ;;\n'
            "esac\n"
            'if [ "$1" = apply ] && ! grep -qs "^done" "$j"; then echo "done" >> "$j"; fi\n'
            "exit 0",
        )

    @staticmethod
    def _script(path: Path, body: str) -> None:
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)

    def evaluate(self, migrations: list[str], **extra: str) -> dict[str, Any]:
        args = {"nixmig": str(self.nixmig), "base": str(self.base), "migrations": json.dumps(migrations)}
        args.update(extra)
        out: dict[str, Any] = _eval(STUBS / "eval-deploy-rs.nix", args=args)
        return out

    def build(self, migrations: list[str], *, nixmig: str | None = None, **extra: str) -> Path:
        """Run the profile's build command (runCommand's) with bash, as the builder would."""
        ev = self.evaluate(migrations, **({"nixmig": nixmig} if nixmig else {}), **extra)
        script = self.root / "hook.sh"
        script.write_text("#!/bin/bash\n" + ev["script"])
        script.chmod(0o755)
        out = self.root / "profile"
        env = {"PATH": os.environ["PATH"], "base": ev["base"], "script": str(script), "out": str(out)}
        proc = subprocess.run(
            ["bash", "-euc", ev["buildCommand"]], env=env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        return out

    def activate(self, profile: Path, *, fail: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        full = {
            "PATH": os.environ["PATH"],
            "PROFILE": str(profile),
            "CALLS": str(self.log),
            "JOURNALS": str(self.journals),
            "FAKE_FAIL": fail,
            **env,
        }
        return subprocess.run(
            [str(profile / "deploy-rs-activate")], env=full, capture_output=True, text=True, timeout=60, check=False
        )

    def calls(self) -> list[list[str]]:
        return [line.split("|") for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake(tmp_path: Path) -> FakeProfile:
    return FakeProfile(tmp_path)


def _cmd(verb: str, cfg: str, m: str, *more: str) -> list[str]:
    return ["nixmig", verb, "--on-host", "-c", cfg, "--migration", m, *more]


def test_deploy_rs_profile_keeps_the_layout_and_replaces_only_the_activation(fake: FakeProfile) -> None:
    ev = fake.evaluate(["twenty-db-password"])
    assert ev["name"] == "nixmig-activatable-nixos-system-newton"
    assert ev["helper"] == ["activateWithMigrations"]
    profile = fake.build(["twenty-db-password"])
    entries = sorted(p.name for p in profile.iterdir())
    assert entries == sorted(["deploy-rs-activate", "activate-rs", "bin", "etc", ".hidden"])
    for name in ("activate-rs", "bin", "etc", ".hidden"):
        assert (profile / name).is_symlink() and os.readlink(profile / name) == str(fake.base / name)
    act = profile / "deploy-rs-activate"
    assert not act.is_symlink() and act.stat().st_mode & stat.S_IXUSR
    assert (profile / "etc" / "nixmig" / "nixmig.toml").read_text() == "# new generation\n"


def test_deploy_rs_switch_plans_then_switches_then_applies(fake: FakeProfile) -> None:
    profile = fake.build(["first", "second one"])
    proc = fake.activate(profile)
    assert proc.returncode == 0, proc.stderr
    cfg = f"{profile}/etc/nixmig/nixmig.toml"
    assert fake.calls() == [
        _cmd("plan", cfg, "first"),
        _cmd("plan", cfg, "second one"),
        # each journal as it was before this activation changed anything
        _cmd("status", cfg, "first", "--json"),
        _cmd("status", cfg, "second one", "--json"),
        ["base DRY_ACTIVATE= BOOT= PROFILE=" + str(profile)],
        _cmd("apply", cfg, "first", "--yes"),
        _cmd("apply", cfg, "second one", "--yes"),
    ]


def test_deploy_rs_dry_activate_only_plans(fake: FakeProfile) -> None:
    profile = fake.build(["first", "second"])
    proc = fake.activate(profile, DRY_ACTIVATE="1")
    assert proc.returncode == 0, proc.stderr
    cfg = f"{profile}/etc/nixmig/nixmig.toml"
    assert fake.calls() == [
        ["base DRY_ACTIVATE=1 BOOT= PROFILE=" + str(profile)],
        _cmd("plan", cfg, "first"),
        _cmd("plan", cfg, "second"),
    ]


def _unit(fake: FakeProfile, migration: str) -> None:
    """The new generation's nixmig-NAME unit (services.nixmig with runOnActivation = true)."""
    units = fake.base / "etc" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    (units / f"nixmig-{migration}.service").write_text("[Service]\n")


def test_deploy_rs_boot_leaves_the_migrations_to_the_units_of_the_boot(fake: FakeProfile) -> None:
    _unit(fake, "first")
    _unit(fake, "second one")
    profile = fake.build(["first", "second one"])
    proc = fake.activate(profile, BOOT="1")
    assert proc.returncode == 0, proc.stderr
    cfg = f"{profile}/etc/nixmig/nixmig.toml"
    assert fake.calls() == [
        _cmd("plan", cfg, "first"),
        _cmd("plan", cfg, "second one"),
        ["base DRY_ACTIVATE= BOOT=1 PROFILE=" + str(profile)],
    ]
    assert "units run the migrations (first second one) when it boots" in proc.stderr


def test_deploy_rs_boot_refuses_when_nothing_would_run_a_migration_at_boot(fake: FakeProfile) -> None:
    """runOnActivation = false (what the hook's README example sets): no nixmig-NAME unit in
    the new generation, so nothing would run the migration, and that generation expects its
    new password. The hook refuses before anything changes, naming the migration."""
    _unit(fake, "first")
    profile = fake.build(["first", "second"])
    proc = fake.activate(profile, BOOT="1")
    assert proc.returncode == 1
    assert fake.calls() == [], "neither the base's activation nor nixmig ran"
    (line,) = proc.stderr.splitlines()
    assert "deploy --boot" in line and "migration(s) second " in line and "(nothing was changed)" in line
    assert "Deploy without --boot" in line and "runOnActivation = true" in line


def test_deploy_rs_a_failing_plan_stops_before_the_switch(fake: FakeProfile) -> None:
    profile = fake.build(["first", "second"])
    proc = fake.activate(profile, fail="plan:second")
    assert proc.returncode == 1
    assert [c[:2] for c in fake.calls()] == [["nixmig", "plan"], ["nixmig", "plan"]]
    assert "not activating (nothing was changed)" in proc.stderr


def test_deploy_rs_a_failing_apply_fails_the_activation_and_says_what_to_run(fake: FakeProfile) -> None:
    profile = fake.build(["first", "second", "third"])
    proc = fake.activate(profile, fail="apply:second")
    assert proc.returncode == 1
    verbs = [(c[1], c[6]) for c in fake.calls() if c[0] == "nixmig" and c[1] != "status"]
    assert verbs == [("plan", "first"), ("plan", "second"), ("plan", "third"), ("apply", "first"), ("apply", "second")]
    assert "nixmig rollback --on-host" in proc.stderr and "-i OPERATOR_KEY" in proc.stderr
    assert proc.stderr.index("--migration second") < proc.stderr.index("--migration first")
    assert "deploy-rs rolls the profile back" in proc.stderr


def test_deploy_rs_with_an_identity_rolls_back_in_reverse(fake: FakeProfile) -> None:
    profile = fake.build(["first", "second", "third"], rollbackIdentity="/root/operator key")
    proc = fake.activate(profile, fail="apply:third")
    assert proc.returncode == 1
    cfg = f"{profile}/etc/nixmig/nixmig.toml"
    rollbacks = [c for c in fake.calls() if c[1:2] == ["rollback"]]
    assert rollbacks == [
        _cmd("rollback", cfg, m, "--yes", "-i", "/root/operator key") for m in ("third", "second", "first")
    ]


def test_deploy_rs_rolls_back_only_what_this_activation_changed(fake: FakeProfile) -> None:
    """`first` was applied by an earlier deploy (its journal says done, apply exits 0 with
    nothing to do): the generation deploy-rs goes back to expects its new password, so a
    later failure must not roll it back. `second` is applied now, `third` fails."""
    (fake.journals / "first").write_text("done\n")
    profile = fake.build(["first", "second", "third"], rollbackIdentity="/root/operator key")
    proc = fake.activate(profile, fail="apply:third")
    assert proc.returncode == 1
    cfg = f"{profile}/etc/nixmig/nixmig.toml"
    rollbacks = [c for c in fake.calls() if c[1:2] == ["rollback"]]
    assert rollbacks == [_cmd("rollback", cfg, m, "--yes", "-i", "/root/operator key") for m in ("third", "second")]
    assert "migration first: nothing changed by this activation (done before), left as it is" in proc.stderr
    assert (fake.journals / "first").read_text() == "done\n"


def test_deploy_rs_without_an_identity_names_only_what_this_activation_changed(fake: FakeProfile) -> None:
    (fake.journals / "first").write_text("done\n")
    profile = fake.build(["first", "second"])
    proc = fake.activate(profile, fail="apply:second")
    assert proc.returncode == 1
    assert "--migration second -i OPERATOR_KEY" in proc.stderr
    assert "--migration first -i" not in proc.stderr


def test_deploy_rs_a_migration_a_unit_applied_during_the_switch_is_this_activations(fake: FakeProfile) -> None:
    """With runOnActivation = true the nixmig-NAME unit applies `first` inside
    switch-to-configuration, before the hook's own apply finds it done: the journals are
    read before the switch, so it still counts as changed by this activation."""
    profile = fake.build(["first", "second"], rollbackIdentity="/root/k")
    proc = fake.activate(profile, fail="apply:second", SWITCH_APPLIES="first")
    assert proc.returncode == 1
    rolled = [c[6] for c in fake.calls() if c[1:2] == ["rollback"]]
    assert rolled == ["second", "first"]


def test_deploy_rs_a_failed_migration_that_changed_nothing_is_not_rolled_back(fake: FakeProfile) -> None:
    """An apply that fails before changing its journal (say, the new secret is missing in
    this activation) of a migration done earlier: nothing of this activation to undo."""
    (fake.journals / "only").write_text("done\n")
    profile = fake.build(["only"], rollbackIdentity="/root/k")
    proc = fake.activate(profile, fail="apply:only", FAKE_FAIL_KEEPS_JOURNAL="1")
    assert proc.returncode == 1
    assert [c for c in fake.calls() if c[1:2] == ["rollback"]] == []
    assert "nothing this activation changed needs undoing" in proc.stderr


_PREFLIGHT = "==> [1/7] preflight: running\n    3 tables, {mib} MiB\n    preflight done in 0.2s"
_BACKUP = "\n==> [2/7] backup: running"


def test_deploy_rs_warns_before_a_backup_longer_than_the_activation_timeout(fake: FakeProfile) -> None:
    """deploy-rs (magic rollback) gives up after activationTimeout and the host then
    deactivates the generation: at 20 MiB/s, 6000 MiB take 300 s > 240 s."""
    profile = fake.build(["big"])  # the helper's defaults: activationTimeout 240, 20 MiB/s
    proc = fake.activate(profile, FAKE_APPLY_OUT=_PREFLIGHT.format(mib=6000) + _BACKUP)
    assert proc.returncode == 0, proc.stderr
    assert "3 tables, 6000 MiB" in proc.stdout and "backup: running" in proc.stdout  # passed through
    (warning,) = [ln for ln in proc.stderr.splitlines() if "activationTimeout" in ln]
    assert warning.startswith("nixmig: migration big: the backup of 6000 MiB may take 300s (at 20 MiB/s)")
    assert "of deploy-rs's activationTimeout (240s)" in warning and "raise activationTimeout" in warning


def test_deploy_rs_no_warning_for_a_backup_that_fits(fake: FakeProfile) -> None:
    profile = fake.build(["small"], activationTimeout="600", backupMiBPerSecond="50")
    proc = fake.activate(profile, FAKE_APPLY_OUT=_PREFLIGHT.format(mib=6000) + _BACKUP)  # 120 s < 600 s
    assert proc.returncode == 0, proc.stderr
    assert "activationTimeout" not in proc.stderr


def test_deploy_rs_no_warning_when_the_backup_was_done_before(fake: FakeProfile) -> None:
    """A resumed run: preflight runs again but no backup starts."""
    resumed = _PREFLIGHT.format(mib=99999) + "\n==> [2/7] backup: done before, skipped"
    proc = fake.activate(fake.build(["resumed"]), FAKE_APPLY_OUT=resumed)
    assert proc.returncode == 0 and "activationTimeout" not in proc.stderr
    assert "backup: done before, skipped" in proc.stdout


def test_deploy_rs_without_magic_rollback_apply_runs_unfiltered(fake: FakeProfile) -> None:
    profile = fake.build(["m"], activationTimeout="null")
    proc = fake.activate(profile, FAKE_APPLY_OUT=_PREFLIGHT.format(mib=99999) + _BACKUP)
    assert proc.returncode == 0 and "activationTimeout" not in proc.stderr
    assert "99999 MiB" in proc.stdout


def test_deploy_rs_a_failing_apply_behind_the_backup_watch_still_fails(fake: FakeProfile) -> None:
    profile = fake.build(["m"], rollbackIdentity="/root/k")
    proc = fake.activate(profile, fail="apply:m", FAKE_APPLY_OUT=_PREFLIGHT.format(mib=1) + _BACKUP)
    assert proc.returncode == 1
    assert [c[6] for c in fake.calls() if c[1:2] == ["rollback"]] == ["m"]


def test_deploy_rs_backup_watch_reads_the_lines_apply_prints(fake: FakeProfile) -> None:
    """The hook recognises preflight's size line and the backup's start by their text:
    those come from nixmig's own apply progress (cli/migrate.py _Progress, non-tty) and
    preflight's emit. If either changes, this fails and names the hook to update."""
    import contextlib
    import io

    from nixmig.cli.migrate import _Progress

    preflight = (ROOT / "nixmig" / "phases" / "preflight.py").read_text()
    assert 'ctx.emit(f"{facts.table_count} tables, {size // 2**20} MiB")' in preflight
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        p = _Progress(7)
        p.on_phase("preflight", "running", None)
        p.emit("3 tables, 6000 MiB")
        p.on_phase("preflight", "done", 0.2)
        p.on_phase("backup", "running", None)
    # the hook's two bash regexes, as the evaluated script has them (ERE; "\\ " and "\\>" are literal)
    size_re, backup_re = re.findall(r"\$line =~ (.+?) \]\]", fake.evaluate(["m"])["script"])
    lines = out.getvalue().splitlines()
    for bash_re, what in ((size_re, "preflight's size"), (backup_re, "the backup's start")):
        py = bash_re.replace("\\ ", " ").replace("\\>", ">")
        assert any(re.search(py, ln) for ln in lines), (what, bash_re, lines)
    # and bash itself matches them on those lines
    script = "".join(f"[[ $1 =~ {r} ]] && echo yes || echo no\n" for r in (size_re, backup_re))
    for ln, want in ((lines[1], "yes\nno"), (lines[3], "no\nyes")):
        got = subprocess.run(["bash", "-c", script, "bash", ln], capture_output=True, text=True, check=True).stdout
        assert got.strip() == want, (ln, got)


def test_deploy_rs_an_explicit_config_is_used_as_given(fake: FakeProfile) -> None:
    profile = fake.build(["m"], config="/etc/other dir/nixmig.toml")
    assert fake.activate(profile).returncode == 0
    assert fake.calls()[0] == _cmd("plan", "/etc/other dir/nixmig.toml", "m")


def test_deploy_rs_refuses_a_base_that_is_not_a_deploy_rs_profile(fake: FakeProfile) -> None:
    (fake.base / "activate-rs").unlink()
    ev = fake.evaluate(["m"])
    env = {"PATH": os.environ["PATH"], "base": ev["base"], "script": "/dev/null", "out": str(fake.root / "o")}
    proc = subprocess.run(["bash", "-euc", ev["buildCommand"]], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "has no activate-rs" in proc.stderr


def test_deploy_rs_refuses_an_empty_migration_list(fake: FakeProfile) -> None:
    proc = _eval(
        STUBS / "eval-deploy-rs.nix",
        args={"nixmig": str(fake.nixmig), "base": str(fake.base), "migrations": "[]"},
        check=False,
    )
    assert proc.returncode != 0 and "migrations must be a non-empty list" in proc.stderr


@pytest.mark.parametrize(
    ("arg", "value", "message"),
    [
        ("activationTimeout", '"240"', "activationTimeout must be deploy-rs's activationTimeout in seconds, or null"),
        ("activationTimeout", "0", "activationTimeout must be deploy-rs's activationTimeout in seconds, or null"),
        ("backupMiBPerSecond", "0", "backupMiBPerSecond must be a positive integer"),
    ],
)
def test_deploy_rs_refuses_a_wrong_timeout_or_rate(fake: FakeProfile, arg: str, value: str, message: str) -> None:
    args = {"nixmig": str(fake.nixmig), "base": str(fake.base), "migrations": '["m"]', arg: value}
    proc = _eval(STUBS / "eval-deploy-rs.nix", args=args, check=False)
    assert proc.returncode != 0 and message in proc.stderr


def test_deploy_rs_dry_activate_plans_with_the_real_nixmig_and_the_module_config(
    fake: FakeProfile, tmp_path: Path
) -> None:
    """The whole chain without fakes for nixmig: the module renders nixmig.toml into the
    new generation's /etc, the hook's dry-activate runs `nixmig plan --on-host` on it."""
    rendered = _module(tmp_path, WORKED_EXAMPLE)["toml"]
    (fake.base / "etc" / "nixmig" / "nixmig.toml").write_text(rendered)
    real = tmp_path / "real-nixmig"
    (real / "bin").mkdir(parents=True)
    FakeProfile._script(real / "bin" / "nixmig", f'exec {sys.executable} -m nixmig "$@"')
    profile = fake.build(["twenty-db-password"], nixmig=str(real))
    proc = fake.activate(profile, DRY_ACTIVATE="1", NIXMIG_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    assert "migration twenty-db-password: postgres@docker container twenty-db-1 on newton (on-host)" in proc.stdout
    assert "ALTER ROLE" in proc.stdout and "********" in proc.stdout
    assert not (tmp_path / "state").exists(), "a dry activation writes nothing"


def test_the_real_nixmig_status_the_hook_compares_is_stable_and_writes_nothing(tmp_path: Path) -> None:
    """The hook decides "changed by this activation" by comparing `nixmig status --on-host
    --json` before the switch and after the apply: with nothing done in between, the real
    nixmig must print the same text twice (and create no state by looking)."""
    rendered = _module(tmp_path, WORKED_EXAMPLE)["toml"]
    cfg = tmp_path / "nixmig.toml"
    cfg.write_text(rendered)
    env = {**os.environ, "NIXMIG_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "nixmig", "status", "--on-host", "-c", str(cfg)]
    argv += ["--migration", "twenty-db-password", "--json"]
    runs = [subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stdout == runs[1].stdout and json.loads(runs[0].stdout)["completed"] is None
    assert not (tmp_path / "state").exists()
