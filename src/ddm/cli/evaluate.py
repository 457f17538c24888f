"""``ddm evaluate``: train fresh networks on condensed sets and test them."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .common import _eval_config, _variant_text


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .. import distributed as dist
    from ..data import load_dataset
    from ..evaluate import evaluate_folder, evaluate_run
    from ..interop import import_set, is_run_folder
    from ..io import RunFolderError
    from ..runtime import Runtime

    cfg = _eval_config(args)
    runtime = Runtime.resolve(cfg.device, cfg.precision)
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
            dist.echo(_scores(path, imported.get(path), set_cfg, args, dataset, runtime))
            continue
        if path in imported:
            syn, out = imported[path]
            result = evaluate_folder(
                out, syn, dataset, set_cfg, progress=not args.quiet, runtime=runtime
            )
            where = f"  -> {out / 'metrics.json'}"
        else:
            result = evaluate_run(
                path,
                set_cfg,
                data_root=args.data_root,
                dataset=dataset,
                progress=not args.quiet,
                runtime=runtime,
            )
            where = ""
        if result.reused:
            where += f"  ({result.reused} of {cfg.runs} models from earlier in metrics.json)"
        if path not in imported:
            from ..io import load_synthetic, unfinished_note

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


def _with_teacher(cfg, args: argparse.Namespace, dataset_name: str | None):
    """``cfg`` with the teacher folder that --teacher / --teachers-dir name for the set."""
    from .teacher import resolve_teacher_dir

    folder = resolve_teacher_dir(args, dataset_name or "")
    return dataclasses.replace(cfg, teacher=None if folder is None else str(folder))


def _scores(path: Path, imported, cfg, args: argparse.Namespace, dataset, runtime) -> str:
    """Train what DD-Ranking's scores need for one set; its accuracies and scores as text."""
    from ..data import load_dataset
    from ..io import load_synthetic, read_json
    from ..scores import format_scores, score_set

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
        folder,
        syn,
        dataset,
        cfg,
        full_accuracy=args.full_accuracy,
        progress=not args.quiet,
        runtime=runtime,
    )
    recipe = f"{cfg.recipe} recipe, {cfg.labels} labels"
    return (
        f"{path}: {cfg.model}, {cfg.epochs} epochs, {cfg.runs} runs, {recipe}  "
        f"-> {folder / 'metrics.json'}\n{format_scores(entry)}"
    )


def _run_dataset(path: Path) -> str | None:
    from ..io import META_FILE, read_json

    folder = path.parent if path.suffix == ".safetensors" else path
    return read_json(folder / META_FILE).get("dataset")


def _external_out(path: Path) -> Path:
    """Default folder for an external set's metrics: ``<name>-eval`` beside the input."""
    return path.resolve().with_name(f"{path.resolve().stem}-eval")


def _write_imported(out: Path, source: Path, syn) -> None:
    """Keep an imported set as a run folder (``ddm show``/``evaluate`` work on it again)."""
    from ..io import META_FILE, RunFolderError, read_json, save_grid, save_synthetic

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
