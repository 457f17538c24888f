"""Config files: a command's settings in YAML or JSON, by flag name (``--config FILE``).

Layers, lowest first: dataclass defaults < ``--preset`` < config file < flags given on the
command line. The file's keys are a command's flag names (``batch-real`` or ``batch_real``);
for ``condense`` every ``CondenseConfig`` field is a key too, flag or not, so a field added to
the dataclass works in config files without touching this module. Every value is checked
against its flag's (or field's) type and choices, as the field declares them
(``ddm.settings``); an unknown key or a wrong type is one clear error.

The checked values become the command parser's defaults, so parsing the command line again
lets every explicitly given flag win: the pattern of timm's ``train.py``.

A run's saved ``config.json`` is itself a valid config file, so a run can be repeated
exactly: its ``version`` key is an output, not a setting, and is ignored (``OUTPUT_ONLY``);
continual's ``config.json`` keeps its settings in the ``continual`` section (the others,
``condense``, ``evaluation`` and ``dataset``, are resolved outputs) and calls ``--set``'s
settings ``condense``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import check_value, flag_spec

__all__ = ["OUTPUT_ONLY", "read_config_file", "config_settings", "apply_config_file"]

# Keys a saved config.json holds that are outputs, not settings: accepted and ignored.
OUTPUT_ONLY = frozenset({"version"})

_SUFFIXES = (".json", ".yaml", ".yml")
_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a mapping",
    list: "a list",
}


@dataclass(frozen=True)
class Setting:
    """What a key of a config file accepts."""

    type: type  # bool, int, float, str, dict, or list (a repeatable or multi-value flag)
    optional: bool = False  # null accepted
    item: type = str  # element type of a list
    choices: tuple[Any, ...] | None = None

    def describe(self) -> str:
        if self.type is list:
            text = f"{_NAMES[self.item]} or a list of them"
        else:
            text = _NAMES.get(self.type, self.type.__name__)
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        return text + (" (or null)" if self.optional else "")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a .json, .yaml or .yml file; every problem is one ValueError line."""
    path = Path(path)
    if path.suffix.lower() not in _SUFFIXES:
        raise ValueError(f"--config {path}: expected a .json, .yaml or .yml file")
    if not path.is_file():
        raise ValueError(f"--config: missing file {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--config: cannot read {path} ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config {path}: not valid JSON ({exc})") from None
        except _DuplicateKey as exc:
            raise ValueError(f"--config {path}: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader)
        except _DuplicateKey as exc:
            raise ValueError(f"--config {path}: {exc}") from None
        except yaml.YAMLError as exc:
            text = " ".join(str(exc).split())
            raise ValueError(f"--config {path}: not valid YAML ({text})") from None
    if data is None:  # an empty file sets nothing
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path}: expected a mapping of settings (key: value), "
            f"got {type(data).__name__}"
        )
    return data


class _DuplicateKey(ValueError):
    """A key stated twice in one mapping of a config file."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects whose keys are distinct (``json`` keeps the last of two silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"{key!r} is given twice; state each setting once")
        out[key] = value
    return out


def _unique_key_loader() -> type:
    """A YAML SafeLoader that refuses a key stated twice (PyYAML keeps the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str | int | float | bool):
                    continue  # an unhashable key: the mapping's own check reports it
                if key in seen:
                    raise _DuplicateKey(
                        f"{key!r} is given twice (lines {seen[key]} and {line}); state each "
                        "setting once"
                    )
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def config_settings(
    parser: argparse.ArgumentParser,
    fields: type | None = None,
    exclude: typing.Iterable[str] = (),
) -> dict[str, Setting]:
    """The keys a config file may hold for ``parser``'s command, with what each accepts.

    Every optional flag except ``--help``, ``--config`` and ``exclude`` (output paths and
    what to do with existing outputs belong to the command line); positional arguments are
    not settings. ``fields``: a settings dataclass whose every field is a key, typed by its
    annotation (it wins over the flag's type).
    """
    skip = {"help", "config", *exclude}
    out: dict[str, Setting] = {}
    # argparse has no public way to list a parser's options; _actions is stable since 3.2
    for action in parser._actions:
        if not action.option_strings or action.dest in skip or action.dest == argparse.SUPPRESS:
            continue
        out[action.dest] = _flag_setting(action)
    if fields is not None:
        hints = typing.get_type_hints(fields)
        for f in dataclasses.fields(fields):
            setting = _hint_setting(hints[f.name])
            if "flag" in f.metadata:  # its choices, as the flag declares them
                setting = dataclasses.replace(setting, choices=flag_spec(fields, f.name).choices)
            out[f.name] = setting
    return out


