"""Helpers the commands share: the condensation and evaluation flags, summaries, writing a set."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .. import __version__

# --- helpers -------------------------------------------------------------------------------------


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


# (flag, type, help) for every CondenseConfig field the CLI exposes; defaults come from the
# dataclass (or a preset), so a flag only overrides when it is given.
_CONDENSE_FLAGS: list[tuple[str, Any, str]] = [
    ("dataset", str, "dataset name"),
    ("data-root", str, "folder holding the dataset's files"),
    ("image-size", int, "resize target for image-folder datasets"),
    (
        "holdout",
        int,
        "train images per class held out, never condensed from (for tuning: `ddm evaluate "
        "--holdout N` tests on them); 0: none",
    ),
    ("ipc", int, "images per class"),
    ("method", str, "dm | ddm | idm | ncfm"),
    ("base", str, "base of ddm: dm | idm | ncfm (default dm)"),
    ("iterations", int, "condensation iterations"),
    ("batch-real", int, "real images per class and iteration"),
    ("lr-img", float, "image learning rate (default 1.0 on DM, 0.2 on IDM, 1e-3 on NCFM)"),
    ("momentum", float, "image optimiser momentum"),
    ("init", str, "real | noise"),
    ("model", str, "matching network"),
    ("depth", int, "ConvNet depth (default: by resolution)"),
    ("dsa", _bool, "Siamese augmentation on/off"),
    ("seed", int, "random seed"),
    ("form", str, "DDM's form: paper | released; sets the defaults of the settings below"),
    ("style-tap", str, "DDM style maps: act (after ReLU; paper) | conv (before norm; released)"),
    ("moments", str, "DDM moments estimator: batch (paper) | persample (released)"),
    ("moments-relative", _bool, "DDM moment distances relative to the target (released: true)"),
    (
        "correlation",
        str,
        "DDM Gram distance: sum (published; paper) | cosine (scale-free; released, with w-cm 1e3)",
    ),
    ("w-mm", float, "DDM moments weight (paper 1e4, released 180)"),
    ("w-cm", float, "DDM correlation weight (1e4 with correlation sum, 1e3 with cosine)"),
    ("w-icd", float, "DDM KL diversity weight (paper 10, released 0)"),
    ("icd-k", int, "DDM diversity neighbours (default round(0.2 x images per class))"),
    ("icd-neighbour-grad", _bool, "gradient through the neighbour mean (reference: true)"),
    ("w-cd", float, "DDM bounded spread weight L_CD (paper 0, released 30)"),
    ("cd-rank", int, "L_CD principal directions (0: min(images per class - 1, 16))"),
    ("w-sd", float, "DDM style-spread weight L_SD (off in both forms)"),
    (
        "weights-by-embedding",
        _bool,
        "DDM term weights x D / 2048 (D: the embedding size; 1 for every ConvNet at 32 px or "
        "more), as calibrated against L_MMD; false: the published weights as given",
    ),
    ("factor", int, "IDM partition/expansion factor (idm default 2)"),
    ("ce-weight", float, "IDM class-aware regularisation weight (idm default 0.5)"),
    ("net-init", int, "IDM queue models at the start"),
    ("net-num", int, "IDM queue capacity"),
    ("net-generate-interval", int, "IDM iterations between new queue models"),
    ("fetch-net-num", int, "IDM queue models trained per iteration"),
    ("model-train-steps", int, "IDM SGD steps per trained queue model"),
    ("model-batch", int, "IDM real images per queue-training step"),
    ("model-lr", float, "IDM queue-model learning rate"),
    ("pool", str, "NCFM: folder of trained networks made by `ddm pool`"),
    ("num-freqs", int, "NCFM: Gaussian frequencies per class and iteration (ncfm default 4096)"),
    ("optimizer-img", str, "NCFM image optimiser: adamw (ncfm default) | sgd"),
    (
        "ncfm-sampler",
        _bool,
        "NCFM: frequencies from a sampler network trained to maximise the loss (64 frequencies, "
        "4 distinct; one process only)",
    ),
    (
        "precision",
        str,
        "auto | fp32 | bf16; auto: bf16 where the hardware has bf16 units, a short probe "
        "measures bf16 faster than float32 and the images are >= 8 pixels across, else fp32",
    ),
    ("device", str, "auto | cpu | cuda[:N]"),
    ("checkpoint-every", int, "iterations between checkpoints (0: only at the end)"),
    ("real-chunk", int, "real images per no-grad forward (0: automatic)"),
]


def _add_condense_flags(p: argparse.ArgumentParser) -> None:
    from ..config import CondenseConfig

    defaults = CondenseConfig()
    p.add_argument(
        "--preset",
        default=None,
        help="start from a named published setting (see `ddm presets`); explicit flags override it",
    )
    for flag, kind, text in _CONDENSE_FLAGS:
        default = getattr(defaults, flag.replace("-", "_"))
        shown = "by method" if default is None else default
        p.add_argument(
            f"--{flag}", type=kind, default=argparse.SUPPRESS, help=f"{text} (default: {shown})"
        )
    for flag, text in (
        ("bf16", "deprecated: --precision bf16"),
        ("channels-last", "channels-last memory format"),
        (
            "compile",
            "torch.compile the network's embedding (DM, IDM: about 0.85-0.9x a DM iteration "
            "on CPU after a first iteration that compiles; DDM's style passes stay eager; "
            "needs a C++ compiler)",
        ),
    ):
        p.add_argument(f"--{flag}", action="store_true", default=argparse.SUPPRESS, help=text)


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


def _eval_config(args: argparse.Namespace):
    from ..config import EvalConfig

    return EvalConfig(
        model=args.model,
        depth=args.depth,
        epochs=args.epochs,
        runs=args.runs,
        seed=args.eval_seed,
        device=args.device,
        precision=args.precision,
        holdout=args.holdout,
        recipe=getattr(args, "eval_recipe", "dm"),
        labels=getattr(args, "labels", "hard"),
        soft_label_mode=getattr(args, "soft_label_mode", "M"),
        temperature=getattr(args, "temperature", None),
    )


def _add_eval_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    from ..config import EvalConfig

    d = EvalConfig()
    p.add_argument(
        f"--{prefix}epochs",
        dest="epochs",
        type=int,
        default=d.epochs,
        help="training epochs per model (%(default)s)",
    )
    p.add_argument(
        f"--{prefix}runs",
        dest="runs",
        type=int,
        default=d.runs,
        help="models trained (%(default)s)",
    )
    p.add_argument("--eval-seed", type=int, default=d.seed, help="(%(default)s)")
    p.add_argument(
        "--holdout",
        type=int,
        default=d.holdout,
        help="test on the N train images per class the set was condensed without (its "
        "--holdout) instead of the test split, for tuning; 0: the test split (%(default)s)",
    )
    p.add_argument(
        "--precision",
        default=d.precision,
        help="auto | fp32 | bf16 (auto: bf16 where the hardware has bf16 units, a short probe "
        "measures bf16 faster than float32 and the images are >= 8 pixels across; default "
        "%(default)s)",
    )


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
