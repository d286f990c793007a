"""The worked example's "twenty" stack on real parts, for the e2e tests and bench/migrate.py.

- the database: container ``twenty-db-1`` of the test PostgreSQL image on the
  volume ``twenty_db-data``, created with POSTGRES_PASSWORD=postgres and
  POSTGRES_DB=default (as arion-compose.nix does), then filled with data;
- the "host" newton: this machine reached through a real sshd, where nixmig runs
  ``docker -H <the harness's engine socket>``;
- the app: a :class:`~nixmig.db.writer.Writer` thread inserting a row every ~10 ms
  with the URL of its env file (the hardcoded one until the switch), which
  reconnects when the deploy "restarts" it (the generation file changes);
- the deploy command: ``activate.py``, a script that plays NixOS activation.
  stage/switch decrypt the .age with newton's TEST key into the agenix dir (0400);
  switch also renders the env file with the password percent-encoded and restarts
  the app; rollback (the previous generation) removes both and restarts the app;
- a sampler process reading every /proc/*/cmdline every few ms, looking for the
  password.

Only one session at a time may own ``twenty-db-1`` (see :func:`exclusive`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import docker  # noqa: TID251  (test harness, not product code)
import docker.errors  # noqa: TID251

from nixmig.db.connect import try_login
from nixmig.db.writer import Writer
from nixmig.secrets import store
from nixmig.secrets.generate import generate
from nixmig.sensitive import Secret
from tests.harness.dockerd import TEST_LABEL, container_address, wait_for_postgres
from tests.harness.postgres import conninfo
from tests.harness.sshd import SshServer
from tests.helpers import copy_example

CONTAINER = "twenty-db-1"
VOLUME = "twenty_db-data"
DATABASE = "default"
ROLE = "postgres"
OLD_PASSWORD = "postgres"  # what the worked example hardcodes, on purpose
SECRET = "twenty-db-password"  # a name, not a value
MIGRATION = SECRET
PHASES = ["preflight", "backup", "stage", "rotate", "switch", "verify", "cleanup"]
STACK_LOCK = Path("/var/tmp/nixmig-test-twenty.lock")
PSQL = ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-U", ROLE, "-d", DATABASE, "-f", "-"]

SEED_SQL = """
CREATE TABLE workspace (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE company (id serial PRIMARY KEY, workspace_id int REFERENCES workspace, name text, domain text);
CREATE TABLE person (id serial PRIMARY KEY, company_id int REFERENCES company, email text, name text);
CREATE TABLE note (id bigserial PRIMARY KEY, person_id int REFERENCES person, body text);
CREATE TABLE app_writes (id bigserial PRIMARY KEY, at timestamptz NOT NULL);
INSERT INTO workspace (name) SELECT 'ws ' || g FROM generate_series(1, 5) g;
INSERT INTO company (workspace_id, name, domain)
  SELECT 1 + g % 5, 'company ' || g, 'c' || g || '.example.org' FROM generate_series(1, 500) g;
INSERT INTO person (company_id, email, name)
  SELECT 1 + g % 500, 'p' || g || '@example.org', 'person ' || g FROM generate_series(1, 3000) g;
INSERT INTO note (person_id, body) SELECT 1 + g % 3000, md5(g::text) FROM generate_series(1, 2000) g;
"""

# Bulk rows for the benchmark: ~0.8 KiB of text each that compresses about 2:1 (hex
# digests and words), under the 2 KiB at which PostgreSQL would compress it itself.
BULK_SQL = """
CREATE TABLE IF NOT EXISTS attachment (id bigserial PRIMARY KEY, person_id int, name text, body text);
INSERT INTO attachment (person_id, name, body)
  SELECT 1 + g % 3000, 'file-' || g || '.txt',
         concat_ws(' ', 'note', g, md5(g || 'a'), md5(g || 'b'), 'about', md5(g || 'c'), md5(g || 'd'),
                   md5(g || 'e'), md5(g || 'f'), md5(g || 'g'), 'company', md5(g || 'h'), md5(g || 'i'),
                   md5(g || 'j'), md5(g || 'k'), md5(g || 'l'), md5(g || 'm'), 'person', md5(g || 'n'),
                   md5(g || 'o'), md5(g || 'p'), md5(g || 'q'), md5(g || 'r'), md5(g || 's'), md5(g || 't'),
                   md5(g || 'u'), md5(g || 'v'), 'end')
  FROM generate_series({start}, {stop}) g;
"""
SEED_ATTACHMENTS = 16_000
BULK_ROW_BYTES = 900  # on disk per row, heap + index, about


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """Serialize test sessions on this machine: the container name is fixed."""
    STACK_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with STACK_LOCK.open("ab") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- the database container ------------------------------------------------------------


@dataclass(frozen=True)
class Db:
    """twenty-db-1, running. ``docker_host`` is the engine's URL (``unix:///…/docker.sock``)."""

    docker_host: str
    container_id: str
    ip: str

    def docker(self, *argv: str) -> list[str]:
        return ["docker", "-H", self.docker_host, *argv]

    def psql(self, script: str, *, timeout: float = 600) -> str:
        """SQL on stdin to psql in the container over its local socket (trusted)."""
        r = subprocess.run(
            self.docker("exec", "-i", "-u", "postgres", CONTAINER, *PSQL),
            input=script.encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if r.returncode != 0:
            raise AssertionError(f"psql in {CONTAINER} failed: {r.stderr.decode(errors='replace')}")
        return r.stdout.decode()

    def url(self, password: str) -> str:
        return f"postgres://{ROLE}:{quote(password, safe='')}@{self.ip}:5432/{DATABASE}"

    def login(self, password: str) -> str | None:
        """None when the password logs in over TCP from here, else the server's reason."""
        return try_login(self.ip, 5432, ROLE, Secret(password), DATABASE)

    def state(self) -> dict[str, object]:
        """Roles with their stored verifiers, and every table with its row count."""
        roles = self.psql("SELECT rolname, coalesce(rolpassword, '') FROM pg_authid ORDER BY 1;")
        tables = self.psql(
            "SELECT format('SELECT %L, count(*) FROM %I', relname, relname) FROM pg_class "
            "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 1 \\gexec"
        )
        return {"roles": roles.splitlines(), "tables": tables.splitlines()}

    def verifier(self) -> str:
        return self.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{ROLE}';").strip()


def remove_db(client: docker.DockerClient) -> None:
    """Remove twenty-db-1 and its volume (a leftover of a dead session, or ours)."""
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(CONTAINER).remove(force=True, v=True)
    with contextlib.suppress(docker.errors.NotFound):
        client.volumes.get(VOLUME).remove(force=True)


def start_db(client: docker.DockerClient, image: str, docker_host: str, *, durable: bool = False) -> Db:
    """A fresh twenty-db-1 on a fresh twenty_db-data, seeded. Call inside :func:`exclusive`."""
    remove_db(client)
    client.volumes.create(VOLUME, labels={TEST_LABEL: "1"})
    command = ["postgres"] if durable else ["postgres", "-c", "fsync=off", "-c", "synchronous_commit=off"]
    env = {"POSTGRES_USER": ROLE, "POSTGRES_PASSWORD": OLD_PASSWORD, "POSTGRES_DB": DATABASE}
    if not durable:
        env["POSTGRES_INITDB_ARGS"] = "--no-sync"
    container = client.containers.run(
        image,
        command,
        name=CONTAINER,
        detach=True,
        environment=env,
        volumes={VOLUME: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
        labels={TEST_LABEL: "1"},
        stop_signal="SIGINT",
    )
    ip, _ = container_address(container)
    wait_for_postgres(container, conninfo(host=ip, port=5432, user=ROLE, password=OLD_PASSWORD, dbname=DATABASE))
    db = Db(docker_host, container.id or "", ip)
    db.psql(SEED_SQL)
    # ~15 MB of attachments: the backup (~7 MB) is more than a pipe and an SSH window hold
    db.psql(BULK_SQL.format(start=1, stop=SEED_ATTACHMENTS))
    return db


def grow(db: Db, size_mb: int) -> int:
    """Add bulk rows until the database is about ``size_mb`` MiB; returns its size in bytes."""
    target = size_mb * 2**20
    done = SEED_ATTACHMENTS
    batch = 200_000
    while True:
        size = int(db.psql("SELECT pg_database_size(current_database());").strip())
        if size >= target:
            break
        rows = min(batch, max(1000, (target - size) // BULK_ROW_BYTES + 1))
        db.psql(BULK_SQL.format(start=done + 1, stop=done + rows), timeout=3600)
        done += rows
    db.psql("VACUUM ANALYZE;", timeout=3600)
    return int(db.psql("SELECT pg_database_size(current_database());").strip())


def reset_db(db: Db) -> None:
    """Back to the worked example's state: the role's password is `postgres` again
    (checked by logging in over TCP) and the app's rows are kept."""
    db.psql(f"ALTER ROLE {ROLE} PASSWORD '{OLD_PASSWORD}';")
    why = db.login(OLD_PASSWORD)
    if why is not None:
        raise AssertionError(f"reset of {CONTAINER} failed: {why}")


# --- the operator's repo and the host's activation ---------------------------------------


@dataclass(frozen=True)
class Keys:
    """Fresh TEST keys: newton's host key (agenix decrypts with it) and the operator's."""

    host_key: Path
    admin_key: Path

    @property
    def host_pub(self) -> str:
        return " ".join(self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2])

    @property
    def admin_pub(self) -> str:
        return " ".join(self.admin_key.with_name(self.admin_key.name + ".pub").read_text().split()[:2])


def make_keys(directory: Path) -> Keys:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, comment in (("newton_host_ed25519", "root@newton (test)"), ("admin_ed25519", "admin (test)")):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(directory / name)],
            check=True,
            capture_output=True,
        )
    return Keys(directory / "newton_host_ed25519", directory / "admin_ed25519")


ACTIVATE = '''"""Plays NixOS activation on host newton for the e2e stack (NIXMIG_PHASE=stage|switch|rollback)."""
import json, os, sys
from pathlib import Path
from urllib.parse import quote

from nixmig.secrets import store
from nixmig.secrets.age import load_identities

conf = json.loads(Path(sys.argv[1]).read_text())
phase = os.environ["NIXMIG_PHASE"]
agenix = Path(conf["agenix_dir"]) / conf["secret"]
env_file, gen_file = Path(conf["env_file"]), Path(conf["generation_file"])
print(f"activating newton ({phase})", flush=True)
if phase in sys.argv[2:]:
    print(f"error: activation of the new generation failed ({phase}, injected)", flush=True)
    sys.exit(1)


def write_0400(path, data):
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def restart_app():
    gen = int(gen_file.read_text()) + 1 if gen_file.exists() else 1
    gen_file.write_text(str(gen))
    print(f"twenty-server: restarted (generation {gen})", flush=True)


if phase in ("stage", "switch"):
    ident = load_identities([Path(conf["host_key"])])
    value = store.show(Path(conf["repo"]) / "secrets" / "secrets.nix", conf["secret"], ident)
    write_0400(agenix, value.reveal())
    print(f"agenix: decrypted {conf['secret']} to {agenix} (0400)", flush=True)
if phase == "switch":
    pw = quote(agenix.read_text(), safe="")
    url = f"postgres://postgres:{pw}@{conf['db_host']}:5432/{conf['database']}"
    write_0400(env_file, f"PG_DATABASE_URL={url}\\n".encode())
    print(f"twenty-server: env file {env_file} rendered (0400)", flush=True)
    restart_app()
if phase == "rollback":
    env_file.unlink(missing_ok=True)
    agenix.unlink(missing_ok=True)
    print("newton: back on the previous generation", flush=True)
    restart_app()
'''


@dataclass(frozen=True)
class Site:
    """One operator repo (a throwaway copy of newton-dotfiles) and newton's runtime dirs."""

    root: Path
    repo: Path
    config: Path
    keys: Keys
    db: Db
    password: Secret
    agenix_dir: Path
    app_dir: Path
    activate: Path

    @property
    def env_file(self) -> Path:
        return self.app_dir / "env"

    @property
    def generation_file(self) -> Path:
        return self.app_dir / "generation"

    @property
    def agenix_file(self) -> Path:
        return self.agenix_dir / SECRET

    @property
    def journal(self) -> Path:
        return self.repo / ".nixmig" / "journal" / "newton" / f"{MIGRATION}.json"

    def app_url(self) -> str:
        """What the app reads: PG_DATABASE_URL from its env file, else the hardcoded URL."""
        with contextlib.suppress(FileNotFoundError):
            for line in self.env_file.read_text().splitlines():
                if line.startswith("PG_DATABASE_URL="):
                    return line.split("=", 1)[1]
        return self.db.url(OLD_PASSWORD)

    def generation(self) -> int:
        try:
            return int(self.generation_file.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def restart_app(self) -> None:
        """What a deploy does to the app, without a deploy (the benchmark's restart baseline)."""
        self.generation_file.write_text(str(self.generation() + 1))

    def writer(self) -> Writer:
        return Writer(url_source=self.app_url, generation=self.generation)

    def edit_config(self, old: str, new: str) -> None:
        text = self.config.read_text()
        assert old in text, old
        self.config.write_text(text.replace(old, new, 1))


def make_site(
    root: Path,
    keys: Keys,
    db: Db,
    ssh: SshServer,
    *,
    password: Secret | None = None,
    fail_phases: Sequence[str] = (),
) -> Site:
    """Repo copy with fresh keys in secrets.nix, the new secret, activate.py and nixmig.toml."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    repo = copy_example(root)
    rules = repo / "secrets" / "secrets.nix"
    text = rules.read_text()
    for prefix, key in (("  newton = ", keys.host_pub), ("  admin = ", keys.admin_pub)):
        text = "".join(f'{prefix}"{key}";\n' if ln.startswith(prefix) else ln for ln in text.splitlines(True))
    rules.write_text(text)
    # a password that needs percent-encoding in a URL, fresh for every site
    password = password or Secret(generate(24).reveal_str() + "/+=@:%?")
    store.new_secret(rules, "twenty-app-secret", generate(32), force=True)
    store.new_secret(rules, SECRET, password, like="twenty-app-secret")

    run = root / "run"
    agenix, app = run / "agenix", run / "twenty"
    for d in (run, agenix, app):
        d.mkdir(mode=0o700)
    activate = root / "activate.py"
    activate.write_text(ACTIVATE)
    stack_json = root / "stack.json"
    stack_json.write_text(
        json.dumps(
            {
                "repo": str(repo),
                "host_key": str(keys.host_key),
                "agenix_dir": str(agenix),
                "secret": SECRET,
                "env_file": str(app / "env"),
                "generation_file": str(app / "generation"),
                "db_host": db.ip,
                "database": DATABASE,
            }
        )
    )
    deploy = " ".join([sys.executable, str(activate), str(stack_json), *fail_phases])
    config = repo / "nixmig.toml"
    config.write_text(f"""# the worked example on real parts: newton is 127.0.0.1:{ssh.port} (sshd), docker behind it
[operator]
recipients = ["{keys.admin_pub}"]

[hosts.newton]
address = "{ssh.host}"
port = {ssh.port}
user = "{ssh.user}"
identity = "{ssh.identity}"
known_hosts = "{ssh.known_hosts}"
age_recipient = "{keys.host_pub}"
agenix_dir = "{agenix}"
lock_dir = "{run / "lock"}"

[services.twenty-db]
host = "newton"
runtime = "docker"
container = "{CONTAINER}"
volume = "{VOLUME}"
docker_host = "{db.docker_host}"
database = "{DATABASE}"
role = "{ROLE}"

[migrations.{MIGRATION}]
service = "twenty-db"
secret = "{SECRET}"
strategy = "rotate"
deploy = "{deploy}"

[[migrations.{MIGRATION}.health_checks]]
type = "command"
command = "test -s {app / "env"}"
timeout = 5
retries = 2
""")
    return Site(root, repo, config, keys, db, password, agenix, app, activate)


def nixmig(
    site: Site, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixmig", *args, "-c", str(site.config)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


# --- the /proc/*/cmdline sampler ---------------------------------------------------------

_SAMPLER = r"""
import json, os, select, sys, time
needles = [bytes.fromhex(h) for h in json.loads(sys.stdin.buffer.readline())]
me = str(os.getpid())
sweeps, reads, hits, seen = 0, 0, [], set()
while not select.select([sys.stdin], [], [], 0)[0]:
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        reads += 1
        if any(n in cmd for n in needles):
            masked = cmd
            for n in needles:
                masked = masked.replace(n, b"<PASSWORD>")
            hits.append(masked.replace(b"\0", b" ").decode(errors="replace"))
        seen.add(cmd)
    sweeps += 1
    time.sleep(0.002)
docker = sorted(
    c.replace(b"\0", b" ").decode(errors="replace")
    for c in seen
    if c.split(b"\0")[0].endswith(b"docker") and b"exec" in c.split(b"\0")
)
psql = sorted(c.replace(b"\0", b" ").decode(errors="replace") for c in seen if c.split(b"\0")[0].endswith(b"psql"))
print(json.dumps({"sweeps": sweeps, "reads": reads, "hits": hits, "docker_exec": docker, "psql": psql}))
"""


@dataclass
class SampleReport:
    sweeps: int
    reads: int
    hits: list[str]
    docker_exec: list[str]  # distinct `docker … exec …` command lines seen (proof the sampler sees nixmig's)
    # distinct psql command lines seen, a container's too (nixmig's psql runs in one through its shell)
    psql: list[str]


class CmdlineSampler:
    """A separate process (no GIL contention with the app's writer thread) reading every
    /proc/*/cmdline every ~2 ms until stopped; the needles reach it on stdin, not argv."""

    def __init__(self, needles: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SAMPLER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([n.encode().hex() for n in needles]).encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> SampleReport:
        out, _ = self.proc.communicate(timeout=60)
        return SampleReport(**json.loads(out))


def secret_needles(password: Secret) -> list[str]:
    pw = password.reveal_str()
    return sorted({pw, quote(pw, safe="")})


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)
