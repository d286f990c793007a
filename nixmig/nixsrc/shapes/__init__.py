"""The shapes of a hardcoded password that patch has an edit for, one module each, in one table.

A shape is a module with ``SHAPE = Shape(name, summary, apply, cases)``: ``apply(builder,
password)`` looks for its shape in the builder's file models (syntax trees) and adds the edits,
the masks of the literals it replaces, its notes and by-hand items through the builder
(:class:`nixmig.nixsrc.patch.Builder`). ``password`` is the value the plan recognised (the
database container's, or the one the apps hold), None when there is none yet. ``cases`` names the
cases of the shape corpus (tests/fixtures/shapes) that show it; a unit test checks they exist.

patch runs the table in order after the database container and the app URLs are planned;
the verdict (a scan of what is left) runs after every shape. The next shape is a new module
here, one line in :data:`SHAPES` and a case in tests/fixtures/shapes.

The container and app-URL edits (the worked example's shape) are still the builder's own
methods in :mod:`nixmig.nixsrc.patch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nixmig.nixsrc.patch import Builder


@dataclass(frozen=True)
class Shape:
    name: str
    summary: str
    apply: Callable[[Builder, str | None], None]
    cases: tuple[str, ...]


def _table() -> tuple[Shape, ...]:
    from nixmig.nixsrc.shapes import (
        activation_heredoc,
        container_store_file,
        env_file_option,
        env_setting_move,
        env_subst,
        etc_file,
        file_reference,
        initial_script,
        let_script,
        libpq_dsn,
        libpq_env,
        mysql_initial_script,
        run_argv,
        script_literal,
        settings_url,
        shared_env,
        store_file,
        tmpfiles_file,
        unit_sql,
    )

    return (
        initial_script.SHAPE,
        mysql_initial_script.SHAPE,
        unit_sql.SHAPE,
        let_script.SHAPE,
        script_literal.SHAPE,
        container_store_file.SHAPE,
        store_file.SHAPE,
        etc_file.SHAPE,
        tmpfiles_file.SHAPE,
        file_reference.SHAPE,
        shared_env.SHAPE,
        activation_heredoc.SHAPE,
        run_argv.SHAPE,
        env_file_option.SHAPE,
        env_setting_move.SHAPE,
        env_subst.SHAPE,
        settings_url.SHAPE,
        libpq_dsn.SHAPE,
        libpq_env.SHAPE,
    )


SHAPES: tuple[Shape, ...] = _table()
