"""`nixmig init`: the draft of the worked example (golden), the shape corpus, the refusals.

The core (nixmig.draft) is tested on sources in memory; the CLI on copies of the fixtures,
through the real command. NIXMIG_UPDATE_GOLDEN=1 rewrites tests/fixtures/init/*.toml.
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from nixmig import config
from nixmig.draft import Draft, draft
from nixmig.inventory import Node
from nixmig.nixsrc.patch import read_sources, read_texts
from tests.helpers import ADMIN_PUB, EXAMPLE, FIXTURES, NEWTON_PUB, copy_example, run_cli, snapshot

pytestmark = pytest.mark.unit

GOLDEN = FIXTURES / "init" / "newton-dotfiles.toml"
SHAPES = FIXTURES / "shapes"
# a shape whose secret is no database password (case.json "init": "nothing"): init says so
NOT_A_DATABASE = {
    p.name
    for p in SHAPES.iterdir()
    if (p / "case.json").is_file() and '"init": "nothing"' in (p / "case.json").read_text()
}
# a native service's own secret with a file variant (case.json "init": "move"), no database password in
# the repo: init drafts a strategy move migration for the service, and patch moves the secret with it
SERVICE_SECRET = {
    p.name
    for p in SHAPES.iterdir()
    if (p / "case.json").is_file() and '"init": "move"' in (p / "case.json").read_text()
}
CASES = sorted(
    p.name for p in SHAPES.iterdir() if (p / "nixmig.toml").is_file() and p.name not in NOT_A_DATABASE | SERVICE_SECRET
)


@pytest.mark.parametrize("case", sorted(NOT_A_DATABASE))
def test_a_shape_that_is_no_database_password_has_nothing_to_migrate(case: str) -> None:
    proc = run_cli("init", "--print", "--no-eval", "--repo", str(SHAPES / case))
    assert proc.returncode == 0
    assert proc.stdout.decode().startswith("nothing to migrate: no hardcoded database password")


@pytest.mark.parametrize("case", sorted(SERVICE_SECRET))
def test_a_service_secret_alone_is_drafted_as_a_move_that_patch_moves(case: str, tmp_path: Path) -> None:
    from nixmig.nixsrc import patch as pt

    repo = tmp_path / case
    shutil.copytree(SHAPES / case, repo)
    (repo / "nixmig.toml").unlink()
    proc = run_cli("init", "--no-eval", "--repo", str(repo))
    assert proc.returncode == 0, proc.stderr.decode()
    cfg = config.load(repo / "nixmig.toml")
    (name, mig) = next(iter(cfg.migrations.items()))
    assert len(cfg.migrations) == 1 and mig.strategy == "move"
    assert cfg.services[mig.service].runtime == "native"
    assert "not a database's password" in (repo / "nixmig.toml").read_text()
    plan = pt.plan(read_sources(repo), pt.spec_for(cfg, name), find_companions=True)  # as `nixmig patch` plans
    assert plan.edits and not plan.manual  # the draft names what patch moves, nothing left (companions found)


KEY_A = ADMIN_PUB
KEY_H = NEWTON_PUB


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "draft" / "nixmig.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return config.load(path)


def checked_keys(toml: str) -> dict[str, set[str]]:
    """table -> the keys whose line follows a `# check:` line (guesses)."""
    out: dict[str, set[str]] = {}
    table, prev = "", ""
    for line in toml.splitlines():
        if line.startswith("["):
            table = line.strip("[]")
        m = re.match(r"([A-Za-z_]+) = ", line)
        if m and prev.startswith("# check:"):
            out.setdefault(table, set()).add(m.group(1))
        prev = line
    return out


# ---------------------------------------------------------------- the worked example


def test_worked_example_golden(tmp_path: Path) -> None:
    d = draft(read_sources(EXAMPLE))
    if os.environ.get("NIXMIG_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(d.toml)
    assert d.toml == GOLDEN.read_text()
    cfg = load(tmp_path, d.toml)
    assert cfg.secrets_dir == "secrets"
    assert cfg.operator.recipients == (KEY_A,)
    assert list(cfg.hosts) == ["newton"]
    host = cfg.hosts["newton"]
    assert (host.address, host.user, host.age_recipient) == ("newton", "root", KEY_H)
    svc = cfg.services["twenty-db"]
    assert (svc.host, svc.runtime, svc.container, svc.volume) == ("newton", "docker", "twenty-db-1", "twenty_db-data")
    assert (svc.database, svc.role, svc.admin_role) == ("default", "postgres", "postgres")
    ((name, mig),) = cfg.migrations.items()
    assert name == "twenty-db-password"
    assert (mig.service, mig.secret, mig.strategy) == ("twenty-db", "twenty-db-password", "rotate")
    assert mig.deploy == "deploy --skip-checks .#newton"
    assert d.checks == ()  # the repo says everything the draft holds


def test_every_value_says_where_it_came_from() -> None:
    d = draft(read_sources(EXAMPLE))
    values = [ln for ln in d.toml.splitlines() if re.match(r"[A-Za-z_]+ = ", ln)]
    assert len(values) >= 15
    for line in values:
        assert "  # from " in line, line
    # every FILE:LINE names a line of that file holding what the comment says
    refs = re.findall(r"([\w./-]+\.nix):(\d+)", d.toml)
    assert refs
    for file, n in refs:
        lines = (EXAMPLE / file).read_text().splitlines()
        assert 1 <= int(n) <= len(lines), (file, n)
    assert "flake.nix:21 (deploy.nodes.newton.hostname)" in d.toml
    assert 'hostname = "newton"' in (EXAMPLE / "flake.nix").read_text().splitlines()[20]
    assert "POSTGRES_DB" in (EXAMPLE / "modules/system/linux/twenty/arion-compose.nix").read_text().splitlines()[44]


def test_apps_holding_the_password_are_listed_not_its_value() -> None:
    d = draft(read_sources(EXAMPLE))
    assert "arion-compose.nix:14 services.server.service.environment.PG_DATABASE_URL" in d.toml
    assert "arion-compose.nix:29 services.worker.service.environment.PG_DATABASE_URL" in d.toml
    assert '"postgres://' not in d.toml


# ---------------------------------------------------------------- the shape corpus


@pytest.mark.parametrize("case", CASES)
def test_shape_draft_loads_and_agrees_with_the_hand_written_one(case: str, tmp_path: Path) -> None:
    sources = read_sources(SHAPES / case)
    d = draft(sources, texts=read_texts(SHAPES / case, sources))  # as `nixmig init` reads the repo
    cfg = load(tmp_path, d.toml)
    hand = config.load(SHAPES / case / "nixmig.toml")
    guessed = checked_keys(d.toml)
    assert cfg.operator.recipients == hand.operator.recipients
    assert list(cfg.hosts) == list(hand.hosts)
    for name, h in cfg.hosts.items():
        assert h.age_recipient == hand.hosts[name].age_recipient
        if h.address != hand.hosts[name].address:  # the repo cannot say how to reach it
            assert "address" in guessed[f"hosts.{name}"]
    if not cfg.migrations:  # not a database nixmig migrates: said in a # check: line
        assert re.search(r"# check: not drafted: .*PostgreSQL passwords only", d.toml)
        return
    (hmig,) = hand.migrations.values()
    # the hand-written one's among the draft's (a repo with two databases gets a draft for each)
    mig = next((m for m in cfg.migrations.values() if m.secret == hmig.secret), None)
    if len(cfg.migrations) > 1:
        assert mig is not None, (hmig.secret, list(cfg.migrations))
    else:
        (mig,) = cfg.migrations.values()
    svc, hsvc = cfg.services[mig.service], hand.services[hmig.service]
    for key in ("host", "runtime", "container", "database", "role"):
        if key == "database" and mig.strategy == "move":  # the draft's migration
            continue  # strategy move queries no database: the key is never read (nixmig/phases/move.py)
        if getattr(svc, key) != getattr(hsvc, key):
            assert key in guessed.get(f"services.{mig.service}", set()), (key, getattr(svc, key))
    if mig.secret != hmig.secret:  # named after a database that is a guess
        assert "database" in guessed.get(f"services.{mig.service}", set())


def test_shape_podman_and_bind_mount() -> None:
    d = draft(read_sources(SHAPES / "oci-app-bare-password"))
    assert 'docker_host = "unix:///run/podman/podman.sock"  # from hosts/box/photos.nix:3 (backend podman)' in d.toml
    assert "bind mount /srv/photos/db (hosts/box/photos.nix:12)" in d.toml
    assert "photos.nix:19 virtualisation.oci-containers.containers.photos-server.environment.DB_PASSWORD" in d.toml
    assert 'admin_role = "photos"' in d.toml  # POSTGRES_USER is the image's superuser


def test_shape_initial_script_reads_the_sql() -> None:
    d = draft(read_sources(SHAPES / "native-initialscript-sql"))
    assert 'database = "ledger"  # from hosts/box/db.nix:7 (CREATE DATABASE in initialScript)' in d.toml
    assert 'role = "ledger"  # from hosts/box/db.nix:6 (CREATE ROLE in initialScript)' in d.toml
    assert "# the password is in SQL text (hosts/box/db.nix:6, services.postgresql.initialScript)" in d.toml


def test_an_initial_script_inside_a_nixos_container_is_drafted_as_a_move_and_says_so() -> None:
    d = draft(read_sources(SHAPES / "native-container-initialscript-move"))
    assert 'strategy = "move"' in d.toml
    assert "apply rotates" not in d.toml  # a move changes no database: the SQL note says what happens instead
    assert "a oneshot beside the server sets the password from the secret (the value kept)" in d.toml


def test_paperless_settings_name_their_user_and_database_beside_dbpass() -> None:
    """PAPERLESS_DBUSER / PAPERLESS_DBNAME beside PAPERLESS_DBPASS (no underscore before PASS): the role
    and database are read, not guessed from the service's name (a public configuration, stop 19: the
    superuser postgres, drafted as "paperless")."""
    src = {
        "paperless.nix": b"""{ ... }:
{
  services.paperless = {
    enable = true;
    settings = {
      PAPERLESS_DBHOST = "/run/postgresql";
      PAPERLESS_DBNAME = "docs";
      PAPERLESS_DBUSER = "postgres";
      PAPERLESS_DBPASS = "Docs-pw-8812";
    };
  };
}
"""
    }
    d = draft(src)
    assert 'role = "postgres"  # from paperless.nix:8 (services.paperless.settings.PAPERLESS_DBUSER)' in d.toml
    assert 'database = "docs"  # from paperless.nix:7 (services.paperless.settings.PAPERLESS_DBNAME)' in d.toml


# ---------------------------------------------------------------- hosts, keys, deploy


SECRETS = f"""let
  HOSTNAME = "{KEY_H}";
  me = "{KEY_A}";
  servers = [ HOSTNAME ];
