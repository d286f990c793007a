"""The `nixmig` executable: the on-host fast path, else the full command line.

A NixOS unit runs `nixmig apply --on-host` on every activation; when its journal
says done it must exit at once, so that case is answered here, before typer and
the command modules are imported (see nixmig.onhost_fast).

Once a command has returned, the process ends without the interpreter's teardown of
every module it loaded (:func:`_exit`): after an apply (paramiko, cryptography,
psycopg, jinja2, tree-sitter) that teardown is ~50 ms of a run's fixed cost that
nothing needs.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if "--on-host" in argv:
        from nixmig.onhost_fast import fast_path

        line = fast_path(argv)
        if line is not None:
            sys.stdout.write(line + "\n")
            sys.exit(0)
    from nixmig.cli import main as cli_main

    try:
        cli_main()
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


def _exit(code: object) -> None:
    """End the process with ``code`` (SystemExit's meaning: None is 0, a string is printed
    and is 1) as the interpreter would, less the teardown of its modules: stdout and stderr
    flushed, every atexit handler run (logging's flush, weakref finalizers, tempfile's
    cleanup), then os._exit. The interpreter's own exit instead when a thread that is not a
    daemon still runs (it would be waited for) or a flush fails (a closed pipe: reported
    as ever)."""
    import atexit
    import os
    import threading

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others:
        raise SystemExit(status)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(status) from None
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(status) from None
    os._exit(status)
