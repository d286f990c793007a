"""One shell on the target that runs every short command of a run: the protocol.

sshd starts each session's command 0.1-0.2 s after the request (fork, the login
shell, PAM on a real host), and apply runs a few dozen short commands. So the ssh
transport keeps one session open running :data:`SCRIPT`, a POSIX sh loop, and
sends it each command as a frame; the loop answers with a marker carrying the
exit status. Long transfers (``stream``), held processes and forwards keep their
own channels.

A frame is a header line ``TOKEN CMDLEN DATALEN`` (DATALEN ``-``: no stdin),
then CMDLEN bytes of command text, then DATALEN bytes of stdin. The loop reads
the header with ``read`` (which never reads past a newline on a pipe) and the
two payloads with ``head -c N`` (GNU head reads at most N bytes), so nothing of
the next frame is consumed. The command runs in a subshell (``cd``, variables
and ``exit`` stay inside it) with stdin from /dev/null or from exactly its
data; what it leaves unread is drained, so the stream stays in step. Then the
loop prints ``TOKEN STATUS`` on stdout and ``TOKEN`` on stderr: the token is
128 random bits, new for each command, so no output can forge the end.

The command text is the one :func:`nixmig.remote.base.render` made (never a
secret); stdin may be one, and travels on the channel as with a session of its own.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

SCRIPT = (
    'while IFS=" " read -r t n d; do'
    ' c=$(head -c "$n") || exit 97;'
    ' if [ "$d" = - ]; then (eval "$c") </dev/null;'
    ' else head -c "$d" | { (eval "$c"); r=$?; cat >/dev/null; exit "$r"; }; fi;'
    ' r=$?; printf "%s %s\\n" "$t" "$r"; printf "%s\\n" "$t" >&2;'
    " done"
)


def frame(command: str, data: bytes | None) -> tuple[str, bytes]:
    """(token, the bytes to send) for one command."""
    token = secrets.token_hex(16)
    text = command.encode()
    header = f"{token} {len(text)} {'-' if data is None else len(data)}\n".encode()
    return token, header + text + (data or b"")


@dataclass
class Reply:
    """Collects one command's stdout and stderr as they arrive, and finds its end markers."""

    token: str
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    status: int | None = None
    err_done: bool = False

    @property
    def done(self) -> bool:
        return self.status is not None and self.err_done

    def feed_out(self, chunk: bytes) -> None:
        start = max(0, len(self.out) - len(self.token) - 24)
        self.out += chunk
        if self.status is not None:
            return
        mark = self.token.encode() + b" "
        at = self.out.find(mark, start)
        if at < 0:
            return
        end = self.out.find(b"\n", at)
        if end < 0:
            return
        self.status = int(self.out[at + len(mark) : end])
        del self.out[at:]

    def feed_err(self, chunk: bytes) -> None:
        start = max(0, len(self.err) - len(self.token) - 1)
        self.err += chunk
        if self.err_done:
            return
        at = self.err.find(self.token.encode() + b"\n", start)
        if at >= 0:
            self.err_done = True
            del self.err[at:]


# A spare session: started ahead, it says it is ready, then reads one command (its length
# on a line, then the text, exactly) and becomes it with exec: from then on it is the
# session that command would have had (its stdin, exit status and end are the channel's).
SPARE = 'echo R; IFS= read -r n || exit 97; c=$(head -c "$n") || exit 97; eval "exec $c"'
READY = b"R\n"


def handover(command: str) -> bytes:
    text = command.encode()
    return f"{len(text)}\n".encode() + text