in
{{
  "x.age".publicKeys = servers ++ [ me ];
}}
"""
DB = """{ ... }: {
  virtualisation.oci-containers.backend = "docker";
  virtualisation.oci-containers.containers.db = {
    image = "postgres:16";
    environment.POSTGRES_PASSWORD = "hunter2-hunter2";
    volumes = [ "pgdata:/var/lib/postgresql/data" ];
  };
}
"""


def repo(flake: str, name: str = "web1", **extra: str) -> dict[str, bytes]:
    files = {
        "flake.nix": flake,
        "secrets/secrets.nix": SECRETS.replace("HOSTNAME", name),
        "modules/db.nix": DB,
        f"hosts/{name}/default.nix": "{ ... }: { imports = [ ../../modules/db.nix ]; }\n",
        **extra,
    }
    return {k: v.encode() for k, v in files.items()}


def test_deploy_rs_ssh_opts_give_port_and_identity(tmp_path: Path) -> None:
    flake = """{
  outputs = { self, nixpkgs, deploy-rs }: {
    nixosConfigurations.web1 = nixpkgs.lib.nixosSystem { modules = [ ./hosts/web1 ]; };
    deploy.sshUser = "deployer";
    deploy.nodes.web1 = {
      hostname = "10.0.0.5";
      sshOpts = [ "-p" "2222" "-i" "~/.ssh/deploy" ];
      profiles.system.path = null;
    };
  };
}
"""
    d = draft(repo(flake))
    cfg = load(tmp_path, d.toml)
    h = cfg.hosts["web1"]
    assert (h.address, h.port, h.user, h.identity) == ("10.0.0.5", 2222, "deployer", "~/.ssh/deploy")
    assert h.age_recipient == KEY_H
    assert cfg.operator.recipients == (KEY_A,)
    svc = cfg.services["db"]
    assert (svc.container, svc.volume, svc.database, svc.role) == ("db", "pgdata", "postgres", "postgres")
    assert "the postgres image's default" in d.toml
    assert cfg.migrations["db-password"].deploy == "deploy --skip-checks .#web1"


def test_colmena_hive(tmp_path: Path) -> None:
    flake = """{
  outputs = { nixpkgs, ... }: {
    colmena = {
      meta.nixpkgs = import nixpkgs { system = "x86_64-linux"; };
      web1 = { name, nodes, ... }: {
        deployment.targetHost = "web1.example.org";
        deployment.targetUser = "admin";
        deployment.targetPort = 2200;
        imports = [ ./hosts/web1 ];
      };
    };
  };
}
"""
    d = draft(repo(flake))
    cfg = load(tmp_path, d.toml)
    h = cfg.hosts["web1"]
    assert (h.address, h.user, h.port) == ("web1.example.org", "admin", 2200)
    assert list(cfg.hosts) == ["web1"]  # meta is not a node
    assert cfg.migrations["db-password"].deploy == "colmena apply --on web1"
    assert "host" not in checked_keys(d.toml).get("services.db", set())


def test_nixos_rebuild_when_only_nixos_configurations(tmp_path: Path) -> None:
    flake = """{
  outputs = { nixpkgs, ... }: {
    nixosConfigurations.web1 = nixpkgs.lib.nixosSystem { modules = [ ./hosts/web1 ]; };
  };
}
"""
    d = draft(repo(flake))
    cfg = load(tmp_path, d.toml)
    assert cfg.migrations["db-password"].deploy == "nixos-rebuild switch --flake .#web1 --target-host root@web1"
    assert "address" in checked_keys(d.toml)["hosts.web1"]  # nothing says how to reach it


def test_nix_eval_nodes_win_over_the_files(tmp_path: Path) -> None:
    flake = """{
  outputs = { self, ... }: {
    deploy.nodes.web1 = { hostname = "old.example.org"; };
  };
}
"""
    nodes = {"web1": Node("web1", "10.9.9.9", user="ops", port=2022)}
    d = draft(repo(flake), nodes=nodes, eval_from="nix eval .#deploy")
    cfg = load(tmp_path, d.toml)
    h = cfg.hosts["web1"]
    assert (h.address, h.user, h.port) == ("10.9.9.9", "ops", 2022)
    assert "nix eval .#deploy (node web1)" in d.toml


def test_a_module_on_several_hosts_names_them_and_the_deploy_says_which(tmp_path: Path) -> None:
    flake = """{
  outputs = { self, ... }: {
    deploy.nodes.web1.hostname = "web1";
    deploy.nodes.web2.hostname = "web2";
  };
}
"""
    files = repo(flake, "web1")
    files["hosts/web2/default.nix"] = b"{ ... }: { imports = [ ../../modules/db.nix ]; }\n"
    d = draft(files)
    cfg = load(tmp_path, d.toml)
    assert cfg.services["db"].hosts == ("web1", "web2")
    assert cfg.migrations["db-password"].deploy == "deploy --skip-checks .#{host}"
    assert "hosts" in checked_keys(d.toml)["services.db"]


def test_arion_project_named_by_its_attribute_and_apps_by_value(tmp_path: Path) -> None:
    mod = """{ ... }: {
  virtualisation.arion.projects.shop.settings = {
    services.pg.service = {
      image = "postgis/postgis:16-3.4";
      environment = { POSTGRES_USER = "shop"; POSTGRES_PASSWORD = "s3cret-shop-pw"; };
      volumes = [ "pg:/var/lib/postgresql/data" ];
    };
    services.web.service.environment.DATABASE_URL = "postgresql://shop:s3cret-shop-pw@pg/shop";
  };
}
"""
    files = repo("{ outputs = _: { }; }\n")
    files["modules/db.nix"] = mod.encode()
    d = draft(files)
    cfg = load(tmp_path, d.toml)
    svc = cfg.services["shop-pg"]
    assert (svc.container, svc.volume, svc.database, svc.role, svc.admin_role) == (
        "shop-pg-1",
        "shop_pg",
        "shop",
        "shop",
        "shop",
    )
    assert "in an app: modules/db.nix:8 virtualisation.arion.projects.shop.settings.services.web.service" in d.toml
    assert "s3cret" not in d.toml


def test_comments_cannot_break_out_of_their_line() -> None:
    files = repo("{ outputs = _: { }; }\n")
    files["hosts/web1/x\n[hosts.evil]\naddress = 'x'\n.nix"] = files.pop("modules/db.nix")
    d = draft(files)
    data = tomllib.loads(d.toml)
    assert "evil" not in data["hosts"]
    assert "\\n[hosts.evil]\\n" in d.toml


def test_nothing_to_migrate() -> None:
    files = {"hosts/a/default.nix": b'{ services.app.settings.api_token = "ghp_notadbpassword1234"; }\n'}
    d = draft(files)
    assert isinstance(d, Draft) and d.empty and d.toml == ""
    assert d.other_findings == 1


# ---------------------------------------------------------------- the command


def test_cli_writes_the_golden_draft_and_plan_accepts_it(tmp_path: Path) -> None:
    root = copy_example(tmp_path)
    proc = run_cli("init", "--no-eval", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith(f"wrote {root / 'nixmig.toml'}: 1 migration (twenty-db-password)")
    assert (root / "nixmig.toml").read_text() == GOLDEN.read_text()
    plan = run_cli("plan", cwd=root)
    assert plan.returncode == 0, plan.stderr
    assert "docker container twenty-db-1 on newton" in plan.stdout.decode()
    assert "deploy --skip-checks .#newton" in plan.stdout.decode()


@pytest.mark.parametrize("case", CASES)
def test_cli_plan_accepts_each_shape_draft(case: str, tmp_path: Path) -> None:
    root = tmp_path / case
    shutil.copytree(SHAPES / case, root)
    (root / "nixmig.toml").unlink()
    proc = run_cli("init", "--no-eval", cwd=root)
    assert proc.returncode == 0, proc.stderr
    cfg = config.load(root / "nixmig.toml")
    if not cfg.migrations:
        return  # MariaDB: said in a # check: line (test above), nothing for plan to run
    for name in cfg.migrations:  # a repo with two databases (two arion projects): a draft for each
        plan = run_cli("plan", *(["--migration", name] if len(cfg.migrations) > 1 else []), cwd=root)
        assert plan.returncode == 0, plan.stderr
        assert f"migration {name}:" in plan.stdout.decode()


def test_cli_print_writes_nothing_and_never_overwrites(tmp_path: Path) -> None:
    root = copy_example(tmp_path)
    before = snapshot(root)
    proc = run_cli("init", "--print", "--no-eval", "--repo", str(root), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == GOLDEN.read_text()
    assert snapshot(root) == before
    (root / "nixmig.toml").write_text("# mine\n")
    before = snapshot(root)
    proc = run_cli("init", "--no-eval", cwd=root)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "nixmig.toml: already exists; nothing written" in err and "--force" in err
    assert snapshot(root) == before
    proc = run_cli("init", "--no-eval", "--force", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert (root / "nixmig.toml").read_text() == GOLDEN.read_text()
    assert not list(root.glob(".nixmig.toml.*"))  # no temp file left


def test_cli_nothing_to_migrate_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "clean"
    (root / "hosts" / "a").mkdir(parents=True)
    (root / "hosts" / "a" / "default.nix").write_text('{ networking.hostName = "a"; }\n')
    proc = run_cli("init", "--no-eval", cwd=root)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert out.startswith("nothing to migrate: no hardcoded database password") and out.count("\n") == 1
    assert not (root / "nixmig.toml").exists()


def test_cli_broken_secrets_nix_is_one_error_and_writes_nothing(tmp_path: Path) -> None:
    root = copy_example(tmp_path)
    rules = root / "secrets" / "secrets.nix"
    rules.write_text(rules.read_text().replace("servers = [ newton ];", "servers = [ newton ;"))
    before = snapshot(root)
    proc = run_cli("init", "--no-eval", cwd=root)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.startswith("nixmig: error: secrets/secrets.nix:") and err.count("\n") == 1, err
    assert snapshot(root) == before


def test_cli_nix_eval_that_cannot_evaluate_falls_back_and_writes_no_lock(tmp_path: Path) -> None:
    """Here nix cannot fetch the flake's inputs: the hosts come from the files, the header says why."""
    if shutil.which("nix") is None:
        pytest.skip("no nix")
    root = copy_example(tmp_path)
    proc = run_cli("init", "--print", cwd=root)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "# the deploy-rs nodes are read from the files: nix cannot evaluate the flake here" in out
    assert 'address = "newton"  # from flake.nix:21 (deploy.nodes.newton.hostname)' in out
    assert not (root / "flake.lock").exists()
    assert not (root / "nixmig.toml").exists()


