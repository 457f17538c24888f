"""Differentiable Siamese Augmentation (DSA), as used by DSA, DM, IDM and DDM.

Follows the reference DiffAugment of the DSA/DM papers in its single-group mode: one call
picks ONE group of the strategy string (``color`` = brightness, saturation, contrast;
``crop``; ``cutout``; ``flip``; ``scale``; ``rotate``) and applies it. Every op is
differentiable with respect to the pixels, so gradients reach the synthetic images.

Drawing and applying are split: :func:`sample_params` draws a :class:`DSAParams` from an
explicit CPU ``torch.Generator`` (the global RNG is never touched) and :func:`apply` is a
pure function of the images and those parameters. A Siamese draw (leading dim 1) is shared
by every image of every batch it is applied to: the real and the synthetic batch of a class
in a matching step see the very same transform. Outside matching (training an evaluation
model) every image gets its own draw (leading dim N).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_STRATEGY",
    "DIGIT_STRATEGY",
    "GROUPS",
    "DSAParams",
    "sample_params",
    "apply",
    "augment",
    "siamese",
]

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DIGIT_STRATEGY = "color_crop_cutout_scale_rotate"  # no flip for MNIST, SVHN, digits

# Ranges of the reference ParamDiffAug.
BRIGHTNESS = 1.0  # offset (u - 0.5) * 1.0
SATURATION = 2.0  # factor u * 2.0
CONTRAST = 0.5  # factor u + 0.5
CROP_RATIO = 0.125  # max translation, fraction of the side
CUTOUT_RATIO = 0.5  # side of the zeroed square, fraction of the side
FLIP_PROB = 0.5
SCALE_RATIO = 1.2  # sx, sy uniform in [1/1.2, 1.2]
ROTATE_DEGREES = 15.0  # angle uniform in [-15, 15] degrees

_NONE = "none"


@dataclass(frozen=True)
class DSAParams:
    """One augmentation draw: the group chosen and its parameter tensors.

    ``values`` holds CPU tensors of shape ``(m,)``, with ``m == 1`` for a shared (Siamese)
    draw that broadcasts to any batch, or ``m == N`` for one draw per image. Keys by group:
    color: ``brightness`` (offset), ``saturation``, ``contrast`` (factors); crop: ``dy``,
    ``dx`` (``out[i, j] = x[i + dy, j + dx]``, zero outside); cutout: ``cy``, ``cx``
    (centre of the square, as the reference's offsets); flip: ``flip`` (bool); scale:
    ``sx``, ``sy``; rotate: ``angle`` (radians).
    """

    group: str
    values: dict[str, torch.Tensor]

    @property
    def shared(self) -> bool:
        """True when one parameter set is broadcast to every image (Siamese)."""
        return all(v.shape[0] == 1 for v in self.values.values())


# --------------------------------------------------------------------------- sampling
# Each sampler draws m parameter sets for images of size (h, w), all on CPU.

Sampler = Callable[[int, tuple[int, int], torch.Generator], dict[str, torch.Tensor]]


def _uniform(m: int, generator: torch.Generator) -> torch.Tensor:
    """u ~ U[0, 1), shape (m,), float32 whatever the global default dtype."""
    return torch.rand(m, generator=generator, dtype=torch.float32)


def _crop_shift(size: int) -> int:
    return int(size * CROP_RATIO + 0.5)


def _cutout_side(size: int) -> int:
    return int(size * CUTOUT_RATIO + 0.5)


def _sample_color(m: int, size: tuple[int, int], g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "brightness": (_uniform(m, g) - 0.5) * BRIGHTNESS,
        "saturation": _uniform(m, g) * SATURATION,
        "contrast": _uniform(m, g) + CONTRAST,
    }


def _sample_crop(m: int, size: tuple[int, int], g: torch.Generator) -> dict[str, torch.Tensor]:
    sh, sw = _crop_shift(size[0]), _crop_shift(size[1])
    return {
        "dy": torch.randint(-sh, sh + 1, (m,), generator=g),
        "dx": torch.randint(-sw, sw + 1, (m,), generator=g),
    }


def _sample_cutout(m: int, size: tuple[int, int], g: torch.Generator) -> dict[str, torch.Tensor]:
    h, w = size
    side_h, side_w = _cutout_side(h), _cutout_side(w)
    return {
        "cy": torch.randint(0, h + (1 - side_h % 2), (m,), generator=g),
        "cx": torch.randint(0, w + (1 - side_w % 2), (m,), generator=g),
    }


def _sample_flip(m: int, size: tuple[int, int], g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"flip": _uniform(m, g) < FLIP_PROB}


def _sample_scale(m: int, size: tuple[int, int], g: torch.Generator) -> dict[str, torch.Tensor]:
    low = 1.0 / SCALE_RATIO
    return {
        "sx": _uniform(m, g) * (SCALE_RATIO - low) + low,
        "sy": _uniform(m, g) * (SCALE_RATIO - low) + low,
    }


def _sample_rotate(m: int, size: tuple[int, int], g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"angle": (_uniform(m, g) - 0.5) * 2 * ROTATE_DEGREES / 180 * math.pi}


# --------------------------------------------------------------------------- applying
# Each op maps x (N, C, H, W) and values of leading dim 1 or N to the augmented batch.


def _as(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-image scalar (m,) as a float (m, 1, 1, 1) on x's device and dtype."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _apply_color(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    # lerp(mean, x, f) = (x - mean) * f + mean, in fewer passes over the batch.
    x = x + _as(v["brightness"], x)
    x = torch.lerp(x.mean(dim=1, keepdim=True), x, _as(v["saturation"], x))  # mean (N,1,H,W)
    return torch.lerp(x.mean(dim=(1, 2, 3), keepdim=True), x, _as(v["contrast"], x))  # (N,1,1,1)


def _apply_crop(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    n, c, h, w = x.shape
    if v["dy"].shape[0] == 1 and abs(int(v["dy"])) < h and abs(int(v["dx"])) < w:
        # Shared shift: slicing through negative padding, out[i, j] = x[i + dy, j + dx].
        dy, dx = int(v["dy"]), int(v["dx"])
        return F.pad(x, (-dx, dx, -dy, dy))
    # Per image, as the reference: pad by one zero pixel, gather with indices clamped into
    # the padding.
    dy, dx = v["dy"].to(x.device), v["dx"].to(x.device)  # (m,)
    rows = (torch.arange(h, device=x.device) + dy[:, None] + 1).clamp(0, h + 1)  # (m, H)
    cols = (torch.arange(w, device=x.device) + dx[:, None] + 1).clamp(0, w + 1)  # (m, W)
    index = rows[:, :, None] * (w + 2) + cols[:, None, :]  # (m, H, W) into the padded image
    index = index.view(-1, 1, h * w).expand(n, c, h * w)
    padded = F.pad(x, (1, 1, 1, 1)).reshape(n, c, (h + 2) * (w + 2))
    return padded.gather(2, index).view(n, c, h, w)


def _apply_cutout(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    _, _, h, w = x.shape
    side_h, side_w = _cutout_side(h), _cutout_side(w)
    top = v["cy"].to(x.device)[:, None] - side_h // 2  # (m, 1)
    left = v["cx"].to(x.device)[:, None] - side_w // 2
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + side_h)  # (m, H)
    in_cols = (cols >= left) & (cols < left + side_w)  # (m, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (m, H, W); the square clipped
    return x * keep.unsqueeze(1).to(x.dtype)


def _apply_flip(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    flip = v["flip"]
    if flip.shape[0] == 1:  # shared: decide on CPU, flip only when needed
        return x.flip(-1) if bool(flip) else x
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of x by theta (m, 2, 3); one grid when theta is shared."""
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [theta.shape[0], *x.shape[1:]], align_corners=True)
    grid = grid.expand(x.shape[0], -1, -1, -1)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _apply_scale(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    sx, sy = v["sx"].double(), v["sy"].double()
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)
    return _affine(x, theta)


