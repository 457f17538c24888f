"""The ``ddm`` command line: condense, evaluate, baseline, show, export, demo.

Each sub-command only parses flags into the settings dataclasses and calls the library; every
error a user can cause ends in one clear line on stderr and exit status 2 (1 for a diverged
run), never a traceback. ``--config FILE`` (condense, evaluate, baseline, continual) fills in
settings from a YAML or JSON file before the flags given on the command line
(``ddm.configfile``).

Under torchrun (``torchrun --nproc-per-node N -m ddm condense|evaluate ...``) the same
commands run on every rank; ``ddm.distributed`` decides who does what, rank 0 prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__

__all__ = ["main", "build_parser"]

# `ddm demo`'s budget (digits, ipc 10): DDM's gain over DM shows at it (paper form, 3 models
# per set: +3.84, +0.74 and +2.14 points in condensation seeds 0, 1 and 2), and condensing
# both sets and training the 9 models took 220 s of CPU time on one thread
# (docs/guide/first-runs.md: the output and the times).
DEMO_ITERATIONS = 500
DEMO_BATCH_REAL = 128
DEMO_EPOCHS = 300
DEMO_RUNS = 3


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
    from .config import CondenseConfig

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
    from .config import CondenseConfig, load_preset

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
    from .config import CondenseConfig, config_from_dict

    if getattr(args, "resume", False):
        from .condense import resume_config

        return resume_config(args.out, _condense_values(args))
    return config_from_dict(CondenseConfig, _condense_values(args))


def _eval_config(args: argparse.Namespace):
    from .config import EvalConfig

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
    from .config import EvalConfig

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
    from .io import load_synthetic, read_json, unfinished_note

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
        from .evaluate import set_fingerprint

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


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    w0 = max(len(r[0]) for r in [header, *rows])
    w1 = max(len(r[1]) for r in [header, *rows])
    out = [f"| {header[0]:<{w0}} | {header[1]:<{w1}} |", f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|"]
    out += [f"| {a:<{w0}} | {b:<{w1}} |" for a, b in rows]
    return "\n".join(out)


# --- commands -------------------------------------------------------------------------------------


def cmd_condense(args: argparse.Namespace) -> int:
    from . import distributed as dist
    from .condense import condense

    cfg = _condense_config(args)
    condense(
        cfg,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        allow_changes=[n for item in args.allow_change for n in item.split(",") if n],
    )
    dist.echo(_summary(Path(args.out)))
    return 0


def cmd_pool(args: argparse.Namespace) -> int:
    from .pool import PoolConfig, train_pool

    cfg = PoolConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        model=args.model,
        depth=args.depth,
        networks=args.networks,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
    )
    manifest = train_pool(cfg, args.out, progress=not args.quiet)
    accs = [n["test_accuracy"] for n in manifest["networks"]]
    mean = sum(accs) / len(accs) if accs else float("nan")
    print(f"{args.out}: {len(accs)} networks, mean test accuracy {mean:.2f}%")
    return 0


def _write_set(out: Path, syn, settings: dict[str, Any]) -> None:
    """Write a selected (not condensed) set as a run folder: tensors, meta, grid, settings."""
    from .io import atomic_write_json, save_grid, save_synthetic

    save_synthetic(out, syn)
    save_grid(out / "grid.png", syn.denormalized(), syn.labels)
    atomic_write_json(out / "config.json", {**settings, "version": __version__})


def cmd_baseline(args: argparse.Namespace) -> int:
    from .baselines import BASELINE_SETTINGS, baseline, make_baseline
    from .condense import check_run_folder, open_run_folder
    from .data import load_dataset

    baseline(args.method)  # an unknown name fails before anything is loaded
    if args.ipc <= 0:
        raise ValueError(f"--ipc must be positive, got {args.ipc}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    check_run_folder(out, resume=False, overwrite=args.overwrite)  # created once the set is made
    dataset = load_dataset(args.dataset, args.data_root, args.image_size).holdout(args.holdout)
    syn = make_baseline(  # meta records the holdout
        args.method,
        dataset,
        args.ipc,
        seed=args.seed,
        herding_epochs=args.herding_epochs,
        device=args.device,
        progress=not args.quiet,
    )
    # by flag name, so the saved config.json is a valid --config
    settings = {
        "method": args.method,
        "dataset": args.dataset,
        "data_root": args.data_root,
        "image_size": args.image_size,
        "holdout": args.holdout,
        "ipc": args.ipc,
        "seed": args.seed,
    }
    settings.update({name: getattr(args, name) for name in BASELINE_SETTINGS[args.method]})
    folder = open_run_folder(out, resume=False, overwrite=args.overwrite)
    try:
        _write_set(out, syn, settings)
    except BaseException:
        folder.close(failed=True)
        raise
    folder.close()
    print(_summary(out))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import distributed as dist
    from .data import load_dataset
    from .evaluate import evaluate_folder, evaluate_run
    from .interop import import_set, is_run_folder
    from .io import RunFolderError

    cfg = _eval_config(args)
    paths = [Path(p) for p in args.runs_dirs]
    for path in paths:
        if not path.exists():
            raise RunFolderError(
                f"missing file or folder {path}: expected a run folder, an image folder of "
                "class sub-folders, or a DM/DC .pt file"
            )
    external = [p for p in paths if not is_run_folder(p)]
    if args.out is not None and (len(paths) > 1 or not external):
        raise ValueError(
            "--out names where the metrics of one set made elsewhere go; a run folder keeps "
            "its metrics.json, so evaluate several sets without --out"
        )
    if external and args.dataset is None:
        raise ValueError(
            f"{external[0]} is not a run folder; name the real data to test on with --dataset "
            "(and --data-root)"
        )
    dataset = None
    if args.dataset is not None:
        dataset = load_dataset(args.dataset, args.data_root, args.image_size)
    imported = {}  # every set is read and checked before the first (long) evaluation
    for path in paths:
        if path in external:
            syn = import_set(
                path,
                dataset,
                index=args.pt_index,
                mean=args.syn_mean,
                std=args.syn_std,
                pixels=args.syn_pixels,
            )
            out = Path(args.out) if args.out else _external_out(path)
            dist.on_main(_write_imported, out, path, syn)
            imported[path] = (syn, out)
        elif dataset is not None and _run_dataset(path) != dataset.name:
            raise ValueError(
                f"{path} was condensed on {_run_dataset(path)}, not --dataset {dataset.name}"
            )
    for path in paths:
        set_cfg = _with_teacher(cfg, args, dataset.name if dataset else _run_dataset(path))
        if args.scores:
            dist.echo(_scores(path, imported.get(path), set_cfg, args, dataset))
            continue
        if path in imported:
            syn, out = imported[path]
            result = evaluate_folder(out, syn, dataset, set_cfg, progress=not args.quiet)
            where = f"  -> {out / 'metrics.json'}"
        else:
            result = evaluate_run(
                path, set_cfg, data_root=args.data_root, dataset=dataset, progress=not args.quiet
            )
            where = ""
        if result.reused:
            where += f"  ({result.reused} of {cfg.runs} models from earlier in metrics.json)"
        if path not in imported:
            from .io import load_synthetic, unfinished_note

            folder = path.parent if path.suffix == ".safetensors" else path
            note = unfinished_note(folder, load_synthetic(path).meta)
            if note:
                dist.echo(note)
        dist.echo(
            f"{path}: {cfg.model}, {cfg.epochs} epochs, {cfg.runs} runs, {result.precision}"
            f"{_variant_text(set_cfg.to_dict())}: "
            f"{result} %  "
            f"(per run: {', '.join(f'{a:.2f}' for a in result.accuracies)}){where}"
        )
    return 0


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


def _with_teacher(cfg, args: argparse.Namespace, dataset_name: str | None):
    """``cfg`` with the teacher folder that --teacher / --teachers-dir name for the set."""
    from .cli_soft import resolve_teacher_dir

    folder = resolve_teacher_dir(args, dataset_name or "")
    return dataclasses.replace(cfg, teacher=None if folder is None else str(folder))


def _scores(path: Path, imported, cfg, args: argparse.Namespace, dataset) -> str:
    """Train what DD-Ranking's scores need for one set; its accuracies and scores as text."""
    from .data import load_dataset
    from .io import load_synthetic, read_json
    from .scores import format_scores, score_set

    if imported is not None:
        syn, folder = imported
    else:
        syn = load_synthetic(path)
        folder = path.parent if path.suffix == ".safetensors" else path
        if dataset is None:
            root = args.data_root
            if root is None and (path / "config.json").exists():
                root = read_json(path / "config.json").get("data_root")
            dataset = load_dataset(syn.meta["dataset"], root, syn.meta.get("image_size"))
    entry = score_set(
        folder, syn, dataset, cfg, full_accuracy=args.full_accuracy, progress=not args.quiet
    )
    recipe = f"{cfg.recipe} recipe, {cfg.labels} labels"
    return (
        f"{path}: {cfg.model}, {cfg.epochs} epochs, {cfg.runs} runs, {recipe}  "
        f"-> {folder / 'metrics.json'}\n{format_scores(entry)}"
    )


