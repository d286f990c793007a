"""`nixmig init`: draft nixmig.toml from the repository (nixmig.draft), check it loads, write it.

Thin: read the .nix files, ask nix for the deploy tool's nodes when it can evaluate the
flake (`--no-write-lock-file`: nothing is written in the repo), draft, load the draft back
with nixmig.config, write it without ever replacing an existing nixmig.toml unless --force.
tree-sitter and the drafting code are imported inside the command, so `nixmig --help` stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from nixmig.cli.common import JsonOption, print_json
from nixmig.errors import ConfigError, NixmigError, UsageError

if TYPE_CHECKING:
    from nixmig.inventory import Node

EVAL_TIMEOUT = 120.0


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init_cmd(
        repo: Path | None = typer.Option(
            None, "--repo", help="Root of the Nix repository (default: the current directory).", show_default=False
        ),
        print_only: bool = typer.Option(False, "--print", help="Print the draft on stdout; write nothing."),
        force: bool = typer.Option(False, "--force", help="Replace an existing nixmig.toml."),
        use_eval: bool = typer.Option(
            True,
            "--eval/--no-eval",
            help="Ask `nix eval` for deploy-rs / colmena nodes when it can evaluate the flake (the default); "
            "--no-eval: read them from the files only.",
        ),
        json_out: bool = JsonOption,
    ) -> None:
        """Draft nixmig.toml from the repository: the databases with a hardcoded password
        (scan), their containers or native server, database and role, the hosts and how to
        reach them (nixosConfigurations, deploy-rs, colmena, hosts/NAME/), the age keys of
        secrets.nix, the deploy command. Every value says where it came from (# from FILE:LINE);
        every guess is marked # check:. Review the draft, then run `nixmig plan`.

        Writes ./nixmig.toml (never over an existing one without --force). A repo with no
        hardcoded database password: one line, exit 0, nothing written.
        """
        root = repo if repo is not None else Path.cwd()
        if not root.is_dir():
            raise UsageError("not a directory", where=root, hint="pass --repo with the root of your Nix repository")
        target = root / "nixmig.toml"
        if not print_only and not force and (target.exists() or target.is_symlink()):
            raise ConfigError(
                "already exists; nothing written",
                where=target,
                hint="review it, or see the draft with `nixmig init --print`, or replace it with --force",
            )
        from nixmig import draft as drafting
        from nixmig.nixsrc.patch import read_sources, read_texts

        sources = read_sources(root)
        texts = read_texts(root, sources)  # an initialScript's SQL file
        d = drafting.draft(sources, texts=texts)  # secrets.nix's errors and "nothing to migrate" before any nix eval
        if not d.empty and use_eval:
            notes: list[str] = []
            nodes, eval_from = _eval_nodes(root, sources, notes)
            if nodes is not None or notes:
                d = drafting.draft(sources, nodes=nodes, eval_from=eval_from, notes=notes, texts=texts)
        if d.empty:
            n = d.other_findings
            other = f" ({n} other hardcoded secret{'s' if n != 1 else ''}: `nixmig scan` lists them)" if n else ""
            line = f"nothing to migrate: no hardcoded database password in the {len(sources)} .nix files under {root}"
            line += other
            if json_out:
                print_json({"file": None, "written": False, "nothing_to_migrate": True, "message": line})
            else:
                typer.echo(line)
            return
        _check_loads(d.toml, root)
        written = None
        if not print_only:
            _write(target, d.toml, force=force)
            written = str(target)
        if json_out:
            data: dict[str, Any] = {
                "file": written,
                "written": written is not None,
                "nothing_to_migrate": False,
                "migrations": list(d.migrations),
                "checks": list(d.checks),
            }
            if print_only:
                data["toml"] = d.toml
            print_json(data)
        elif print_only:
            typer.echo(d.toml, nl=False)
        else:
            n = len(d.migrations)
            if n == 0:
                typer.echo(
                    f"wrote {target}: no migration: init could not tie the hardcoded password(s) to a database "
                    "(its `# check: not drafted:` lines say why); add a [services.NAME] and a [migrations.NAME] "
                    "by hand (the README's nixmig.toml section), then run `nixmig plan`"
                )
                return
            typer.echo(
                f"wrote {target}: {n} migration{'s' if n != 1 else ''}"
                f"{' (' + ', '.join(d.migrations) + ')' if n else ''}, "
                f"{len(d.checks)} `# check:` line{'s' if len(d.checks) != 1 else ''} to review; then run `nixmig plan`"
            )


def _check_loads(text: str, root: Path) -> None:
    """The draft must load as nixmig.toml: a draft nixmig itself refuses is never written."""
    from nixmig import config

    with tempfile.TemporaryDirectory(prefix="nixmig-init-") as tmp:
        path = Path(tmp) / "nixmig.toml"
        path.write_text(text, encoding="utf-8")
        try:
            config.load(path)
        except ConfigError as exc:
            raise NixmigError(
                f"the draft does not load ({exc.what}); nothing written",
                where=root,
                hint="see it with `nixmig init --print` and write nixmig.toml by hand from it (and report this)",
            ) from None


def _write(target: Path, text: str, *, force: bool) -> None:
    """Write atomically: a temp file beside it, fsync, then link (never over an existing file)
    or, with --force, rename over it."""
    fd, tmp = tempfile.mkstemp(prefix=".nixmig.toml.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).chmod(0o644)
        if force:
            Path(tmp).replace(target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise ConfigError(
                    "already exists; nothing written", where=target, hint="replace it with --force"
                ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _eval_nodes(root: Path, sources: dict[str, bytes], notes: list[str]) -> tuple[dict[str, Node] | None, str]:
    """The deploy tool's nodes from `nix eval` of the flake, or None (with a note saying why)."""
    flake = sources.get("flake.nix")
    if flake is None:
        return None, ""
    if b"deploy" in flake and b"nodes" in flake:
        attr, source = "deploy", "deploy-rs"
    elif b"colmena" in flake:
        attr, source = "colmena", "colmena"
    else:
        return None, ""
    if shutil.which("nix") is None:
        notes.append(f"the {source} nodes are read from the files (no nix here to evaluate the flake)")
        return None, ""
    from nixmig.errors import NixEvalError
    from nixmig.inventory import nodes_eval_argv, parse_nodes

    argv = nodes_eval_argv(str(root.resolve()), attr)
    why = ""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=EVAL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        why = f"nix eval took longer than {EVAL_TIMEOUT:.0f}s"
    else:
        if proc.returncode == 0:
            try:
                return parse_nodes(json.loads(proc.stdout), where=f"nix eval .#{attr}"), f"nix eval .#{attr}"
            except (ValueError, NixEvalError) as exc:
                why = f"nix eval .#{attr}: {exc}"
        else:
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip().startswith("error:")]
            why = (lines[-1] if lines else f"nix eval exited {proc.returncode}")[:200]
    notes.append(f"the {source} nodes are read from the files: nix cannot evaluate the flake here ({why})")
    return None, ""