def test_cli_nodes_from_nix_eval_and_no_lock_file_written(tmp_path: Path) -> None:
    """A flake nix can evaluate here (its one input is a local path): the nodes come from
    `nix eval`, and the lock file nix would create is not written (--no-write-lock-file)."""
    if shutil.which("nix") is None:
        pytest.skip("no nix")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "flake.nix").write_text("{ outputs = _: { }; }\n")
    flake = (
        "{\n"
        f'  inputs.sub.url = "path:{sub}";\n'
        "  outputs = { self, sub }: {\n"
        '    deploy.nodes.web1 = { hostname = "10.0.0.7"; sshUser = "ops"; sshOpts = [ "-p" "2201" ]; };\n'
        "  };\n"
        "}\n"
    )
    root = tmp_path / "repo"
    for name, data in repo(flake).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    before = snapshot(root)
    proc = run_cli("init", "--print", cwd=root)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert 'address = "10.0.0.7"  # from flake.nix:4 (deploy.nodes.web1.hostname); nix eval .#deploy (node web1)' in out
    assert "port = 2201  # from nix eval .#deploy (node web1)" in out
    assert 'user = "ops"  # from nix eval .#deploy (node web1)' in out
    assert snapshot(root) == before  # no flake.lock, no nixmig.toml


