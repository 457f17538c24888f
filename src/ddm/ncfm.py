"""NCFM as a base of the condensation loop (docs/method.md, 'NCFM').

Neural Characteristic Function Matching compares, per class, the empirical characteristic
functions of the real and synthetic embeddings at freshly drawn Gaussian frequencies:

    Phi(t) = mean_i exp(i t . f_i),  f_i = L2-normalised last-block embedding
    L_c = scale * mean_j sqrt(alpha * (|Phi_r| - |Phi_s|)^2
                              + beta * max(2 (|Phi_r||Phi_s| - Re_r Re_s - Im_r Im_s), 1e-12))

Since the amplitude and phase terms sum to |Phi_r - Phi_s|^2, the shipped alpha = beta = 0.5
gives (scale / sqrt 2) * mean_j |Phi_r(t_j) - Phi_s(t_j)|.

``NCFMBase`` plugs into ``ddm.condense`` like the DM and IDM bases: each iteration one network
of a pool of trained networks (``ddm.pool``), its weights interpolated between initialisation
and the end of training; factor-2 partitioned images kept in pixel space [0, 1] (clamped at the
start of every iteration); NCFM's augmentation (colour, crop and cutout, all applied, one
shared draw); one AdamW step per class for matching, then one cross-entropy step per class on
the pool network's final weights; the image learning rate halved on a plateau of the loss.
The optional frequency sampler psi (``--ncfm-sampler``, off as in every published config) is a
small network that maps noise to the frequencies and is trained to *maximise* the loss while
the images minimise it; unlike the reference's, whose gradients cancel, it learns.
With it the loss uses its 64 frequencies (4 distinct) instead of ``num_freqs`` Gaussian ones.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist
from .augment import GROUPS, DSAParams
from .bases import DMBase
from .config import CondenseConfig
from .data import Dataset
from .io import expand
from .runtime import Stream, generator, seed_for

__all__ = [
    "CF_SCALE",
    "NCFM_STRATEGY",
    "NCFMBase",
    "cf_stats",
    "cf_loss_from_stats",
    "cf_loss",
    "draw_frequencies",
    "interpolate_state",
    "ncfm_augmentation",
]

CF_SCALE = 300.0  # the reference's loss scale
CF_ALPHA = 0.5  # amplitude weight
CF_BETA = 0.5  # phase weight
PHASE_FLOOR = 1e-12
NCFM_STRATEGY = "color_crop_cutout"  # every group applied, in this order
IMAGE_WEIGHT_DECAY = 5e-4  # AdamW on the images
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 500
SAMPLER_NOISE_ROWS = 4  # distinct frequency rows psi outputs
SAMPLER_TILE = 16  # each tiled 16 times: 64 frequencies
SAMPLER_LR = 1e-3
SAMPLER_MOMENTUM = 0.5


# --- the loss --------------------------------------------------------------------------------


def cf_stats(features: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the empirical characteristic function, T each.

    ``features`` N x D, ``freqs`` T x D: Re_j = mean_i cos(t_j . f_i), Im_j = mean_i sin(...).
    """
    proj = features @ freqs.T  # N x T
    return proj.cos().mean(0), proj.sin().mean(0)


def cf_loss_from_stats(
    real_re: torch.Tensor,
    real_im: torch.Tensor,
    syn_features: torch.Tensor,
    freqs: torch.Tensor,
    alpha: float = CF_ALPHA,
    beta: float = CF_BETA,
    scale: float = CF_SCALE,
) -> torch.Tensor:
    """NCFM's amplitude + phase discrepancy against the real side's (Re, Im) at ``freqs``."""
    syn_re, syn_im = cf_stats(syn_features, freqs)
    mod_r = (real_re.square() + real_im.square()).sqrt()
    mod_s = (syn_re.square() + syn_im.square()).sqrt()
    amplitude = (mod_r - mod_s).square()
    phase = (2 * (mod_r * mod_s - real_re * syn_re - real_im * syn_im)).clamp_min(PHASE_FLOOR)
    return scale * (alpha * amplitude + beta * phase).sqrt().mean()


def cf_loss(
    real_features: torch.Tensor,
    syn_features: torch.Tensor,
    freqs: torch.Tensor,
    alpha: float = CF_ALPHA,
    beta: float = CF_BETA,
    scale: float = CF_SCALE,
) -> torch.Tensor:
    """The loss of one class from both sides' (already normalised) features."""
    real_re, real_im = cf_stats(real_features, freqs)
    return cf_loss_from_stats(real_re, real_im, syn_features, freqs, alpha, beta, scale)


