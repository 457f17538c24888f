"""The field's evaluation protocol (docs/method.md, 'Evaluation protocol').

Train a freshly initialised network on the condensed set only (SGD lr 0.01, momentum 0.9,
weight decay 5e-4, batch 256, lr x 0.1 after half of the epochs, DSA with per-image
parameters on every batch, cross-entropy on hard labels), then test on the whole real test
set. Repeat with several seeds; report mean +- std (population std, as the field does).
For tuning, ``EvalConfig.holdout`` N tests instead on the N train images per class that a set
condensed with the same ``--holdout`` never saw (``Dataset.holdout``). Other training recipes
(``EvalConfig.recipe``, ``ddm.recipes``) and soft labels from a teacher (``EvalConfig.labels``,
``ddm.teacher``) are settings of the same loop; docs/guide/soft-labels.md describes them.

Under torchrun the runs of a set are spread over the processes (round-robin) and gathered;
each run is seeded by (evaluation seed, run), so the numbers are those of one process.

A run folder's evaluation (``evaluate_folder``) is resumable model by model: each trained model
is recorded in ``metrics.json`` as it finishes (``"partial"``), and models already trained for
the same set under the same protocol (by an interrupted evaluation, or a finished one with
fewer or more runs) are reused, since model r depends on (seed, r) alone. Every entry names
its set by a content hash (``"set"``), so the results of a folder's earlier set (a resumed
condensation writes a new one) are never taken for the current set's.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from . import distributed as dist
from .augment import augment
from .config import EvalConfig
from .data import Dataset, load_dataset
from .io import SyntheticSet, atomic_write_json, load_synthetic, read_json, run_progress
from .models import build_model
from .recipes import cutmix, lr_factor, make_optimizer
from .runtime import Runtime, Stream, autocast, seed_for, tune_allocator
from .teacher import Teacher, load_teacher, soft_label_loss

__all__ = [
    "EvalResult",
    "train_and_test",
    "evaluate_set",
    "evaluate_folder",
    "evaluate_run",
    "set_fingerprint",
    "trained_runs",
    "accuracy",
    "METRICS_FILE",
]

METRICS_FILE = "metrics.json"
PARTIAL_KEY = "partial"  # metrics.json: models of unfinished evaluations, by run index


@dataclass(frozen=True)
class EvalResult:
    """Test accuracies (percent) of ``runs`` freshly trained models."""

    model: str
    epochs: int
    accuracies: list[float]
    train_accuracies: list[float]
    seconds: float  # training and testing time of the models trained in this call
    precision: str = "fp32"  # the resolved precision the models were trained in
    reused: int = 0  # models taken from earlier evaluations of the same set (not retrained)
    teacher: dict[str, Any] | None = None  # the soft labels' teacher (Teacher.describe())

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))

    def __str__(self) -> str:
        return f"{self.mean:.2f} +- {self.std:.2f}"

    def to_dict(self, cfg: EvalConfig, fingerprint: str | None = None) -> dict[str, Any]:
        entry = {
            "model": self.model,
            "epochs": self.epochs,
            "runs": len(self.accuracies),
            "seed": cfg.seed,
            "mean": round(self.mean, 4),
            "std": round(self.std, 4),
            "accuracies": [round(a, 4) for a in self.accuracies],
            "train_accuracies": [round(a, 4) for a in self.train_accuracies],
            "seconds": round(self.seconds, 2),
            "protocol": {**cfg.to_dict(), "precision": self.precision},
            "version": __version__,
            "recipe": cfg.training().to_dict(),
        }
        if self.teacher is not None:
            entry["teacher"] = self.teacher
        if fingerprint is not None:
            entry["set"] = fingerprint
        return entry


def accuracy(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    batch: int = 1000,
    precision: str = "fp32",
) -> float:
    """Percent of ``images`` classified correctly (eval mode, no grad, in batches), the forward
    in ``precision`` (resolved: fp32 | bf16, e.g. a ``Runtime``'s)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(
            f"accuracy takes a resolved precision (fp32 | bf16), not {precision!r}; resolve it "
            "with ddm.runtime.Runtime.resolve"
        )
    net.eval()
    correct = 0
    with torch.no_grad(), autocast(precision, device):
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(device, non_blocking=True)
            pred = net(x).argmax(1).cpu()
            correct += int((pred == labels[i : i + batch]).sum())
    return 100.0 * correct / max(len(images), 1)


