"""The local transport and the one place argv is rendered."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from nixmig.remote.base import CommandFailed, TransportError, render
from nixmig.remote.local import LocalTransport
from nixmig.sensitive import Secret


def test_render_quotes_and_refuses_secrets() -> None:
    assert render(["psql", "-c", "select 'x'", "a b"]) == "psql -c 'select '\"'\"'x'\"'\"'' 'a b'"
    with pytest.raises(TypeError):
        render(["echo", Secret("pw")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="empty"):
        render([])


def test_local_run_put_get(tmp_path: Path) -> None:
    t = LocalTransport()
    assert t.run(["cat"], stdin=Secret("via stdin")).stdout == b"via stdin"
    with pytest.raises(CommandFailed, match="exited 2"):
        t.run(["sh", "-c", "echo nope >&2; exit 2"])
    with pytest.raises(TransportError, match="command not found"):
        t.run(["/nonexistent/binary"])
    big = bytes(range(256)) * 4096
    sink = io.BytesIO()
    r = t.stream(["sh", "-c", "cat; echo done >&2"], stdin=io.BytesIO(big), stdout=sink)
    assert sink.getvalue() == big and r.stderr == b"done\n"
    with pytest.raises(CommandFailed):
        t.stream(["sh", "-c", "exit 4"], stdout=io.BytesIO())
    f = tmp_path / "f"
    t.put(str(f), b"data", mode=0o400)
    assert f.stat().st_mode & 0o777 == 0o400 and t.get(str(f)) == b"data"
