"""Class-incremental learning with condensed memories (docs/method.md, 'Continual learning').

For each class order (a permutation seeded by the order index), the classes arrive in ``steps``
equal groups. Each group is condensed on its own (a dataset holding only those classes, labels
0..k-1) and added to the memory; after every step fresh ConvNets are trained from scratch on the
memory of all classes seen so far and tested on the test images of exactly those classes.

A run folder ``RUN`` holds:

- ``config.json``: the resolved settings (continual, condensation and evaluation protocol);
- ``progress.json``: every finished (order, step) with its accuracies, written after each one,
  so a restarted run with the same settings skips them (a larger ``--orders`` adds orders);
- ``cache/<key>/``: one condensed (or selected) set per step, keyed by a hash of what decides
  it (dataset, the step's classes, method, resolved settings, seed), reused whenever the same
  step comes again; a condensation there is an ordinary run folder and resumes if killed;
- ``results.csv`` (one row per order, step and model), ``summary.csv`` and ``summary.md``
  (mean +- std over orders x models per step, and the final step) and ``continual.png``.

Steps are numbered from 1, orders from 0 (the order's seed).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .baselines import BASELINE_SETTINGS, BASELINES, make_baseline
from .condense import CHECKPOINT_FILE, condense
from .config import METHODS, PRECISION_HELP, PRECISIONS, CondenseConfig, EvalConfig
from .data import Dataset, Split, load_dataset
from .evaluate import train_and_test
from .io import (
    META_FILE,
    SYNTHETIC_FILE,
    RunFolderError,
    SyntheticSet,
    atomic_write_bytes,
    atomic_write_json,
    load_synthetic,
    read_json,
    save_synthetic,
)
from .runtime import Runtime, generator, seed_for
from .settings import setting, shared, shared_fields

__all__ = [
    "ContinualConfig",
    "StepSummary",
    "CONTINUAL_METHODS",
    "class_subset",
    "class_order",
    "split_steps",
    "build_memory",
    "run_continual",
    "plot_runs",
    "combined_table",
    "read_summary",
]

BASELINE_METHODS = tuple(BASELINES)
CONTINUAL_METHODS = (*BASELINE_METHODS, *METHODS)
ORDER_STREAM = 40  # class order o is torch.randperm(num_classes, generator(o, ORDER_STREAM))
EVAL_STREAM = 41  # the evaluation seed of (order, step): seed_for(seed, EVAL_STREAM, o, s)

CONFIG_FILE = "config.json"
PROGRESS_FILE = "progress.json"
RESULTS_FILE = "results.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PLOT_FILE = "continual.png"
CACHE_DIR = "cache"
OUTPUT_FILES = (CONFIG_FILE, PROGRESS_FILE, RESULTS_FILE, SUMMARY_CSV, SUMMARY_MD, PLOT_FILE)
# Settings a restarted run may change: they do not change any result.
RESTARTABLE_CHANGES = {"device", "data_root"}
# Condensation settings that do not change the condensed set (not part of the cache key).
_NOT_IN_KEY = {"device", "checkpoint_every", "real_chunk", "data_root", "compile"}


@dataclass(frozen=True)
class ContinualConfig:
    """A class-incremental run; defaults: docs/method.md, 'Continual learning'."""

    dataset: str = shared(CondenseConfig, "dataset", "cifar100")
    data_root: str | None = shared(CondenseConfig, "data_root")
    image_size: int | None = shared(CondenseConfig, "image_size")  # only for image folders
    # random | herding | dm | ddm | idm | ncfm
    method: str = shared(
        CondenseConfig, "method", help="how each step is condensed", choices=CONTINUAL_METHODS
    )
    steps: int = setting(5, help="class groups")
    ipc: int = shared(CondenseConfig, "ipc", 20, help="memory images per class")
    orders: int = setting(5, help="class orders 0..orders-1")
    runs: int = shared(EvalConfig, "runs", 3, help="models per step")  # per (order, step)
    epochs: int = shared(EvalConfig, "epochs", 1000, help="training epochs per model")
    # the evaluation's training (condensation's precision: --set precision=...)
    eval_precision: str = shared(
        EvalConfig,
        "precision",
        flag="eval-precision",
        help="the evaluation's training: " + PRECISION_HELP,
    )
    iterations: int = shared(CondenseConfig, "iterations", help="condensation iterations per step")
    batch_real: int = shared(CondenseConfig, "batch_real")
    base: str | None = shared(CondenseConfig, "base")
    form: str | None = shared(CondenseConfig, "form")
    w_mm: float | None = shared(CondenseConfig, "w_mm")
    w_cm: float | None = shared(CondenseConfig, "w_cm")
    w_icd: float | None = shared(CondenseConfig, "w_icd")
    herding_epochs: int = setting(2, help="epochs of training for herding's embedding net")
    # condensation / selection seed (the class orders do not depend on it)
    seed: int = shared(CondenseConfig, "seed", help="condensation / selection seed")
    device: str = shared(CondenseConfig, "device")
    # further CondenseConfig fields for every step (e.g. IDM's queue: model_train_steps)
    condense: dict[str, Any] | None = None

    def validated(self) -> ContinualConfig:
        """Check the settings; raises ValueError saying what to change."""
        if self.method not in CONTINUAL_METHODS:
            raise ValueError(
                f"unknown method {self.method!r}; known: {', '.join(CONTINUAL_METHODS)}"
            )
        for name in ("steps", "ipc", "orders", "runs", "epochs", "iterations", "batch_real"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        if self.condense:
            fields = {f.name for f in dataclasses.fields(CondenseConfig)}
            for key in self.condense:
                if key in _SET_BY_CONTINUAL:
                    raise ValueError(f"--set {key}=...: use the --{key.replace('_', '-')} flag")
                if key not in fields:
                    raise ValueError(
                        f"--set {key}=...: not a condensation setting; known: "
                        f"{', '.join(sorted(fields - _SET_BY_CONTINUAL))}"
                    )
            if self.method not in METHODS:
                raise ValueError(f"--set applies to condensation methods, not {self.method!r}")
        if self.eval_precision not in PRECISIONS:
            raise ValueError(
                f"unknown --eval-precision {self.eval_precision!r}; known: {', '.join(PRECISIONS)}"
            )
        reads = BASELINE_SETTINGS.get(self.method, ())
        if "herding_epochs" in reads and self.herding_epochs <= 0:
            raise ValueError(f"--herding-epochs must be positive, got {self.herding_epochs}")
        if self.method in METHODS:
            self.condense_config(self.dataset).resolved()  # validates the method's settings
        return self

    def condense_config(self, dataset_name: str) -> CondenseConfig:
        """The (unresolved) condensation settings of one step."""
        given = {name: getattr(self, name) for name in _SET_BY_CONTINUAL}
        return CondenseConfig(**{**given, "dataset": dataset_name, **(self.condense or {})})

    def eval_config(self, order: int, step: int) -> EvalConfig:
        """The evaluation protocol of (order, step): its own seed, ``runs`` models."""
        given = {src: getattr(self, name) for name, src in _EVAL_SETTINGS.items()}
        seed = seed_for(self.seed, EVAL_STREAM, order, step)
        return EvalConfig(**given, seed=seed, device=self.device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# condensation settings that have their own continual flag (the fields declared as
# CondenseConfig's), and the evaluation protocol's: {continual field: EvalConfig field}
_SET_BY_CONTINUAL = frozenset(shared_fields(ContinualConfig, CondenseConfig))
_EVAL_SETTINGS = shared_fields(ContinualConfig, EvalConfig)


@dataclass(frozen=True)
class StepSummary:
    """Accuracy (percent) after one step, over every finished order x model."""

    step: int
    classes_seen: int
    mean: float
    std: float
    n: int  # accuracies averaged (orders x runs finished)

    def __str__(self) -> str:
        return f"{self.mean:.2f} +- {self.std:.2f}"


# --- classes, orders, memory ---------------------------------------------------------------------


def class_subset(dataset: Dataset, classes: Sequence[int]) -> Dataset:
    """Only the samples of ``classes`` (train and test), labels remapped to 0..k-1.

    Label i is ``classes[i]``; the name (so the augmentation), mean and std stay those of the
    full dataset.
    """
    keep = torch.as_tensor(list(classes), dtype=torch.int64)
    if len(keep) == 0 or len(torch.unique(keep)) != len(keep):
        raise ValueError(f"class_subset needs distinct class ids, got {list(classes)}")
    if int(keep.min()) < 0 or int(keep.max()) >= dataset.num_classes:
        raise ValueError(f"class ids must be in [0, {dataset.num_classes}), got {keep.tolist()}")
    lut = torch.full((dataset.num_classes,), -1, dtype=torch.int64)
    lut[keep] = torch.arange(len(keep))

    def pick(split: Split) -> Split:
        mask = torch.isin(split.labels, keep)
        return Split(split.images[mask], lut[split.labels[mask]], len(keep))

    names = tuple(dataset.classes[c] for c in keep.tolist())
    return Dataset(
        dataset.name, names, pick(dataset.train), pick(dataset.test), dataset.mean, dataset.std
    )


def class_order(num_classes: int, order: int) -> list[int]:
    """Class order ``order`` (its seed): a permutation of 0..num_classes-1."""
    return torch.randperm(num_classes, generator=generator(order, ORDER_STREAM)).tolist()


def split_steps(order: Sequence[int], steps: int) -> list[tuple[int, ...]]:
    """Cut a class order into ``steps`` equal groups (in order)."""
    n = len(order)
    if steps <= 0 or n % steps != 0:
        raise ValueError(
            f"{n} classes cannot be split into {steps} equal steps; use a divisor of {n}"
        )
    k = n // steps
    return [tuple(order[i * k : (i + 1) * k]) for i in range(steps)]


def build_memory(
    parts: Sequence[tuple[Sequence[int], SyntheticSet]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The union of the steps' sets: images (expanded for IDM) and *global* class ids.

    Each part is (classes, set) where the set's label i stands for ``classes[i]``.
    """
    images, labels = [], []
    for classes, syn in parts:
        x, y = syn.expanded()
        ids = torch.as_tensor(list(classes), dtype=torch.int64)
        if len(y) and int(y.max()) >= len(ids):
            raise ValueError(f"a step set has label {int(y.max())} but only {len(ids)} classes")
        images.append(x.detach().float().cpu())
        labels.append(ids[y.long().cpu()])
    return torch.cat(images), torch.cat(labels)