def apply_config_file(
    parser: argparse.ArgumentParser,
    path: str | Path,
    *,
    command: str,
    fields: type | None = None,
    exclude: typing.Iterable[str] = (),
    section: str | None = None,
    renamed: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Check ``path`` against ``parser``'s settings and make its values the parser's defaults.

    ``section``: when the file holds a mapping under this key (a saved ``config.json`` of a
    command that writes sections), only that mapping is read. ``renamed``: keys a saved file
    writes under another name than the flag's. Returns the checked values.
    """
    data = read_config_file(path)
    if section is not None and isinstance(data.get(section), dict):
        data = data[section]
    exclude = tuple(exclude)
    settings = config_settings(parser, fields, exclude)
    renamed = renamed or {}
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for raw, value in data.items():
        key = str(raw).replace("-", "_")
        key = renamed.get(key, key)
        if key in OUTPUT_ONLY:
            continue
        if key in exclude:
            flag = key.replace("_", "-")
            raise ValueError(f"{path}: {raw}: give --{flag} on the command line, not in a file")
        if key not in settings:
            unknown.append(str(raw))
            continue
        if key in values:
            raise ValueError(f"{path}: {raw}: given twice (dashes and underscores are the same)")
        values[key] = _check(f"{path}: {raw}", value, settings[key])
    if unknown:
        close = difflib.get_close_matches(unknown[0].replace("-", "_"), settings, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(
            f"{path}: unknown setting(s) {', '.join(unknown)} for `ddm {command}`{hint}; "
            f"known: {', '.join(sorted(settings))}"
        )
    parser.set_defaults(**values)
    return values


# --- types ---------------------------------------------------------------------------------------


def _returns(kind: Any) -> type:
    """The type a flag's ``type=`` callable produces (``int``, or ``_bool`` -> bool)."""
    if kind is None:
        return str
    if isinstance(kind, type):
        return kind
    hint = typing.get_type_hints(kind).get("return")
    return hint if isinstance(hint, type) else str


def _flag_setting(action: argparse.Action) -> Setting:
    if action.nargs == 0:  # store_true / store_false switches
        return Setting(bool)
    item = _returns(action.type)
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
    choices = tuple(action.choices) if action.choices else None
    return Setting(list if many else item, action.default is None, item, choices)


def _hint_setting(hint: Any) -> Setting:
    args = typing.get_args(hint)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    if origin in (list, tuple):
        inner = typing.get_args(hint)
        return Setting(list, optional, inner[0] if inner else str)
    return Setting(origin if isinstance(origin, type) else str, optional)


def _scalar(where: str, value: Any, kind: type) -> Any:
    return check_value(where, value, kind)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check(where: str, value: Any, setting: Setting) -> Any:
    if value is None:
        if setting.optional:
            return None
        raise ValueError(f"{where}: expected {setting.describe()}, got null")
    if setting.type is list:
        if isinstance(value, dict) and setting.item is str:  # KEY=VALUE flags (continual --set)
            value = [f"{k}={_text(v)}" for k, v in value.items() if v is not None]
        items = value if isinstance(value, list) else [value]
        checked = [_scalar(where, v, setting.item) for v in items]
    else:
        checked = _scalar(where, value, setting.type)
    for v in checked if isinstance(checked, list) else [checked]:
        if setting.choices and v not in setting.choices:
            raise ValueError(f"{where}: expected {setting.describe()}, got {v!r}")
    return checked