def _with(module: str) -> dict[str, bytes]:
    files = repo("{ outputs = _: { }; }\n")
    files["modules/db.nix"] = module.encode()
    return files


def test_a_database_only_an_app_names(tmp_path: Path) -> None:
    """The app's variables (DB_PASS beside DB_USER, DB_HOST, DB_NAME) or its URL name the role;
    the server is not in the repo: every key that says so is a # check:."""
    d = draft(
        _with("""{ ... }: {
  virtualisation.oci-containers.containers.toot = {
    image = "example/toot:4";
    environment = { DB_HOST = "pg:5432"; DB_USER = "toot"; DB_NAME = "toot_prod"; DB_PASS = "t00t-pw-9"; };
  };
  services.vault.config.DATABASE_URL = "postgresql://vault:v4ult-pw@db.example.org/vaultdb";
}
""")
    )
    cfg = load(tmp_path, d.toml)
    toot, vault = cfg.services["pg"], cfg.services["vaultdb-db"]
    assert (toot.runtime, toot.container, toot.role, toot.database) == ("docker", "pg", "toot", "toot_prod")
    assert (vault.runtime, vault.role, vault.database) == ("native", "vault", "vaultdb")
    guessed = checked_keys(d.toml)
    assert {"container", "database"} <= guessed["services.pg"]
    assert {"runtime", "database"} <= guessed["services.vaultdb-db"]
    assert "the database is at db.example.org" in d.toml
    assert "t00t" not in d.toml and "v4ult" not in d.toml


