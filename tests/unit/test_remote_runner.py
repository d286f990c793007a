"""The runner protocol's framing (nixmig.remote.runner): frames, and end markers found
whatever the chunking; the shell side runs against a real sshd in
tests/e2e/test_ssh_runner.py."""

from __future__ import annotations

import subprocess

import pytest

from nixmig.remote import runner


def test_a_frame_is_header_command_data() -> None:
    token, payload = runner.frame("cat -- 'a b'", b"\x00\n12")
    assert len(token) == 32 and int(token, 16) >= 0
    assert payload == f"{token} 12 4\n".encode() + b"cat -- 'a b'" + b"\x00\n12"
    token2, payload = runner.frame("true", None)
    assert token2 != token and payload == f"{token2} 4 -\n".encode() + b"true"


def feed_in_pieces(reply: runner.Reply, out: bytes, err: bytes, size: int) -> None:
    for i in range(0, max(len(out), len(err)), size):
        reply.feed_out(out[i : i + size])
        reply.feed_err(err[i : i + size])


@pytest.mark.parametrize("size", [1, 2, 7, 33, 4096])
def test_markers_are_found_across_any_chunking(size: int) -> None:
    tok = "ab" * 16
    reply = runner.Reply(tok)
    out = b"no newline at the end" + f"{tok} 3\n".encode()
    err = b"warning\n" + f"{tok}\n".encode()
    feed_in_pieces(reply, out, err, size)
    assert reply.done and reply.status == 3
    assert bytes(reply.out) == b"no newline at the end" and bytes(reply.err) == b"warning\n"


def test_output_that_looks_like_a_marker_of_another_token_is_output() -> None:
    tok, other = "cd" * 16, "ef" * 16
    reply = runner.Reply(tok)
    reply.feed_out(f"{other} 0\n".encode())
    reply.feed_err(f"{other}\n".encode())
    assert not reply.done and reply.status is None
    reply.feed_out(f"{tok} 0\n".encode())
    reply.feed_err(f"{tok}\n".encode())
    assert reply.done and bytes(reply.out) == f"{other} 0\n".encode() and bytes(reply.err) == f"{other}\n".encode()


def test_the_status_waits_for_its_newline() -> None:
    tok = "01" * 16
    reply = runner.Reply(tok)
    reply.feed_out(f"x{tok} 12".encode())
    reply.feed_err(f"{tok}\n".encode())
    assert not reply.done  # "12" may still become "127"
    reply.feed_out(b"7\n")
    assert reply.done and reply.status == 127 and bytes(reply.out) == b"x"


def test_the_script_runs_frames_in_step_under_a_posix_shell() -> None:
    """The loop itself, under dash (Debian's sh, as strict as POSIX sh gets) on a pipe: a
    command that leaves its stdin unread, one that reads part of it, exit codes, cd kept
    inside the command. Over SSH it is the same loop (tests/e2e/test_ssh_runner.py)."""
    frames = [
        runner.frame("true", b"unread data, drained"),
        runner.frame("head -c 2", b"abcdef"),
        runner.frame("sh -c 'cd /; exit 4'", None),
        runner.frame("pwd", None),
        runner.frame("printf '%s' \"$(cat)\"", b"x\ny\n"),
    ]
    payload = b"".join(p for _, p in frames)
    proc = subprocess.run(["sh", "-c", runner.SCRIPT], input=payload, capture_output=True, cwd="/tmp", check=True)
    replies = []
    out, err = proc.stdout, proc.stderr
    for token, _ in frames:
        reply = runner.Reply(token)
        reply.feed_out(out)
        reply.feed_err(err)
        assert reply.done, (token, out, err)
        out = out[out.index(f"{token} ".encode()) :].split(b"\n", 1)[1]
        err = err[err.index(f"{token}\n".encode()) :].split(b"\n", 1)[1]
        replies.append(reply)
    assert [r.status for r in replies] == [0, 0, 4, 0, 0]
    assert [bytes(r.out) for r in replies] == [b"", b"ab", b"", b"/tmp\n", b"x\ny"]
