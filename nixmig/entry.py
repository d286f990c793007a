"""The `nixmig` executable: the on-host fast path, else the full command line.

A NixOS unit runs `nixmig apply --on-host` on every activation; when its journal
says done it must exit at once, so that case is answered here, before typer and
the command modules are imported (see nixmig.onhost_fast).
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

    cli_main()