def _run_dataset(path: Path) -> str | None:
    from .io import META_FILE, read_json

    folder = path.parent if path.suffix == ".safetensors" else path
    return read_json(folder / META_FILE).get("dataset")


def _external_out(path: Path) -> Path:
    """Default folder for an external set's metrics: ``<name>-eval`` beside the input."""
    return path.resolve().with_name(f"{path.resolve().stem}-eval")


def _write_imported(out: Path, source: Path, syn) -> None:
    """Keep an imported set as a run folder (``ddm show``/``evaluate`` work on it again)."""
    from .io import META_FILE, RunFolderError, read_json, save_grid, save_synthetic

    if out.resolve() == source.resolve():
        raise RunFolderError(f"--out {out} is the input itself; name another folder")
    if (out / META_FILE).exists():
        held = read_json(out / META_FILE).get("source", {}).get("path")
        if held != syn.meta["source"]["path"]:
            raise RunFolderError(
                f"{out} holds {'the set from ' + held if held else 'a run'}; name another --out"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create {out}: {exc.strerror or exc}") from exc
    save_synthetic(out, syn)
    save_grid(out / "grid.png", syn.denormalized(), syn.labels)


def cmd_show(args: argparse.Namespace) -> int:
    from .curves import CURVES_FILE, save_curves
    from .io import load_synthetic, save_grid

    folder = Path(args.run)
    syn = load_synthetic(folder)
    save_grid(folder / "grid.png", syn.denormalized(), syn.labels)
    written = ["grid.png"]
    if args.expanded or syn.expansion_factor > 1:
        images, labels = syn.expanded()
        save_grid(folder / "grid_expanded.png", syn.denormalized(images), labels)
        written.append("grid_expanded.png")
    m = syn.meta
    title = f"{folder.name}: {m.get('method')} on {m.get('dataset')}"
    if save_curves(folder / "log.csv", folder / CURVES_FILE, title=title):
        written.append(CURVES_FILE)
    print(_summary(folder))
    print(f"wrote {', '.join(str(folder / name) for name in written)}")
    if CURVES_FILE not in written:
        print("no curves: no log.csv with logged iterations (not a condensation run, or none yet)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .interop import export_set
    from .io import load_synthetic

    if Path(args.out).resolve() == Path(args.run).resolve():
        raise ValueError("--out is the run folder itself; name another folder for the export")
    syn = load_synthetic(args.run)
    n = export_set(syn, args.out, args.format, expand=not args.no_expand, overwrite=args.overwrite)
    from .io import unfinished_note

    note = unfinished_note(args.run, syn.meta)
    if note:
        print(note)
    how = (
        f", {len(syn.labels)} stored images expanded x{syn.expansion_factor**2}"
        if syn.expansion_factor > 1 and not args.no_expand
        else ""
    )
    print(f"wrote {n} images{how} as {args.format} to {args.out}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import prepare_store

    prepare_store(
        args.src,
        args.out,
        args.image_size,
        val_labels=args.val_labels,
        classes=args.classes,
        name=args.name,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(f"use it with: --dataset store --data-root {args.out}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import available_presets, load_preset

    names = available_presets()
    width = max(map(len, names))
    for name in names:
        preset = load_preset(name)
        print(f"{name:<{width}} {preset['description']}")
        if args.verbose:
            print(f"{'':<{width}} settings: {preset['settings']}")
            print(f"{'':<{width}} source: {preset['source']}")
    return 0


def paired_gain(better: Sequence[float], worse: Sequence[float]) -> str:
    """``'+1.23 +- 0.45'``: mean and std of the per-model differences (model i of one set
    against model i of the other: the same seed, initialisation and augmentation draws)."""
    import numpy as np

    diffs = np.asarray(better, dtype=float) - np.asarray(worse, dtype=float)
    return f"{diffs.mean():+.2f} +- {diffs.std():.2f}"


def cmd_demo(args: argparse.Namespace) -> int:
    """The flagship on the embedded digits dataset: DDM beside DM and a random subset."""
    from .baselines import random_subset
    from .condense import condense, prepare_run_folder
    from .config import CondenseConfig, EvalConfig
    from .data import load_dataset
    from .evaluate import evaluate_folder

    out = Path(args.out)
    dataset = load_dataset("digits")
    configs = {
        method: CondenseConfig(
            dataset="digits",
            ipc=args.ipc,
            method=method,
            form=args.form if method == "ddm" else None,
            iterations=args.iterations,
            batch_real=args.batch_real,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
        )
        for method in ("ddm", "dm")
    }
    form = configs["ddm"].resolved().form
    ecfg = EvalConfig(
        epochs=args.epochs, runs=args.runs, device=args.device, precision=args.precision
    )
    print(
        f"condensing digits ({dataset.num_classes} classes, {len(dataset.train)} train "
        f"images) into {args.ipc} images per class with DDM ({form} form) and with DM, "
        f"{args.iterations} iterations each, from the same real images"
    )
    sets = {}
    for method, cfg in configs.items():
        sets[method] = condense(
            cfg, out / method, dataset=dataset, overwrite=True, progress=not args.quiet
        )
    rand_dir = out / "random"
    prepare_run_folder(rand_dir, resume=False, overwrite=True)
    sets["random"] = random_subset(dataset, args.ipc, seed=args.seed)
    _write_set(
        rand_dir,
        sets["random"],
        {"method": "random", "dataset": "digits", "ipc": args.ipc, "seed": args.seed},
    )
    names = {"ddm": f"DDM ({form} form)", "dm": "DM", "random": "random subset"}
    results = {
        key: evaluate_folder(out / key, sets[key], dataset, ecfg, progress=not args.quiet)
        for key in names
    }
    print(
        f"\ndigits, ipc {args.ipc}, ConvNet, {args.epochs} epochs x {args.runs} runs, "
        f"{sets['ddm'].meta['precision']} (test accuracy, mean +- std):"
    )
    print(_table([(names[k], f"{results[k]} %") for k in names], ("set", "accuracy")))
    ddm = results["ddm"].accuracies
    print(
        f"\nDDM - DM: {paired_gain(ddm, results['dm'].accuracies)} points; "
        f"DDM - random: {paired_gain(ddm, results['random'].accuracies)} points "
        f"(mean +- std over the {args.runs} models, paired by seed)"
    )
    print(f"runs and grids in {out}/ (grid.png in each folder)")
    return 0


# --- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddm", description="Dataset condensation by distribution matching (DM, IDM, DDM)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("condense", help="condense a dataset into a few images per class")
    _add_condense_flags(p)
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    from .config import ADJUSTABLE_ON_RESUME

    p.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="SETTING[,SETTING]",
        help="with --resume: let these settings differ from the run's from its checkpoint on "
        f"(one of {', '.join(ADJUSTABLE_ON_RESUME)}; e.g. a lower --lr-img after a NaN); "
        "each change is recorded in meta.json",
    )
    p.set_defaults(func=cmd_condense)

    from .pool import PoolConfig

    pool_defaults = PoolConfig()
    p = sub.add_parser(
        "pool",
        help="train networks on the real data for NCFM (initial and final weights kept)",
        description="Train --networks networks with NCFM's pretraining recipe (SGD lr 0.01, "
        "momentum 0.9, weight decay 5e-4, lr x0.2 at 2/3 and 5/6 of the epochs, batch 128, "
        "per-sample colour + crop and CutMix). Rerun the same command to continue.",
    )
    p.add_argument("--dataset", default=pool_defaults.dataset, help="dataset name (%(default)s)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset's files")
    p.add_argument("--model", default=pool_defaults.model, help="network (%(default)s)")
    p.add_argument("--depth", type=int, default=None, help="ConvNet depth (default: by resolution)")
    p.add_argument("--networks", type=int, default=pool_defaults.networks, help="(%(default)s)")
    p.add_argument(
        "--epochs", type=int, default=pool_defaults.epochs, help="per network (%(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=pool_defaults.batch_size, help="(%(default)s)")
    p.add_argument("--lr", type=float, default=pool_defaults.lr, help="(%(default)s)")
    p.add_argument("--seed", type=int, default=pool_defaults.seed, help="(%(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--out", required=True, help="pool folder (continued if it holds a pool)")
    p.set_defaults(func=cmd_pool)

    p = sub.add_parser("evaluate", help="train fresh networks on condensed sets, test them")
    p.add_argument(
        "runs_dirs",
        nargs="+",
        metavar="SET",
        help="run folder(s); or, with --dataset, an image folder of class sub-folders, a folder "
        "of images.pt + labels.pt (tensors/ddranking exports, DD-Ranking's input) or a DM/DC "
        ".pt file made by another tool",
    )
    p.add_argument("--model", default="convnet", help="architecture (%(default)s)")
    p.add_argument("--depth", type=int, default=None, help="ConvNet depth (by resolution)")
    _add_eval_flags(p)
    p.add_argument("--data-root", default=None, help="dataset folder (default: the run's)")
    p.add_argument("--device", default="auto")
    g = p.add_argument_group("sets made elsewhere (image folders, DM/DC .pt files)")
    g.add_argument("--dataset", default=None, help="the real data to test on (required for them)")
    g.add_argument("--image-size", type=int, default=None, help="for image-folder datasets")
    g.add_argument(
        "--syn-mean",
        type=float,
        nargs="+",
        default=None,
        metavar="M",
        help=".pt: the per-channel mean its images were normalised with "
        "(default: the DM/DC code's for --dataset)",
    )
    g.add_argument("--syn-std", type=float, nargs="+", default=None, metavar="S", help="likewise")
    g.add_argument(
        "--syn-pixels",
        action="store_true",
        help=".pt: the images are [0, 1] pixels, not normalised",
    )
    g.add_argument(
        "--pt-index", type=int, default=0, help=".pt: which set of 'data' (one per experiment; 0)"
    )
    g.add_argument(
        "--out",
        default=None,
        help="folder for the set's metrics.json, grid.png and a copy of the set "
        "(default: <name>-eval beside it)",
    )
    from .cli_soft import add_label_flags

    add_label_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("baseline", help="random-subset or herding coreset in the run format")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="train images per class held out, never selected (as condense --holdout)",
    )
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--method", default="random", help="random | herding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--herding-epochs",
        type=int,
        default=2,
        help="epochs of training for herding's embedding net (%(default)s)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser(
        "show", help="write grid.png (IDM: grid_expanded.png) and curves.png, print a summary"
    )
    p.add_argument("run")
    p.add_argument("--expanded", action="store_true", help="grid the expanded images (IDM: always)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export", help="write a run's set as PNG class folders or plain .pt tensors")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument(
        "--format",
        required=True,
        choices=("imagefolder", "tensors", "ddranking"),
        help="imagefolder: 00000/, 00001/, ... of PNGs + classes.txt; tensors: images.pt "
        "(normalised with the data's own mean/std), labels.pt, mean.pt, std.pt, export.json; "
        "ddranking: DD-Ranking's compute_metrics input (images.pt in its normalisation, "
        "labels.pt: soft labels if the set has them) + ddranking.yaml",
    )
    p.add_argument("--out", required=True, help="folder to write (new or empty)")
    p.add_argument("--no-expand", action="store_true", help="IDM: the stored, not expanded, images")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "prepare",
        help="turn a class-folder tree (ImageNet-1K, ImageNette, any image folder) into a "
        "dataset store read from disk on demand (--dataset store --data-root STORE)",
    )
    p.add_argument("--src", required=True, help="folder with train/<class>/ and val/ (or test/)")
    p.add_argument("--out", required=True, help="store folder to write (rerun to continue it)")
    p.add_argument("--image-size", type=int, required=True, help="resize + centre-crop target")
    p.add_argument(
        "--val-labels",
        default=None,
        metavar="FILE",
        help="labels of a flat val/ folder: '<file> <class>' lines, or Kaggle's "
        "LOC_val_solution.csv (found beside --src without this flag)",
    )
    p.add_argument(
        "--classes",
        default=None,
        help="only these classes, in this order: a comma list or a file of names (e.g. wnids)",
    )
    p.add_argument("--name", default=None, help="the store's name in its index (default: --src's)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: cores+2)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("presets", help="list the published settings usable with --preset")
    p.add_argument("-v", "--verbose", action="store_true", help="show settings and sources")
    p.set_defaults(func=cmd_presets)

    from .cli_soft import add_teacher_parser

    add_teacher_parser(sub)

    from .diagnose import add_parser as add_diagnose

    add_diagnose(sub)

    from .continual import add_parsers as add_continual

    add_continual(sub)

    from .config import DEFAULT_FORM, PRECISIONS

    p = sub.add_parser(
        "demo", help="the flagship: DDM beside DM and a random subset on the embedded digits"
    )
    p.add_argument("--out", default="runs/demo")
    p.add_argument(
        "--form",
        default=None,
        help=f"DDM's form: paper | released (default: the toolkit's, {DEFAULT_FORM})",
    )
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=DEMO_ITERATIONS, help="per set (%(default)s)")
    p.add_argument("--batch-real", type=int, default=DEMO_BATCH_REAL, help="(%(default)s)")
    p.add_argument(
        "--epochs", type=int, default=DEMO_EPOCHS, help="training epochs per model (%(default)s)"
    )
    p.add_argument(
        "--runs", type=int, default=DEMO_RUNS, help="models trained per set (%(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="condensation and evaluation: auto | fp32 | bf16 (%(default)s: bf16 where the "
        "hardware runs it fast)",
    )
    p.set_defaults(func=cmd_demo)

    for name in _CONFIG_COMMANDS:
        sub.choices[name].add_argument(
            "--config",
            metavar="FILE",
            default=None,
            help="YAML or JSON settings by flag name (a run's config.json repeats the run); "
            "flags given here override it",
        )
    return parser


# Commands that take --config, and how their files are read (see ddm.configfile): where the
# outputs go is given on the command line; continual's saved config.json keeps its settings
# in a "continual" section, with --set's settings under "condense".
_CONFIG_COMMANDS: dict[str, dict[str, Any]] = {
    "condense": {"exclude": ("out", "resume", "overwrite", "allow_change")},
    "evaluate": {"exclude": ("out",)},
    "baseline": {"exclude": ("out", "overwrite")},
    "continual": {
        "exclude": ("out", "overwrite"),
        "section": "continual",
        "renamed": {"condense": "set"},
    },
}


def parse_command_line(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; with ``--config FILE``, the file's settings sit under the given flags.

    The file's checked values become the command parser's defaults and the command line is
    parsed again: dataclass defaults < preset < config file < explicit flags.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    from .configfile import apply_config_file

    rules = dict(_CONFIG_COMMANDS[args.command])
    if args.command == "condense":
        from .config import CondenseConfig

        rules["fields"] = CondenseConfig  # every field is a key, with or without a flag
    command_parser = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices[args.command]
    values = apply_config_file(command_parser, args.config, command=args.command, **rules)
    if args.command == "condense":
        from .config import check_stated_method_settings

        names = {f.name for f in dataclasses.fields(rules["fields"])}
        typed = {k: v for k, v in vars(args).items() if k in names}  # flags beat the file
        check_stated_method_settings({**values, **typed}, str(args.config))
    return parser.parse_args(argv)


# Commands that run under torchrun with several processes (the others would race on files).
DISTRIBUTED_COMMANDS = ("condense", "evaluate")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``ddm`` command: its exit status (0 done, 1 diverged, 2 bad input, 130 interrupted).

    A torchrun rank ends with ``os._exit`` after closing its process group, skipping the
    interpreter's teardown: there, after a finished run, gloo's threads could abort a rank
    under load (SIGABRT, "terminate called without an active exception"), and torchrun then
    failed a run whose results were all written (seen in the test suite beside other jobs).
    """
    from . import distributed as dist

    try:
        code = _main(argv)
    finally:
        opened = dist.active()
        dist.shutdown()
    if opened:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    from . import distributed as dist
    from .condense import NonFiniteLossError
    from .data import DatasetError
    from .io import RunFolderError

    # under torchrun every rank reports its own errors; the same error shows once per rank
    who = f"ddm[rank {os.environ.get('RANK', '0')}]" if dist.requested_world_size() > 1 else "ddm"
    try:
        args = parse_command_line(argv)
        if dist.requested_world_size() > 1 and args.command not in DISTRIBUTED_COMMANDS:
            raise ValueError(
                f"`ddm {args.command}` runs in one process; under torchrun only "
                f"{' and '.join(DISTRIBUTED_COMMANDS)} are spread over processes"
            )
        code = args.func(args)
        # every rank reaches the end before any closes the group: a rank that tears gloo down
        # while another still talks to it can abort at exit (seen under load)
        dist.barrier()
        return code
    except NonFiniteLossError as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, DatasetError, RunFolderError) as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    except KeyboardInterrupt:
        print(
            "ddm: interrupted; `condense` continues with --resume, `continual` by rerunning it",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
