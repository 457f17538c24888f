"""A setting is declared once: its dataclass field carries its flag, help, type and choices.

``setting(default, help=...)`` is ``dataclasses.field`` with the command-line metadata in
``field.metadata["flag"]`` (a ``Flag``); ``flag_spec(cls, name)`` reads it back with the
defaults filled in (flag name: the field's, with dashes; type: the annotation's). The command
line (``ddm.cli.flags.add_flags``), the config-file loader and the presets' check all read
these, so a new setting is one field. ``shared(cls, name, default)`` declares a field of one
settings class as another class's (same flag, help and type; its own default), so commands
that take the same setting do not restate it.

This module knows nothing of argparse: it describes flags, ``ddm.cli`` builds them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BY_METHOD",
    "Flag",
    "FlagSpec",
    "setting",
    "shared",
    "shared_fields",
    "flag_spec",
    "flag_specs",
    "parse_bool",
    "value_type",
    "check_value",
]

# The default shown for a setting whose default the method, form or base decides.
BY_METHOD = "by method"


def parse_bool(text: str) -> bool:
    """'true'/'false' (also 1/0, yes/no, on/off) -> bool; anything else raises ValueError."""
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


@dataclass(frozen=True)
class Flag:
    """The command-line side of a setting, as declared on its field (None: the default)."""

    help: str | Callable[[], str]  # text, or a callable returning it (read when a parser is built)
    flag: str | None = None  # None: the field's name with dashes
    aliases: tuple[str, ...] = ()  # older spellings that still work (not shown in help)
    parse: Callable[[str], Any] | None = None  # None: from the annotation (bool: parse_bool)
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None
    # the default as the help shows it: text, or a callable returning text (a default that
    # depends on the method or form); None: the field's default (nothing for a None default)
    shown: str | Callable[[], str] | None = None
    switch: bool = False  # a flag without a value that sets True (e.g. --compile)
    metavar: str | None = None


def setting(default: Any = dataclasses.MISSING, *, help: str, **flag: Any) -> Any:
    """A dataclass field with its command-line metadata (``Flag``'s keywords)."""
    return dataclasses.field(default=default, metadata={"flag": Flag(help=help, **flag)})


def shared(cls: type, name: str, default: Any = dataclasses.MISSING, **changes: Any) -> Any:
    """Field ``name`` of settings class ``cls`` declared for another class: the same flag,
    help and type, with its own ``default`` (the other class's when left out) and ``changes``
    to the flag's metadata (e.g. a help text that says what the other command does with it)."""
    source = _field(cls, name)
    meta = dataclasses.replace(source.metadata["flag"], **changes)
    value = source.default if default is dataclasses.MISSING else default
    return dataclasses.field(default=value, metadata={"flag": meta, "shared_from": (cls, name)})


def shared_fields(cls: type, source: type) -> dict[str, str]:
    """{field of ``cls``: field of ``source``} for ``cls``'s fields declared with ``shared``."""
    out = {}
    for f in dataclasses.fields(cls):
        origin = f.metadata.get("shared_from")
        if origin is not None and origin[0] is source:
            out[f.name] = origin[1]
    return out


@dataclass(frozen=True)
class FlagSpec:
    """A field's flag, ready to build: what ``add_argument`` needs, and what a file may hold."""

    name: str  # the field
    flag: str  # without the dashes
    aliases: tuple[str, ...]
    help: str
    parse: Callable[[str], Any]  # text -> value
    kind: type  # the value's type: bool, int, float or str
    optional: bool  # None accepted
    default: Any
    choices: tuple[Any, ...] | None
    shown: str | None  # the default as the help shows it (None: show nothing)
    switch: bool
    metavar: str | None

    def help_text(self) -> str:
        """The help with its default: ``text (default: X)``."""
        return self.help if self.shown is None else f"{self.help} (default: {self.shown})"


def _field(cls: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def value_type(cls: type, name: str) -> tuple[type, bool]:
    """(type, optional) of field ``name`` from its annotation: ``int | None`` -> (int, True)."""
    hint = typing.get_type_hints(cls)[name]
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        optional = type(None) in args
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    return (origin if isinstance(origin, type) else str), optional


def flag_spec(cls: type, name: str) -> FlagSpec:
    """The flag of field ``name`` of settings class ``cls``; KeyError if it declares none."""
    f = _field(cls, name)
    meta: Flag | None = f.metadata.get("flag")
    if meta is None:
        raise KeyError(f"{cls.__name__}.{name} declares no flag")
    kind, optional = value_type(cls, name)
    parse = meta.parse or (parse_bool if kind is bool else kind)
    default = f.default if f.default is not dataclasses.MISSING else None
    if meta.shown is not None:
        shown = meta.shown() if callable(meta.shown) else meta.shown
    elif default is None or meta.switch:
        shown = None
    else:
        shown = str(default).lower() if isinstance(default, bool) else str(default)
    return FlagSpec(
        name=name,
        flag=meta.flag or name.replace("_", "-"),
        aliases=meta.aliases,
        help=meta.help() if callable(meta.help) else meta.help,
        parse=parse,
        kind=kind,
        optional=optional,
        default=default,
        choices=meta.choices() if callable(meta.choices) else meta.choices,
        shown=shown,
        switch=meta.switch,
        metavar=meta.metavar,
    )


def flag_specs(
    cls: type, only: typing.Iterable[str] | None = None, exclude: typing.Iterable[str] = ()
) -> list[FlagSpec]:
    """The flags of ``cls``'s fields that declare one, in field order (or ``only``'s)."""
    skip = set(exclude)
    if only is not None:
        names = list(only)
    else:
        names = [f.name for f in dataclasses.fields(cls) if "flag" in f.metadata]
    return [flag_spec(cls, n) for n in names if n not in skip]


# --- values from files (config files, presets) ---------------------------------------------------

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _number(value: Any) -> float | None:
    """A number given as a string (YAML 1.1, read by PyYAML, leaves ``1e4`` a string)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def check_value(where: str, value: Any, kind: type) -> Any:
    """``value`` as a ``kind`` (bool, int, float, str), or ValueError naming ``where``."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = value if isinstance(value, float) else _number(value)
        if number is not None and float(number).is_integer():
            return int(number)
    elif kind is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif _number(value) is not None:
            number = _number(value)
        if number is not None:
            if not math.isfinite(number):
                raise ValueError(f"{where}: expected a finite number, got {value!r}")
            return number
    elif isinstance(value, kind):
        return value
    raise ValueError(f"{where}: expected {_NAMES.get(kind, kind.__name__)}, got {value!r}")
