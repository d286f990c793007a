"""The ssh transport's bulk path against a real sshd: the cipher it negotiates and a
stream that arrives intact."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

from nixmig.remote.ssh import SshTransport
from tests.e2e.test_transport_ssh import host_for
from tests.harness.sshd import SshServer


def test_gcm_is_negotiated_and_a_big_stream_is_intact(sshd: SshServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(40 << 20))
    t = SshTransport.connect(host_for(sshd))
    try:
        transport = t._client.get_transport()
        assert transport is not None
        # an AEAD cipher: no separate HMAC to compute for every packet of a backup
        assert vars(transport)["remote_cipher"] == "aes128-gcm@openssh.com"  # not in the stubs
        assert vars(transport)["local_cipher"] == "aes128-gcm@openssh.com"
        r, w = os.pipe()
        got = hashlib.sha256()

        def read() -> None:
            with os.fdopen(r, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    got.update(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        with os.fdopen(w, "wb") as sink:
            result = t.stream(["cat", "--", str(data)], stdout=sink)
        reader.join()
        assert result.ok and result.stdout == b""
        assert got.hexdigest() == hashlib.sha256(data.read_bytes()).hexdigest()
    finally:
        t.close()


class _LateSink(io.RawIOBase):
    """A consumer that falls behind once (a busy machine): its first write waits until the
    channel's window has filled; then it records the size of each write."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.sha = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if not self.sizes:
            time.sleep(1.0)  # sshd meanwhile sends a full window (paramiko's 2 MiB)
        self.sizes.append(len(data))
        self.sha.update(data)
        return len(data)


def test_a_stream_behind_its_channel_takes_all_it_holds_in_one_read(sshd: SshServer, tmp_path: Path) -> None:
    # paramiko moves what a partial read leaves to the front of the channel's buffer: read 64 KiB
    # at a time, a full 2 MiB window cost ~16 times its bytes in copies (RECV_ALL)
    data = tmp_path / "data"
    data.write_bytes(os.urandom(16 << 20))
    t = SshTransport.connect(host_for(sshd))
    try:
        sink = _LateSink()
        result = t.stream(["cat", "--", str(data)], stdout=sink)  # type: ignore[arg-type]
        assert result.ok
        assert sink.sha.hexdigest() == hashlib.sha256(data.read_bytes()).hexdigest()
        assert max(sink.sizes) >= 1 << 20, sink.sizes[:20]  # the backlog in one read, not 64 KiB ones
    finally:
        t.close()
