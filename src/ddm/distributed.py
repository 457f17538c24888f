"""Running one job over several processes launched by torchrun (``torchrun -m ddm ...``).

Everything the rest of the package needs to know about the other processes is asked here:
this process's rank, the world size, its share of the classes (a contiguous block) or of a
list of jobs (round-robin), and a few collective helpers. In one process (no ``WORLD_SIZE``
above 1 in the environment) every helper is a no-op or the identity, so the single-process
path never touches ``torch.distributed``.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``init`` opens the process group
from them (gloo on CPU, nccl on CUDA, one GPU per process: ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from .runtime import resolve_device as _resolve_single

__all__ = [
    "requested_world_size",
    "resolve_device",
    "init",
    "shutdown",
    "active",
    "rank",
    "world_size",
    "is_main",
    "shard",
    "shard_counts",
    "round_robin",
    "all_reduce_sum",
    "broadcast_",
    "gather_rows",
    "all_gather_object",
    "on_main",
    "barrier",
    "echo",
]

T = TypeVar("T")


def requested_world_size() -> int:
    """The number of processes torchrun started (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(name: str) -> torch.device:
    """``--device`` for this process: under torchrun, ``auto``/``cuda`` mean ``cuda:LOCAL_RANK``.

    An explicit ``cuda:N`` is refused with several processes (they would share one GPU).
    """
    if requested_world_size() <= 1:
        return _resolve_single(name)
    device = _resolve_single(name)
    if device.type != "cuda":
        return device
    if name not in ("auto", "cuda"):
        raise ValueError(
            f"--device {name} names one GPU, but torchrun started {requested_world_size()} "
            "processes; use --device cuda (each process takes cuda:LOCAL_RANK)"
        )
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def init(device: torch.device) -> None:
    """Open the process group when torchrun started several processes (idempotent).

    Backend: nccl for a CUDA device, gloo otherwise.
    """
    if requested_world_size() <= 1 or active():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    """Close the process group if this process opened one."""
    if active():
        tdist.destroy_process_group()


def active() -> bool:
    """Whether a process group with more than one process is open."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    return tdist.get_rank() if active() else 0


def world_size() -> int:
    return tdist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


# --- who does what ----------------------------------------------------------------------------


def shard_counts(n: int, world: int | None = None) -> list[int]:
    """How many of ``n`` items each rank holds in contiguous blocks (the first ranks one more)."""
    world = world_size() if world is None else world
    return [n // world + (1 if r < n % world else 0) for r in range(world)]


def shard(n: int, world: int | None = None, of_rank: int | None = None) -> range:
    """This rank's contiguous block of ``range(n)`` (e.g. its classes); all of it in one process."""
    counts = shard_counts(n, world)
    r = rank() if of_rank is None else of_rank
    start = sum(counts[:r])
    return range(start, start + counts[r])


def round_robin(jobs: int | Sequence[T]) -> Sequence[T] | range:
    """This rank's share of independent jobs (``jobs`` of them, or these): the ones at
    positions ``rank, rank + world, ...``."""
    items = range(jobs) if isinstance(jobs, int) else jobs
    return items[rank() :: world_size()]


# --- collectives (identity in one process) ----------------------------------------------------


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all ranks (in place, also returned)."""
    if active():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def broadcast_(tensors: Sequence[torch.Tensor], src: int) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s (in place; exact, a copy).

    Every rank passes tensors of the same shapes, dtypes and order; they travel as one flat
    buffer per dtype.
    """
    if not active():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        tdist.broadcast(flat, src=src)
        with torch.no_grad():
            for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
                t.copy_(part.view_as(t))


def gather_rows(part: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; rank r holds ``counts[r]`` of them.

    Exact (a copy, not a sum); every rank receives the whole tensor.
    """
    if not active():
        return part
    width = max(counts)
    padded = part.new_zeros((width, *part.shape[1:]))
    padded[: len(part)] = part
    pieces = [torch.empty_like(padded) for _ in counts]
    tdist.all_gather(pieces, padded.contiguous())
    return torch.cat([p[:k] for p, k in zip(pieces, counts, strict=True)])


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result or raises its exception.

    Used for file system work (preparing the run folder, writing outputs), so that an error
    there stops every process with the same message instead of leaving the others waiting.
    """
    if not active():
        return fn(*args, **kwargs)
    outcome: list[Any] = [None]
    if is_main():
        try:
            outcome[0] = ("ok", fn(*args, **kwargs))
        except Exception as exc:  # shared with the other ranks, then raised everywhere
            outcome[0] = ("error", exc)
    tdist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def barrier() -> None:
    if active():
        tdist.barrier()


def echo(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only."""
    if is_main():
        print(*args, **kwargs)
