"""`nixmig demo`: the whole migration against a throwaway local target.

No docker, no sshd: a temp copy of the worked example, fresh TEST keys, a local
PostgreSQL cluster (initdb in a temp dir, native runtime, local transport), a
writer that keeps inserting while nixmig runs, and a deploy command that plays
NixOS activation (agenix decrypts the secret into a 0400 file; the app's env
file is rendered outside any store and the app "restarts").
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from nixmig.errors import NixmigError, ToolMissingError

EXAMPLE = Path(__file__).parent / "examples" / "newton-dotfiles"
OLD_PASSWORD = "postgres"  # noqa: S105 - what the worked example hardcodes, on purpose
SECRET = "twenty-db-password"  # noqa: S105 - a name, not a value


class DemoError(NixmigError):
    """The demo's throwaway target could not be set up."""


@dataclass
class Target:
    root: Path
    repo: Path
    pg_data: Path
    socket_dir: Path
    port: int
    os_user: str
    bindir: Path
    agenix_dir: Path
    app_dir: Path
    host_key: Path
    admin_key: Path

    @property
    def env_file(self) -> Path:
        return self.app_dir / "env"

    def app_url(self) -> str:
        """What the app stand-in connects with: the env file after the switch, else the hardcoded URL."""
        if self.env_file.exists():
            for line in self.env_file.read_text().splitlines():
                if line.startswith("PG_DATABASE_URL="):
                    return line.split("=", 1)[1]
        return f"postgres://postgres:{OLD_PASSWORD}@127.0.0.1:{self.port}/default"


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[4]))
    if not found:
        raise ToolMissingError(
            "no PostgreSQL server binaries (initdb) found", hint="apt-get install postgresql (scripts/bootstrap does)"
        )
    return Path(found[-1]).parent


