"""Condensed sets on disk: safetensors + JSON, written atomically, and their image grids.

A run folder holds (documented in docs/guide/condense.md, "The run folder"):

- ``synthetic.safetensors``: ``images`` (float32, N x C x H x W, normalised space; for IDM
  the stored, not expanded, images) and ``labels`` (int64, N); optionally ``soft_labels``
  (float32, N x classes: per-image class scores, the logits a teacher gave; read by
  ``ddm evaluate --labels soft --soft-label-mode S``).
- ``meta.json``: dataset, classes, ipc, method, image size, channels, normalisation mean/std,
  seed, iterations done, package version, expansion factor.
- ``config.json``: the fully resolved settings; ``log.csv``: one row per iteration;
  ``grid.png``; ``metrics.json`` after evaluation; ``checkpoint.*`` for resuming.

Nothing here unpickles: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save

__all__ = [
    "SYNTHETIC_FILE",
    "META_FILE",
    "SyntheticSet",
    "RunFolderError",
    "RunLock",
    "LOCK_FILE",
    "new_file_mode",
    "run_progress",
    "unfinished_note",
    "atomic_write_bytes",
    "atomic_write_json",
    "save_tensors",
    "load_tensors",
    "read_json",
    "save_synthetic",
    "load_synthetic",
    "check_soft_labels",
    "expand",
    "make_grid",
    "save_grid",
]

SYNTHETIC_FILE = "synthetic.safetensors"
META_FILE = "meta.json"


class RunFolderError(RuntimeError):
    """A run folder is missing, unreadable, unwritable or already holds a run."""


# --- atomic writes -------------------------------------------------------------------------


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash or a full disk never leaves a partial file.

    The bytes go to a temporary file in the same folder, are flushed to disk, and replace
    ``path`` in one rename. On failure the old file (if any) is untouched. ``sync=False``
    skips the fsync (thousands of small files, e.g. an exported image folder).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600 files; outputs follow the umask
            os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.errno == errno.ENOSPC:
            raise RunFolderError(
                f"disk full while writing {path}; the previous version of the file is intact. "
                "Free some space and run again (with --resume for a condensation run)."
            ) from exc
        raise RunFolderError(f"could not write {path}: {exc}") from exc


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Atomically save a dict of tensors as safetensors."""
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata)
    atomic_write_bytes(path, blob)


def load_tensors(path: str | os.PathLike, digest: Any = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never executes code); clear error if missing or corrupt.
    ``digest`` (a hashlib object): updated with the sha256 of the file's bytes, read once."""
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"missing file {path}")
    try:
        if digest is None:
            return load_file(str(path))
        data = path.read_bytes()
        tensors = load(data)
        digest.update(hashlib.sha256(data).digest())
        return tensors
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunFolderError(f"{path} is not a readable safetensors file ({exc})") from exc


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path} is not valid JSON ({exc})") from exc


# --- one writer per run folder ---------------------------------------------------------------

LOCK_FILE = ".ddm.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