def train_and_test(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    num_classes: int,
    strategy: str,
    cfg: EvalConfig,
    run: int = 0,
    teacher: Teacher | None = None,
    soft_targets: torch.Tensor | None = None,
    runtime: Runtime | None = None,
) -> tuple[float, float]:
    """Train one fresh ``cfg.model`` on (train_x, train_y); return (test %, train %).

    The optimiser, schedule, augmentation and mixing are ``cfg``'s recipe (``ddm.recipes``).
    Under ``cfg.labels == "soft"`` the loss is the KL to soft labels: the ``teacher``'s logits
    for every augmented batch (mode M) or the per-image ``soft_targets`` logits (mode S).
    Under bf16 precision the forward passes run in bf16 autocast; the loss is float32.
    ``runtime``: device and precision (default: resolved from ``cfg``'s).
    """
    channels, size = train_x.shape[1], train_x.shape[-1]
    if runtime is None:
        runtime = Runtime.resolve(cfg.device, cfg.precision)
    runtime = runtime.for_images(size)
    device, precision = runtime.device, runtime.precision
    recipe = cfg.training()
    soft = cfg.labels == "soft"
    if soft and cfg.soft_label_mode == "M" and teacher is None:
        raise ValueError("soft labels (mode M) need a teacher: give --teacher DIR")
    if soft and cfg.soft_label_mode == "S" and soft_targets is None:
        raise ValueError("soft labels (mode S) need per-image soft labels stored in the set")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(cfg.seed, Stream.EVAL_MODEL, run))
        extra = {"depth": cfg.depth} if cfg.depth else {}
        net = build_model(cfg.model, channels, num_classes, size, **extra).to(device)
    gen = torch.Generator().manual_seed(seed_for(cfg.seed, Stream.EVAL_TRAIN, run))
    opt = make_optimizer(recipe, net.parameters(), recipe.lr, recipe.momentum, recipe.weight_decay)
    x_all, y_all = train_x.to(device), train_y.to(device)
    if soft and cfg.soft_label_mode == "S":
        probs_all = F.softmax(soft_targets.float().to(device) / recipe.temperature, dim=1)
    strategy = recipe.strategy(strategy) if cfg.dsa else "none"
    mixing = None  # CutMix draws come from their own stream, so recipes without it are unchanged
    if cfg.dsa and recipe.cutmix_prob > 0:
        mixing = np.random.default_rng(seed_for(cfg.seed, Stream.EVAL_MIX, run))
    n, batch = len(x_all), recipe.batch_size
    net.train()
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = recipe.lr * lr_factor(recipe.schedule, epoch, cfg.epochs)
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            x = augment(x_all[idx], strategy, gen)
            perm, lam = None, 1.0
            if mixing is not None:
                x, perm, lam = cutmix(x, recipe, mixing)
            with runtime.autocast():
                logits = net(x)
            if not soft:
                loss = F.cross_entropy(logits.float(), y_all[idx])
                if perm is not None:  # CutMix: the labels are mixed by area
                    other = F.cross_entropy(logits.float(), y_all[idx][perm])
                    loss = lam * loss + (1 - lam) * other
            else:
                if cfg.soft_label_mode == "M":  # the teacher sees the batch the student sees
                    target = F.softmax(teacher.logits(x) / recipe.temperature, dim=1)
                else:
                    target = probs_all[idx]
                    if perm is not None:
                        target = lam * target + (1 - lam) * target[perm]
                loss = soft_label_loss(logits, target, recipe.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    train_acc = accuracy(net, train_x, train_y, device, precision=precision)
    return accuracy(net, test_x, test_y, device, precision=precision), train_acc


def evaluate_set(
    syn: SyntheticSet | tuple[torch.Tensor, torch.Tensor],
    dataset: Dataset,
    cfg: EvalConfig,
    progress: bool = True,
    trained: dict[int, tuple[float, float]] | None = None,
    on_run: Callable[[dict[int, tuple[float, float]]], None] | None = None,
    *,
    runtime: Runtime | None = None,
) -> EvalResult:
    """Evaluate a condensed set (expanded first when it is an IDM set) on ``dataset``'s test set.

    ``trained`` maps run indices already trained for this set under ``cfg``'s protocol to their
    (test %, train %); only the other runs train. ``on_run`` is called (by the main process)
    with every run known so far after each model it trains. Under torchrun each process trains
    its share of the runs; every process returns them all. ``runtime``: device and precision
    (default: resolved from ``cfg``'s; under torchrun auto is the first process's choice).
    """
    tune_allocator()
    if runtime is None:
        runtime = Runtime.resolve(cfg.device, cfg.precision)
    if isinstance(syn, SyntheticSet):
        _check_compatible(syn, dataset)
        images, labels = syn.expanded()
    else:
        images, labels = syn
    runtime = runtime.for_images(images.shape[-1])
    _check_holdout(syn, cfg)
    teacher, soft_targets = _soft_label_sources(syn, dataset, cfg, runtime.device)
    test_x, test_y = dataset.holdout(cfg.holdout).test_tensors()
    from tqdm.auto import tqdm

    known = {r: v for r, v in (trained or {}).items() if r < cfg.runs}
    done: dict[int, tuple[float, float]] = dict(known)  # run -> (test %, train %)
    t0 = time.perf_counter()
    todo = [r for r in range(cfg.runs) if r not in known]
    mine = dist.round_robin(todo)
    show = progress and dist.is_main() and bool(mine)
    for run in tqdm(mine, desc=f"evaluate {cfg.model}", disable=not show, unit="model"):
        done[run] = train_and_test(
            images.float(),
            labels.long(),
            test_x,
            test_y,
            num_classes=dataset.num_classes,
            strategy=dataset.dsa_strategy,
            cfg=cfg,
            run=run,
            teacher=teacher,
            soft_targets=soft_targets,
            runtime=runtime,
        )
        if on_run is not None and dist.is_main():
            on_run(dict(done))
    for part in dist.all_gather_object(done):
        done.update(part)
    accs = [done[run][0] for run in range(cfg.runs)]
    train_accs = [done[run][1] for run in range(cfg.runs)]
    seconds = time.perf_counter() - t0
    about = teacher.describe() if teacher is not None else None
    return EvalResult(
        cfg.model, cfg.epochs, accs, train_accs, seconds, runtime.precision, len(known), about
    )


def _soft_label_sources(
    syn: SyntheticSet | tuple[torch.Tensor, torch.Tensor],
    dataset: Dataset,
    cfg: EvalConfig,
    device: torch.device,
) -> tuple[Teacher | None, torch.Tensor | None]:
    """The teacher (soft labels, mode M) or the set's stored soft labels (mode S)."""
    if cfg.labels != "soft":
        return None, None
    if cfg.soft_label_mode == "S":
        stored = syn.expanded_soft_labels() if isinstance(syn, SyntheticSet) else None
        if stored is None:
            raise ValueError(
                "--soft-label-mode S trains on the soft labels stored in the set, and this set "
                "has none; use --soft-label-mode M with a --teacher"
            )
        return None, stored
    if cfg.teacher is None:
        raise ValueError(
            "--labels soft needs a teacher: --teacher DIR or --teachers-dir DIR (train one "
            f"with `ddm teacher --dataset {dataset.name} --out DIR`)"
        )
    return load_teacher(cfg.teacher, dataset, device), None


def _check_holdout(syn: SyntheticSet | tuple[torch.Tensor, torch.Tensor], cfg: EvalConfig) -> None:
    """Testing on held-out train images is fair only for a set condensed without exactly them."""
    if not cfg.holdout:
        return
    made = None  # unknown: a set made elsewhere (imported, or bare tensors)
    if isinstance(syn, SyntheticSet) and syn.meta.get("method") != "imported":
        made = syn.meta.get("holdout", 0)
    if made == cfg.holdout:
        return
    if made is None:
        why = "a set made elsewhere does not say which train images it was made from"
    elif made == 0:
        why = "this set was condensed from the whole train split, these images included"
    else:
        why = f"this set was condensed with --holdout {made}, a different split"
    raise ValueError(
        f"--holdout {cfg.holdout}: {why}. Condense (or select) with --holdout {cfg.holdout} "
        "and evaluate that set, or evaluate on the test split (--holdout 0)"
    )


def set_fingerprint(syn: SyntheticSet | tuple[torch.Tensor, torch.Tensor]) -> str:
    """A short content hash of a set (stored images, labels, soft labels, expansion factor)."""
    if isinstance(syn, SyntheticSet):
        tensors, factor = (syn.images, syn.labels), syn.expansion_factor
        if syn.soft_labels is not None:  # sets without them keep their earlier hash
            tensors = (*tensors, syn.soft_labels)
    else:
        tensors, factor = syn, 1
    h = hashlib.sha256(f"x{factor}".encode())
    for t in tensors:
        a = t.detach().cpu().contiguous()
        a = a.float() if a.dtype in (torch.bfloat16, torch.float16) else a
        h.update(f"{tuple(a.shape)}{a.dtype}".encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()[:16]


def _protocol_key(protocol: dict[str, Any]) -> tuple:
    """What decides a model's result, without the number of runs and the device name."""
    values = {k: v for k, v in protocol.items() if k not in ("runs", "device")}
    values.setdefault("precision", "fp32")
    values.setdefault("holdout", 0)  # entries from before --holdout tested on the test split
    for key, default in _VARIANT_DEFAULTS.items():  # entries from before recipes and labels
        values.setdefault(key, default)
    return tuple(sorted(values.items()))


def trained_runs(
    run_dir: Path, cfg: EvalConfig, precision: str, fingerprint: str
) -> dict[int, tuple[float, float]]:
    """Models already trained for the set ``fingerprint`` under ``cfg``'s protocol in
    ``precision`` (resolved), by run index, from ``run_dir``'s metrics.json: finished
    evaluations with any number of runs and interrupted ones. Entries without a set hash
    (written before it was recorded) are not reused."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return {}
    metrics = read_json(path)
    want = _protocol_key({**cfg.to_dict(), "precision": precision})
    found: dict[int, tuple[float, float]] = {}
    for entry in [*metrics.get("evaluations", []), *metrics.get(PARTIAL_KEY, [])]:
        if entry.get("set") != fingerprint or _protocol_key(entry.get("protocol", {})) != want:
            continue
        accs, train = entry.get("accuracies", []), entry.get("train_accuracies", [])
        indices = entry.get("run_indices", range(len(accs)))
        for r, a, t in zip(indices, accs, train, strict=False):
            found.setdefault(int(r), (float(a), float(t)))
    return found


def record_partial(
    run_dir: Path,
    cfg: EvalConfig,
    precision: str,
    fingerprint: str,
    done: dict[int, tuple[float, float]],
) -> None:
    """Record the models of an unfinished evaluation (atomically), replacing its last record."""
    path = Path(run_dir) / METRICS_FILE
    metrics = read_json(path) if path.exists() else {"evaluations": []}
    protocol = {**cfg.to_dict(), "precision": precision}
    want = _protocol_key(protocol)
    runs = sorted(done)
    entry = {
        "model": cfg.model,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "set": fingerprint,
        "run_indices": runs,
        "accuracies": [done[r][0] for r in runs],
        "train_accuracies": [done[r][1] for r in runs],
        "protocol": protocol,
    }
    metrics[PARTIAL_KEY] = [*_other_partials(metrics, fingerprint, want), entry]
    atomic_write_json(path, metrics)


def _other_partials(metrics: dict[str, Any], fingerprint: str, want: tuple) -> list[dict]:
    """The partial records in ``metrics`` other than the set ``fingerprint``'s under the
    protocol ``want`` (a ``_protocol_key``)."""
    return [
        e
        for e in metrics.get(PARTIAL_KEY, [])
        if not (e.get("set") == fingerprint and _protocol_key(e.get("protocol", {})) == want)
    ]


def evaluate_folder(
    folder: str | os.PathLike,
    syn: SyntheticSet | tuple[torch.Tensor, torch.Tensor],
    dataset: Dataset,
    cfg: EvalConfig,
    progress: bool = True,
    *,
    runtime: Runtime | None = None,
) -> EvalResult:
    """Evaluate ``syn`` and record the result in ``folder``'s metrics.json, model by model:
    models this set already has under the same protocol are reused, and each new one is
    recorded as it finishes, so an interrupted evaluation continues where it stopped.
    ``runtime``: device and precision (default: resolved from ``cfg``'s)."""
    folder = Path(folder)
    if runtime is None:
        runtime = Runtime.resolve(cfg.device, cfg.precision)
    images = syn.images if isinstance(syn, SyntheticSet) else syn[0]
    runtime = runtime.for_images(images.shape[-1])
    precision = runtime.precision
    fingerprint = set_fingerprint(syn)
    trained = dist.on_main(trained_runs, folder, cfg, precision, fingerprint)

    def checkpoint(done: dict[int, tuple[float, float]]) -> None:
        record_partial(folder, cfg, precision, fingerprint, done)

    result = evaluate_set(
        syn, dataset, cfg, progress, trained=trained, on_run=checkpoint, runtime=runtime
    )
    # an unfinished run's set says so in its entry (iterations done and planned)
    done = run_progress(syn.meta) if isinstance(syn, SyntheticSet) else {}
    dist.on_main(record_metrics, folder, result, cfg, fingerprint, done)
    return result


def _check_compatible(syn: SyntheticSet, dataset: Dataset) -> None:
    meta = syn.meta
    got = (syn.images.shape[1], syn.images.shape[-1])
    want = (dataset.channels, dataset.image_size)
    if got != want or meta.get("num_classes", dataset.num_classes) != dataset.num_classes:
        raise ValueError(
            f"the condensed set ({got[0]}x{got[1]}x{got[1]}, {meta.get('num_classes')} classes) "
            f"does not fit dataset {dataset.name} ({want[0]}x{want[1]}x{want[1]}, "
            f"{dataset.num_classes} classes)"
        )
    names = meta.get("classes")
    if isinstance(names, list) and len(names) == dataset.num_classes:
        differ = [(a, b) for a, b in zip(names, dataset.classes, strict=True) if str(a) != b]
        if differ:
            raise ValueError(
                f"the condensed set's classes are not {dataset.name}'s (its {differ[0][0]!r} "
                f"is {differ[0][1]!r} there, {len(differ)} of {len(names)} differ); evaluate it "
                "on the data it was condensed from"
            )
    for key, ours in (("mean", dataset.mean), ("std", dataset.std)):
        if key in meta and not np.allclose(meta[key], ours, atol=1e-4):
            raise ValueError(
                f"the condensed set was normalised with a different {key} "
                f"({meta[key]}) than {dataset.name} ({list(ours)})"
            )


def evaluate_run(
    run_dir: str | os.PathLike,
    cfg: EvalConfig,
    data_root: str | None = None,
    dataset: Dataset | None = None,
    progress: bool = True,
    *,
    runtime: Runtime | None = None,
) -> EvalResult:
    """Evaluate the set in ``run_dir`` and record the result in its ``metrics.json``.

    The dataset is the one named in the run's meta.json; ``data_root`` defaults to the root
    the run was condensed from (its config.json). ``runtime``: as ``evaluate_folder``'s.
    """
    run_dir = Path(run_dir)
    syn = load_synthetic(run_dir)
    if dataset is None:
        root = data_root
        if root is None and (run_dir / "config.json").exists():
            root = read_json(run_dir / "config.json").get("data_root")
        dataset = load_dataset(syn.meta["dataset"], root, syn.meta.get("image_size"))
    return evaluate_folder(run_dir, syn, dataset, cfg, progress=progress, runtime=runtime)


def entry_precision(entry: dict[str, Any]) -> str:
    """The precision an evaluation in metrics.json trained in (entries older than the
    precision policy were float32)."""
    return entry.get("protocol", {}).get("precision", "fp32")


def entry_holdout(entry: dict[str, Any]) -> int:
    """0 for an evaluation on the test split, N for one on N held-out train images per class."""
    return int(entry.get("protocol", {}).get("holdout", 0))


# How an evaluation trains besides model, epochs, runs, seed, precision and holdout, with the
# values of entries written before these were settings (the dm recipe on hard labels, DSA on).
_VARIANT_DEFAULTS: dict[str, Any] = {
    "recipe": "dm",
    "labels": "hard",
    "soft_label_mode": None,
    "temperature": None,
    "teacher": None,
    "dsa": True,
}


def entry_variant(entry: dict[str, Any]) -> tuple:
    """Recipe, labels, soft-label mode, temperature, teacher and augmentation of an entry."""
    protocol = entry.get("protocol", {})
    return tuple(protocol.get(k, d) for k, d in _VARIANT_DEFAULTS.items())


def evaluation_key(entry: dict[str, Any]) -> tuple:
    """What identifies an evaluation in metrics.json: an entry with the same key is replaced."""
    return (
        entry.get("model"),
        entry.get("epochs"),
        entry.get("runs"),
        entry.get("seed"),
        entry_precision(entry),
        entry_holdout(entry),
        entry_variant(entry),
    )


def find_evaluation(
    run_dir: Path, cfg: EvalConfig, precision: str, fingerprint: str | None = None
) -> dict[str, Any] | None:
    """The entry of ``run_dir``'s metrics.json for an evaluation like ``cfg`` (model, epochs,
    runs, seed, holdout) trained in ``precision`` (resolved: fp32 | bf16), or None; with
    ``fingerprint``, an entry recorded for another set does not count. Entries older than the
    seed, precision and holdout fields count as seed 0, float32 and the test split, entries
    without a set hash as this set's."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return None
    variant = entry_variant({"protocol": cfg.to_dict()})
    want = (cfg.model, cfg.epochs, cfg.runs, cfg.seed, precision, cfg.holdout, variant)
    for entry in read_json(path).get("evaluations", []):
        model, epochs, runs, seed, prec, held, how = evaluation_key(entry)
        if (model, epochs, runs, 0 if seed is None else seed, prec, held, how) != want:
            continue
        if fingerprint is None or entry.get("set") in (None, fingerprint):
            return entry
    return None


def record_metrics(
    run_dir: Path,
    result: EvalResult,
    cfg: EvalConfig,
    fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Add (or replace: same model, epochs, runs, seed, precision and holdout) an entry in
    metrics.json, naming its set by ``fingerprint`` (``extra``: more keys for the entry, e.g.
    ``io.run_progress``); the record of the same set's unfinished evaluation under this
    protocol goes."""
    path = Path(run_dir) / METRICS_FILE
    metrics = read_json(path) if path.exists() else {"evaluations": []}
    entry = {**result.to_dict(cfg, fingerprint), **(extra or {})}
    key = evaluation_key(entry)
    kept = [e for e in metrics.get("evaluations", []) if evaluation_key(e) != key]
    metrics["evaluations"] = [*kept, entry]
    if fingerprint is not None and PARTIAL_KEY in metrics:
        metrics[PARTIAL_KEY] = _other_partials(
            metrics, fingerprint, _protocol_key(entry["protocol"])
        )
        if not metrics[PARTIAL_KEY]:
            del metrics[PARTIAL_KEY]
    atomic_write_json(path, metrics)