def _apply_rotate(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    angle = v["angle"].double()
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, sin, zero], -1), torch.stack([-sin, cos, zero], -1)], 1)
    return _affine(x, theta)


Op = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]

GROUPS: dict[str, tuple[Sampler, Op]] = {
    "color": (_sample_color, _apply_color),
    "crop": (_sample_crop, _apply_crop),
    "cutout": (_sample_cutout, _apply_cutout),
    "flip": (_sample_flip, _apply_flip),
    "scale": (_sample_scale, _apply_scale),
    "rotate": (_sample_rotate, _apply_rotate),
}


# --------------------------------------------------------------------------- public API


def _groups(strategy: str) -> list[str]:
    """The group names of a strategy string; [] for "" or "none"."""
    if strategy.lower() in ("", _NONE):
        return []
    names = strategy.split("_")
    unknown = [name for name in names if name not in GROUPS]
    if unknown:
        raise ValueError(
            f"unknown DSA group(s) {unknown} in strategy {strategy!r}; known: {sorted(GROUPS)}"
        )
    return names


def sample_params(
    strategy: str,
    n: int,
    image_size: tuple[int, int],
    generator: torch.Generator,
    siamese: bool = False,
) -> DSAParams:
    """Pick one group of ``strategy`` uniformly and draw its parameters from ``generator``.

    One shared set (leading dim 1) when ``siamese``, else one set per image (leading dim n).
    """
    if generator.device.type != "cpu":
        raise ValueError(f"DSA draws from a CPU generator, got one on {generator.device}")
    names = _groups(strategy)
    if not names:
        return DSAParams(group=_NONE, values={})
    group = names[int(torch.randint(len(names), (1,), generator=generator))]
    h, w = (int(s) for s in image_size)
    sampler, _ = GROUPS[group]
    return DSAParams(group=group, values=sampler(1 if siamese else n, (h, w), generator))


