"""The e2e tier's sshd is real and verifies host keys strictly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness.sshd import SshServer, StartSshd, generate_key, write_known_hosts

pytestmark = pytest.mark.e2e


def run(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)


def test_key_login_with_strict_host_checking(sshd: SshServer) -> None:
    proc = run(sshd.ssh_argv("id", "-un"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == sshd.user
    assert sshd.known_hosts.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")


def test_empty_known_hosts_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proc = run(sshd.ssh_argv("true", known_hosts=empty))
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr
    assert empty.read_text() == ""  # nothing was learned


def test_unauthorised_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    other = generate_key(tmp_path / "id_other", "not-authorised")
    argv = sshd.ssh_argv("true")
    argv[argv.index(str(sshd.identity))] = str(other.identity)
    proc = run(argv)
    assert proc.returncode == 255
    assert "Permission denied" in proc.stderr


def test_factory_starts_a_fleet_with_distinct_host_keys(sshd_factory: StartSshd, tmp_path: Path) -> None:
    fleet = [sshd_factory() for _ in range(4)]
    assert len({s.port for s in fleet}) == 4
    assert len({s.host_public_key for s in fleet}) == 4
    combined = write_known_hosts(tmp_path / "known_hosts", fleet)
    for server in fleet:
        proc = run(server.ssh_argv("echo", str(server.port), known_hosts=combined))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(server.port)
    # one server's host key does not vouch for another's
    proc = run(fleet[1].ssh_argv("true", known_hosts=fleet[0].known_hosts))
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr


def test_extra_authorised_key_and_sftp(sshd_factory: StartSshd, tmp_path: Path) -> None:
    extra = generate_key(tmp_path / "id_extra", "extra")
    server = sshd_factory(extra_authorized_keys=[extra.public_key])
    argv = server.ssh_argv("true")
    argv[argv.index(str(server.identity))] = str(extra.identity)
    assert run(argv).returncode == 0
    sftp = run([
        "sftp", "-F", "/dev/null", "-b", "-",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={server.known_hosts}",
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-i", str(server.identity), "-P", str(server.port), f"{server.user}@{server.host}",
    ], stdin="pwd\n")  # fmt: skip
    assert sftp.returncode == 0, sftp.stderr


def test_commands_do_not_source_the_login_users_bashrc(sshd: SshServer) -> None:
    # bash run by sshd at the top level (SHLVL unset) sources ~/.bashrc before the command:
    # this machine's root one (pyenv init) was 0.1-0.3 s of every session's start, which a
    # NixOS host's shell does not pay. sshd's SetEnv SHLVL=1 puts bash one level down.
    import pwd

    shell = pwd.getpwnam(sshd.user).pw_shell
    proc = run(sshd.ssh_argv('echo "$SHLVL"'))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("2" if shell.endswith("/bash") else "1"), (shell, proc.stdout)