def test_the_host_as_a_container_names_it_is_a_server_on_this_host(tmp_path: Path) -> None:
    """host.docker.internal / host.containers.internal in an app's URL: the machine running the
    containers (a native server there, marked # check:), not a container named so."""
    d = draft(
        _with("""{ ... }: {
  virtualisation.oci-containers.containers.wiki.environment.DB_URL = "postgres://wiki:w1ki-pw@host.docker.internal/wiki";
}
""")
    )
    cfg = load(tmp_path, d.toml)
    svc = cfg.services["wiki-db"]
    assert (svc.runtime, svc.container, svc.role, svc.database) == ("native", None, "wiki", "wiki")
    assert "runtime" in checked_keys(d.toml)["services.wiki-db"]
    assert "its host: a local server" in d.toml and "is it services.postgresql on this host?" in d.toml
    assert "the database is at host.docker.internal" not in d.toml


def test_a_mysql_client_variable_in_an_app_is_not_a_database(tmp_path: Path) -> None:
    d = draft(
        _with("""{ ... }: {
  virtualisation.oci-containers.containers.cloud-db = {
    image = "mariadb:10.5";
    environment = { MYSQL_USER = "cloud"; MYSQL_PASSWORD = "cl0ud-pw"; };
  };
  virtualisation.oci-containers.containers.cloud = {
    image = "nextcloud";
    environment = { MYSQL_HOST = "cloud-db"; MYSQL_PASSWORD = "cl0ud-pw"; };
  };
  virtualisation.oci-containers.containers.games = {
    image = "example/games:3";
    environment = { DB_HOST = "cloud-db"; DB_USER = "games"; DB_PASSWD = "g4mes-pw"; };
  };
}
""")
    )
    cfg = load(tmp_path, d.toml)
    (mig,) = cfg.migrations.values()  # the database's; the app's MYSQL_PASSWORD is a client of it
    assert mig.service == "cloud-db" and mig.strategy == "move"  # nixmig cannot rotate MariaDB: the value moves
    assert list(cfg.services) == ["cloud-db"] and cfg.services["cloud-db"].role == "cloud"
    assert "# the same password in an app: " in d.toml and "containers.cloud.environment.MYSQL_PASSWORD" in d.toml
    assert "cl0ud-pw" not in d.toml


def test_a_mysql_root_password_beside_the_users_is_no_migration_of_its_own(tmp_path: Path) -> None:
    """MYSQL_ROOT_PASSWORD beside MYSQL_PASSWORD: one migration, the user's; root's is said as the
    companion `nixmig patch` moves with it (its own secret, value kept)."""
    d = draft(
        _with("""{ ... }: {
  virtualisation.oci-containers.containers.shop-db = {
    image = "mysql:8.4";
    environment = { MYSQL_DATABASE = "shop"; MYSQL_USER = "shop"; MYSQL_PASSWORD = "sh0p-pw"; };
    environment.MYSQL_ROOT_PASSWORD = "r00t-pw";
  };
}
""")
    )
    cfg = load(tmp_path, d.toml)
    (mig,) = cfg.migrations.values()
    svc = cfg.services[mig.service]
    assert (mig.strategy, svc.role, svc.database, svc.container) == ("move", "shop", "shop", "shop-db")
    assert "MYSQL_ROOT_PASSWORD (" in d.toml and "`nixmig patch` moves it onto its own secret" in d.toml
    assert "r00t-pw" not in d.toml and "sh0p-pw" not in d.toml


