"""The ssh transport's bulk path against a real sshd: the cipher it negotiates and a
stream that arrives intact."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

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
