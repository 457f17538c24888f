"""``ddm teacher`` and the label, recipe and score flags of ``ddm evaluate``.

Kept together so that the teacher command and DD-Ranking's evaluation settings are
read in one place; ``ddm.cli.parser`` registers them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_teacher_parser", "add_label_flags", "cmd_teacher", "resolve_teacher_dir"]


def add_teacher_parser(sub: Any) -> None:
    """Register ``teacher`` on an argparse sub-parsers object."""
    from ..teacher import TeacherConfig

    d = TeacherConfig()
    p = sub.add_parser(
        "teacher",
        help="train a network on the full real training set (soft labels, full-data accuracy)",
        description=(
            "Train a teacher on all real training images and test it; writes "
            "teacher.safetensors and teacher.json to --out (or <teachers-dir>/<dataset>-<model>). "
            "Interrupted training continues when the same command is run again."
        ),
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--image-size", type=int, default=None, help="for image-folder datasets")
    p.add_argument("--model", default=d.model, help="architecture (%(default)s)")
    p.add_argument("--depth", type=int, default=None, help="ConvNet depth (by resolution)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="(%(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(%(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="SGD lr, cosine decay (%(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="(%(default)s)")
    p.add_argument("--device", default="auto")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", default=None, help="teacher folder to write")
    where.add_argument(
        "--teachers-dir",
        default=None,
        help="folder of teachers; this one goes to <dir>/<dataset>-<model>",
    )
    p.set_defaults(func=cmd_teacher)


def cmd_teacher(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..runtime import Runtime
    from ..teacher import TeacherConfig, teacher_folder, train_teacher

    cfg = TeacherConfig(
        dataset=args.dataset,
        model=args.model,
        depth=args.depth,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
    )
    dataset = load_dataset(args.dataset, args.data_root, args.image_size)
    out = Path(args.out) if args.out else teacher_folder(args.teachers_dir, dataset.name, cfg.model)
    runtime = Runtime.resolve(cfg.device, "fp32")  # a teacher trains in float32
    teacher = train_teacher(dataset, cfg, out, progress=not args.quiet, runtime=runtime)
    print(
        f"{out}: teacher {cfg.model} on {dataset.name}, {cfg.epochs} epochs: "
        f"{teacher.accuracy:.2f} % test accuracy"
    )
    return 0


def add_label_flags(p: argparse.ArgumentParser) -> None:
    """``ddm evaluate``'s labels, teacher, recipe and score flags."""
    from ..recipes import RECIPES

    g = p.add_argument_group("labels, recipes and DD-Ranking's scores")
    g.add_argument(
        "--labels",
        default="hard",
        choices=("hard", "soft"),
        help="hard: cross-entropy on class labels; soft: KL to a teacher's soft labels "
        "(%(default)s)",
    )
    g.add_argument(
        "--soft-label-mode",
        default="M",
        choices=("M", "S"),
        help="soft labels: M, the teacher labels every augmented batch on the fly; S, the "
        "per-image soft labels stored in the set (DD-Ranking's modes; %(default)s)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="softmax temperature of the soft-label KL loss (default: the recipe's)",
    )
    g.add_argument("--teacher", default=None, metavar="DIR", help="a teacher folder")
    g.add_argument(
        "--teachers-dir",
        default=None,
        metavar="DIR",
        help="folder of teachers: uses <DIR>/<dataset>-<teacher-model>",
    )
    g.add_argument("--teacher-model", default="convnet", help="with --teachers-dir (%(default)s)")
    g.add_argument(
        "--eval-recipe",
        default="dm",
        choices=tuple(RECIPES),
        help="optimiser, schedule and augmentation of the trained models: "
        + "; ".join(f"{k}: {r.summary}" for k, r in RECIPES.items())
        + " (%(default)s)",
    )
    g.add_argument(
        "--scores",
        action="store_true",
        help="also train on a random real subset of the set's size and without augmentation, "
        "and report DD-Ranking's HLR, IOR, LRS and ARS (needs a teacher or --full-accuracy)",
    )
    g.add_argument(
        "--full-accuracy",
        type=float,
        default=None,
        metavar="PCT",
        help="--scores: full-real-data accuracy (percent) for HLR (default: the teacher's)",
    )


def resolve_teacher_dir(args: argparse.Namespace, dataset_name: str) -> Path | None:
    """The teacher folder named by --teacher or --teachers-dir (None: neither given)."""
    from ..teacher import teacher_folder

    if args.teacher and args.teachers_dir:
        raise ValueError("give --teacher DIR or --teachers-dir DIR, not both")
    if args.teacher:
        return Path(args.teacher)
    if args.teachers_dir:
        return teacher_folder(args.teachers_dir, dataset_name, args.teacher_model)
    return None