def _as(user: str, argv: list[str]) -> list[str]:
    if os.geteuid() == 0 and user != "root":
        return ["runuser", "-u", user, "--", *argv]
    return argv


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def setup(root: Path, emit: Callable[[str], None]) -> Target:
    bindir = _bindir()
    os_user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(os_user)
        except KeyError:
            raise DemoError(
                "as root the demo runs PostgreSQL as the 'postgres' user, which does not exist",
                hint="apt-get install postgresql creates it",
            ) from None
    root.chmod(0o755)
    repo = root / "newton-dotfiles"
    shutil.copytree(EXAMPLE, repo)
    keys = root / "keys"
    keys.mkdir(mode=0o700)
    host_pub = _keygen(keys / "newton_host_ed25519", "root@newton (demo)")
    admin_pub = _keygen(keys / "admin_ed25519", "admin (demo)")
    rules = repo / "secrets" / "secrets.nix"
    text = rules.read_text()
    for line_start, key in (("  newton = ", host_pub), ("  admin = ", admin_pub)):
        lines = text.splitlines(keepends=True)
        text = "".join(f'{line_start}"{key}";\n' if ln.startswith(line_start) else ln for ln in lines)
    rules.write_text(text)

    pg = root / "pg"
    pg.mkdir()
    data, sock = pg / "data", pg / "run"
    sock.mkdir()
    port = _free_port()
    if os.geteuid() == 0:
        shutil.chown(pg, os_user)
        shutil.chown(sock, os_user)
    pwfile = pg / "pw"
    pwfile.write_text(OLD_PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(pwfile, os_user)
    pwfile.chmod(0o400)
    emit(f"initdb: PostgreSQL {bindir.parent.name} in {data}")
    subprocess.run(
        _as(
            os_user,
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        ),
        check=True,
        capture_output=True,
    )
    pwfile.unlink()
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{sock}'\nfsync = off\n")
    subprocess.run(
        _as(os_user, [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(pg / "log"), "-w", "-t", "60", "start"]),
        check=True,
        capture_output=True,
    )
    run = root / "run"
    agenix, app = run / "agenix", run / "twenty"
    for d in (run, agenix, app):
        d.mkdir(mode=0o700)
    return Target(
        root, repo, data, sock, port, os_user, bindir, agenix, app, keys / "newton_host_ed25519", keys / "admin_ed25519"
    )


def seed(t: Target) -> None:
    sql = """
CREATE DATABASE "default";
\\c "default"
CREATE TABLE workspace (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE company (id serial PRIMARY KEY, workspace_id int REFERENCES workspace, name text);
CREATE TABLE person (id serial PRIMARY KEY, company_id int REFERENCES company, email text, name text);
CREATE TABLE app_writes (id bigserial PRIMARY KEY, at timestamptz NOT NULL);
INSERT INTO workspace (name) SELECT 'ws ' || g FROM generate_series(1, 5) g;
INSERT INTO company (workspace_id, name) SELECT 1 + g % 5, 'company ' || g FROM generate_series(1, 2000) g;
INSERT INTO person (company_id, email, name)
  SELECT 1 + g % 2000, 'p' || g || '@example.org', 'person ' || g FROM generate_series(1, 20000) g;
"""
    subprocess.run(
        _as(
            t.os_user,
            [
                str(t.bindir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(t.socket_dir),
                "-p",
                str(t.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-f",
                "-",
            ],
        ),
        input=sql.encode(),
        check=True,
        capture_output=True,
    )


def write_config(t: Target, admin_pub: str, host_pub: str) -> Path:
    deploy = f"{sys.executable} -m nixmig.demo activate --root {t.root}"
    cfg = t.repo / "nixmig.toml"
    cfg.write_text(f"""# written by `nixmig demo`: a local stand-in for host newton
[operator]
recipients = ["{admin_pub}"]

[hosts.newton]
address = "localhost"
transport = "local"
age_recipient = "{host_pub}"
agenix_dir = "{t.agenix_dir}"
lock_dir = "{t.root / "run" / "lock"}"

[services.twenty-db]
host = "newton"
runtime = "native"
database = "default"
role = "postgres"
port = {t.port}
socket_dir = "{t.socket_dir}"
log_file = "{t.pg_data.parent / "log"}"
os_user = "{t.os_user}"

[migrations.{SECRET}]
service = "twenty-db"
secret = "{SECRET}"
strategy = "rotate"
deploy = "{deploy}"
""")
    return cfg


def activate(root: Path) -> None:
    """The demo's deploy command: what agenix + a NixOS switch would do on the host."""
    from nixmig.secrets import store
    from nixmig.secrets.age import load_identities

    phase = os.environ.get("NIXMIG_PHASE", "")
    repo, run = root / "newton-dotfiles", root / "run"
    target = run / "agenix" / SECRET
    env_file = run / "twenty" / "env"
    print(f"activating newton ({phase})")
    if phase in ("stage", "switch"):
        ident = load_identities([root / "keys" / "newton_host_ed25519"])
        value = store.show(repo / "secrets" / "secrets.nix", SECRET, ident)
        fd = os.open(target.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
        with os.fdopen(fd, "wb") as fh:
            fh.write(value.reveal())
        target.with_suffix(".tmp").replace(target)
        print(f"agenix: decrypted {SECRET} to {target} (0400)")
    if phase == "switch":
        # ExecStartPre of the app unit: the URL with the password percent-encoded, 0400, outside any store
        from nixmig import config

        port = config.load(repo / "nixmig.toml").services["twenty-db"].port
        from nixmig.phases.rotate import secret_value  # the renderer's rule: less the file's final line breaks

        pw = quote(secret_value(target.read_bytes()), safe="")
        fd = os.open(env_file.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"PG_DATABASE_URL=postgres://postgres:{pw}@127.0.0.1:{port}/default\n")
        env_file.with_suffix(".tmp").replace(env_file)
        print("twenty: env file rendered, app restarted")
    if phase == "rollback":
        env_file.unlink(missing_ok=True)
        print("twenty: back on the previous generation, app restarted")


def run_demo(emit: Callable[[str], None], keep: bool = False, restore_test: bool = True) -> int:
    from nixmig import config, engine
    from nixmig.db.writer import Writer, count_found
    from nixmig.secrets import store
    from nixmig.secrets.age import load_identities
    from nixmig.secrets.generate import generate
    from nixmig.sensitive import Secret

    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="nixmig-demo-"))
    t: Target | None = None
    writer: Writer | None = None
    try:
        t = setup(root, emit)
        os.environ["PATH"] = f"{t.bindir}:{os.environ['PATH']}"
        seed(t)
        host_pub = " ".join(t.host_key.with_suffix(".pub").read_text().split()[:2])
        admin_pub = " ".join(t.admin_key.with_suffix(".pub").read_text().split()[:2])
        cfg_path = write_config(t, admin_pub, host_pub)
        rules = t.repo / "secrets" / "secrets.nix"
        store.new_secret(rules, "twenty-app-secret", generate(32), force=True)
        result = store.new_secret(rules, SECRET, generate(32), like="twenty-app-secret")
        emit(
            f'secret new {SECRET}: {result.file.relative_to(t.repo)}, "{result.name}".publicKeys = {result.expression};'
        )

        writer = Writer(url_source=t.app_url, generation=lambda: t.env_file.exists() and t.env_file.stat().st_mtime)
        writer.start()
        time.sleep(0.5)

        cfg = config.load(cfg_path)
        ctx = engine.make_context(
            cfg,
            SECRET,
            identities=load_identities([t.admin_key]),
            emit=lambda m: emit(f"    {m}"),
            old_password=Secret(OLD_PASSWORD),
        )
        ctx.restore_test = restore_test  # a scratch database on the demo's cluster: a second or so
        times: dict[str, float] = {}

        def on_phase(phase: str, state: str, secs: float | None) -> None:
            if state == "running":
                emit(f"==> {phase}")
            elif secs is not None:
                times[phase] = secs
                emit(f"    {phase}: {state} in {secs:.2f}s")

        engine.apply(ctx, on_phase=on_phase)
        time.sleep(0.5)
        writer.stop()
        acked = writer.acknowledged
        found = count_found(t.app_url(), acked)
        checks = ctx.journal.data("verify").get("checks", [])
        _table(emit, checks, times, len(acked), found, writer.failed_attempts)
        emit(f"demo finished in {time.monotonic() - started:.1f}s (target dir: {root}{'' if keep else ', removed'})")
        return 0 if found == len(acked) and all(c["ok"] for c in checks) else 1
    finally:
        if writer is not None:
            writer.stop()
        if t is not None:
            subprocess.run(
                _as(t.os_user, [str(t.bindir / "pg_ctl"), "-D", str(t.pg_data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                check=False,
            )
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _table(
    emit: Callable[[str], None],
    checks: list[dict[str, object]],
    times: dict[str, float],
    acked: int,
    found: int,
    failed: int,
) -> None:
    emit("")
    emit("verification")
    for c in checks:
        emit(f"  {'ok  ' if c['ok'] else 'FAIL'}  {c['check']}{'  — ' + str(c['detail']) if c['detail'] else ''}")
    emit(
        f"  {'ok  ' if found == acked else 'FAIL'}  writes acknowledged {acked}, found {found}"
        f" ({failed} failed connection attempts)"
    )
    emit("phases: " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m nixmig.demo")
    sub = parser.add_subparsers(dest="cmd", required=True)
    act = sub.add_parser("activate", help="the demo's deploy command (plays NixOS activation)")
    act.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    if args.cmd == "activate":
        activate(args.root)


if __name__ == "__main__":
    main()
