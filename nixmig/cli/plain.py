"""Option values typer would coerce with pydantic, coerced the same way without it.

typer (0.2x) coerces each option's value with a pydantic TypeAdapter it builds on first use
(typer._coercion.build_runtime_param); the import of pydantic that the first one needs is
~60-90 ms of every command's start-up on this 2-core machine, more than the rest of typer
(apply's fixed cost, bench/migrate.py). Most values need nothing of pydantic: a str for a str
option, an int default within its bounds, a path as a string. :class:`Group` (the root
command's class) gives each parameter of the command that runs a coercer that does exactly
what typer's adapter does for those values, with typer's own path checks
(typer._param_types.coerce_cli_path: the same messages), and hands every other value (an
int typed on the command line, an enum, a path with allow_dash) to typer's own coercer,
built then. ``--help``, usage errors and the values a command receives are unchanged.

With a typer that has no such coercer (older ones use click's types), nothing is done.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer.core

_NOT_PLAIN = object()


class _Plain:
    """A parameter's coercer (typer's RuntimeParam protocol: ``coerce``): the plain values
    here, the others by typer's own coercer."""

    def __init__(self, descriptor: Any, build: Callable[[Any], Any], path_check: Callable[..., Any]) -> None:
        self.descriptor = descriptor
        self._build = build
        self._path_check = path_check
        self._typer: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        multi = bool(param.multiple) or param.nargs == -1
        if value is None:  # typer's RuntimeParam.coerce, before any adapter
            return () if multi else None
        out = _NOT_PLAIN
        annotation = self.descriptor.annotation
        if multi and type(value) in (tuple, list) and getattr(annotation, "__origin__", None) is list:
            (leaf,) = annotation.__args__
            items = [self._one(leaf, item, param, ctx) for item in value]
            if not any(item is _NOT_PLAIN for item in items):
                out = items  # typer's list adapter: a list of each item's coercion
        elif not multi:
            out = self._one(annotation, value, param, ctx)
        if out is not _NOT_PLAIN:
            return out
        if self._typer is None:
            self._typer = self._build(self.descriptor)
        return self._typer.coerce(value, param=param, ctx=ctx)

    def _one(self, annotation: Any, value: Any, param: Any, ctx: Any) -> Any:
        """``value`` coerced as typer's leaf adapter for ``annotation`` would; _NOT_PLAIN
        when it needs that adapter."""
        d = self.descriptor
        info = d.parameter_info
        if d.file_annotation is not None or info.parser is not None:
            return _NOT_PLAIN
        if annotation is str and type(value) is str:
            return value  # typer: str(value), validated as a str
        if annotation is int and type(value) is int and not info.clamp:
            if (info.min is None or value >= info.min) and (info.max is None or value <= info.max):
                return value  # typer: an int within Field(ge, le)
            return _NOT_PLAIN  # out of bounds: typer's message
        if annotation is Path and type(value) is str and info.path_type is None and not info.allow_dash:
            # typer: Path(value) by pydantic, then coerce_cli_path's checks (exists, file_okay,
            # dir_okay, readable, writable, resolve_path) on it, with messages naming `value`;
            # the same checks on the string, then the Path of what they return
            return Path(self._path_check(value, info, path_type=None, param=param, ctx=ctx))
        return _NOT_PLAIN


def install(command: Any) -> None:
    """Give each typer parameter of ``command`` (and of its subcommands) a :class:`_Plain`
    coercer, unless it has one already or typer coerces otherwise."""
    try:
        from typer._coercion import build_runtime_param
        from typer._param_types import coerce_cli_path
    except ImportError:  # a typer without pydantic coercion: nothing to spare
        return

    def give(p: Any) -> None:
        if getattr(p, "_runtime_param", _NOT_PLAIN) is None and hasattr(p, "type_descriptor"):
            p._runtime_param = _Plain(p.type_descriptor, build_runtime_param, coerce_cli_path)

    def with_help(get_help_option: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def get(ctx: Any) -> Any:  # --help: an option the command makes when it parses
            option = get_help_option(ctx)
            if option is not None:
                give(option)
            return option

        get.nixmig_plain = True  # type: ignore[attr-defined]
        return get

    stack = [command]
    while stack:
        cmd = stack.pop()
        for p in getattr(cmd, "params", ()):
            give(p)
        helper = getattr(cmd, "get_help_option", None)
        if helper is not None and not getattr(helper, "nixmig_plain", False):
            setattr(cmd, "get_help_option", with_help(helper))  # noqa: B010  (this command only)
        stack.extend(getattr(cmd, "commands", {}).values())


class Group(typer.core.TyperGroup):
    """The root command: its parameters and its subcommands' get :func:`install`'s coercers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        install(self)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            install(cmd)
        return cmd

    def invoke(self, ctx: Any) -> Any:
        """An EOFError out of a command is a connection that ended (paramiko raises it when the
        transport closes under a read): one line and exit 1 like any ConnectionLost, not click's bare
        "Aborted!" (its standalone mode takes EOFError for a closed stdin)."""
        from nixmig.remote.base import ConnectionLost

        try:
            return super().invoke(ctx)
        except EOFError as exc:
            raise ConnectionLost(
                "the connection to the target ended while a command ran (EOF)", where=ctx.command_path
            ) from exc
