"""Flags built from the settings dataclasses' fields (``ddm.settings``): one declaration each."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from typing import Any

from ..settings import FlagSpec, flag_specs, parse_bool

__all__ = ["add_flags", "add_flag", "dest", "values_from"]


def dest(spec: FlagSpec) -> str:
    """Where a flag's value lands in the namespace: its flag name with underscores (also its
    key in a config file)."""
    return spec.flag.replace("-", "_")


def values_from(
    args: argparse.Namespace,
    cls: type,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> dict[str, Any]:
    """{field: value} of ``cls``'s flags found in ``args`` (a flag not given under a
    suppressed default is absent)."""
    given = vars(args)
    return {s.name: given[dest(s)] for s in flag_specs(cls, only, exclude) if dest(s) in given}


def _bool(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_flag(
    parser: Any, spec: FlagSpec, *, default: Any = None, suppress: bool = False, **extra: Any
) -> None:
    """Add one field's flag to ``parser`` (or an argument group).

    ``suppress``: no default in the namespace, so only flags typed (or read from --config)
    reach it; the help still shows the field's default. ``default``: the command's own
    default in place of the field's (None: the field's).
    """
    value = spec.default if default is None else default
    names = [f"--{spec.flag}", *(f"--{a}" for a in spec.aliases)]
    kwargs: dict[str, Any] = {"dest": dest(spec)}
    if spec.switch:
        kwargs.update(action="store_true")
    else:
        kwargs.update(type=_bool if spec.parse is parse_bool else spec.parse)
        if spec.choices is not None:
            kwargs["choices"] = spec.choices
        if spec.metavar is not None:
            kwargs["metavar"] = spec.metavar
    kwargs["default"] = argparse.SUPPRESS if suppress else value
    shown = spec.shown
    if default is not None and not suppress:
        shown = str(default).lower() if isinstance(default, bool) else str(default)
    kwargs["help"] = spec.help if shown is None else f"{spec.help} (default: {shown})"
    kwargs.update(extra)
    parser.add_argument(*names, **kwargs)


def add_flags(
    parser: Any,
    cls: type,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
    helps: dict[str, str] | None = None,
    suppress: bool = False,
) -> list[str]:
    """Add the flags of ``cls``'s fields (those in ``only``, in its order, else every field
    that declares one, minus ``exclude``) to ``parser``; ``defaults`` and ``helps``: a
    command's own defaults and help texts, by field name. Returns the field names added."""
    defaults, helps = defaults or {}, helps or {}
    specs = flag_specs(cls, only, exclude)
    for spec in specs:
        if spec.name in helps:
            spec = dataclasses.replace(spec, help=helps[spec.name])
        add_flag(parser, spec, default=defaults.get(spec.name), suppress=suppress)
    return [s.name for s in specs]