def test_computed_names_and_expressions_are_checks_not_guesses(tmp_path: Path) -> None:
    d = draft(
        _with("""{ config, ... }: {
  virtualisation.oci-containers.containers."${config.forge.name}-db" = {
    image = "postgres:16";
    environment = { POSTGRES_USER = config.forge.user; POSTGRES_PASSWORD = "f0rge-pw"; };
  };
}
""")
    )
    cfg = load(tmp_path, d.toml)
    (svc,) = cfg.services.values()
    assert svc.container == "CONTAINER"
    guessed = checked_keys(d.toml)[f"services.{next(iter(cfg.services))}"]
    assert {"container", "role", "database"} <= guessed
    assert "POSTGRES_USER is an expression at modules/db.nix:4" in d.toml


def test_a_directory_under_hosts_without_a_configuration_is_not_a_host(tmp_path: Path) -> None:
    files = repo("{ outputs = _: { }; }\n", "walberla")
    files["hosts/server/walberla/db.nix"] = files.pop("modules/db.nix")
    files["hosts/walberla/default.nix"] = b"{ ... }: { imports = [ ../server/walberla/db.nix ]; }\n"
    d = draft(files)
    cfg = load(tmp_path, d.toml)
    assert list(cfg.hosts) == ["walberla"]
    assert cfg.services["db"].host == "walberla"
    assert "host" not in checked_keys(d.toml)["services.db"]


def test_cli_json(tmp_path: Path) -> None:
    import json

    root = copy_example(tmp_path)
    proc = run_cli("init", "--print", "--json", "--no-eval", cwd=root)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["written"] is False and data["file"] is None
    assert data["migrations"] == ["twenty-db-password"] and data["checks"] == []
    assert data["toml"] == GOLDEN.read_text()
    assert not (root / "nixmig.toml").exists()
    proc = run_cli("init", "--json", "--no-eval", cwd=root)
    data = json.loads(proc.stdout)
    assert data["written"] is True and data["file"] == str(root / "nixmig.toml") and "toml" not in data


def test_colmena_hive_file_and_secrets_lists(tmp_path: Path) -> None:
    """A hive.nix without a flake; secrets.nix elsewhere, its keys grouped in `users` and `systems`."""
    bob = "age18550anc44kks4my3xc0n0kuu7vsuhytx6qvpc3ujm4qzy0jf033sn534j7"
    files = {
        "hive.nix": """{
  meta.nixpkgs = <nixpkgs>;
  defaults = { ... }: { };
  db1 = { ... }: {
    deployment.targetHost = "db1.lan";
    imports = [ ./modules/db.nix ];
  };
}
""",
        "agenix/secrets.nix": f"""let
  alice = "{KEY_A} alice@laptop";
  bob = "{bob}";
  db1 = "{KEY_H}";
  users = [ alice bob ];
  systems = [ db1 ];
in
{{ "x.age".publicKeys = users ++ systems; }}
""",
        "modules/db.nix": DB,
    }
    d = draft({k: v.encode() for k, v in files.items()})
    cfg = load(tmp_path, d.toml)
    assert cfg.secrets_dir == "agenix"
    assert cfg.operator.recipients == (KEY_A, bob)  # the key without its comment
    assert list(cfg.hosts) == ["db1"]
    assert (cfg.hosts["db1"].address, cfg.hosts["db1"].age_recipient) == ("db1.lan", KEY_H)
    assert cfg.services["db"].host == "db1"
    assert cfg.migrations["db-password"].deploy == "colmena apply --on db1"
    guessed = checked_keys(d.toml)
    assert "recipients" not in guessed.get("operator", set())  # in a users list: no guess
    assert "host" not in guessed["services.db"]


def test_a_database_inside_a_nixos_container_is_drafted_as_a_move(tmp_path: Path) -> None:
    """nextcloud and its postgresql inside containers.NAME.config: apply's psql runs on the host and
    cannot reach that server, so the draft moves the value instead of rotating it (patch refuses rotate)."""
    d = draft(read_sources(SHAPES / "native-container-nextcloud-writetext"))
    (mig,) = load(tmp_path, d.toml).migrations.values()
    assert mig.strategy == "move"
    assert "runs inside the declarative NixOS container cloud" in d.toml


def _app_and_db(db_env: str) -> dict[str, bytes]:
    return {
        "hosts/box/default.nix": (
            "{ ... }: {\n"
            "  virtualisation.oci-containers.containers.db = {\n"
            '    image = "postgres:16";\n'
            f'    environment = {{ {db_env} POSTGRES_PASSWORD = "tw-pw-7731x"; }};\n'
            "  };\n"
            "  virtualisation.oci-containers.containers.server = {\n"
            '    image = "example/server:1";\n'
            '    environment.PG_DATABASE_URL = "postgres://app:tw-pw-7731x@db:5432/appdata";\n'
            "  };\n"
            "}\n"
        ).encode()
    }


def test_the_apps_url_names_the_database_when_the_container_names_none() -> None:
    """No POSTGRES_DB: the image creates POSTGRES_USER's database, but the app's URL names the one it
    uses (twenty: /default). The backup and verify must read that one (before: 'app', unmarked)."""
    d = draft(_app_and_db('POSTGRES_USER = "app";'))
    assert re.search(r'^database = "appdata"  # from hosts/box/default.nix:8 ', d.toml, re.M), d.toml
    assert "# check: the image creates 'app', the app uses 'appdata'" in d.toml


