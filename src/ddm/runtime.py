"""Devices, seeds and generators shared by every part of the toolkit.

All randomness flows from explicit ``torch.Generator`` objects seeded by ``seed_for`` with a
tuple of integer keys (run seed, stream, iteration...). Streams keep purposes apart, so
adding a draw to one never shifts another; the global RNG is only used, inside
``fork_rng``, where PyTorch's default layer initialisation needs it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import PRECISIONS

__all__ = [
    "Runtime",
    "seed_for",
    "generator",
    "resolve_device",
    "tune_allocator",
    "Stream",
    "PRECISIONS",
    "bf16_fast",
    "auto_precision_verdict",
    "resolve_precision",
    "autocast",
]


class Stream:
    """Generator stream ids (the second key of ``seed_for``)."""

    INIT = 0  # condensation: initial images (= the random-subset baseline's draw)
    ITER = 1  # condensation: real batch and DSA draw of (iteration, class)
    NET = 2  # condensation: network initialisation (per iteration for DM, per queue model for IDM)
    QUEUE = 3  # IDM: which queue model matches an iteration
    QUEUE_TRAIN = 4  # IDM: which queue models are trained, and their real batches
    POOL = 30  # NCFM: which pool network (and interpolation coefficient) an iteration uses
    POOL_NET = 31  # pool training: a network's initialisation
    POOL_TRAIN = 32  # pool training: batches, augmentation and CutMix of (network, epoch)
    CALIB = 33  # NCFM: the augmentation of (iteration, class)'s cross-entropy step
    SAMPLER = 34  # NCFM: the frequency sampler's initialisation
    EVAL_MODEL = 10
    EVAL_TRAIN = 11
    EVAL_MIX = 12  # evaluation recipes with CutMix: whether, where and how much to mix
    HERDING_MODEL = 21
    HERDING_TRAIN = 22
    TEACHER_MODEL = 23
    TEACHER_TRAIN = 24


def seed_for(*keys: int) -> int:
    """A well-mixed 63-bit seed derived from integer keys."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by ``seed_for(*keys)``."""
    return torch.Generator().manual_seed(seed_for(*keys))


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is available; use cpu")
    return device


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which bf16 products are emulated, not native
_ISA_CAPS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next(ln for ln in f if ln.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


def _onednn_bf16_query() -> bool | None:
    """oneDNN's own answer (None where this torch lacks the query). On x86 it is true on every
    AVX-512 CPU, including those without bf16 units, where oneDNN emulates bf16."""
    query = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if query is None:
        return None
    try:
        return bool(query())
    except (RuntimeError, AttributeError):
        return None


def _x86_bf16_units() -> bool:
    """avx512_bf16 or AMX on this x86 CPU (torch's cpuinfo query; /proc/cpuinfo else)."""
    queries = [
        getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if all(q is not None for q in queries):
        return any(bool(q()) for q in queries)
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def _onednn_isa_capped() -> bool:
    """Whether ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA) keeps oneDNN below the
    bf16 instructions, so that bf16 is emulated even on a CPU that has them."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return cap.strip().upper() in _ISA_CAPS_WITHOUT_BF16


def _cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 products natively, as oneDNN will run them.

    oneDNN's query alone is not enough: it says yes on every AVX-512 CPU (Skylake-SP, Cascade
    Lake, Ice Lake), where bf16 is emulated; measured with oneDNN capped at AVX512_CORE_VNNI on
    an avx512_bf16 CPU, a bf16 condensation step took 2.0-2.3x its float32 time (AVX2: 23x). So
    on x86 it also takes the units themselves (avx512_bf16 or AMX) and oneDNN not capped below
    them; on other CPUs (ARM) oneDNN's query, which there checks the bf16 extension.
    """
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False  # bf16 convolutions would take ATen's slow path
    onednn = _onednn_bf16_query()
    if onednn is False:
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86"):
        return _x86_bf16_units() and not _onednn_isa_capped()
    return bool(onednn)


# How much faster than float32 bf16 must run the probe (``_cpu_bf16_speedup``) for ``auto`` to
# pick it. Measured (ConvNet, CIFAR, 2 threads): a CPU whose bf16 matmul runs 2.4-4x float32
# ran whole condensation and training steps 1.6-1.9x faster in bf16; a KVM guest
# of an Emerald Rapids CPU that shows avx512_bf16 but no AMX ran the probe 1.6-1.8x *slower*
# (speed-up 0.56-0.61), a DM step 1.12x and a training epoch 1.14x slower (docs/performance.md,
# 'Precision'). The margin keeps float32 where the two are about level, which also keeps
# the choice stable from one process to the next.
BF16_MIN_SPEEDUP = 1.25


@functools.cache
def _cpu_bf16_speedup(threads: int) -> float:
    """float32 time / bf16 autocast time of a ConvNet block's convolution on this CPU (16 x
    128 x 16 x 16 maps, 128 3x3 filters: the layer that dominates a CIFAR ConvNet), with
    ``threads`` threads; the best of 5 interleaved runs each after a warm-up, about 0.1-0.3 s
    once per process and thread count. CPU flags alone cannot say this: a virtual machine may
    show avx512_bf16 and hide AMX, and there bf16 runs slower than float32."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 128, 16, 16, generator=gen)
    w = torch.randn(128, 128, 3, 3, generator=gen) / 34.0

    def run(precision: str) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            F.conv2d(x, w, padding=1)
        return time.perf_counter() - start

    best = {"fp32": math.inf, "bf16": math.inf}
    with torch.no_grad():
        run("fp32"), run("bf16")  # oneDNN builds its kernels on the first call
        for _ in range(5):
            for precision in best:
                best[precision] = min(best[precision], run(precision))
    return best["fp32"] / max(best["bf16"], 1e-9)


def _cpu_bf16_faster() -> bool:
    """Whether bf16 measured at least ``BF16_MIN_SPEEDUP`` times faster than float32 here,
    with torch's current thread count (``_cpu_bf16_speedup``)."""
    return _cpu_bf16_speedup(torch.get_num_threads()) >= BF16_MIN_SPEEDUP


def auto_precision_verdict() -> str:
    """What ``auto`` sees on this CPU, in words: the bf16 units, the probe's speed-up, the
    choice (benchmarks print it beside their timings)."""
    if not _cpu_has_bf16_units():
        return "this CPU lacks bf16 units; precision auto -> fp32"
    speedup = _cpu_bf16_speedup(torch.get_num_threads())  # cached: the same as auto's
    choice = "bf16" if _cpu_bf16_faster() else "fp32"
    return (
        f"this CPU has bf16 units, the probe ran bf16 {speedup:.2f}x as fast as float32 "
        f"(auto needs {BF16_MIN_SPEEDUP}x); precision auto -> {choice}"
    )


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 autocast is fast on ``device``: a CUDA GPU with bf16 tensor cores (compute
    capability 8.0 on, Ampere; ROCm GPUs), or a CPU with bf16 dot-product units that oneDNN
    uses (``_cpu_has_bf16_units``) *and* on which a short probe measured bf16 faster than
    float32 (``_cpu_bf16_faster``). Elsewhere bf16 is emulated, several times slower.

    ``torch.cuda.is_bf16_supported()`` is not the test: by default it also says yes on V100
    and T4, where bf16 runs emulated (its ``including_emulation``).
    """
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:
            return True
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).major >= 8
    if device.type == "cpu":
        return _cpu_has_bf16_units() and _cpu_bf16_faster()
    return False


# Smallest image side at which ``auto`` picks bf16: the smallest measured. On a CPU with
# avx512_bf16 (ConvNet, benchmarks/precision_sizes.py, 2 threads), bf16 / float32 time of a
# condensation step and of a training step: 8x8 0.62 / 0.60, 16x16 0.62 / 0.62, 28x28
# 0.54 / 0.63, 32x32 0.54 / 0.64, 64x64 0.36 / 0.37 (one thread: 0.61 / 0.74 at 8x8). Before
# the pooling's bf16 backward was formed directly (ddm.models.AvgPool2x2) 8x8 gained nothing
# and the floor was 16.
BF16_MIN_IMAGE_SIZE = 8


def resolve_precision(precision: str, device: torch.device, image_size: int | None = None) -> str:
    """'auto' -> 'bf16' where ``bf16_fast(device)`` and the images (side ``image_size``, when
    given) are at least ``BF16_MIN_IMAGE_SIZE`` pixels across, else 'fp32'; 'fp32'/'bf16'
    unchanged."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision == "auto":
        large = image_size is None or image_size >= BF16_MIN_IMAGE_SIZE
        return "bf16" if large and bf16_fast(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The network's forward context for a resolved precision: bf16 autocast or nothing.

    Under bf16, convolutions and matmuls run in bf16 (float32 accumulation inside the
    kernels); callers keep statistics and losses in float32.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass(frozen=True)
class Runtime:
    """Where and how a job computes: device, precision, threads, rank. Resolved once, at the
    entry point (``Runtime.resolve``), and passed down; nothing below it sees ``auto``.

    ``automatic`` says the precision was chosen by ``auto`` rather than asked for: auto keeps
    images under ``BF16_MIN_IMAGE_SIZE`` pixels in float32 (``for_images``), and a resumed
    condensation keeps the precision the run chose.
    """

    device: torch.device
    precision: str = "fp32"  # resolved: fp32 | bf16
    # torch's intra-op threads when resolved (auto's bf16 probe ran with them)
    threads: int = field(default_factory=torch.get_num_threads)
    rank: int = 0
    world_size: int = 1
    automatic: bool = False

    @classmethod
    def resolve(
        cls,
        device: str = "auto",
        precision: str = "auto",
        *,
        image_size: int | None = None,
        threads: int | None = None,
    ) -> Runtime:
        """Resolve ``--device`` and ``--precision`` (``auto`` or a name) for this process.

        Under torchrun ``auto``/``cuda`` mean ``cuda:LOCAL_RANK`` and the process group is
        opened here; auto's precision is the first process's choice on every process (its
        probe is timed per process). ``image_size``, when known, applies auto's image-size
        floor at once (``for_images``); ``threads`` sets torch's thread count first.
        """
        from . import distributed as dist

        if threads is not None:
            torch.set_num_threads(threads)
        dev = dist.resolve_device(device)
        dist.init(dev)
        resolved = cls(dev, "fp32", torch.get_num_threads(), dist.rank(), dist.world_size())
        resolved = resolved.with_precision(precision)
        return resolved if image_size is None else resolved.for_images(image_size)

    def with_precision(self, precision: str) -> Runtime:
        """This runtime computing in ``precision`` (auto | fp32 | bf16), resolved on its device;
        under torchrun auto takes the first process's choice (every process calls this)."""
        from . import distributed as dist

        chosen = resolve_precision(precision, self.device)
        if precision == "auto":
            chosen = dist.all_gather_object(chosen)[0]
        return dataclasses.replace(self, precision=chosen, automatic=precision == "auto")

    def for_images(self, image_size: int) -> Runtime:
        """This runtime for images ``image_size`` pixels across: auto's bf16 stays float32
        below ``BF16_MIN_IMAGE_SIZE`` (``resolve_precision``); an asked-for precision stays."""
        if self.automatic and self.precision == "bf16" and image_size < BF16_MIN_IMAGE_SIZE:
            return dataclasses.replace(self, precision="fp32")
        return self

    def autocast(self) -> torch.autocast:
        """The network's forward context: bf16 autocast under bf16, else nothing (reusable)."""
        return autocast(self.precision, self.device)


_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """Keep glibc from returning large buffers to the system after every use (CPU speed).

    By default glibc serves every buffer above its (dynamic) mmap threshold with a fresh
    mmap and unmaps it on free, so each large activation of a forward pass is page-faulted
    in again: measured here, a ConvNet forward of 2560 CIFAR images took 6.4 s instead of
    3.3 s. Raising the mmap and trim thresholds (as ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` would) keeps freed memory for reuse. Idempotent; a no-op off
    glibc or when ``DDM_TUNE_MALLOC=0``. Returns whether the thresholds were set.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    import ctypes
    import os
    import sys

    if os.environ.get("DDM_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        limit = ctypes.c_int(2**31 - 1)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = (
            libc.mallopt(m_mmap_threshold, limit) == 1
            and libc.mallopt(m_trim_threshold, limit) == 1
        )
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    return ok
