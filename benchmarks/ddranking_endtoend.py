"""Run DD-Ranking 0.2.0's own metric classes on a ddm set; compare with ``ddm evaluate --scores``.

``benchmarks/ddranking_crosscheck.py`` compares the formulas; this script trains with
DD-Ranking's code (``ddranking.metrics.LabelRobustScoreHard`` and ``AugmentationRobustScore``)
on a set exported by ``ddm export --format ddranking`` and sets the accuracies and scores beside
those of ``ddm evaluate --eval-recipe ddranking --scores`` on the same set, with the same epochs,
runs and full-data accuracy.

DD-Ranking needs its own environment, outside the repository (it pins nothing that ddm needs,
but it pulls torchvision, kornia and timm)::

    python3 -m venv DDRVENV
    DDRVENV/bin/pip install torch==2.13.0          # first, so that pip keeps a CPU torch
    DDRVENV/bin/pip install torchvision==0.28.0 ddranking==0.2.0

A torchvision wheel built for CUDA cannot load its C++ operators next to a CPU torch; its
import then fails with ``RuntimeError: operator torchvision::nms does not exist`` (and next
``torchvision::qnms``) while registering their fake kernels. DD-Ranking uses none of these
operators, so this script declares the two schemas before importing torchvision
(``declare_torchvision_ops``)::

    schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
    torch.library.define("torchvision::nms", schema)
    torch.library.define("torchvision::qnms", schema)

Steps (``ddm`` = ``PYTHONPATH=src python -m ddm``, DATA holds ``cifar-10-batches-py``)::

    ddm condense --dataset cifar10 --data-root DATA --method dm --ipc 10 --iterations 20 \\
        --batch-real 32 --seed 0 --precision fp32 --out W/dm
    ddm export W/dm --format ddranking --out W/export
    ddm evaluate W/dm --data-root DATA --epochs 20 --runs 1 --eval-seed 0 --precision fp32 \\
        --device cpu --eval-recipe ddranking --scores --full-accuracy 71.17
    DDRVENV/bin/python benchmarks/ddranking_endtoend.py ddranking W/export --metric lrs \\
        --data-root DATA --epochs 20 --runs 1 --full-accuracy 71.17 --out W/ddr-lrs.json
    DDRVENV/bin/python benchmarks/ddranking_endtoend.py ddranking W/export --metric ars \\
        --data-root DATA --epochs 20 --runs 1 --out W/ddr-ars.json
    python benchmarks/ddranking_endtoend.py report --ddm W/dm --ddranking W/ddr-lrs.json \\
        W/ddr-ars.json --out benchmarks/results/ddranking_endtoend [--also W/dm-seed1 ...]

What the ``ddranking`` step changes in DD-Ranking's run, and why (nothing else is touched):

- ``REAL_DATA_ACC_CACHE["CIFAR10-ConvNet-3"]`` is set to ``--full-accuracy``: its cache has no
  CIFAR-10 ConvNet entry, and ``eval_full_data`` would train 200 epochs on all of CIFAR-10.
- ``set_seed()`` (seeded from the clock in 0.2.0) gets ``--seed`` + run index, so that the
  random subsets and the trainings repeat.
- ``test_interval`` is the number of epochs: the model is tested once, after the last epoch,
  as ``ddm`` reports the final model (DD-Ranking keeps the best of tests every 10 or 20 epochs).
- ``AugmentationRobustScore`` with hard labels reads two attributes that 0.2.0 only sets with
  soft labels or never: ``teacher_models`` (set to None) and ``test_loader_real`` (set to its
  ``test_loader_syn``, the same CIFAR-10 test set). Its random subset is taken as images, JPEG
  files read back with the export's ``custom_train_trans`` (``random_data_format: image``: its
  tensor path calls ``get_random_data_tensors`` without ``class_map`` and fails).
- ``LabelRobustScoreHard`` takes its random subset as tensors (``random_data_format:
  tensor``, lossless; its tensor path works), so the two metrics show what the JPEG costs.
- torchvision's ``CIFAR10`` checks the md5 sums of the batch files and otherwise downloads
  them (DD-Ranking passes ``download=True``); a copy whose pixels and labels are the original
  ones but whose md5 sums differ is accepted when all its files are present.
- ``LabelRobustScoreHard`` appends each run's LRS twice to its list, and its ``save_results``
  (a pandas DataFrame of the lists) then fails with "All arrays must be of the same length"
  after all the training; the lists are written as JSON instead. The doubled list has the
  same mean and population std as the single one, so its returned scores are unchanged.
- ``device: cpu``, ``num_workers: 0`` and one torch thread.

Every training DD-Ranking runs is recorded (which set, lr, augmentation, accuracy), so the
random subset's accuracy at lr 0.01 (ddm's) can be read beside its best over the lr search.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

LR_SYN = 0.01  # the ddranking recipe's lr (DD-Ranking's default_lr)


def declare_torchvision_ops() -> None:
    """Declare torchvision's nms/qnms schemas when its C++ library did not load."""
    import torch

    for name in ("nms", "qnms"):
        try:
            getattr(torch.ops.torchvision, name)
        except (AttributeError, RuntimeError):
            torch.library.define(
                f"torchvision::{name}",
                "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            )


def accept_cifar10_files() -> None:
    """Let torchvision's CIFAR10 accept batch files that are present, whatever their md5."""
    import os

    from torchvision.datasets import CIFAR10

    def present(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        names = [n for n, _ in self.train_list + self.test_list]
        return all(os.path.isfile(os.path.join(folder, n)) for n in names)

    CIFAR10._check_integrity = present


def run_ddranking(args: argparse.Namespace) -> None:
    """Train with DD-Ranking's metric class and write its result and every training's accuracy."""
    import torch

    torch.set_num_threads(1)
    declare_torchvision_ops()
    accept_cifar10_files()
    import ddranking
    import ddranking.utils.misc as misc
    from ddranking.config import Config
    from ddranking.metrics import aug_robust, hard_label
    from ddranking.utils import train_and_eval

    export = Path(args.export)
    out = Path(args.out)
    work = out.parent / (out.stem + "-work")
    work.mkdir(parents=True, exist_ok=True)
    cfg = Config.from_file(str(export / "ddranking.yaml"))
    cfg.update(
        {
            "real_data_path": str(args.data_root),
            "num_epochs": args.epochs,
            "num_eval": args.runs,
            "device": "cpu",
            "num_workers": 0,
            "save_path": str(work / f"{args.metric}.csv"),
            "random_data_path": str(work / "random"),
        }
    )
    seeds = iter(range(args.seed, args.seed + 1000))

    def set_seed(seed=None):
        misc.set_seed(next(seeds))

    trainings: list[dict] = []
    images = torch.load(export / "images.pt", weights_only=True)
    if images.dtype != torch.float32:
        images = images.float()

    def recorded(method, kind_of):
        def wrapper(*a, **kw):
            t0 = time.time()
            acc = float(method(*a, **kw))
            entry = {**kind_of(kw), "lr": kw["lr"], "acc": acc, "seconds": time.time() - t0}
            trainings.append(entry)
            print(f"[training] {entry}", flush=True)
            return acc

        return wrapper

    def save_ragged(results: dict, save_path: str) -> None:
        # 0.2.0's LabelRobustScoreHard appends each run's LRS twice, and pandas refuses columns
        # of unequal length: the CSV becomes JSON (mean and std are unchanged by the doubling)
        Path(save_path).with_suffix(".json").write_text(json.dumps(results, default=float))

    def which(kw) -> str:
        return "set" if kw.get("image_tensor") is images else "random"

    t0 = time.time()
    if args.metric == "lrs":
        key = f"{cfg.get('dataset')}-{cfg.get('model_name')}"
        train_and_eval.REAL_DATA_ACC_CACHE[key] = args.full_accuracy
        hard_label.set_seed = set_seed
        hard_label.save_results = save_ragged
        cfg.update({"random_data_format": "tensor", "eval_full_data": False})
        metric = hard_label.LabelRobustScoreHard(cfg)
        metric.test_interval = args.epochs
        metric._compute_hard_label_metrics = recorded(
            metric._compute_hard_label_metrics, lambda kw: {"data": which(kw), "aug": True}
        )
        result = metric.compute_metrics(image_tensor=images, syn_lr=LR_SYN)
    else:
        aug_robust.set_seed = set_seed
        cfg.update(
            {
                "label_type": "hard",
                "random_data_format": "image",
            }
        )
        metric = aug_robust.AugmentationRobustScore(cfg)
        metric.teacher_models = None
        metric.test_loader_real = metric.test_loader_syn
        metric.test_interval = args.epochs
        metric._compute_hard_label_metrics = recorded(
            metric._compute_hard_label_metrics,
            lambda kw: {"data": which(kw), "aug": bool(kw["use_aug"])},
        )
        result = metric.compute_metrics(image_tensor=images, syn_lr=LR_SYN)
    payload = {
        "metric": args.metric,
        "ddranking_version": getattr(ddranking, "__version__", "0.2.0"),
        "torch": torch.__version__,
        "epochs": args.epochs,
        "runs": args.runs,
        "seed": args.seed,
        "full_accuracy": args.full_accuracy if args.metric == "lrs" else None,
        "result": {k: float(v) for k, v in result.items()},
        "trainings": trainings,
        "seconds": time.time() - t0,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["result"], indent=2))


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if abs(x) < 1e6 else f"{x:.4e}"


def _pick(trainings: list[dict], how: str, **want) -> float | None:
    """The accuracy of the first matching training (how="first") or the best (how="best")."""
    hits = [t["acc"] for t in trainings if all(t[k] == v for k, v in want.items())]
    if not hits:
        return None
    return hits[0] if how == "first" else max(hits)


def report(args: argparse.Namespace) -> None:
    """Set ddm's --scores entry beside DD-Ranking's results; write OUT.json, print the tables.

    Besides both sides' own numbers it passes DD-Ranking's accuracies through ``ddm.scores``
    (which must give DD-Ranking's scores exactly) and through it again with the random
    subset's accuracy at lr 0.01 instead of the best of DD-Ranking's lr search.
    """
    from ddm.scores import augmentation_robust_score, label_robust_score

    entry = json.loads((Path(args.ddm) / "metrics.json").read_text())["scores"][-1]
    acc = {k: v["mean"] for k, v in entry["accuracies"].items()}
    sc = {k: v["mean"] for k, v in entry["scores"].items()}
    full = entry["full_accuracy"]
    ddr = {}
    for path in args.ddranking:
        d = json.loads(Path(path).read_text())
        ddr[d["metric"]] = d
    rows: list[tuple[str, float | None, float | None, str]] = []
    scores: list[tuple[str, float | None, float | None, float | None, float | None]] = []
    # ddm's side: one entry per run; the comparison uses run 0 (runs = 1)
    ddm_ars = augmentation_robust_score(
        acc["syn_labels"], acc["rdm_labels"], acc["syn_noaug"], acc["rdm_noaug"]
    )
    if "lrs" in ddr:
        t, r = ddr["lrs"]["trainings"], ddr["lrs"]["result"]
        syn = _pick(t, "first", data="set")
        rdm01, rdm_best = _pick(t, "first", data="random", lr=0.01), _pick(t, "best", data="random")
        rows += [
            ("full real data (input, same on both sides)", full, ddr["lrs"]["full_accuracy"], ""),
            ("set, DSA, lr 0.01", acc["syn_hard"], syn, ""),
            ("random subset, DSA, lr 0.01", acc["rdm_labels"], rdm01, "different draws"),
            ("random subset, DSA, best of 5 lrs", None, rdm_best, "DD-Ranking's IOR uses this"),
        ]
        same = label_robust_score(full, syn, syn, rdm_best)
        at01 = label_robust_score(full, syn, syn, rdm01)
        scores += [
            ("HLR", sc["hlr"], r["hard_label_recovery_mean"], same["hlr"], at01["hlr"]),
            ("IOR", sc["ior"], r["improvement_over_random_mean"], same["ior"], at01["ior"]),
            ("LRS", sc["lrs"], r["label_robust_score_mean"], same["lrs"], at01["lrs"]),
            (  # DD-Ranking computes no fraction form: its column stays empty
                "LRS with accuracies as fractions",
                sc["lrs_fraction"],
                None,
                label_robust_score(full, syn, syn, rdm_best, scale=0.01)["lrs"],
                label_robust_score(full, syn, syn, rdm01, scale=0.01)["lrs"],
            ),
        ]
    if "ars" in ddr:
        t, r = ddr["ars"]["trainings"], ddr["ars"]["result"]
        got = {
            (data, aug, how): _pick(
                t, how, data=data, aug=aug, **({"lr": 0.01} if how == "first" else {})
            )
            for data in ("set", "random")
            for aug in (True, False)
            for how in ("first", "best")
        }
        rows += [
            ("ARS: set, DSA, lr 0.01", acc["syn_labels"], got["set", True, "first"], ""),
            (
                "ARS: random subset (JPEG), DSA, lr 0.01",
                acc["rdm_labels"],
                got["random", True, "first"],
                "",
            ),
            (
                "ARS: random subset (JPEG), DSA, best of 5 lrs",
                None,
                got["random", True, "best"],
                "DD-Ranking's ARS uses this",
            ),
            (
                "ARS: set, no augmentation, lr 0.01",
                acc["syn_noaug"],
                got["set", False, "first"],
                "",
            ),
            (
                "ARS: random subset (JPEG), no augmentation, lr 0.01",
                acc["rdm_noaug"],
                got["random", False, "first"],
                "",
            ),
            (
                "ARS: random subset (JPEG), no augmentation, best of 5 lrs",
                None,
                got["random", False, "best"],
                "DD-Ranking's ARS uses this",
            ),
        ]
        s_aug, s_no = got["set", True, "first"], got["set", False, "first"]
        same = augmentation_robust_score(
            s_aug, got["random", True, "best"], s_no, got["random", False, "best"]
        )
        at01 = augmentation_robust_score(
            s_aug, got["random", True, "first"], s_no, got["random", False, "first"]
        )
        scores += [
            (
                "ARS: with-augmentation difference",
                ddm_ars["with_aug"],
                r["with_aug_scores_mean"],
                same["with_aug"],
                at01["with_aug"],
            ),
            (
                "ARS: without-augmentation difference",
                ddm_ars["without_aug"],
                r["without_aug_scores_mean"],
                same["without_aug"],
                at01["without_aug"],
            ),
            ("ARS", sc["ars"], r["augmentation_robust_score_mean"], same["ars"], at01["ars"]),
            (
                "ARS with accuracies as fractions",
                sc["ars_fraction"],
                None,
                augmentation_robust_score(
                    s_aug,
                    got["random", True, "best"],
                    s_no,
                    got["random", False, "best"],
                    scale=0.01,
                )["ars"],
                augmentation_robust_score(
                    s_aug,
                    got["random", True, "first"],
                    s_no,
                    got["random", False, "first"],
                    scale=0.01,
                )["ars"],
            ),
        ]
    out = {
        "ddm": {
            "set": Path(args.ddm).name,
            "protocol": entry["protocol"],
            "accuracies": acc,
            "scores": sc,
        },
        "ddranking": {
            k: {
                kk: v[kk]
                for kk in ("epochs", "runs", "seed", "torch", "result", "trainings", "seconds")
            }
            for k, v in ddr.items()
        },
        "accuracies": [
            dict(zip(("quantity", "ddm", "ddranking", "note"), x, strict=True)) for x in rows
        ],
        "scores": [
            dict(
                zip(
                    (
                        "score",
                        "ddm",
                        "ddranking",
                        "ddm_formula_on_ddranking_accuracies",
                        "ddranking_random_at_lr_0.01",
                    ),
                    x,
                    strict=True,
                )
            )
            for x in scores
        ],
    }
    out["ddm_other_evaluations"] = [
        {
            "set": Path(folder).name,
            "eval_seed": e["protocol"]["seed"],
            "runs": e["protocol"]["runs"],
            "accuracies": {k: v["per_run"] for k, v in e["accuracies"].items()},
            "scores": {k: v["per_run"] for k, v in e["scores"].items()},
        }
        for folder in args.also
        for e in json.loads((Path(folder) / "metrics.json").read_text()).get("scores", [])
    ]
    dest = Path(args.out)
    dest.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "| test accuracy (%) | ddm | DD-Ranking 0.2.0 | note |",
        "|---|---|---|---|",
        *[f"| {q} | {_fmt(a)} | {_fmt(b)} | {n} |" for q, a, b, n in rows],
        "",
        "| score | ddm | DD-Ranking 0.2.0 | ddm.scores on DD-Ranking's accuracies "
        "| same, random at lr 0.01 |",
        "|---|---|---|---|---|",
        *[
            f"| {q} | {_fmt(a, 4)} | {_fmt(b, 4)} | {_fmt(c, 4)} | {_fmt(d, 4)} |"
            for q, a, b, c, d in scores
        ],
    ]
    table = "\n".join(lines) + "\n"
    print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ddranking", help="run DD-Ranking's metric (in its venv)")
    p.add_argument("export", help="folder written by ddm export --format ddranking")
    p.add_argument("--metric", choices=("lrs", "ars"), required=True)
    p.add_argument("--data-root", required=True, help="folder holding cifar-10-batches-py")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full-accuracy", type=float, default=71.17)
    p.add_argument("--out", required=True, help="result JSON")
    q = sub.add_parser("report", help="compare with ddm's --scores entry (ddm's python)")
    q.add_argument("--ddm", required=True, help="the set's run folder (metrics.json)")
    q.add_argument(
        "--ddranking", nargs="+", required=True, help="result JSONs of the ddranking step"
    )
    q.add_argument("--out", required=True, help="result path (.json is added)")
    q.add_argument(
        "--also", nargs="*", default=[], help="more ddm --scores runs of the set (other seeds)"
    )
    args = parser.parse_args(argv)
    run_ddranking(args) if args.cmd == "ddranking" else report(args)


if __name__ == "__main__":
    main(sys.argv[1:])