def test_a_database_the_container_names_stays_with_a_check_when_the_url_names_another() -> None:
    d = draft(_app_and_db('POSTGRES_USER = "app"; POSTGRES_DB = "main";'))
    assert re.search(r'^database = "main"  # from hosts/box/default.nix:4 ', d.toml, re.M), d.toml
    assert "# check: the app's URL names database 'appdata'" in d.toml


def test_an_app_variable_naming_postgresql_is_a_database_password() -> None:
    """AUTHENTIK_POSTGRESQL__PASSWORD beside __USER / __NAME / __HOST (authentik's settings): a database
    password, drafted from the app (before: "nothing to migrate", the POSTGRESQL word was not one)."""
    files = {
        "hosts/server/auth.nix": b"""{ ... }: {
  virtualisation.oci-containers.containers.auth-server = {
    image = "ghcr.io/goauthentik/server:2024.8";
    environment = {
      AUTHENTIK_POSTGRESQL__HOST = "host.docker.internal";
      AUTHENTIK_POSTGRESQL__NAME = "auth";
      AUTHENTIK_POSTGRESQL__USER = "auth";
      AUTHENTIK_POSTGRESQL__PASSWORD = "Xq81-auth-pw";
    };
  };
}
"""
    }
    d = draft(files)
    assert not d.empty and 'role = "auth"' in d.toml and 'database = "auth"' in d.toml, d.toml


def test_nextcloud_s_admin_password_alone_is_a_move_of_its_own_not_the_database_s() -> None:
    """config.adminpass is no database's password (its `config` segment made it one): with a local
    postgresql and no database password anywhere, the draft was a rotate of role nextcloud, which would
    have rotated the admin's initial password as if it were the database's (realcfg2 10, --draft)."""
    files = {
        "hosts/xfix/default.nix": b"{ ... }: { imports = [ ../../services/nextcloud.nix ]; }\n",
        "services/nextcloud.nix": b"""{ ... }: {
  services.nextcloud.enable = true;
  services.nextcloud.config.dbtype = "pgsql";
  services.nextcloud.config.adminpass = "Nc-admin-4471";
  services.postgresql.enable = true;
  services.postgresql.ensureDatabases = [ "nextcloud" ];
  services.postgresql.ensureUsers = [ { name = "nextcloud"; ensureDBOwnership = true; } ];
}
""",
    }
    d = draft(files)
    assert d.migrations == ("nextcloud-admin-password",), d.toml
    assert 'strategy = "move"' in d.toml and "[services.nextcloud]" in d.toml


def test_home_manager_podman_containers_are_said_not_drafted() -> None:
    """home-manager's services.podman.containers (rootless) are no NixOS service: the draft said
    database = "podman", role = "podman" (realcfg6 19); now each credential is a `not drafted` line."""
    files = {
        "home/dawn/containers.nix": b"""{ config, ... }: {
  services.podman.containers.postgres = {
    image = "docker.io/library/postgres:16";
    environment = { POSTGRES_USER = "apps"; POSTGRES_PASSWORD = "Hm-pg-pw-2231"; };
  };
}
"""
    }
    d = draft(files)
    assert d.migrations == () and "podman" not in "".join(ln for ln in d.toml.splitlines() if not ln.startswith("#"))
    assert "# check: not drafted: home/dawn/containers.nix:4" in d.toml and "home-manager's services.podman" in d.toml


def test_a_database_password_no_app_in_the_repo_holds_is_said_before_a_rotation() -> None:
    """A database container alone (its clients on another host, or reading the password from elsewhere):
    a rotation locks them out, and nothing in the repo shows them; the draft says so (realcfg7 03, by eye).
    With the app's URL in the repo, nothing is said."""
    db = """{ ... }:
{
  virtualisation.oci-containers.containers.db = {
    image = "postgres:16";
    environment = { POSTGRES_USER = "app"; POSTGRES_PASSWORD = "Lonely-db-pw-8"; };
  };
}
"""
    alone = draft({"hosts/box/db.nix": db.encode()})
    assert "no app in the repo logs in with this password" in alone.toml
    app = db.replace(
        "  };\n}",
        '  };\n  virtualisation.oci-containers.containers.web.environment.DATABASE_URL = "postgres://app:Lonely-db-pw-8@db/app";\n}',
    )
    with_app = draft({"hosts/box/db.nix": app.encode()})
    assert "the same password in an app" in with_app.toml
    assert "no app in the repo logs in with this password" not in with_app.toml


def test_an_app_of_the_same_role_with_another_value_is_the_database_s_app_not_a_second_database() -> None:
    """The SQL a unit runs gives role penpot one value, the app logs in as penpot with another (a config
    published with one of them changed): one migration, the app said as its client (patch gives it the
    secret; the rotation makes both the new value), not a second database with a guessed container."""
    src = """{ pkgs, ... }:
{
  virtualisation.oci-containers.containers.penpot-backend = {
    image = "penpotapp/backend:latest";
    environment = {
      PENPOT_DATABASE_URI = "postgresql://postgres/penpot";
      PENPOT_DATABASE_USERNAME = "penpot";
      PENPOT_DATABASE_PASSWORD = "App-side-pw-71";
    };
  };
  systemd.services.create-penpot-db = {
    serviceConfig.Type = "oneshot";
    serviceConfig.ExecStart = ''
      ${pkgs.podman}/bin/podman exec -i postgres psql -U postgres \\
        -c "CREATE ROLE penpot WITH LOGIN PASSWORD 'Sql-side-pw-72';" \\
        -c "CREATE DATABASE penpot OWNER penpot;"
    '';
  };
}
"""
    d = draft({"hosts/box/penpot.nix": src.encode()})
    assert d.migrations == ("penpot-db-password",), d.toml
    assert "an app logs in as the same role with another value today" in d.toml
    assert "no app in the repo logs in with this password" not in d.toml