def _remap(labels: torch.Tensor, seen: Sequence[int], num_classes: int) -> torch.Tensor:
    """Global class ids -> positions in ``seen`` (0..len(seen)-1)."""
    lut = torch.full((num_classes,), -1, dtype=torch.int64)
    lut[torch.as_tensor(list(seen), dtype=torch.int64)] = torch.arange(len(seen))
    out = lut[labels]
    if len(out) and int(out.min()) < 0:
        raise ValueError("the memory holds a class that has not been seen")
    return out


# --- one step's set, cached --------------------------------------------------------------------


def _cache_key(settings: ContinualConfig, dataset: Dataset, classes: Sequence[int]) -> tuple:
    """(folder name, the key's content) of a step's set."""
    content: dict[str, Any] = {
        "dataset": dataset.name,
        "classes": sorted(classes),
        "method": settings.method,
        "ipc": settings.ipc,
        "seed": settings.seed,
    }
    if settings.method in METHODS:
        cfg = settings.condense_config(dataset.name).resolved().to_dict()
        content["condense"] = {k: v for k, v in cfg.items() if k not in _NOT_IN_KEY}
    else:
        reads = BASELINE_SETTINGS[settings.method]
        content.update({k: getattr(settings, k) for k in reads if k not in _NOT_IN_KEY})
    blob = json.dumps(content, sort_keys=True).encode()
    return f"{settings.method}-{hashlib.sha256(blob).hexdigest()[:12]}", content


