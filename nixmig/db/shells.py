"""psql through one shell inside the database's container, while the engine says that
container stays (the phases with ``keeps_target``).

Each ``docker exec … psql`` pays ~60-75 ms on the e2e stack before psql starts (the docker
CLI, the engine's exec, containerd), and a run of strategy rotate makes four. Over SSH the
transport can keep one ``docker exec -i -u postgres ID sh -c RUNNER`` open
(nixmig.remote.ssh.SshTransport.shell, the frames of nixmig.remote.runner) and send each
psql to it: the same psql argv, the SQL (a verifier too) on its stdin as before, never in
argv; a new psql process and connection each time, so nothing of one psql's session
reaches the next. Only the docker exec is shared.

- Opened ahead: when the engine turns reuse on and there is no shell yet, a thread opens it
  (a new SSH session, ~0.2-0.4 s here) while the phase goes on; in that phase psql is a
  ``docker exec`` as before, a later phase waits for it (rotate's, verify's).
- Opened early: preflight's ``prepare`` (engine._prepare, right after the connection, before
  the locks) opens it the same way (:func:`open_early`), so that preflight's psql goes
  through it too. Opened before the locks, it is used only once a look under them names its
  container: preflight's own docker inspect (the runtime's check, :func:`seen`), else a
  docker inspect of its own before its first psql, as after a deploy.
- By ID: the shell runs in the container ``docker inspect`` named when it opened, never by
  name. The engine turns reuse off for a phase that may re-create the container (a deploy:
  ``reuse(t, None)``); the first psql after that checks with a docker inspect that the
  container of that name is still the shell's, else the shell is closed and another opened
  ahead. A shell that ended (the container stopped or restarted) is replaced the same way.
  Within a phase the shell is not checked again: something other than nixmig that put another
  container under the name while the old one kept running (renamed) would not be seen until
  the next deploy's check; compose, arion, oci-containers and podman stop the old container
  first, which ends the shell.
- Elsewhere (a rollback, a native server, the local transport, a container without sh or
  head, a restore test's scratch container, a second thread) psql runs as ``docker exec …
  psql`` each time, as before.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from nixmig.db.runtime import DockerRuntime, Runtime
from nixmig.remote import runner
from nixmig.remote.base import DEFAULT_TIMEOUT, Result, Transport
from nixmig.sensitive import Secret


class Shell(Protocol):
    first_line: str  # the container's ID
    lock: threading.Lock

    @property
    def alive(self) -> bool: ...

    def run(
        self,
        argv: Sequence[str],
        *,
        shown_as: Sequence[str],
        stdin: bytes | Secret | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Result: ...

    def close(self) -> None: ...


@dataclass
class _State:
    reuse: str | None = None  # the container whose psql goes through its shell now (_key)
    shells: dict[str, Shell] = field(default_factory=dict)
    # a thread is opening its shell: since which phase (``phase``), done when set
    opening: dict[str, tuple[int, threading.Event]] = field(default_factory=dict)
    phase: int = 0  # reuse() calls: a phase of the engine each
    suspect: set[str] = field(default_factory=set)  # open since before a phase that may re-create it
    # the container's ID a look of the engine's (or preflight's) read since the last phase that may re-create it
    seen: dict[str, str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # its shell did not start: docker exec each time
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


OPEN_WAIT = 10.0  # seconds a psql waits for a shell opening since an earlier phase (then: docker exec)

_STATES: weakref.WeakKeyDictionary[Transport, _State] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _state(t: Transport) -> _State:
    with _LOCK:
        st = _STATES.get(t)
        if st is None:
            st = _STATES[t] = _State()
        return st


def _key(rt: DockerRuntime) -> str:
    return shlex.join(rt._docker(rt.container))


def reuse(t: Transport, rt: Runtime | None) -> None:
    """engine: ``rt``, the migration's database, while a phase runs that never re-creates its
    container (its shell is opened ahead if there is none); None for a phase that may (every
    open shell is checked before its next use). Only that container's psql goes through it."""
    st = _state(t)
    with st.lock:
        if rt is None:
            st.suspect.update(st.shells)
            st.suspect.update(st.opening)  # its opener may have read the ID before the deploy
            st.seen.clear()
        st.reuse = _key(rt) if isinstance(rt, DockerRuntime) else None
        st.phase += 1
    if isinstance(rt, DockerRuntime):
        _open_ahead(t, rt, st, _key(rt))


def open_early(t: Transport, rt: Runtime) -> None:
    """preflight's prepare, before the locks: the container's shell opened ahead (from a
    thread), to be checked before its first use (a look under the locks: :func:`seen`, else
    a docker inspect of its own)."""
    if not isinstance(rt, DockerRuntime):
        return
    st, key = _state(t), _key(rt)
    with st.lock:
        st.suspect.add(key)
    _open_ahead(t, rt, st, key)