def test_an_app_naming_no_host_beside_the_file_s_one_database_container_is_guessed_to_use_it() -> None:
    """An /etc env text logs in as postgres with no DB_HOSTNAME; the same file's unit creates role immich
    through `podman exec postgres psql`: the app's database is guessed to be that container (marked
    `# check:`), not a native server the file does not have (realcfg 25)."""
    src = """{ config, pkgs, ... }:
{
  systemd.services.create-immich-db = {
    serviceConfig.Type = "oneshot";
    serviceConfig.ExecStart = ''
      ${pkgs.podman}/bin/podman exec -i postgres psql -U postgres \\
        -c "CREATE ROLE immich WITH LOGIN PASSWORD 'Immich-sql-41';" -c "CREATE DATABASE immich OWNER immich;"
    '';
  };
  environment.etc."immich/.env".text = ''
    DB_USERNAME=postgres
    DB_PASSWORD=Postgres-app-pw-42
    DB_DATABASE_NAME=immich
  '';
  virtualisation.oci-containers.containers.immich = {
    image = "ghcr.io/immich-app/immich-server:release";
    environmentFiles = [ /etc/immich/.env ];
  };
}
"""
    d = draft({"hosts/box/immich.nix": src.encode()})
    cfg = tomllib.loads(d.toml)
    by_role = {s["role"]: s for s in cfg["services"].values()}
    assert by_role["immich"]["container"] == "postgres" and by_role["immich"]["runtime"] == "docker"
    assert by_role["postgres"]["container"] == "postgres" and by_role["postgres"]["runtime"] == "docker"
    assert (
        "container"
        in checked_keys(d.toml)[f"services.{next(k for k, s in cfg['services'].items() if s['role'] == 'postgres')}"]
    )


def test_a_heredoc_holding_the_database_s_password_is_a_client_in_the_repo() -> None:
    """The SQL a unit runs gives role auth its password; an activation script's heredoc writes the same
    value into the app's env file. That heredoc is a client in the repo: no "no app" note (realcfg 24,
    by eye: the note said the opposite of the truth)."""
    src = """{ pkgs, ... }:
{
  system.activationScripts.auth-env = ''
    cat > /run/secrets/auth.env << EOF
    AUTH_POSTGRESQL__PASSWORD=Auth-db-pw-63
    EOF
  '';
  systemd.services.auth-db = {
    serviceConfig.Type = "oneshot";
    serviceConfig.ExecStart = ''
      ${pkgs.podman}/bin/podman exec -i postgres psql -U postgres \\
        -c "CREATE ROLE auth WITH LOGIN PASSWORD 'Auth-db-pw-63';" -c "CREATE DATABASE auth OWNER auth;"
    '';
  };
}
"""
    d = draft({"hosts/box/auth.nix": src.encode()})
    assert d.migrations == ("auth-db-password",), d.toml
    assert "no app in the repo logs in with this password" not in d.toml


def test_a_draft_with_no_migration_says_what_to_do_and_patch_does_not_send_the_user_back_to_init(
    tmp_path: Path,
) -> None:
    """init writes hosts and keys but ties no password to a database: it says so (not "0 migrations ...
    then run nixmig plan"), and patch's error names the by-hand step, not `nixmig init` again (a sweep of
    real files, stop 18: 9 of 63 drafts had no migration and patch's hint was circular)."""
    (tmp_path / "hosts" / "box").mkdir(parents=True)
    (tmp_path / "hosts" / "box" / "a.nix").write_text(
        '{ lib, ... }:\nlet\n  environment = { MYSQL_ROOT_PASSWORD = "Zero-mig-pw-3"; '
        'APP_DATABASE_PASSWORD = "Zero-mig-pw-3"; };\nin\n{\n'
        '  virtualisation.oci-containers.containers.app = { image = "example/app"; inherit environment; };\n}\n'
    )
    proc = run_cli("init", "--no-eval", cwd=tmp_path)
    assert proc.returncode == 0 and "no migration: init could not tie" in proc.stdout.decode()
    proc = run_cli("patch", cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "no migration defined" in err and "by hand" in err, err


def test_an_etc_text_a_service_reads_as_a_file_drafts_that_service_s_move() -> None:
    """environment.etc."NAME".text = "..." read by services.X.passwordFile = "/etc/NAME" (public configurations,
    stop 20: init said "nothing to migrate" where patch, given a hand-written toml, moves it)."""
    src = {
        "docs.nix": b"""{ ... }:
{
  environment.etc."paperless-admin-pass".text = "Adm1n-pw-2231";
  services.paperless = {
    enable = true;
    passwordFile = "/etc/paperless-admin-pass";
  };
}
"""
    }
    d = draft(src)
    assert "[migrations.paperless-" in d.toml and 'strategy = "move"' in d.toml, d.toml
    assert "[services.paperless]" in d.toml, d.toml


def test_photoprism_s_admin_password_setting_drafts_a_move() -> None:
    """settings.PHOTOPRISM_ADMIN_PASSWORD: patch moves it onto passwordFile (option_companion.LITERAL_SIBLINGS)."""
    src = {
        "photos.nix": b"""{ ... }:
{
  services.photoprism = {
    enable = true;
    settings.PHOTOPRISM_ADMIN_PASSWORD = "Ph0to-admin-77";
  };
}
"""
    }
    d = draft(src)
    assert "[services.photoprism]" in d.toml and 'strategy = "move"' in d.toml, d.toml
