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
    from ..config import CondenseConfig
    from ..teacher import TeacherConfig
    from .flags import add_flags

    p = sub.add_parser(
        "teacher",
        help="train a network on the full real training set (soft labels, full-data accuracy)",
        description=(
            "Train a teacher on all real training images and test it; writes "
            "teacher.safetensors and teacher.json to --out (or <teachers-dir>/<dataset>-<model>). "
            "Interrupted training continues when the same command is run again."
        ),
    )
    p.add_argument("--dataset", required=True, help="dataset name")
    add_flags(p, CondenseConfig, only=("data_root", "image_size"))
    add_flags(p, TeacherConfig, exclude=("dataset", "momentum", "weight_decay", "augment"))
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
    from .flags import values_from

    cfg = TeacherConfig(
        dataset=args.dataset, **values_from(args, TeacherConfig, exclude=("dataset",))
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
    from ..config import EvalConfig
    from .flags import add_flags

    g = p.add_argument_group("labels, recipes and DD-Ranking's scores")
    add_flags(g, EvalConfig, only=("labels", "soft_label_mode", "temperature"))
    g.add_argument(
        "--teacher",
        default=None,
        metavar="DIR",
        help="a teacher folder, or a pool folder (`ddm pool`: its first network)",
    )
    g.add_argument(
        "--teachers-dir",
        default=None,
        metavar="DIR",
        help="folder of teachers: uses <DIR>/<dataset>-<teacher-model>",
    )
    g.add_argument("--teacher-model", default="convnet", help="with --teachers-dir (%(default)s)")
    add_flags(g, EvalConfig, only=("recipe",))
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
