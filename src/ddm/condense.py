"""The condensation loop shared by DM, DDM (and the IDM base).

One iteration (docs/method.md, 'DM' and 'DDM, paper form'): take a randomly initialised,
frozen network; for every class draw a real batch and one Siamese DSA draw shared by the real
batch and the synthetic images of that class; compare them through the objective (a weighted
sum of terms, ``ddm.objective``); take one SGD step on the pixels.

The real side needs no gradient and enters every term only through batch means (mean
embedding, mean feature map, mean Gram matrix), so it is pushed through the network in
chunks under ``torch.no_grad`` and reduced to those statistics at once. With instance norm
every sample is independent and chunks may mix classes; with batch norm all classes go
through together, as in the reference.

Randomness: every class of every iteration draws its real batch and DSA parameters from its
own generator seeded by (seed, iteration, class), and the network of iteration t is initialised
from (seed, t). A checkpoint therefore needs only the pixels, the momentum buffer and the
iteration, and a resumed run ends exactly where an uninterrupted one would.

Several processes (torchrun, ``ddm.distributed``): each rank holds, matches and steps only its
contiguous block of classes; the network of an iteration is the same on every rank from its
seed and the per-class draws do not depend on the other classes, so N ranks produce the set
one process produces. The logged losses are summed over ranks; rank 0 gathers every shard
into the usual checkpoint (the format of a one-process run, so a run resumes on any number of
ranks) and writes the outputs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from . import distributed as dist
from .augment import apply
from .bases import init_partitioned, make_base
from .config import ADJUSTABLE_ON_RESUME, CondenseConfig, config_from_dict
from .data import Dataset, load_dataset
from .io import (
    META_FILE,
    SYNTHETIC_FILE,
    RunFolderError,
    RunLock,
    SyntheticSet,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    save_grid,
    save_synthetic,
    save_tensors,
)
from .models import uses_batchnorm
from .objective import (
    TERMS,
    RealStats,
    Weights,
    input_conv,
    objective,
    real_statistics,
    weights_for,
)
from .runtime import Runtime, Stream, generator, tune_allocator

__all__ = [
    "NonFiniteLossError",
    "Run",
    "condense",
    "resume_config",
    "check_run_folder",
    "open_run_folder",
    "prepare_run_folder",
    "TERMS",
    "ADJUSTABLE_ON_RESUME",
]

# The objective's names as they were before it became ``ddm.objective`` (old imports keep working).
_Weights = Weights
_RealStats = RealStats
_input_conv = input_conv

CHECKPOINT_FILE = "checkpoint.safetensors"
CONFIG_FILE = "config.json"
LOG_FILE = "log.csv"
GRID_FILE = "grid.png"
RUN_FILES = (
    SYNTHETIC_FILE,
    META_FILE,
    CONFIG_FILE,
    LOG_FILE,
    GRID_FILE,
    CHECKPOINT_FILE,
    "metrics.json",
    "curves.png",
    "grid_expanded.png",
)
# Settings a resumed run may change (they do not change what an iteration computes).
RESUMABLE_CHANGES = {
    "iterations",
    "checkpoint_every",
    "device",
    "real_chunk",
    "data_root",
    "compile",
}


class NonFiniteLossError(RuntimeError):
    """The objective became NaN or infinite; the run stopped at its last good checkpoint."""


# --- the time estimate ----------------------------------------------------------------------------

# A run whose remaining time, measured over its first iterations, is above this says so once
# (with a shorter setting) and goes on: nothing waits for an answer.
ESTIMATE_ABOVE_S = 30 * 60
# iterations of a call timed before the estimate; the first is left out (allocations, and
# --compile's compilation, make it slower than the rest)
ESTIMATE_AFTER = 4


def _duration(seconds: float) -> str:
    """``90`` -> ``'2 min'``, ``5400`` -> ``'1.5 hours'``, ``200000`` -> ``'2.3 days'``."""
    if seconds < 90 * 60:
        return f"{max(1, round(seconds / 60))} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def estimate_message(
    sec_per_it: float,
    done: int,
    total: int,
    *,
    extra_s: float = 0.0,
    extra_what: str = "evaluation",
    limit_s: float = ESTIMATE_ABOVE_S,
    preset: str | None = None,
) -> str | None:
    """The note a long run prints once, or None when it ends within ``limit_s``.

    ``sec_per_it`` is measured, ``done`` of ``total`` iterations are finished; ``extra_s``
    is the time of work that follows (``extra_what``). The note gives the time left and a
    shorter run: ``preset`` (a CPU-sized preset of the same method, when one exists) and
    the ``--iterations`` that end within ``limit_s`` (rounded down to hundreds where that
    still leaves iterations to run).
    """
    if sec_per_it <= 0 or done >= total:
        return None
    left = total - done
    seconds = sec_per_it * left + extra_s
    if seconds <= limit_s:
        return None
    extra = ""
    if extra_s > 0:
        extra = f" plus {_duration(extra_s)} of {extra_what} (about {_duration(seconds)} in all)"
    fit = done + (max(1, int((limit_s - extra_s) // sec_per_it)) if limit_s > extra_s else 1)
    if fit // 100 * 100 > done:  # a round number where one fits
        fit = fit // 100 * 100
    shorter = f"--iterations {fit} (about {_duration(limit_s)})"
    if preset is not None:
        shorter = f"--preset {preset}, or {shorter}"
    return (
        f"at {sec_per_it:.2f} s per iteration, the {left:,} iterations left take about "
        f"{_duration(sec_per_it * left)}{extra}. "
        f"For a shorter run: {shorter}. This run goes on."
    )


def cpu_preset_for(cfg: CondenseConfig) -> str | None:
    """The CPU-sized preset (``*-cpu``) with ``cfg``'s dataset, method, form, base and ipc
    and fewer iterations than ``cfg`` (resolved), if one is shipped."""
    from .config import available_presets, load_preset

    want = (cfg.dataset, cfg.method, cfg.form, cfg.base, cfg.ipc)
    for name in available_presets():
        if not name.endswith("-cpu"):
            continue
        settings = load_preset(name)["settings"]
        got = CondenseConfig(**settings).resolved()
        if (got.dataset, got.method, got.form, got.base, got.ipc) == want and (
            got.iterations < cfg.iterations
        ):
            return name
    return None


# --- small utilities -----------------------------------------------------------------------------


# --- run folder -----------------------------------------------------------------------------------


def _run_files(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def check_run_folder(out: Path, *, resume: bool, overwrite: bool, locked: bool = False) -> None:
    """Refuse, before anything is written, an output folder this run must not write into.

    A folder holding a run (meta.json or a checkpoint) or any other file a run writes
    (config.json, log.csv, grid.png, ...) is replaced only with ``overwrite``, and continued
    only with ``resume`` where it holds a checkpoint; a folder another live process writes
    (its lock file) is refused either way (``locked``: this process holds it). Creates
    nothing.
    """
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; choose one")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file; name a folder")
    if out.is_dir() and not locked:
        RunLock(out).refuse_if_held()
    has_run = out.exists() and any((out / f).exists() for f in (META_FILE, CHECKPOINT_FILE))
    if resume and not (out / CHECKPOINT_FILE).exists():
        raise RunFolderError(f"--resume: no checkpoint in {out}; start a new run without --resume")
    if has_run and not resume and not overwrite:
        raise RunFolderError(
            f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    found = _run_files(out) if out.is_dir() else []
    if found and not resume and not overwrite:
        raise RunFolderError(
            f"{out} holds {', '.join(found)} (no complete run); pass --overwrite to replace "
            "them, or name another folder"
        )
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"cannot write to output folder {out}: {existing} is not writable")


@dataclasses.dataclass
class OpenedRunFolder:
    """A run folder this process writes: its lock, and what this call created.

    ``close(failed=True)`` before ``keep()`` removes what the call created (the run's files,
    then the folders it made, if empty): a failure before the first checkpoint leaves no
    empty or half-written run folder behind.
    """

    path: Path
    lock: RunLock
    created: list[Path]  # folders made by this call, outermost first
    kept: bool = False

    def keep(self) -> None:
        self.kept = True

    def close(self, failed: bool = False) -> None:
        if self.lock._pid != os.getpid():
            return  # another rank's copy (torchrun): rank 0 closes
        if failed and not self.kept:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
        self.lock.release()
        if failed and not self.kept:
            for folder in reversed(self.created):
                try:
                    folder.rmdir()  # only if empty: nothing of anyone else's goes
                except OSError:
                    break


def open_run_folder(out: Path, *, resume: bool, overwrite: bool) -> OpenedRunFolder:
    """Create ``out`` (as far as missing), take its lock, check it again under the lock
    (``check_run_folder``) and clear an old run's files with ``overwrite``."""
    check_run_folder(out, resume=resume, overwrite=overwrite)
    created = [p for p in (*reversed(out.parents), out) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                break
        raise RunFolderError(f"cannot write to output folder {out}: {exc.strerror or exc}") from exc
    opened = OpenedRunFolder(out, RunLock(out), created, kept=resume)
    try:
        opened.lock.acquire()
        check_run_folder(out, resume=resume, overwrite=overwrite, locked=True)  # as it is now
    except BaseException:
        opened.close(failed=True)
        raise
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    return opened


def prepare_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Create/validate the output folder: refuse to clobber a run unless asked to (no lock
    is kept; ``open_run_folder`` holds one while writing)."""
    open_run_folder(out, resume=resume, overwrite=overwrite).close()


# --- initialisation -----------------------------------------------------------------------------


def initial_images(
    dataset: Dataset, ipc: int, init: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """ipc random real images per class (or N(0,1) noise), class-major order."""
    counts = dataset.train.class_counts()
    smallest = int(counts.min())
    if ipc > smallest:
        worst = int(counts.argmin())
        raise ValueError(
            f"ipc {ipc} is larger than the smallest class of {dataset.name} "
            f"(class {worst} '{dataset.classes[worst]}' has {smallest} training images); "
            f"use --ipc {smallest} or less"
        )
    images = []
    for c in range(dataset.num_classes):
        if init == "real":
            images.append(dataset.class_batch(c, ipc, generator))
        else:
            shape = (ipc, dataset.channels, dataset.image_size, dataset.image_size)
            images.append(torch.randn(shape, generator=generator))
    labels = torch.arange(dataset.num_classes).repeat_interleave(ipc)
    return torch.cat(images), labels


# --- compiled entry points -----------------------------------------------------------------------


class CompiledEntryPoints:
    """``net`` with the embedding that matching calls compiled (``--compile``).

    ``torch.compile(net)`` compiles ``forward`` alone, and matching never calls it: it reads
    ``embed`` (DM, IDM), so that is what is compiled here, once per input shape and grad mode
    (``dynamic=False``: the real chunks and the synthetic batch keep their shapes from one
    iteration to the next). The network object is re-initialised in place every iteration, so
    nothing recompiles after the first. DDM's entry points with style maps
    (``embed_and_maps``, ``embed_maps_and_moments``) stay eager: compiled, a released-DDM
    iteration was 1.04-1.08x slower (the maps it keeps are graph outputs; docs/performance.md).
    Everything else (``features``, ``classifier``, ...) is the network's own.
    """

    ENTRY_POINTS = ("embed",)

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        for name in self.ENTRY_POINTS:
            if hasattr(net, name):
                setattr(self, name, torch.compile(getattr(net, name), dynamic=False))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.net, name)


# --- the run ------------------------------------------------------------------------------------


class Run:
    """State of one condensation run: pixels, optimiser, base, iteration, outputs.

    ``Run(cfg.resolved(), dataset, None)`` builds a run without a folder; ``step()`` takes
    one iteration and returns (loss, per-term values) (benchmarks and probes use it).
    """

    def __init__(
        self,
        cfg: CondenseConfig,
        dataset: Dataset,
        out: Path | None,
        runtime: Runtime | None = None,  # None: resolved from cfg (a run built on its own)
    ) -> None:
        self.dataset, self.out = dataset, out
        if runtime is None:
            runtime = Runtime.resolve(cfg.device, cfg.precision)
        self.runtime = runtime = runtime.for_images(dataset.image_size)
        self.device = runtime.device
        # the resolved precision (fp32 | bf16) is the run's setting from here on
        self.cfg = cfg = dataclasses.replace(cfg, precision=runtime.precision)
        if dist.world_size() > dataset.num_classes:
            raise ValueError(
                f"{dist.world_size()} processes for {dataset.num_classes} classes: every "
                "process needs at least one class; start fewer processes"
            )
        # this rank's classes (all of them in one process) and their rows of the set
        self.classes = dist.shard(dataset.num_classes)
        self.class_counts = dist.shard_counts(dataset.num_classes)
        self.base = make_base(cfg, dataset, self.device)
        self.per_class = cfg.ipc * self.base.factor**2  # images matched per class
        self.weights = weights_for(cfg, self.per_class)
        self.strategy = dataset.dsa_strategy if cfg.dsa else "none"
        gen = generator(cfg.seed, Stream.INIT)
        if self.base.factor > 1 and cfg.init == "real":
            images, self.labels = init_partitioned(dataset, cfg.ipc, self.base.factor, gen)
        else:
            images, self.labels = initial_images(dataset, cfg.ipc, cfg.init, gen)
        images = self.base.store(images)  # NCFM optimises pixels in [0, 1]
        rows = slice(self.classes.start * cfg.ipc, self.classes.stop * cfg.ipc)
        self.images = images[rows].to(self.device).requires_grad_(True)  # this shard's rows
        self.optimizer = self.base.optimizer(self.images)
        self.iteration = 0
        self.changes: list[dict[str, Any]] = []  # settings changed on resume (meta.json)
        probe = self.base.probe_network()
        self.batchnorm = uses_batchnorm(probe)
        self.embed_dim = int(getattr(probe, "embed_dim", 0))
        if self.batchnorm and dist.world_size() > 1:
            raise ValueError(
                f"--model {cfg.model} uses batch norm, whose statistics mix all classes in one "
                "forward (as the reference does); class sharding over processes would change "
                "the result. Condense it in one process, or use an instance-norm model"
            )
        self.chunk = 0 if self.batchnorm else (cfg.real_chunk or _auto_chunk(self.device))
        self.autocast = runtime.autocast()
        # bf16: the real batch's Gram products too (float32 accumulation and mean)
        self.gram_dtype = torch.bfloat16 if cfg.precision == "bf16" else None
        self._compiled: dict[int, nn.Module] = {}

    def _forward_net(self, net: nn.Module) -> nn.Module:
        if self.cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if not self.cfg.compile:
            return net
        if id(net) not in self._compiled:
            self._compiled[id(net)] = CompiledEntryPoints(net)
        return self._compiled[id(net)]

    # one iteration -------------------------------------------------------------------------------

    def step(self) -> tuple[float, dict[str, float]]:
        cfg, it, n_classes = self.cfg, self.iteration, self.dataset.num_classes
        net = self._forward_net(self.base.network(it))
        self.base.begin_iteration(self.images)
        size = (self.dataset.image_size, self.dataset.image_size)
        first = self.classes.start
        batches, params, freqs = [], [], []  # this rank's classes, each from its own generator
        for c in self.classes:
            gen = generator(cfg.seed, Stream.ITER, it, c)
            batches.append(self.dataset.class_batch(c, cfg.batch_real, gen))
            params.append(self.base.augmentation(self.strategy, self.per_class, size, gen))
            freqs.append(self.base.frequencies(self.embed_dim, gen))
        real = real_statistics(
            net,
            batches,
            params,
            self.weights,
            self.chunk,
            self.device,
            self.autocast,
            cfg.channels_last,
            self.gram_dtype,
            freqs,
        )
        ce = self.base.ce_weight()
        if self.base.per_class_steps:  # IDM: one image step per class, for every class
            groups = [[c] for c in range(n_classes)]
        else:  # DM: all (of this rank's) classes, one step
            groups = [list(self.classes)]
        total, terms, bad = 0.0, dict.fromkeys(TERMS, 0.0), 0.0
        for group in groups:
            self.optimizer.zero_grad(set_to_none=True)
            if group[0] not in self.classes:
                # another rank's class (IDM): its step moves this shard's pixels by their
                # momentum only, exactly as the shared momentum does in one process
                self.images.grad = torch.zeros_like(self.images)
                self.optimizer.step()
                continue
            lo, hi = (group[0] - first) * cfg.ipc, (group[-1] + 1 - first) * cfg.ipc
            labels = self.labels[lo + first * cfg.ipc : hi + first * cfg.ipc]
            syn, _ = self.base.expand(self.images[lo:hi], labels)
            loss, parts = objective(
                net,
                [real[c - first] for c in group],
                syn,
                [self.per_class] * len(group),
                [params[c - first] for c in group],
                self.weights,
                self.autocast,
                cfg.channels_last,
                ce_weight=ce,
                classes=group,
            )
            value = float(loss.detach())
            if not math.isfinite(value):  # stop before the bad step; every rank stops below
                total, bad = value, 1.0
                break
            loss.backward()
            self.optimizer.step()
            self.base.after_match_step()
            total += value
            for name, v in parts.items():
                terms[name] += v
        calibration = self.base.calibration() if not bad else None
        if calibration is not None:  # NCFM: one cross-entropy step per class after matching
            value, bad = self._calibration_steps(*calibration)
            terms["ce"] = value
        # the log's sums over all classes, and whether any rank met a NaN/inf
        summed = dist.all_reduce_sum(
            torch.tensor([total, *terms.values(), bad], dtype=torch.float64, device=self.device)
        )
        total, values = float(summed[0]), summed[1:-1].tolist()
        if summed[-1] > 0:
            raise NonFiniteLossError(f"loss became {total} at iteration {it + 1}")
        terms = dict(zip(terms, values, strict=True))
        self.base.end_iteration(total)
        terms["queue_s"] = self.base.after_iteration(it)
        self.iteration += 1
        return total, terms

    def _calibration_steps(self, net: nn.Module, weight: float) -> tuple[float, float]:
        """One step per class on weight x CE(net(A(syn_c)), c), every class in turn (another
        rank's class: a zero-gradient step, as in the match steps). Returns (the summed
        unweighted CE of this rank's classes, 1.0 if one was not finite)."""
        cfg, it = self.cfg, self.iteration
        size = (self.dataset.image_size, self.dataset.image_size)
        first, total = self.classes.start, 0.0
        for c in range(self.dataset.num_classes):
            self.optimizer.zero_grad(set_to_none=True)
            if c not in self.classes:
                self.images.grad = torch.zeros_like(self.images)
                self.optimizer.step()
                continue
            lo, hi = (c - first) * cfg.ipc, (c + 1 - first) * cfg.ipc
            labels = self.labels[c * cfg.ipc : (c + 1) * cfg.ipc]
            syn, _ = self.base.expand(self.images[lo:hi], labels)
            gen = generator(cfg.seed, Stream.CALIB, it, c)
            x = apply(syn, self.base.augmentation(self.strategy, len(syn), size, gen))
            with self.autocast:
                logits = net(x)
            target = torch.full((len(x),), c, dtype=torch.long, device=x.device)
            loss = F.cross_entropy(logits.float(), target)
            value = float(loss.detach())
            if not math.isfinite(value):
                return value, 1.0
            (weight * loss).backward()
            self.optimizer.step()
            total += value
        return total, 0.0

    # checkpoints ------------------------------------------------------------------------------

    def _gather(self, part: torch.Tensor) -> torch.Tensor:
        """The whole set's rows from every rank's shard (collective; ``part`` in one process)."""
        return dist.gather_rows(part, [k * self.cfg.ipc for k in self.class_counts])

    def _rows(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole-set tensor."""
        return full[self.classes.start * self.cfg.ipc : self.classes.stop * self.cfg.ipc]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors, whole set (collective: every rank must call it)."""
        tensors = {"images": self._gather(self.images.detach())}
        for name, value in sorted(self.optimizer.state.get(self.images, {}).items()):
            key = "momentum" if name == "momentum_buffer" else f"optimizer.{name}"
            if not torch.is_tensor(value):
                continue
            # per-pixel state is gathered from every rank; scalars (AdamW's step) agree
            per_pixel = value.shape == self.images.shape
            tensors[key] = self._gather(value) if per_pixel else value.detach().cpu().clone()
        return {**tensors, **self.base.state_tensors()}

    def load_state(
        self, tensors: dict[str, torch.Tensor], iteration: int, meta: dict[str, str]
    ) -> None:
        """Continue from a checkpoint of a run on any number of ranks (it holds the whole set)."""
        with torch.no_grad():
            self.images.copy_(self._rows(tensors["images"]).to(self.device))
        if "momentum" in tensors:
            self.optimizer.state[self.images]["momentum_buffer"] = (
                self._rows(tensors["momentum"]).to(self.device).clone()
            )
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                per_pixel = value.dim() > 0
                value = self._rows(value).to(self.device) if per_pixel else value
                self.optimizer.state[self.images][key.split(".", 1)[1]] = value.clone()
        self.base.load_state(tensors, meta)
        self.iteration = iteration

    def synthetic(self) -> SyntheticSet:
        """The current set, whole (collective: every rank must call it)."""
        d = self.dataset
        meta = {
            "dataset": d.name,
            "classes": list(d.classes),
            "num_classes": d.num_classes,
            "ipc": self.cfg.ipc,
            "method": self.cfg.method,
            "base": self.cfg.base,
            "form": self.cfg.form,
            "image_size": d.image_size,
            "channels": d.channels,
            "mean": list(d.mean),
            "std": list(d.std),
            "seed": self.cfg.seed,
            "iterations": self.iteration,
            "iterations_planned": self.cfg.iterations,
            "expansion_factor": self.base.factor,
            "dsa_strategy": self.strategy,
            "precision": self.cfg.precision,
            "version": __version__,
            **self.base.set_meta(),
        }
        if d.held_out:
            meta["holdout"] = d.held_out
        if self.changes:
            meta["changes"] = self.changes
        images = self.base.unstore(self._gather(self.images.detach()))
        return SyntheticSet(images.cpu().clone(), self.labels.clone(), meta)

    def save(self) -> None:
        """Checkpoint + current set + grid; each file atomic, checkpoint first.

        Every rank gathers; rank 0 writes (an error there stops every rank).
        """
        if self.out is None:
            return
        tensors, syn = self.state_tensors(), self.synthetic()
        dist.on_main(self._write, tensors, syn)

    def _write(self, tensors: dict[str, torch.Tensor], syn: SyntheticSet) -> None:
        meta = {
            "iteration": str(self.iteration),
            "config": json.dumps(self.cfg.to_dict()),
            **({"changes": json.dumps(self.changes)} if self.changes else {}),
            **self.base.state_meta(),
        }
        save_tensors(self.out / CHECKPOINT_FILE, tensors, meta)
        save_synthetic(self.out, syn)
        save_grid(self.out / GRID_FILE, syn.denormalized(), syn.labels)
        try:  # log.csv is line-buffered, so it holds every finished iteration
            from .curves import save_curves

            title = f"{self.out.name}: {self.cfg.method} on {self.dataset.name}"
            save_curves(self.out / LOG_FILE, self.out / "curves.png", title=title)
        except Exception as exc:  # a picture must never stop a run: say so once, go on
            if not getattr(self, "_curves_warned", False):
                self._curves_warned = True
                _notice(f"could not draw curves.png ({exc}); the run goes on without it")


_Run = Run  # the earlier name


def _auto_chunk(device: torch.device) -> int:
    """Real images per no-grad forward: everything at once on a GPU, bounded chunks on CPU."""
    return 0 if device.type == "cuda" else 512


def _saved_precision(saved: dict[str, Any]) -> str:
    """A saved run's precision (runs from before --precision saved a bf16 switch instead)."""
    return saved.get("precision", "bf16" if saved.get("bf16") else "fp32")


def _saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's settings as today's fields: keys of older versions dropped, fields they
    lacked at their defaults (as those versions ran), the method's defaults filled in."""
    known = {f.name for f in dataclasses.fields(CondenseConfig)}
    values = {k: v for k, v in saved.items() if k in known}
    values["precision"] = _saved_precision(saved)
    # runs from before these settings ran the published Gram distance, weights as given
    values.setdefault("correlation", "sum")
    values.setdefault("weights_by_embedding", False)
    try:
        return CondenseConfig(**values).resolved().to_dict()
    except (TypeError, ValueError):
        return {**CondenseConfig().to_dict(), **values}


def read_saved_settings(out: str | os.PathLike) -> dict[str, Any]:
    """The settings a run folder's checkpoint was written with (its header's ``config``)."""
    path = Path(out) / CHECKPOINT_FILE
    if not path.is_file():
        raise RunFolderError(f"--resume: no checkpoint in {out}; start a new run without --resume")
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        return json.loads(header.get("config", "{}"))
    except Exception as exc:  # a corrupt header: one line, whatever the reader raised
        raise RunFolderError(f"{path} is not a readable checkpoint ({exc})") from None


def resume_config(out: str | os.PathLike, given: Mapping[str, Any] | None = None) -> CondenseConfig:
    """The settings to continue the run in ``out`` with: its checkpoint's, with ``given`` (the
    settings a user stated) on top; ``condense(..., resume=True)`` then refuses any of those
    that would change the result (see ``RESUMABLE_CHANGES`` and ``ADJUSTABLE_ON_RESUME``)."""
    known = {f.name for f in dataclasses.fields(CondenseConfig)}
    values = {k: v for k, v in _saved_config(read_saved_settings(out)).items() if k in known}
    return config_from_dict(CondenseConfig, {**values, **(given or {})})


def _check_resumable(
    saved: dict[str, Any], cfg: CondenseConfig, allowed: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Refuse settings that differ from the run's and change the result, except those named
    in ``allowed`` (of ``ADJUSTABLE_ON_RESUME``); returns those changes, one dict each."""
    unknown = sorted(set(allowed) - set(ADJUSTABLE_ON_RESUME))
    if unknown:
        raise ValueError(
            f"--allow-change {', '.join(unknown)}: only {', '.join(ADJUSTABLE_ON_RESUME)} "
            "may change when a run is resumed (the others change what its checkpoint holds)"
        )
    old = _saved_config(saved)
    now = cfg.to_dict()
    changed = [k for k in now if k not in RESUMABLE_CHANGES and old.get(k) != now[k]]
    diffs = [f"{k}: {old.get(k)!r} -> {now[k]!r}" for k in changed if k not in allowed]
    if diffs:
        adjustable = [k for k in changed if k in ADJUSTABLE_ON_RESUME and k not in allowed]
        hint = (
            f"; to go on with {', '.join(adjustable)} changed from the checkpoint on, add "
            f"--allow-change {','.join(adjustable)} (recorded in meta.json)"
            if adjustable and len(adjustable) == len(diffs)
            else ""
        )
        raise RunFolderError(
            "--resume with settings that change the result: "
            + "; ".join(diffs)
            + ". Leave those flags out (--resume takes the run's settings from its checkpoint) "
            "or start a new run" + hint
        )
    return [{"setting": k, "from": old.get(k), "to": now[k]} for k in changed]


def _continue_command(out: Path, cfg: CondenseConfig) -> str:
    """The command that continues a diverged run from its checkpoint at half the learning rate."""
    lr = f"{cfg.lr_img / 2:g}"
    where = shlex.quote(str(out))
    return f"ddm condense --out {where} --resume --lr-img {lr} --allow-change lr_img"


class _Log:
    """Per-iteration CSV log; on resume, rows past the checkpoint are dropped."""

    FIELDS = ("iteration", "loss", *TERMS, "queue_seconds", "seconds")

    def __init__(self, path: Path | None, resume_at: int) -> None:
        self.path = path
        if path is None:
            return
        rows: list[list[str]] = []
        if resume_at > 0 and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
            rows = [r for r in rows if r and int(r[0]) <= resume_at]
        lines = [",".join(self.FIELDS)] + [",".join(r) for r in rows]
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
        self.file = path.open("a", newline="", buffering=1)  # line-buffered: curves read it

    def write(self, iteration: int, loss: float, terms: dict[str, float], seconds: float) -> None:
        if self.path is None:
            return
        values = [
            str(iteration),
            f"{loss:.6g}",
            *(f"{terms[t]:.6g}" for t in TERMS),
            f"{terms.get('queue_s', 0.0):.4f}",
            f"{seconds:.4f}",
        ]
        self.file.write(",".join(values) + "\n")

    def close(self) -> None:
        if self.path is not None:
            self.file.close()


def _progress(total: int, start: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start,
        disable=not enabled,
        unit="it",
        dynamic_ncols=True,
        desc="condense",
    )


def condense(
    config: CondenseConfig,
    out: str | os.PathLike | None = None,
    *,
    dataset: Dataset | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    allow_changes: Collection[str] = (),
    runtime: Runtime | None = None,
) -> SyntheticSet:
    """Condense ``config.dataset`` into ``config.ipc`` images per class.

    With ``out``, writes the run folder (see ``ddm.io``), checkpoints every
    ``checkpoint_every`` iterations and continues a previous run with ``resume`` (its
    settings: ``resume_config(out)``; ``allow_changes`` names settings of
    ``ADJUSTABLE_ON_RESUME`` that may differ from the checkpoint's, recorded in meta.json).
    ``stop_after`` ends this call after that many iterations (the run stays resumable).
    Raises ``NonFiniteLossError`` (with the last good checkpoint kept) if the loss diverges.
    Everything is checked before the folder is created; one process writes a folder at a time.
    ``runtime``: device and precision (default: resolved from ``config``'s; under torchrun auto
    is the first process's choice).
    """
    cfg = config.resolved()
    allow_changes = {name.replace("-", "_") for name in allow_changes}
    if allow_changes and not resume:
        raise ValueError("--allow-change applies to a resumed run; add --resume")
    tune_allocator()
    out_path = Path(out) if out is not None else None
    if out_path is not None:  # refuse early: before the data is read
        dist.on_main(check_run_folder, out_path, resume=resume, overwrite=overwrite)
    if runtime is None:  # under torchrun this opens the process group
        runtime = Runtime.resolve(cfg.device, cfg.precision)
    if dataset is None:
        dataset = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    dataset = dataset.holdout(cfg.holdout)  # the held-out images are never drawn
    header: dict[str, str] = {}
    if resume and out_path is not None:
        # first the tensors: a missing or corrupt checkpoint gets load_tensors' clear error
        tensors = load_tensors(out_path / CHECKPOINT_FILE)
        from safetensors import safe_open

        with safe_open(str(out_path / CHECKPOINT_FILE), "pt") as f:
            header = f.metadata() or {}
        saved = json.loads(header.get("config", "{}"))
        if runtime.automatic:
            # auto resumes in the precision the run chose: the hardware probe may answer
            # otherwise on another machine or a busy one, and that would refuse the resume
            runtime = runtime.with_precision(_saved_precision(saved))
    run = _Run(cfg, dataset, out_path, runtime)  # checks model, depth, ipc, ... before any file
    if resume and out_path is not None:
        new = _check_resumable(saved, run.cfg, allow_changes)
        run.load_state(tensors, int(header.get("iteration", 0)), header)
        run.changes = [
            *json.loads(header.get("changes", "[]")),
            *({"iteration": run.iteration, **c} for c in new),
        ]
    folder = None
    if out_path is not None:
        folder = dist.on_main(open_run_folder, out_path, resume=resume, overwrite=overwrite)
    try:
        synthetic = _condense_loop(run, cfg, out_path, folder, progress, stop_after)
    except BaseException:
        if folder is not None:
            folder.close(failed=True)
        raise
    if folder is not None:
        folder.close()
    return synthetic


def _condense_loop(
    run: _Run,
    cfg: CondenseConfig,
    out_path: Path | None,
    folder: OpenedRunFolder | None,
    progress: bool,
    stop_after: int | None,
) -> SyntheticSet:
    """The iterations of ``condense`` (its folder open), checkpoints and the final save."""
    if out_path is not None:
        settings = {**run.cfg.to_dict(), "version": __version__}
        dist.on_main(atomic_write_json, out_path / CONFIG_FILE, settings)
        if run.iteration == 0:
            run.save()  # iteration 0: the initial images are the first good checkpoint
    if folder is not None:
        folder.keep()  # a checkpoint exists from here on: the folder holds a run
    if cfg.w_icd > 0 and run.weights.icd_k <= 0:
        _notice("ipc = 1: the intra-class diversity term has no neighbours and contributes 0")
    if (cfg.w_cd > 0 or cfg.w_sd > 0) and run.per_class < 2:
        _notice("ipc = 1: the spread terms (L_CD, L_SD) have no spread to match and contribute 0")

    log = _Log(out_path / LOG_FILE if out_path and dist.is_main() else None, run.iteration)
    bar = _progress(cfg.iterations, run.iteration, progress and dist.is_main())
    done_here = 0
    last_saved = run.iteration
    timed: list[float] = []  # this call's first iterations, for the time estimate
    try:
        while run.iteration < cfg.iterations and (stop_after is None or done_here < stop_after):
            t0 = time.perf_counter()
            try:
                loss, terms = run.step()
            except NonFiniteLossError as exc:
                if out_path is None:
                    raise NonFiniteLossError(
                        f"{exc}. Lower lr_img or the term weights and run again"
                    ) from None
                raise NonFiniteLossError(
                    f"{exc}; the last good checkpoint (iteration {last_saved}) is in "
                    f"{out_path}. Continue it with a lower image learning rate: "
                    f"`{_continue_command(out_path, run.cfg)}` (term weights likewise, e.g. "
                    "--w-mm W --allow-change w_mm), or start over with a lower --lr-img"
                ) from None
            seconds = time.perf_counter() - t0
            done_here += 1
            if done_here <= ESTIMATE_AFTER:
                timed.append(seconds)
                if done_here == ESTIMATE_AFTER:
                    _estimate(cfg, timed, run.iteration, stop_after, done_here)
            log.write(run.iteration, loss, terms, seconds)
            bar.set_postfix(loss=f"{loss:.4g}", s_it=f"{seconds:.2f}", refresh=False)
            bar.update(1)
            if (
                out_path is not None
                and cfg.checkpoint_every > 0
                and run.iteration % cfg.checkpoint_every == 0
            ):
                run.save()
                last_saved = run.iteration
        if out_path is not None and last_saved != run.iteration:
            run.save()
    finally:
        bar.close()
        log.close()
    return run.synthetic()


def _estimate(
    cfg: CondenseConfig, timed: list[float], done: int, stop_after: int | None, done_here: int
) -> None:
    """Print the time estimate (rank 0, once) when the rest of this call is long."""
    if not dist.is_main():
        return
    sec_per_it = sum(timed[1:]) / max(1, len(timed) - 1)
    total = (
        cfg.iterations if stop_after is None else min(cfg.iterations, done + stop_after - done_here)
    )
    if estimate_message(sec_per_it, done, total, limit_s=ESTIMATE_ABOVE_S) is None:
        return  # the preset look-up only when the note is printed
    preset = cpu_preset_for(cfg)
    _notice(estimate_message(sec_per_it, done, total, limit_s=ESTIMATE_ABOVE_S, preset=preset))


def _notice(message: str) -> None:
    from tqdm.auto import tqdm

    if not dist.is_main():
        return
    tqdm.write(f"note: {message}", file=sys.stderr)
