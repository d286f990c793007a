"""The ssh transport against a real sshd: commands, stdin, files, and every refusal."""

from __future__ import annotations

import io
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from nixmig.config import Host
from nixmig.remote.base import CommandFailed, TransportError
from nixmig.remote.local import LocalTransport
from nixmig.remote.ssh import SshTransport
from nixmig.sensitive import Secret
from tests.harness.sshd import SshServer


def host_for(server: SshServer) -> Host:
    return Host(
        address=server.host,
        port=server.port,
        user=server.user,
        identity=str(server.identity),
        known_hosts=str(server.known_hosts),
    )


def test_run_stdin_put_get(sshd: SshServer, tmp_path: Path) -> None:
    t = SshTransport.connect(host_for(sshd))
    try:
        r = t.run(["sh", "-c", 'printf "%s|" "$@"; cat', "sh", "a b", "it's"], stdin=b"from stdin")
        assert r.stdout == b"a b|it's|from stdin"
        target = tmp_path / "secret-file"
        t.put(str(target), Secret("pw/+=@:%?"), mode=0o400)
        assert target.read_bytes() == b"pw/+=@:%?"
        assert target.stat().st_mode & 0o777 == 0o400
        assert t.get(str(target)) == b"pw/+=@:%?"
        big = bytes(range(256)) * 8192  # 2 MiB both ways, binary-safe
        assert t.run(["cat"], stdin=big).stdout == big
        sink = io.BytesIO()
        r = t.stream(["sh", "-c", "cat; echo done >&2"], stdin=io.BytesIO(big), stdout=sink)
        assert sink.getvalue() == big and r.stdout == b"" and r.stderr == b"done\n"
        with pytest.raises(CommandFailed) as exc:
            t.run(["sh", "-c", "echo boom >&2; exit 3"])
        assert exc.value.result.exit_code == 3 and "boom" in str(exc.value)
        assert t.run(["false"], check=False).exit_code == 1
    finally:
        t.close()


def test_secret_never_in_argv(sshd: SshServer) -> None:
    t = SshTransport.connect(host_for(sshd))
    try:
        with pytest.raises(TypeError):
            t.run(["echo", Secret("x")])  # type: ignore[list-item]
    finally:
        t.close()
    with pytest.raises(TypeError):
        LocalTransport().run(["echo", Secret("x")])  # type: ignore[list-item]


def test_unknown_host_is_refused_with_fingerprint(sshd: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(TransportError) as exc:
        SshTransport.connect(replace(host_for(sshd), known_hosts=str(empty)))
    msg = str(exc.value)
    expected = (
        subprocess.run(["ssh-keygen", "-lf", "-"], input=sshd.host_public_key.encode(), capture_output=True, check=True)
        .stdout.split()[1]
        .decode()
    )
    assert "unknown host key" in msg and expected in msg
    assert f"ssh-keyscan -p {sshd.port} -t ed25519 {sshd.host} >> {empty}" in msg
    assert empty.read_text() == ""  # nothing was accepted


def test_changed_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[{sshd.host}]:{sshd.port} {other}\n")
    with pytest.raises(TransportError, match="HOST KEY MISMATCH"):
        SshTransport.connect(replace(host_for(sshd), known_hosts=str(kh)))


def test_wrong_identity_and_closed_port(sshd: SshServer, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    with pytest.raises(TransportError, match="authentication failed"):
        SshTransport.connect(replace(host_for(sshd), identity=str(tmp_path / "stranger")))
    with pytest.raises(TransportError, match="cannot connect"):
        SshTransport.connect(replace(host_for(sshd), port=1), timeout=5)
    with pytest.raises(TransportError, match="does not exist"):
        SshTransport.connect(replace(host_for(sshd), known_hosts=str(tmp_path / "missing")))