def apply(x: torch.Tensor, params: DSAParams | Sequence[DSAParams]) -> torch.Tensor:
    """Apply one draw to a batch x (N, C, H, W); differentiable with respect to x.

    A sequence of draws is applied in order (NCFM's augmentation applies every group).
    """
    if not isinstance(params, DSAParams):
        for p in params:
            x = apply(x, p)
        return x
    if params.group == _NONE:
        return x
    if params.group not in GROUPS:
        raise ValueError(f"unknown DSA group {params.group!r}; known: {sorted(GROUPS)}")
    if x.dim() != 4:
        raise ValueError(f"DSA expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    sizes = {v.shape[0] for v in params.values.values()}
    if len(sizes) != 1 or not sizes <= {1, x.shape[0]}:
        raise ValueError(
            f"DSAParams with leading dims {sorted(sizes)} cannot be applied to a batch of "
            f"{x.shape[0]}: draw per-image parameters for this batch size, or a shared draw"
        )
    _, op = GROUPS[params.group]
    return op(x, params.values)


def augment(
    x: torch.Tensor, strategy: str, generator: torch.Generator, siamese: bool = False
) -> torch.Tensor:
    """Draw one augmentation for x (shared if ``siamese``, else per image) and apply it."""
    params = sample_params(strategy, len(x), tuple(x.shape[-2:]), generator, siamese=siamese)
    return apply(x, params)


def siamese(
    batches: Sequence[torch.Tensor], strategy: str, generator: torch.Generator
) -> list[torch.Tensor]:
    """Apply ONE shared draw to every batch (e.g. the real and synthetic batch of a class)."""
    if not batches:
        raise ValueError("siamese() needs at least one batch")
    sizes = {tuple(b.shape[-2:]) for b in batches}
    if len(sizes) != 1:
        raise ValueError(f"siamese batches must share one image size, got {sorted(sizes)}")
    params = sample_params(strategy, 1, sizes.pop(), generator, siamese=True)
    return [apply(b, params) for b in batches]
