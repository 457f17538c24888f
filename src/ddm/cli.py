"""The ``ddm`` command line: condense, evaluate, baseline, show, demo.

Each sub-command only parses flags into the settings dataclasses and calls the library; every
error a user can cause ends in one clear line on stderr and exit status 2 (1 for a diverged
run), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__

__all__ = ["main", "build_parser"]


# --- helpers -------------------------------------------------------------------------------------


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_condense_flags(p: argparse.ArgumentParser) -> None:
    from .config import CondenseConfig

    d = CondenseConfig()
    p.add_argument("--dataset", default=d.dataset, help="dataset name (default: %(default)s)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset's files")
    p.add_argument("--image-size", type=int, default=None, help="resize target (image folders)")
    p.add_argument("--ipc", type=int, default=d.ipc, help="images per class (%(default)s)")
    p.add_argument("--method", default=d.method, help="dm | ddm | idm (%(default)s)")
    p.add_argument("--base", default=None, help="base of ddm: dm | idm (default dm)")
    p.add_argument("--iterations", type=int, default=d.iterations, help="(%(default)s)")
    p.add_argument(
        "--batch-real",
        type=int,
        default=d.batch_real,
        help="real images per class and iteration (%(default)s)",
    )
    p.add_argument(
        "--lr-img",
        type=float,
        default=None,
        help="image learning rate (default 1.0 on DM, 0.2 on IDM)",
    )
    p.add_argument("--momentum", type=float, default=d.momentum, help="(%(default)s)")
    p.add_argument("--init", default=d.init, choices=("real", "noise"))
    p.add_argument("--model", default=d.model, help="matching network (%(default)s)")
    p.add_argument("--dsa", type=_bool, default=d.dsa, help="Siamese augmentation (true)")
    p.add_argument("--seed", type=int, default=d.seed, help="(%(default)s)")
    p.add_argument("--w-mm", type=float, default=None, help="DDM moments weight (1e4)")
    p.add_argument("--w-cm", type=float, default=None, help="DDM correlation weight (1e4)")
    p.add_argument("--w-icd", type=float, default=None, help="DDM diversity weight (10)")
    p.add_argument("--icd-k", type=int, default=None, help="neighbours (round(0.2 ipc))")
    p.add_argument(
        "--icd-neighbour-grad",
        type=_bool,
        default=d.icd_neighbour_grad,
        help="gradient through the neighbour mean (true, as the reference)",
    )
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N] (%(default)s)")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="iterations between checkpoints (%(default)s; 0: only at the end)",
    )
    p.add_argument(
        "--real-chunk",
        type=int,
        default=d.real_chunk,
        help="real images per no-grad forward (0: automatic)",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the matching network")


def _condense_config(args: argparse.Namespace):
    from .config import CondenseConfig

    names = {f.name for f in dataclasses.fields(CondenseConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return CondenseConfig(**values)


def _eval_config(args: argparse.Namespace):
    from .config import EvalConfig

    return EvalConfig(
        model=args.model,
        epochs=args.epochs,
        runs=args.runs,
        seed=args.eval_seed,
        device=args.device,
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


def _summary(folder: Path) -> str:
    from .io import load_synthetic, read_json

    syn = load_synthetic(folder)
    m = syn.meta
    lines = [
        f"{folder}: {m.get('method')} on {m.get('dataset')}, ipc {m.get('ipc')}, "
        f"{tuple(syn.images.shape)} stored images, expansion x{syn.expansion_factor}, "
        f"{m.get('iterations')} iterations, seed {m.get('seed')}",
    ]
    metrics = folder / "metrics.json"
    if metrics.exists():
        for e in read_json(metrics).get("evaluations", []):
            lines.append(
                f"  {e['model']:<10} {e['epochs']:>5} epochs  {e['runs']} runs  "
                f"{e['mean']:.2f} +- {e['std']:.2f} %"
            )
    return "\n".join(lines)


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    width = max(len(r[0]) for r in [header, *rows])
    out = [f"| {header[0]:<{width}} | {header[1]} |", f"|{'-' * (width + 2)}|{'-' * 17}|"]
    out += [f"| {a:<{width}} | {b} |" for a, b in rows]
    return "\n".join(out)


# --- commands -------------------------------------------------------------------------------------


def cmd_condense(args: argparse.Namespace) -> int:
    from .condense import condense

    cfg = _condense_config(args)
    condense(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    print(_summary(Path(args.out)))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from .baselines import BASELINES
    from .condense import prepare_run_folder
    from .data import load_dataset
    from .io import atomic_write_json, save_grid, save_synthetic

    if args.method not in BASELINES:
        raise ValueError(f"unknown baseline {args.method!r}; known: {', '.join(BASELINES)}")
    if args.ipc <= 0:
        raise ValueError(f"--ipc must be positive, got {args.ipc}")
    out = Path(args.out)
    prepare_run_folder(out, resume=False, overwrite=args.overwrite)
    dataset = load_dataset(args.dataset, args.data_root, args.image_size)
    kwargs: dict[str, Any] = {"seed": args.seed}
    if args.method == "herding":
        kwargs.update(epochs=args.herding_epochs, device=args.device, progress=not args.quiet)
    syn = BASELINES[args.method](dataset, args.ipc, **kwargs)
    save_synthetic(out, syn)
    save_grid(out / "grid.png", syn.denormalized(), syn.labels)
    atomic_write_json(
        out / "config.json",
        {
            "method": args.method,
            "dataset": args.dataset,
            "data_root": args.data_root,
            "ipc": args.ipc,
            **kwargs,
            "version": __version__,
        },
    )
    print(_summary(out))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    cfg = _eval_config(args)
    for run in args.runs_dirs:
        result = evaluate_run(run, cfg, data_root=args.data_root, progress=not args.quiet)
        print(
            f"{run}: {cfg.model}, {cfg.epochs} epochs, {cfg.runs} runs: {result} %  "
            f"(per run: {', '.join(f'{a:.2f}' for a in result.accuracies)})"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .io import load_synthetic, save_grid

    folder = Path(args.run)
    syn = load_synthetic(folder)
    if args.expanded:
        images, labels = syn.expanded()
        save_grid(folder / "grid_expanded.png", syn.denormalized(images), labels)
    save_grid(folder / "grid.png", syn.denormalized(), syn.labels)
    print(_summary(folder))
    print(f"wrote {folder / 'grid.png'}" + (" and grid_expanded.png" if args.expanded else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Condense the embedded digits dataset with DM and compare with a random subset."""
    from .baselines import random_subset
    from .condense import condense, prepare_run_folder
    from .config import CondenseConfig, EvalConfig
    from .data import load_dataset
    from .evaluate import evaluate_set, record_metrics
    from .io import atomic_write_json, save_grid, save_synthetic

    out = Path(args.out)
    dataset = load_dataset("digits")
    cfg = CondenseConfig(
        dataset="digits",
        ipc=args.ipc,
        method=args.method,
        iterations=args.iterations,
        batch_real=args.batch_real,
        seed=args.seed,
        device=args.device,
    )
    ecfg = EvalConfig(epochs=args.epochs, runs=args.runs, device=args.device)
    print(
        f"condensing digits ({dataset.num_classes} classes, {len(dataset.train)} train "
        f"images) into {args.ipc} images per class with {args.method.upper()}, "
        f"{args.iterations} iterations"
    )
    syn = condense(cfg, out / args.method, dataset=dataset, overwrite=True, progress=not args.quiet)
    rand_dir = out / "random"
    prepare_run_folder(rand_dir, resume=False, overwrite=True)
    rand = random_subset(dataset, args.ipc, seed=args.seed)
    save_synthetic(rand_dir, rand)
    save_grid(rand_dir / "grid.png", rand.denormalized(), rand.labels)
    atomic_write_json(
        rand_dir / "config.json",
        {"method": "random", "dataset": "digits", "ipc": args.ipc, "seed": args.seed},
    )
    rows = []
    for name, s, folder in (
        (args.method.upper(), syn, out / args.method),
        ("random subset", rand, rand_dir),
    ):
        result = evaluate_set(s, dataset, ecfg, progress=not args.quiet)
        record_metrics(folder, result, ecfg)
        rows.append((name, f"{result} %"))
    print(
        f"\ndigits, ipc {args.ipc}, ConvNet, {args.epochs} epochs x {args.runs} runs "
        f"(test accuracy, mean +- std):"
    )
    print(_table(rows, ("set", "accuracy")))
    print(f"\nruns and grids in {out}/ (grid.png in each folder)")
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
    p.set_defaults(func=cmd_condense)

    p = sub.add_parser("evaluate", help="train fresh networks on condensed sets, test them")
    p.add_argument("runs_dirs", nargs="+", metavar="RUN", help="run folder(s)")
    p.add_argument("--model", default="convnet", help="architecture (%(default)s)")
    _add_eval_flags(p)
    p.add_argument("--data-root", default=None, help="dataset folder (default: the run's)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("baseline", help="random-subset or herding coreset in the run format")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--image-size", type=int, default=None)
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

    p = sub.add_parser("show", help="write grid.png for a run and print its summary")
    p.add_argument("run")
    p.add_argument("--expanded", action="store_true", help="also grid the expanded images")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("demo", help="the main job: DM on the embedded digits vs random subset")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--method", default="dm", choices=("dm", "ddm"))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--batch-real", type=int, default=128)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .condense import NonFiniteLossError
    from .data import DatasetError
    from .io import RunFolderError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NonFiniteLossError as exc:
        print(f"ddm: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, DatasetError, RunFolderError) as exc:
        print(f"ddm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddm: interrupted; a condensation run continues with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