class RunLock:
    """An exclusive claim on a run folder: ``LOCK_FILE`` holding the writer's pid and host.

    A second writer refuses while the owner lives; a lock left by a process that died (same
    host, no such pid) is taken over. Released (the file removed) by ``release``, by the
    process that took it only.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._pid: int | None = None  # set while this process holds it

    def owner(self) -> dict[str, Any] | None:
        """The live owner recorded in the lock file, or None (no lock, or a stale one)."""
        try:
            info = json.loads(self.path.read_text())
            pid, host = int(info["pid"]), str(info.get("host", ""))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # unreadable: a writer between creating and filling it (young), or one that died
            # then (old, taken over)
            try:
                young = time.time() - self.path.stat().st_mtime < 10
            except OSError:
                return None
            return {"pid": "?", "host": ""} if young else None
        if host and host != socket.gethostname():
            return {"pid": pid, "host": host}  # cannot tell from here: assume it lives
        return {"pid": pid, "host": host} if _pid_alive(pid) else None

    def refuse_if_held(self) -> None:
        """Raise RunFolderError naming the owner when another live process holds the folder."""
        owner = self.owner()
        if owner is not None and self._pid != os.getpid():
            other = owner["host"] and owner["host"] != socket.gethostname()
            where = f" on {owner['host']}" if other else ""
            raise RunFolderError(
                f"{self.path.parent} is being written by another ddm process (pid "
                f"{owner['pid']}{where}); wait for it to end, or stop it (if it is gone, "
                f"remove {self.path})"
            )

    def acquire(self) -> RunLock:
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        for _ in range(3):
            self.refuse_if_held()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, new_file_mode())
            except FileExistsError:
                if self.owner() is None:  # stale (its process is gone): take it over
                    self.path.unlink(missing_ok=True)
                continue
            except OSError as exc:
                raise RunFolderError(f"cannot create {self.path}: {exc.strerror or exc}") from exc
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            self._pid = os.getpid()
            return self
        self.refuse_if_held()
        raise RunFolderError(f"could not take {self.path}; try again")

    def release(self) -> None:
        if self._pid is not None and self._pid == os.getpid():
            self.path.unlink(missing_ok=True)
            self._pid = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_progress(meta: dict[str, Any]) -> dict[str, Any]:
    """``{"iterations_done", "iterations_planned", "finished"}`` of a condensed set's meta
    (empty for a set that was selected or imported, not condensed)."""
    done, planned = meta.get("iterations"), meta.get("iterations_planned")
    if not isinstance(done, int) or not isinstance(planned, int):
        return {}
    return {"iterations_done": done, "iterations_planned": planned, "finished": done >= planned}


def unfinished_note(folder: str | os.PathLike, meta: dict[str, Any]) -> str | None:
    """One line saying a run is unfinished, and how to finish it; None when it is finished."""
    progress = run_progress(meta)
    if not progress or progress["finished"]:
        return None
    done, planned = progress["iterations_done"], progress["iterations_planned"]
    return (
        f"note: {folder} is an unfinished run ({done} of {planned} iterations); finish it "
        f"with `ddm condense --out {folder} --resume`"
    )


# --- the condensed set -----------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSet:
    """A condensed set: stored images (normalised space), labels and metadata."""

    images: torch.Tensor  # float32, N x C x H x W
    labels: torch.Tensor  # int64, N
    meta: dict[str, Any] = field(default_factory=dict)
    soft_labels: torch.Tensor | None = None  # float32, N x classes (logits), or None

    @property
    def expansion_factor(self) -> int:
        return int(self.meta.get("expansion_factor", 1))

    def expanded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The images a network is trained on (IDM's quadrants upsampled), with labels."""
        return expand(self.images, self.labels, self.expansion_factor)

    def expanded_soft_labels(self) -> torch.Tensor | None:
        """The stored soft labels, repeated like ``expanded()``'s labels (None: none stored)."""
        if self.soft_labels is None:
            return None
        return self.soft_labels.repeat_interleave(self.expansion_factor**2, dim=0)

    def denormalized(self, images: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] for viewing, using the normalisation stored in meta."""
        x = self.images if images is None else images
        mean = torch.tensor(self.meta["mean"], dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.meta["std"], dtype=x.dtype).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)


def save_synthetic(folder: str | os.PathLike, syn: SyntheticSet) -> None:
    """Write ``synthetic.safetensors`` and ``meta.json`` atomically (tensors first)."""
    folder = Path(folder)
    images = syn.images.detach().to("cpu", torch.float32)
    labels = syn.labels.detach().to("cpu", torch.int64)
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"images must be N x C x H x W with N labels, got {tuple(images.shape)}"
            f" and {tuple(labels.shape)}"
        )
    tensors = {"images": images, "labels": labels}
    if syn.soft_labels is not None:
        tensors["soft_labels"] = syn.soft_labels.detach().to("cpu", torch.float32)
    save_tensors(folder / SYNTHETIC_FILE, tensors)
    atomic_write_json(folder / META_FILE, syn.meta)


def load_synthetic(folder: str | os.PathLike) -> SyntheticSet:
    """Load a condensed set from a run folder (or directly from a .safetensors file)."""
    path = Path(folder)
    folder = path.parent if path.suffix == ".safetensors" else path
    tensors = load_tensors(folder / SYNTHETIC_FILE if path.suffix != ".safetensors" else path)
    if "images" not in tensors or "labels" not in tensors:
        raise RunFolderError(f"{folder / SYNTHETIC_FILE} must hold tensors 'images' and 'labels'")
    meta = read_json(folder / META_FILE)
    where = folder / SYNTHETIC_FILE
    images, labels = tensors["images"], tensors["labels"]
    if not images.is_floating_point():
        raise RunFolderError(
            f"{where}: images are {images.dtype}; a run folder stores float32 images in the "
            "dataset's normalised space (for pixel files, use `ddm evaluate FOLDER --dataset "
            "NAME` on an image folder)"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise RunFolderError(f"{where}: labels are {labels.dtype}; expected integer class ids")
    images, labels = images.float(), labels.long()
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise RunFolderError(
            f"{where}: images must be N x C x H x W with N "
            f"labels, got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    if not torch.isfinite(images).all():
        raise RunFolderError(f"{where}: images hold NaN or infinite values")
    n_classes = meta.get("num_classes") if isinstance(meta, dict) else None
    if len(labels) and (
        int(labels.min()) < 0 or (isinstance(n_classes, int) and int(labels.max()) >= n_classes)
    ):
        raise RunFolderError(
            f"{where}: labels must be class ids in 0..{(n_classes or 0) - 1} (meta.json: "
            f"{n_classes} classes), got {int(labels.min())}..{int(labels.max())}"
        )
    soft = tensors.get("soft_labels")
    if soft is not None:
        check_soft_labels(soft, len(labels), meta.get("num_classes"), folder / SYNTHETIC_FILE)
        soft = soft.float()
    return SyntheticSet(images, labels, meta, soft)


def check_soft_labels(
    soft: torch.Tensor, n: int, num_classes: int | None, where: str | os.PathLike
) -> None:
    """Soft labels must be one row of finite class scores per image."""
    k = num_classes if num_classes is not None else (soft.shape[-1] if soft.ndim == 2 else -1)
    if soft.ndim != 2 or tuple(soft.shape) != (n, k) or not soft.is_floating_point():
        raise RunFolderError(
            f"{where}: soft labels are {soft.dtype} {tuple(soft.shape)}; expected float "
            f"({n}, {k}), one row of class scores per image"
        )
    if not torch.isfinite(soft).all():
        raise RunFolderError(f"{where}: soft labels hold NaN or infinite values")


# --- IDM's partition and expansion ---------------------------------------------------------


def expand(
    images: torch.Tensor, labels: torch.Tensor, factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each image into factor x factor tiles and upsample each back to full size.

    factor 1 is the identity. IDM uses 2: 4 half-size sub-images per stored image, upsampled
    bilinearly; labels are repeated. Differentiable, so the loop matches the expanded images.
    Output order: all tiles of image 0, then of image 1, and so on.
    """
    if factor == 1:
        return images, labels
    n, c, h, w = images.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by expansion factor {factor}")
    th, tw = h // factor, w // factor
    tiles = images.reshape(n, c, factor, th, factor, tw).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n * factor * factor, c, th, tw)
    up = F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)
    return up, labels.repeat_interleave(factor * factor)


# --- grids --------------------------------------------------------------------------------


def make_grid(images01: torch.Tensor, labels: torch.Tensor, pad: int = 2) -> np.ndarray:
    """One row per class (in label order), images in [0, 1] -> H x W x 3 uint8 array."""
    classes = labels.unique(sorted=True).tolist()
    rows = [images01[labels == c] for c in classes]
    per_row = max(len(r) for r in rows)
    _, c, h, w = images01.shape
    grid = np.ones((len(rows) * (h + pad) + pad, per_row * (w + pad) + pad, 3), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            arr = img.detach().cpu().float().numpy().transpose(1, 2, 0)
            if c == 1:
                arr = np.repeat(arr, 3, axis=2)
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = arr[..., :3]
    return (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_grid(path: str | os.PathLike, images01: torch.Tensor, labels: torch.Tensor) -> None:
    """Write a PNG grid (one row per class), upscaled so small images stay visible."""
    from io import BytesIO

    from PIL import Image

    arr = make_grid(images01, labels)
    img = Image.fromarray(arr)
    scale = max(1, math.ceil(256 / max(images01.shape[-1] * 4, 1)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