def step_set(
    settings: ContinualConfig,
    dataset: Dataset,
    classes: Sequence[int],
    cache: Path,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> SyntheticSet:
    """The condensed (or selected) set of one step's ``sorted(classes)``, from the cache.

    Label i of the returned set stands for ``sorted(classes)[i]``. ``runtime``: device and
    condensation precision (default: resolved by ``condense`` from the step's settings).
    """
    classes = sorted(classes)
    key, content = _cache_key(settings, dataset, classes)
    folder = cache / key
    meta_path = folder / META_FILE
    if meta_path.exists() and (folder / SYNTHETIC_FILE).exists():
        finished = settings.method in BASELINE_METHODS or (
            int(read_json(meta_path).get("iterations", 0)) >= settings.iterations
        )
        if finished:
            return load_synthetic(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "key.json", content)
    step_data = class_subset(dataset, classes)
    if settings.method in BASELINE_METHODS:
        syn = make_baseline(
            settings.method,
            step_data,
            settings.ipc,
            seed=settings.seed,
            herding_epochs=settings.herding_epochs,
            device=settings.device,
            progress=progress,
            runtime=runtime,
        )
        save_synthetic(folder, syn)  # tensors first, then meta.json: meta marks it complete
        return syn
    resume = (folder / CHECKPOINT_FILE).exists()
    return condense(
        settings.condense_config(dataset.name),
        folder,
        dataset=step_data,
        resume=resume,
        overwrite=not resume,
        progress=progress,
        runtime=runtime,
    )


# --- the run -----------------------------------------------------------------------------------


def _prepare(out: Path, config: dict[str, Any], overwrite: bool) -> list[dict[str, Any]]:
    """Create/validate RUN; return the finished (order, step) entries to keep."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create run folder {out}: {exc.strerror or exc}") from exc
    if overwrite:
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
        return []
    if not (out / CONFIG_FILE).exists():
        if (out / PROGRESS_FILE).exists():
            raise RunFolderError(
                f"{out} has {PROGRESS_FILE} but no {CONFIG_FILE}; pass --overwrite to start over"
            )
        return []
    # runs from before --eval-precision trained their models in float32
    saved = {"eval_precision": "fp32", **read_json(out / CONFIG_FILE).get("continual", {})}
    now = config["continual"]
    diffs = [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(now) | set(saved))
        if k not in RESTARTABLE_CHANGES
        and saved.get(k) != now.get(k)
        # more class orders extend a run: the finished ones stay valid
        and not (k == "orders" and isinstance(saved.get(k), int) and now[k] > saved[k])
    ]
    if diffs:
        raise RunFolderError(
            f"{out} holds a continual run with other settings ({'; '.join(diffs)}); "
            "use the same settings to continue it, another --out, or --overwrite"
        )
    if not (out / PROGRESS_FILE).exists():
        return []
    return list(read_json(out / PROGRESS_FILE).get("entries", []))


def _resolved(settings: ContinualConfig, dataset: Dataset, evaluation: Runtime) -> dict[str, Any]:
    out: dict[str, Any] = {"continual": settings.to_dict()}
    if settings.method in METHODS:
        cfg = settings.condense_config(dataset.name).resolved()
        out["condense"] = cfg.to_dict()
    ecfg = settings.eval_config(0, 1)
    out["evaluation"] = {
        **dataclasses.asdict(ecfg),
        "seed": f"seed_for(seed, {EVAL_STREAM}, order, step)",
        # as resolved on the machine that ran it ('auto' -> fp32 | bf16)
        "precision": evaluation.precision,
    }
    out["dataset"] = {
        "name": dataset.name,
        "num_classes": dataset.num_classes,
        "classes_per_step": dataset.num_classes // settings.steps,
    }
    out["version"] = __version__
    return out


def run_continual(
    settings: ContinualConfig,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    overwrite: bool = False,
    dataset: Dataset | None = None,
    runtime: Runtime | None = None,
) -> list[StepSummary]:
    """Run (or continue) the class-incremental protocol into ``out``; return the per-step summary.

    ``dataset`` (optional) replaces loading ``settings.dataset`` from ``settings.data_root``.
    ``runtime``: the device and the evaluation's precision (default: resolved from
    ``settings.device`` and ``settings.eval_precision``); the condensation's precision (its
    settings', auto unless ``--set precision=...``) is resolved on the same device.
    """
    settings = settings.validated()
    out = Path(out)
    if dataset is None:
        dataset = load_dataset(settings.dataset, settings.data_root, settings.image_size)
    split_steps(range(dataset.num_classes), settings.steps)  # raises if not divisible
    if runtime is None:
        runtime = Runtime.resolve(settings.device, settings.eval_precision)
    evaluation = runtime.for_images(dataset.image_size)
    condensation = runtime.with_precision(settings.condense_config(dataset.name).precision)
    config = _resolved(settings, dataset, evaluation)
    entries = _prepare(out, config, overwrite)
    atomic_write_json(out / CONFIG_FILE, config)
    done = {(e["order"], e["step"]) for e in entries}
    cache = out / CACHE_DIR
    log = sys.stdout if progress else None

    for o in range(settings.orders):
        groups = split_steps(class_order(dataset.num_classes, o), settings.steps)
        parts: list[tuple[list[int], SyntheticSet]] = []
        for s, group in enumerate(groups, start=1):
            if all((o, t) in done for t in range(s, settings.steps + 1)):
                break  # nothing left in this order
            classes = sorted(group)
            parts.append(
                (classes, step_set(settings, dataset, classes, cache, progress, condensation))
            )
            if (o, s) in done:
                continue
            seen = [c for g in groups[:s] for c in g]
            accs = _evaluate_step(settings, dataset, parts, seen, o, s, evaluation)
            entries.append(
                {
                    "order": o,
                    "step": s,
                    "classes_seen": len(seen),
                    "classes": list(group),
                    "accuracies": [round(a, 4) for a in accs],
                }
            )
            done.add((o, s))
            atomic_write_json(out / PROGRESS_FILE, {"version": __version__, "entries": entries})
            _write_tables(out, settings, entries)
            if log is not None:
                acc = np.asarray(accs)
                print(
                    f"order {o} step {s}/{settings.steps}: {len(seen)} classes, "
                    f"{acc.mean():.2f} +- {acc.std():.2f} %",
                    file=log,
                    flush=True,
                )
    atomic_write_json(out / PROGRESS_FILE, {"version": __version__, "entries": entries})
    summary = _write_tables(out, settings, entries)
    plot_runs([out], out / PLOT_FILE)
    return summary


def _evaluate_step(
    settings: ContinualConfig,
    dataset: Dataset,
    parts: Sequence[tuple[Sequence[int], SyntheticSet]],
    seen: Sequence[int],
    order: int,
    step: int,
    runtime: Runtime,
) -> list[float]:
    """Accuracies of ``runs`` fresh models trained on the memory, tested on the seen classes."""
    images, global_labels = build_memory(parts)
    labels = _remap(global_labels, seen, dataset.num_classes)
    test_x, test_y = class_subset(dataset, seen).test_tensors()
    ecfg = settings.eval_config(order, step)
    accs = []
    for r in range(ecfg.runs):
        acc, _ = train_and_test(
            images,
            labels,
            test_x,
            test_y,
            num_classes=len(seen),
            strategy=dataset.dsa_strategy,
            cfg=ecfg,
            run=r,
            runtime=runtime,
        )
        accs.append(float(acc))
    return accs


# --- tables --------------------------------------------------------------------------------------


def summarize(entries: Sequence[dict[str, Any]]) -> list[StepSummary]:
    """Mean +- std (population, as the field) per step over every order x model."""
    by_step: dict[int, tuple[int, list[float]]] = {}
    for e in entries:
        seen, accs = by_step.setdefault(int(e["step"]), (int(e["classes_seen"]), []))
        accs.extend(float(a) for a in e["accuracies"])
    return [
        StepSummary(s, seen, float(np.mean(a)), float(np.std(a)), len(a))
        for s, (seen, a) in sorted(by_step.items())
    ]


def _csv(rows: Sequence[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def _write_tables(
    out: Path, settings: ContinualConfig, entries: Sequence[dict[str, Any]]
) -> list[StepSummary]:
    rows: list[list[Any]] = [["order", "step", "classes_seen", "run", "accuracy"]]
    for e in sorted(entries, key=lambda e: (e["order"], e["step"])):
        for r, a in enumerate(e["accuracies"]):
            rows.append([e["order"], e["step"], e["classes_seen"], r, f"{a:.4f}"])
    atomic_write_bytes(out / RESULTS_FILE, _csv(rows))
    summary = summarize(entries)
    atomic_write_bytes(
        out / SUMMARY_CSV,
        _csv(
            [["step", "classes_seen", "mean", "std", "n"]]
            + [[s.step, s.classes_seen, f"{s.mean:.4f}", f"{s.std:.4f}", s.n] for s in summary]
        ),
    )
    lines = [
        f"# Continual learning: {settings.method} on {settings.dataset}",
        "",
        f"{settings.steps} steps, {settings.ipc} images per class, class orders: "
        f"{settings.orders}, models per step and order: {settings.runs}, "
        f"{settings.epochs} epochs"
        + (f", {settings.iterations} iterations" if settings.method in METHODS else ""),
        "",
        "| step | classes seen | accuracy (%) | n |",
        "|-----:|-------------:|:-------------|--:|",
    ]
    lines += [f"| {s.step} | {s.classes_seen} | {s} | {s.n} |" for s in summary]
    if summary:
        last = summary[-1]
        line = f"{last.classes_seen} classes, {last} % (n = {last.n})"
        if last.step == settings.steps:
            lines += ["", f"final step: {line}"]
        else:
            lines += ["", f"final step not reached yet; step {last.step}: {line}"]
    atomic_write_bytes(out / SUMMARY_MD, ("\n".join(lines) + "\n").encode())
    return summary


def read_summary(folder: str | os.PathLike) -> tuple[str, list[StepSummary]]:
    """(label, per-step summary) of a continual run folder; label = its method or name."""
    folder = Path(folder)
    path = folder / SUMMARY_CSV
    if not path.is_file():
        raise RunFolderError(f"missing file {path}; is {folder} a continual run folder?")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    summary = [
        StepSummary(
            int(r["step"]), int(r["classes_seen"]), float(r["mean"]), float(r["std"]), int(r["n"])
        )
        for r in rows
    ]
    label = folder.name
    if (folder / CONFIG_FILE).exists():
        saved = read_json(folder / CONFIG_FILE).get("continual", {})
        label = saved.get("method", label)
        if label == "ddm" and saved.get("base") == "idm":
            label = "ddm on idm"
    return label, summary


def _labelled(folders: Sequence[str | os.PathLike]) -> list[tuple[str, list[StepSummary]]]:
    runs = [read_summary(f) for f in folders]
    labels = [label for label, _ in runs]
    return [
        (f"{label} ({Path(f).name})" if labels.count(label) > 1 else label, summary)
        for (label, summary), f in zip(runs, folders, strict=True)
    ]


def combined_table(folders: Sequence[str | os.PathLike]) -> str:
    """Markdown table: one row per number of classes seen, one column per run folder."""
    runs = _labelled(folders)
    seen = sorted({s.classes_seen for _, summary in runs for s in summary})
    lines = [
        "| classes seen | " + " | ".join(label for label, _ in runs) + " |",
        "|---:|" + "---|" * len(runs),
    ]
    for n in seen:
        cells = []
        for _, summary in runs:
            hit = [s for s in summary if s.classes_seen == n]
            cells.append(str(hit[0]) if hit else "")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_runs(folders: Sequence[str | os.PathLike], path: str | os.PathLike) -> None:
    """PNG of accuracy vs classes seen, one line with a +- std band per run folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _labelled(folders)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    try:
        for label, summary in runs:
            x = np.array([s.classes_seen for s in summary])
            mean = np.array([s.mean for s in summary])
            std = np.array([s.std for s in summary])
            ax.plot(x, mean, marker="o", label=label)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_xlabel("classes seen")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("class-incremental learning")
        ax.grid(alpha=0.3)
        if runs:
            ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