def draw_frequencies(num: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """``num`` x ``dim`` frequencies t ~ N(0, I), unscaled, from ``gen``."""
    return torch.randn(num, dim, generator=gen)


def normalise_features(features: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 normalisation, as NCFM feeds embeddings to the loss."""
    return F.normalize(features.float(), dim=1)


# --- the frequency sampler psi ---------------------------------------------------------------


class SampleNet(nn.Module):
    """psi: noise (rows x D) -> frequencies, 3 x [Linear(D, D) -> BatchNorm1d -> LeakyReLU(0.2)]
    with Tanh as the last activation; the output is tiled ``tile`` times (always train mode)."""

    def __init__(self, dim: int, tile: int = SAMPLER_TILE) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(3):
            layers += [nn.Linear(dim, dim), nn.BatchNorm1d(dim)]
            layers.append(nn.Tanh() if k == 2 else nn.LeakyReLU(0.2))
        self.body = nn.Sequential(*layers)
        self.tile = tile

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.body(noise).repeat(self.tile, 1)


class SampledFrequencies(NamedTuple):
    """One class's sampler noise and the sampler: the frequencies, with autograd into psi."""

    noise: torch.Tensor
    sampler: SampleNet

    def frequencies(self, device: torch.device) -> torch.Tensor:
        return self.sampler(self.noise.to(device))


# --- augmentation ----------------------------------------------------------------------------


def ncfm_augmentation(
    size: tuple[int, int], gen: torch.Generator, strategy: str = NCFM_STRATEGY, n: int = 1
) -> list[DSAParams]:
    """Every group of ``strategy`` in order (NCFM's DiffAug), each drawn from ``gen``:
    one shared draw (``n`` 1) or one per image (``n`` images)."""
    if strategy.lower() in ("", "none"):
        return []
    params = []
    for name in strategy.split("_"):
        if name not in GROUPS:
            raise ValueError(f"unknown augmentation group {name!r}; known: {sorted(GROUPS)}")
        sampler, _ = GROUPS[name]
        params.append(DSAParams(group=name, values=sampler(n, size, gen)))
    return params


# --- the pool network of an iteration ---------------------------------------------------------


def interpolate_state(
    start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], coefficient: float
) -> dict[str, torch.Tensor]:
    """theta = l * theta_init + (1 - l) * theta_final for floating tensors (others: final)."""
    out = {}
    for name, final in end.items():
        if final.is_floating_point():
            out[name] = coefficient * start[name] + (1.0 - coefficient) * final
        else:
            out[name] = final
    return out


class NCFMBase(DMBase):
    """The NCFM base: pool networks, pixel-space partitioned images, AdamW, CE steps."""

    per_class_steps = True

    def __init__(self, cfg: CondenseConfig, dataset: Dataset, device: torch.device) -> None:
        from .pool import load_pool

        self.cfg, self.dataset, self.device = cfg, dataset, device
        self.factor = cfg.factor
        self.pool = load_pool(cfg.pool, dataset, cfg.model, cfg.depth)
        self.starts = [{k: v.to(device) for k, v in s.items()} for s in self.pool.initial]
        self.ends = [{k: v.to(device) for k, v in s.items()} for s in self.pool.final]
        self.net = self.pool.build().to(device)
        self.final_net = self.pool.build().to(device)
        for net in (self.net, self.final_net):
            net.train().requires_grad_(False)  # GroupNorm: train and eval agree
        self.current = (0, 0.0)  # (pool index, coefficient) of the current iteration
        self.scheduler: Any = None
        self.sampler: SampleNet | None = None
        self.sampler_opt: torch.optim.Optimizer | None = None
        if cfg.ncfm_sampler:
            if dist.world_size() > 1:
                raise ValueError(
                    "--ncfm-sampler runs in one process (the sampler is shared by all classes); "
                    "start one process or turn it off"
                )
            dim = int(self.net.embed_dim)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(cfg.seed, Stream.SAMPLER))
                self.sampler = SampleNet(dim).to(device).train()
            self.sampler_opt = torch.optim.SGD(
                self.sampler.parameters(), lr=SAMPLER_LR, momentum=SAMPLER_MOMENTUM
            )
        mean = torch.tensor(dataset.mean).view(1, -1, 1, 1)
        std = torch.tensor(dataset.std).view(1, -1, 1, 1)
        self.mean, self.std = mean.to(device), std.to(device)

    # the network of an iteration ---------------------------------------------------------------

    def draw(self, iteration: int) -> tuple[int, float]:
        """(pool index, coefficient) of ``iteration``, from the run's generator."""
        gen = generator(self.cfg.seed, Stream.POOL, iteration)
        index = int(torch.randint(len(self.starts), (1,), generator=gen))
        coefficient = float(torch.rand(1, generator=gen, dtype=torch.float64))
        return index, coefficient

    def network(self, iteration: int) -> nn.Module:
        index, coefficient = self.current = self.draw(iteration)
        state = interpolate_state(self.starts[index], self.ends[index], coefficient)
        with torch.no_grad():
            for name, t in self.net.state_dict().items():
                t.copy_(state[name])
            for name, t in self.final_net.state_dict().items():
                t.copy_(self.ends[index][name])
        return self.net

    def probe_network(self) -> nn.Module:
        return self.net

    def calibration(self) -> tuple[nn.Module, float] | None:
        """The network and weight of the CE steps that follow the match steps."""
        if self.cfg.ce_weight <= 0:
            return None
        return self.final_net, self.cfg.ce_weight

    def ce_weight(self) -> float:
        return 0.0  # the CE term is its own step, not part of the match

    # images ------------------------------------------------------------------------------------

    def store(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> the stored pixel-space tensor in [0, 1]."""
        return self.dataset.denormalize(images).clamp(0, 1)

    def unstore(self, images: torch.Tensor) -> torch.Tensor:
        """Stored pixels -> normalised images (what the set files hold)."""
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    def begin_iteration(self, images: torch.Tensor) -> None:
        """Clamp the stored pixels to [0, 1], as the reference does at each iteration's start."""
        with torch.no_grad():
            images.clamp_(0, 1)

    def expand(self, images: torch.Tensor, labels: torch.Tensor):
        return expand(self.unstore(images), labels, self.factor)

    def augmentation(
        self, strategy: str, n: int, size: tuple[int, int], gen: torch.Generator
    ) -> list[DSAParams]:
        return ncfm_augmentation(size, gen, "none" if strategy == "none" else NCFM_STRATEGY)

    def frequencies(self, dim: int, gen: torch.Generator) -> torch.Tensor | SampledFrequencies:
        if self.sampler is not None:
            noise = torch.randn(SAMPLER_NOISE_ROWS, dim, generator=gen)
            return SampledFrequencies(noise, self.sampler)
        return draw_frequencies(self.cfg.num_freqs, dim, gen)

    def after_match_step(self) -> None:
        """The sampler's ascent step on the match loss just back-propagated: its gradient is
        that loss's alone (cleared after every step), negated to maximise the loss."""
        if self.sampler is None or self.sampler_opt is None:
            return
        for p in self.sampler.parameters():
            if p.grad is not None:
                p.grad.neg_()
        self.sampler_opt.step()
        self.sampler_opt.zero_grad(set_to_none=True)

    # the image optimiser -----------------------------------------------------------------------

    def optimizer(self, images: torch.Tensor) -> torch.optim.Optimizer:
        if self.cfg.optimizer_img == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                [images], lr=self.cfg.lr_img, momentum=self.cfg.momentum
            )
        else:
            opt = torch.optim.AdamW([images], lr=self.cfg.lr_img, weight_decay=IMAGE_WEIGHT_DECAY)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE
        )
        return opt

    def end_iteration(self, loss: float) -> None:
        """Step the plateau schedule on the iteration's loss (summed over classes)."""
        if self.scheduler is not None and math.isfinite(loss):
            self.scheduler.step(loss)

    def after_iteration(self, iteration: int) -> float:
        return 0.0

    # checkpoints -------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.sampler is None or self.sampler_opt is None:
            return {}
        out = {f"sampler.{k}": v for k, v in self.sampler.state_dict().items()}
        for name, p in self.sampler.named_parameters():
            buf = self.sampler_opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"sampler_momentum.{name}"] = buf
        return out

    def state_meta(self) -> dict[str, Any]:
        out = {"pool": json.dumps(self.pool.summary())}
        if self.scheduler is None:
            return out
        state = self.scheduler.state_dict()
        state["lr"] = [g["lr"] for g in self.scheduler.optimizer.param_groups]
        return {**out, "plateau": json.dumps(state)}

    def set_meta(self) -> dict[str, Any]:
        return {"pool": self.pool.summary()}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if "pool" in meta:  # the networks drawn so far must be the ones drawn from now on
            from .pool import PoolError

            then, now = json.loads(meta["pool"]), self.pool.summary()
            if then["fingerprint"] != now["fingerprint"]:
                raise PoolError(
                    f"pool {self.cfg.pool} changed since this run's checkpoint (networks "
                    f"{then['indices']} then, {now['indices']} now, or their weight files "
                    "differ); resume with the pool the run started with, or start a new run"
                )
        if self.sampler is not None and self.sampler_opt is not None:
            state = {k[8:]: v for k, v in tensors.items() if k.startswith("sampler.")}
            self.sampler.load_state_dict(state)
            for name, p in self.sampler.named_parameters():
                key = f"sampler_momentum.{name}"
                if key in tensors:
                    self.sampler_opt.state[p]["momentum_buffer"] = tensors[key].to(p.device).clone()
        if self.scheduler is None or "plateau" not in meta:
            return
        state = json.loads(meta["plateau"])
        lrs = state.pop("lr")
        self.scheduler.load_state_dict(state)
        for group, lr in zip(self.scheduler.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
