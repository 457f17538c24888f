"""The ``ddm`` parser: every command's flags, and ``--config`` files under them."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..config import CondenseConfig, EvalConfig
from ..continual import ContinualConfig
from ..settings import flag_spec
from .baseline import cmd_baseline
from .common import _add_condense_flags, _add_eval_flags
from .condense import cmd_condense, cmd_presets
from .demo import DEMO_BATCH_REAL, DEMO_EPOCHS, DEMO_ITERATIONS, DEMO_RUNS, cmd_demo
from .evaluate import cmd_evaluate
from .flags import add_flags
from .pool import cmd_pool
from .prepare import cmd_prepare
from .show import cmd_export, cmd_show

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
    from ..config import ADJUSTABLE_ON_RESUME

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

    from ..pool import PoolConfig

    p = sub.add_parser(
        "pool",
        help="train networks on the real data for NCFM (initial and final weights kept)",
        description="Train --networks networks with NCFM's pretraining recipe (SGD lr 0.01, "
        "momentum 0.9, weight decay 5e-4, lr x0.2 at 2/3 and 5/6 of the epochs, batch 128, "
        "per-sample colour + crop and CutMix). Rerun the same command to continue.",
    )
    add_flags(p, PoolConfig, exclude=("momentum", "weight_decay"))
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
    _add_eval_flags(p)
    p.add_argument("--data-root", default=None, help="dataset folder (default: the run's)")
    add_flags(p, EvalConfig, only=("device",))
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
    from .teacher import add_label_flags

    add_label_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("baseline", help="random-subset or herding coreset in the run format")
    add_flags(p, CondenseConfig, only=("dataset", "data_root", "image_size"))
    holdout = "train images per class held out, never selected (as condense --holdout)"
    add_flags(p, CondenseConfig, only=("holdout",), helps={"holdout": holdout})
    add_flags(p, CondenseConfig, only=("ipc",))
    p.add_argument("--method", default="random", help="random | herding")
    add_flags(p, CondenseConfig, only=("seed",))
    add_flags(p, ContinualConfig, only=("herding_epochs",))
    add_flags(p, CondenseConfig, only=("device",))
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

    from .teacher import add_teacher_parser

    add_teacher_parser(sub)

    from .diagnose import add_parser as add_diagnose

    add_diagnose(sub)

    from .continual import add_parsers as add_continual

    add_continual(sub)

    p = sub.add_parser(
        "demo", help="the flagship: DDM beside DM and a random subset on the embedded digits"
    )
    p.add_argument("--out", default="runs/demo")
    add_flags(p, CondenseConfig, only=("form", "ipc"))
    add_flags(
        p,
        CondenseConfig,
        only=("iterations", "batch_real"),
        defaults={"iterations": DEMO_ITERATIONS, "batch_real": DEMO_BATCH_REAL},
        helps={"iterations": "condensation iterations per set"},
    )
    add_flags(
        p,
        EvalConfig,
        only=("epochs", "runs", "precision"),
        defaults={"epochs": DEMO_EPOCHS, "runs": DEMO_RUNS},
        helps={
            "runs": "models trained per set",
            "precision": "condensation and evaluation: " + flag_spec(EvalConfig, "precision").help,
        },
    )
    add_flags(p, CondenseConfig, only=("seed", "device"))
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


# Commands that take --config, and how their files are read (see ddm.cli.configfile): where the
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
        from ..config import CondenseConfig

        rules["fields"] = CondenseConfig  # every field is a key, with or without a flag
    command_parser = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices[args.command]
    values = apply_config_file(command_parser, args.config, command=args.command, **rules)
    if args.command == "condense":
        from ..config import check_stated_method_settings

        names = {f.name for f in dataclasses.fields(rules["fields"])}
        typed = {k: v for k, v in vars(args).items() if k in names}  # flags beat the file
        check_stated_method_settings({**values, **typed}, str(args.config))
    return parser.parse_args(argv)
