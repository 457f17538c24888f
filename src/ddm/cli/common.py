"""Helpers the commands share: the condensation and evaluation flags, summaries, writing a set."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .. import __version__
from .flags import add_flags, values_from

# --- flags -------------------------------------------------------------------------------------


def _add_condense_flags(p: argparse.ArgumentParser) -> None:
    """Every CondenseConfig field's flag (``ddm.settings``), defaults SUPPRESSed: the dataclass
    (or a preset) fills what is not given, so a flag only overrides when it is typed."""
    from ..config import CondenseConfig

    p.add_argument(
        "--preset",
        default=None,
        help="start from a named published setting (see `ddm presets`); explicit flags override it",
    )
    switches = ("channels_last", "compile")
    add_flags(p, CondenseConfig, exclude=switches, suppress=True)
    deprecated = "deprecated: --precision bf16"
    p.add_argument("--bf16", action="store_true", default=argparse.SUPPRESS, help=deprecated)
    add_flags(p, CondenseConfig, only=switches, suppress=True)


def _condense_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a user stated: a preset's, then a config file's and the flags given (the
    flags' defaults are SUPPRESS, so only those typed or read from --config are here)."""
    from ..config import CondenseConfig, load_preset

    values: dict[str, Any] = {}
    if args.preset:
        values.update(load_preset(args.preset)["settings"])
    names = {f.name for f in dataclasses.fields(CondenseConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    if getattr(args, "bf16", False) and "precision" not in vars(args):  # deprecated alias
        values["precision"] = "bf16"
    return values


def _condense_config(args: argparse.Namespace):
    """Dataclass defaults < preset < explicitly given flags; with --resume, the run's saved
    settings < what was stated (which ``condense`` then checks against the run's)."""
    from ..config import CondenseConfig, config_from_dict

    if getattr(args, "resume", False):
        from ..condense import resume_config

        return resume_config(args.out, _condense_values(args))
    return config_from_dict(CondenseConfig, _condense_values(args))


# the evaluation protocol's flags of `ddm evaluate` (its labels and recipe: ddm.cli.teacher)
EVAL_FLAGS = ("model", "depth", "epochs", "runs", "seed", "holdout", "precision")
EVAL_LABEL_FLAGS = ("labels", "soft_label_mode", "temperature", "recipe")


def _eval_config(args: argparse.Namespace):
    from ..config import EvalConfig

    return EvalConfig(**values_from(args, EvalConfig, (*EVAL_FLAGS, "device", *EVAL_LABEL_FLAGS)))


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    from ..config import EvalConfig

    add_flags(p, EvalConfig, only=EVAL_FLAGS)


def _summary(folder: Path) -> str:
    from ..io import load_synthetic, read_json, unfinished_note

    syn = load_synthetic(folder)
    m = syn.meta
    lines = [
        f"{folder}: {m.get('method')} on {m.get('dataset')}, ipc {m.get('ipc')}, "
        f"{tuple(syn.images.shape)} stored images, expansion x{syn.expansion_factor}, "
        f"{m.get('iterations')} iterations, seed {m.get('seed')}"
        + (f", {m['holdout']} train images per class held out" if m.get("holdout") else ""),
    ]
    note = unfinished_note(folder, m)
    if note:
        lines.append(note)
    for c in m.get("changes", []):
        lines.append(
            f"  changed at iteration {c.get('iteration')}: {c.get('setting')} "
            f"{c.get('from')} -> {c.get('to')}"
        )
    metrics = folder / "metrics.json"
    if metrics.exists():
        from ..evaluate import set_fingerprint

        current = set_fingerprint(syn)
        for e in read_json(metrics).get("evaluations", []):
            stale = e.get("set", current) != current
            held = e.get("protocol", {}).get("holdout", 0)
            lines.append(
                f"  {e['model']:<10} {e['epochs']:>5} epochs  {e['runs']} runs  "
                f"{e['mean']:.2f} +- {e['std']:.2f} %"
                + _variant_text(e.get("protocol", {})).replace(", ", "  ", 1)
                + (f"  (on {held} held-out train images per class)" if held else "")
                + ("  (an earlier set of this folder)" if stale else "")
            )
    return "\n".join(lines)


def _variant_text(protocol: dict[str, Any]) -> str:
    """ ", ncfm recipe, soft labels (M, T 1.2)" for an evaluation other than the dm protocol."""
    parts = []
    if protocol.get("recipe", "dm") != "dm":
        parts.append(f"{protocol['recipe']} recipe")
    if protocol.get("labels", "hard") == "soft":
        parts.append(f"soft labels ({protocol['soft_label_mode']}, T {protocol['temperature']})")
    if protocol.get("dsa", True) is False:
        parts.append("no augmentation")
    return "".join(f", {p}" for p in parts)


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    w0 = max(len(r[0]) for r in [header, *rows])
    w1 = max(len(r[1]) for r in [header, *rows])
    out = [f"| {header[0]:<{w0}} | {header[1]:<{w1}} |", f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|"]
    out += [f"| {a:<{w0}} | {b:<{w1}} |" for a, b in rows]
    return "\n".join(out)


def _write_set(out: Path, syn, settings: dict[str, Any]) -> None:
    """Write a selected (not condensed) set as a run folder: tensors, meta, grid, settings."""
    from ..io import atomic_write_json, save_grid, save_synthetic

    save_synthetic(out, syn)
    save_grid(out / "grid.png", syn.denormalized(), syn.labels)
    atomic_write_json(out / "config.json", {**settings, "version": __version__})
