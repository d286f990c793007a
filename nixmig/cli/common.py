"""Shared CLI state and options."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from nixmig.errors import UsageError


@dataclass
class _State:
    debug: bool = False


state = _State()

ConfigOption = typer.Option(
    None,
    "-c",
    "--config",
    help="Path to nixmig.toml (default: ./nixmig.toml when it exists).",
    show_default=False,
)
RepoOption = typer.Option(
    None,
    "--repo",
    help="Root of the Nix repository (default: the directory of nixmig.toml, else the current one).",
    show_default=False,
)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")


def load_config_if_any(path: Path | None, repo: Path | None = None) -> Any:
    """The Config from -c PATH (required to exist), else REPO/nixmig.toml with --repo (as `patch`
    reads it), else ./nixmig.toml; None when there is none (optional)."""
    from nixmig import config

    if path is not None:
        return config.load(path)
    default = (repo or Path()) / config.DEFAULT_CONFIG
    return config.load(default) if default.exists() else None


def resolve_repo(repo: Path | None, cfg: Any) -> Path:
    if repo is not None:
        if not repo.is_dir():
            raise UsageError("not a directory", where=repo, hint="pass --repo with the repo root")
        return repo
    if cfg is not None:
        return Path(cfg.repo)
    return Path.cwd()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