def seen(t: Transport, rt: Runtime, container_id: str) -> None:
    """engine, after a deploy, and preflight, under the locks: a docker inspect (their own
    look at the target) found the container of that name to be ``container_id``: a shell in
    it, open or opening, needs no check of its own until the next phase that may re-create it."""
    with _LOCK:
        st = _STATES.get(t)
    if st is None or not isinstance(rt, DockerRuntime):
        return
    key = _key(rt)
    with st.lock:
        st.seen[key] = container_id
        sh = st.shells.get(key)
        if sh is not None and sh.first_line == container_id:
            st.suspect.discard(key)


def close(t: Transport) -> None:
    """engine, at the end of apply: every shell closed (one still opening closes itself), and
    psql is a docker exec of its own again."""
    with _LOCK:
        st = _STATES.pop(t, None)
    if st is None:
        return
    with st.lock:
        st.closed, st.reuse = True, None
        open_now, st.shells = list(st.shells.values()), {}
    for sh in open_now:
        sh.close()


def psql(
    t: Transport, rt: Runtime, *, database: str | None, stdin: bytes | Secret | None, timeout: float = DEFAULT_TIMEOUT
) -> Result | None:
    """``rt.psql(database)`` run through the container's shell; None when not now (the caller
    runs ``rt.psql(database)`` itself)."""
    if not isinstance(rt, DockerRuntime):
        return None
    st, key = _state(t), _key(rt)
    if st.reuse != key:
        return None
    sh = _ready(t, rt, st, key)
    if sh is None or not sh.lock.acquire(blocking=False):  # another thread's: a docker exec of its own
        return None
    try:
        return sh.run(rt.psql_inside(database), shown_as=rt.psql(database), stdin=stdin, timeout=timeout)
    finally:
        sh.lock.release()


def _ready(t: Transport, rt: DockerRuntime, st: _State, key: str) -> Shell | None:
    """The container's shell when it is open, alive and (after a deploy) still in the
    container of that name; else None, and another is opened ahead when it can be."""
    with st.lock:
        since, opened = st.opening.get(key, (st.phase, None))
    if opened is not None and since < st.phase:
        # opened ahead in an earlier phase and still not there (a loaded host): it is
        # waited for, not raced by a docker exec that would take as long
        opened.wait(OPEN_WAIT)
    with st.lock:
        sh, check = st.shells.get(key), key in st.suspect
        if sh is not None and st.seen.get(key) == sh.first_line:
            check = False  # the container of that name since the last phase that may re-create it
        st.suspect.discard(key)
    if sh is not None and check:
        r = t.run(rt._docker("inspect", "--type", "container", "-f", "{{.Id}}", rt.container), check=False)
        if not r.ok or r.stdout.decode("utf-8", "replace").strip() != sh.first_line:
            _drop(st, key, sh)  # re-created: the shell is in the old one, or nowhere
            sh = None
    if sh is not None and not sh.alive:
        _drop(st, key, sh)
        sh = None
    if sh is None:
        _open_ahead(t, rt, st, key)
    return sh


def _drop(st: _State, key: str, sh: Shell) -> None:
    sh.close()
    with st.lock:
        if st.shells.get(key) is sh:
            del st.shells[key]


def _opener(rt: DockerRuntime) -> list[str]:
    """The container's ID on a line, then its shell, exec'd in it by that ID ($1: the runner)."""
    inspect = shlex.join(rt._docker("inspect", "--type", "container", "-f", "{{.Id}}", rt.container))
    script = (
        f'id=$({inspect} </dev/null 2>/dev/null) && [ -n "$id" ] || exit 1; printf "%s\\n" "$id"; '
        f'exec {shlex.join(rt.exec_words())} "$id" sh -c "$1"'
    )
    return ["sh", "-c", script, "sh", runner.SCRIPT]


def _open_ahead(t: Transport, rt: DockerRuntime, st: _State, key: str) -> None:
    """Open the container's shell from a thread, unless it is open, opening, failed before,
    or the transport has none (local)."""
    shell = getattr(t, "shell", None)
    if shell is None:
        return
    with st.lock:
        if st.closed or key in st.shells or key in st.opening or key in st.failed:
            return
        done = threading.Event()
        st.opening[key] = (st.phase, done)

    def open_it() -> None:
        sh: Shell | None = None
        try:
            sh = shell(_opener(rt))
        except Exception:  # it did not start (no sh or head there, the link died): docker exec each time
            with st.lock:
                st.failed.add(key)
        finally:
            with st.lock:
                st.opening.pop(key, None)
                done.set()
                keep = sh is not None and not st.closed
                if keep and sh is not None:
                    st.shells[key] = sh
            if sh is not None and not keep:
                with contextlib.suppress(Exception):
                    sh.close()

    threading.Thread(target=open_it, name="nixmig-db-shell", daemon=True).start()
