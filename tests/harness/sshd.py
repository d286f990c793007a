"""Real OpenSSH servers on 127.0.0.1 for the e2e tier.

Each server is ``/usr/sbin/sshd -D`` with its own generated ed25519 host key,
config, pid file and log in a temp dir, on a free port, accepting only the
session's generated client key (for root when we are root, else for the
current user). Clients get a known_hosts file holding exactly that server's
host key, so host verification is real: nothing is auto-accepted.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from . import HarnessError, free_port, require_binary, tail

SSHD_APT_PACKAGE = "openssh-server"
SSH_APT_PACKAGE = "openssh-client"
PRIVSEP_DIR = Path("/run/sshd")


@dataclass(frozen=True)
class ClientKey:
    """An ed25519 key pair for ssh clients; ``public_key`` is the ``ssh-ed25519 AAAA...`` line."""

    identity: Path
    public_key: str


@dataclass(frozen=True)
class SshServer:
    """A running sshd and everything a client needs to reach it with strict host checking."""

    host: str
    port: int
    user: str
    identity: Path
    known_hosts: Path
    host_public_key: str
    log: Path

    @property
    def known_hosts_line(self) -> str:
        return known_hosts_line(self.host, self.port, self.host_public_key)

    def ssh_argv(self, *command: str, known_hosts: Path | None = None) -> list[str]:
        """OpenSSH client argv that verifies the host key against ``known_hosts``."""
        kh = self.known_hosts if known_hosts is None else known_hosts
        return [
            "ssh", "-F", "/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={kh}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=10",
            "-i", str(self.identity),
            "-p", str(self.port),
            "-l", self.user,
            self.host,
            *command,
        ]  # fmt: skip


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """The known_hosts entry OpenSSH (and paramiko) look up for host:port."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {public_key}"


def write_known_hosts(path: Path, servers: Iterable[SshServer]) -> Path:
    """Write one known_hosts file covering several servers (e.g. a fleet)."""
    path.write_text("".join(s.known_hosts_line + "\n" for s in servers))
    return path


def generate_key(path: Path, comment: str) -> ClientKey:
    """``ssh-keygen -t ed25519`` without a passphrase; returns the pair."""
    keygen = require_binary("ssh-keygen", SSH_APT_PACKAGE)
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    pub = path.with_name(path.name + ".pub").read_text().split()
    return ClientKey(identity=path, public_key=f"{pub[0]} {pub[1]}")


def _wait_for_banner(host: str, port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"sshd exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise HarnessError(f"sshd did not answer on {host}:{port}")


class StartSshd(Protocol):
    """What the ``sshd_factory`` fixture yields."""

    def __call__(self, extra_authorized_keys: Sequence[str] = ()) -> SshServer: ...


class SshdFactory:
    """Starts sshd instances on demand; ``close()`` stops all of them."""

    def __init__(self, base: Path, client: ClientKey) -> None:
        self.base = base
        self.client = client
        self.user = getpass.getuser()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._count = 0

    def __call__(self, extra_authorized_keys: Sequence[str] = ()) -> SshServer:
        sshd = require_binary("/usr/sbin/sshd", SSHD_APT_PACKAGE)
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._count += 1
        d = self.base / f"sshd{self._count}"
        d.mkdir(mode=0o700)
        host_key = generate_key(d / "ssh_host_ed25519_key", f"nixmig-test-host-{self._count}")
        auth = d / "authorized_keys"
        auth.write_text("".join(k + "\n" for k in (self.client.public_key, *extra_authorized_keys)))
        auth.chmod(0o600)
        log = d / "sshd.log"
        host = "127.0.0.1"
        for attempt in range(5):
            port = free_port(host)
            config = d / "sshd_config"
            config.write_text(
                "\n".join([
                    f"Port {port}",
                    f"ListenAddress {host}",
                    f"HostKey {host_key.identity}",
                    f"PidFile {d / 'sshd.pid'}",
                    f"AuthorizedKeysFile {auth}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PrintMotd no",
                    # sshd runs each command through the user's shell; bash, run by sshd at the
                    # top level, sources the user's ~/.bashrc first. This machine's root one
                    # (pyenv init) costs 0.1-0.3 s of CPU per session, which a NixOS host's
                    # /etc/bashrc does not: with SHLVL=1 the shell is not at the top level
                    "SetEnv SHLVL=1",
                    "MaxSessions 64",
                    "MaxStartups 64:30:128",
                    "LogLevel VERBOSE",
                    "Subsystem sftp /usr/lib/openssh/sftp-server",
                    "",
                ])
            )  # fmt: skip
            check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True, timeout=30)
            if check.returncode != 0:
                raise HarnessError(f"sshd -t rejected the config: {check.stderr}")
            proc = subprocess.Popen(
                [sshd, "-D", "-f", str(config), "-E", str(log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
            )
            self._procs.append(proc)
            try:
                _wait_for_banner(host, port, proc, time.monotonic() + 20)
                break
            except HarnessError as e:
                _stop(proc)
                if attempt == 4 or "Bind to port" not in tail(log):
                    raise HarnessError(f"{e}\n--- sshd log ---\n{tail(log)}") from None
        known_hosts = d / "known_hosts"
        known_hosts.write_text(known_hosts_line(host, port, host_key.public_key) + "\n")
        return SshServer(
            host=host,
            port=port,
            user=self.user,
            identity=self.client.identity,
            known_hosts=known_hosts,
            host_public_key=host_key.public_key,
            log=log,
        )

    def close(self) -> None:
        for proc in self._procs:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def sshd_factory_context() -> Iterator[SshdFactory]:
    require_binary("/usr/sbin/sshd", SSHD_APT_PACKAGE)
    require_binary("ssh", SSH_APT_PACKAGE)
    base = Path(tempfile.mkdtemp(prefix="nixmig-sshd-"))
    factory: SshdFactory | None = None
    try:
        client = generate_key(base / "id_ed25519", "nixmig-test-client")
        factory = SshdFactory(base, client)
        yield factory
    finally:
        if factory is not None:
            factory.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd_factory() -> Iterator[StartSshd]:
    """Call it to start another sshd (own host key and port, same client key).

    ``sshd_factory(extra_authorized_keys=["ssh-ed25519 AAAA..."])`` also authorises
    other public keys. All servers stop at session end.
    """
    with sshd_factory_context() as factory:

        def start(extra_authorized_keys: Sequence[str] = ()) -> SshServer:
            try:
                return factory(extra_authorized_keys)
            except HarnessError as e:
                pytest.fail(f"could not start sshd: {e}", pytrace=False)

        yield start


@pytest.fixture(scope="session")
def sshd(sshd_factory: StartSshd) -> SshServer:
    """One sshd for the session."""
    return sshd_factory()
