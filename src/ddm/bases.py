"""The two bases of the condensation loop: how networks are sampled, how images are stored.

- ``DMBase`` (docs/method.md, 'DM'): a freshly initialised network every iteration, images stored as
  they are matched, one image step per iteration.
- ``IDMBase`` (docs/method.md, 'IDM'): a queue of networks that are trained between iterations, each
  stored image holding ``factor`` x ``factor`` sub-images that are expanded before matching,
  the class-aware cross-entropy term, and one image step per class.

The loop (``ddm.condense``) asks a base for the network of an iteration, the images to match
(``expand``), the cross-entropy weight, the image optimiser, the augmentation draw and (NCFM,
``ddm.ncfm``) the frequencies, the storage space of the images and the cross-entropy steps
after matching, and calls ``begin_iteration`` / ``end_iteration`` / ``after_iteration``;
everything else (the objective, checkpoints) is shared. A base's state goes into the checkpoint via
``state_tensors`` / ``state_meta`` so that a resumed run continues exactly.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist
from .augment import DSAParams, sample_params
from .config import CondenseConfig
from .data import Dataset
from .io import expand
from .models import build_model
from .runtime import Stream, generator, seed_for

__all__ = ["DMBase", "IDMBase", "make_base", "new_net", "reinit_", "init_partitioned"]


def reinit_(net: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter with PyTorch's default initialisation, from ``seed``.

    Same values as constructing the network afresh under that seed, without rebuilding it
    (so a compiled forward stays valid across iterations).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return net


def new_net(cfg: CondenseConfig, dataset: Dataset, seed: int, device: torch.device) -> nn.Module:
    """A fresh matching network of ``cfg.model`` for ``dataset``, initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        extra = {"depth": cfg.depth} if cfg.depth else {}
        net = build_model(
            cfg.model, dataset.channels, dataset.num_classes, dataset.image_size, **extra
        )
    return net.to(device)


_new_net = new_net  # the earlier name


def init_partitioned(
    dataset: Dataset, ipc: int, factor: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """IDM's initialisation: each stored image tiles factor^2 downscaled random real images."""
    size = dataset.image_size
    if size % factor:
        raise ValueError(f"image size {size} is not divisible by the expansion factor {factor}")
    tiles_per = factor * factor
    images = []
    for c in range(dataset.num_classes):
        real = dataset.class_batch(c, ipc * tiles_per, gen)
        if len(real) < ipc * tiles_per:  # small classes: reuse images to fill the tiles
            reps = -(-ipc * tiles_per // len(real))
            real = real.repeat(reps, 1, 1, 1)[: ipc * tiles_per]
        small = F.interpolate(
            real,
            size=(size // factor, size // factor),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        # (ipc, f, f, C, h, w) -> (ipc, C, f*h, f*w): tile k of image i = row k // f, col k % f
        t = small.view(ipc, factor, factor, dataset.channels, size // factor, size // factor)
        images.append(t.permute(0, 3, 1, 4, 2, 5).reshape(ipc, dataset.channels, size, size))
    labels = torch.arange(dataset.num_classes).repeat_interleave(ipc)
    return torch.cat(images), labels


class DMBase:
    """A fresh, frozen, randomly initialised network per iteration; no expansion."""

    factor = 1
    per_class_steps = False

    def __init__(self, cfg: CondenseConfig, dataset: Dataset, device: torch.device) -> None:
        self.cfg = cfg
        self.net = _new_net(cfg, dataset, 0, device)
        self.net.train().requires_grad_(False)

    def network(self, iteration: int) -> nn.Module:
        return reinit_(self.net, seed_for(self.cfg.seed, Stream.NET, iteration))

    def expand(self, images: torch.Tensor, labels: torch.Tensor):
        return images, labels

    def ce_weight(self) -> float:
        return 0.0

    def probe_network(self) -> nn.Module:
        """A network of the run's architecture (to check its norm layers)."""
        return self.network(0)

    def store(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised initial images -> the tensor the optimiser moves (DM, IDM: the same)."""
        return images

    def unstore(self, images: torch.Tensor) -> torch.Tensor:
        """The optimised tensor -> normalised images (what the set files hold)."""
        return images

    def begin_iteration(self, images: torch.Tensor) -> None:
        """Work on the stored images before an iteration (none for DM, IDM)."""

    def augmentation(
        self, strategy: str, n: int, size: tuple[int, int], gen: torch.Generator
    ) -> DSAParams:
        """The Siamese DSA draw of one class and iteration."""
        return sample_params(strategy, n, size, gen, siamese=True)

    def frequencies(self, dim: int, gen: torch.Generator) -> torch.Tensor | None:
        """The characteristic function's frequencies of one class (NCFM); None: DM's MMD."""
        return None

    def calibration(self) -> tuple[nn.Module, float] | None:
        """Network and weight of the cross-entropy steps after matching (NCFM); None: none."""
        return None

    def optimizer(self, images: torch.Tensor) -> torch.optim.Optimizer:
        """The image optimiser: SGD with momentum (DM, IDM)."""
        return torch.optim.SGD([images], lr=self.cfg.lr_img, momentum=self.cfg.momentum)

    def after_match_step(self) -> None:
        """Called after each image step of matching (NCFM's sampler ascends here)."""

    def end_iteration(self, loss: float) -> None:
        """Called with the iteration's loss (summed over classes and ranks)."""

    def after_iteration(self, iteration: int) -> float:
        """Work between iterations; returns its seconds (0 for DM)."""
        return 0.0

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def state_meta(self) -> dict[str, Any]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        pass

    def set_meta(self) -> dict[str, Any]:
        """What the condensed set's meta.json records of the base (e.g. NCFM's pool)."""
        return {}


class IDMBase(DMBase):
    """IDM's model queue, partition-and-expansion and class-aware regularisation.

    The queue starts with ``net_init`` random networks; every ``net_generate_interval``
    iterations a new one is pushed (the oldest dropped beyond ``net_num``). Each iteration
    matches with one network drawn from the queue; afterwards ``fetch_net_num`` queue
    networks are trained ``model_train_steps`` SGD steps on random real batches (no
    augmentation), each with its own persistent optimiser. A network's running training
    accuracy (percent, over its latest training call; 0 before any) scales the CE term.

    Under torchrun the trained models are shared out, not their batches: every rank draws
    every model's batches (the one-process draws), trains its models (round-robin over the
    picks) exactly as one process does, then each model's parameters, buffers and momentum are
    copied from the rank that trained it to the others. Every rank therefore keeps the queue of
    one process, bit for bit: splitting a batch over ranks would change the gradient's
    summation order, and matching against the queue amplifies such rounding by orders of
    magnitude within a few iterations.
    """

    per_class_steps = True

    def __init__(self, cfg: CondenseConfig, dataset: Dataset, device: torch.device) -> None:
        self.cfg, self.dataset, self.device = cfg, dataset, device
        self.factor = cfg.factor
        self.nets: list[nn.Module] = []
        self.opts: list[torch.optim.Optimizer] = []
        self.ids: list[int] = []
        self.accs: list[float] = []
        self.next_id = 0
        self.current = 0
        for _ in range(cfg.net_init):
            self._push()

    def _push(self) -> None:
        net = _new_net(
            self.cfg, self.dataset, seed_for(self.cfg.seed, Stream.NET, self.next_id), self.device
        )
        opt = torch.optim.SGD(
            net.parameters(), lr=self.cfg.model_lr, momentum=0.9, weight_decay=5e-4
        )
        net.requires_grad_(False)  # trained only in after_iteration
        self.nets.append(net)
        self.opts.append(opt)
        self.ids.append(self.next_id)
        self.accs.append(0.0)
        self.next_id += 1
        if len(self.nets) > self.cfg.net_num:
            for seq in (self.nets, self.opts, self.ids, self.accs):
                seq.pop(0)

    def network(self, iteration: int) -> nn.Module:
        if iteration > 0 and iteration % self.cfg.net_generate_interval == 0:
            self._push()
        gen = generator(self.cfg.seed, Stream.QUEUE, iteration)
        self.current = int(torch.randint(len(self.nets), (1,), generator=gen))
        net = self.nets[self.current]
        net.train()
        return net

    def expand(self, images: torch.Tensor, labels: torch.Tensor):
        return expand(images, labels, self.factor)

    def ce_weight(self) -> float:
        return self.cfg.ce_weight * self.accs[self.current]

    def probe_network(self) -> nn.Module:
        return self.nets[0]

    def after_iteration(self, iteration: int) -> float:
        import time

        t0 = time.perf_counter()
        gen = generator(self.cfg.seed, Stream.QUEUE_TRAIN, iteration)
        picks = torch.randperm(len(self.nets), generator=gen)[: self.cfg.fetch_net_num].tolist()
        if self.cfg.model_train_steps == 0:
            return time.perf_counter() - t0
        train, batch = self.dataset.train, self.cfg.model_batch
        # every model's batches, drawn in one process's order on every rank
        draws = [
            [
                torch.randint(len(train), (batch,), generator=gen)
                for _ in range(self.cfg.model_train_steps)
            ]
            for _ in picks
        ]
        accs: dict[int, float] = {}
        for k in dist.round_robin(len(picks)):  # this rank's models
            accs[k] = self._train(picks[k], draws[k])
        if dist.active():
            for k, i in enumerate(picks):  # each model from the rank that trained it
                dist.broadcast_(self._shared_tensors(i), src=k % dist.world_size())
            accs = {k: a for part in dist.all_gather_object(accs) for k, a in part.items()}
        for k, i in enumerate(picks):
            self.accs[i] = accs[k]
        return time.perf_counter() - t0

    def _train(self, i: int, draws: list[torch.Tensor]) -> float:
        """Train queue model ``i`` one SGD step per batch of indices; its accuracy (percent)."""
        net, opt, train = self.nets[i], self.opts[i], self.dataset.train
        net.train().requires_grad_(True)
        correct = seen = 0
        for idx in draws:
            x = self.dataset.normalize(train.images[idx]).to(self.device)
            y = train.labels[idx].to(self.device)
            out = net(x)
            loss = F.cross_entropy(out, y, reduction="sum") * (1 / len(y))  # the batch mean
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
        net.requires_grad_(False)
        return 100.0 * correct / seen

    def _shared_tensors(self, i: int) -> list[torch.Tensor]:
        """Queue model ``i``'s state that training changes: parameters, buffers, momentum.

        Every parameter has a momentum buffer after a training step; a rank that has not
        trained the model yet gets an empty one here, to be overwritten.
        """
        net, opt = self.nets[i], self.opts[i]
        state = opt.state
        momentum = []
        for p in net.parameters():
            if state[p].get("momentum_buffer") is None:
                state[p]["momentum_buffer"] = torch.empty_like(p)
            momentum.append(state[p]["momentum_buffer"])
        return [*net.state_dict(keep_vars=True).values(), *momentum]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for slot, (net, opt) in enumerate(zip(self.nets, self.opts, strict=True)):
            for name, t in net.state_dict().items():
                out[f"queue.{slot}.{name}"] = t
            for name, p in net.named_parameters():
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    out[f"queue_momentum.{slot}.{name}"] = buf
        return out

    def state_meta(self) -> dict[str, Any]:
        return {"queue": json.dumps({"ids": self.ids, "accs": self.accs, "next_id": self.next_id})}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        q = json.loads(meta["queue"])
        self.nets, self.opts, self.ids, self.accs = [], [], [], []
        for slot, net_id in enumerate(q["ids"]):
            self.next_id = net_id
            self._push()
            net, opt = self.nets[-1], self.opts[-1]
            state = {
                k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"queue.{slot}.")
            }
            net.load_state_dict(state)
            for name, p in net.named_parameters():
                key = f"queue_momentum.{slot}.{name}"
                if key in tensors:
                    opt.state[p]["momentum_buffer"] = tensors[key].to(self.device).clone()
            net.requires_grad_(False)
        self.accs = list(q["accs"])
        self.next_id = q["next_id"]


def make_base(cfg: CondenseConfig, dataset: Dataset, device: torch.device) -> DMBase:
    if cfg.base == "ncfm":
        from .ncfm import NCFMBase

        return NCFMBase(cfg, dataset, device)
    return IDMBase(cfg, dataset, device) if cfg.base == "idm" else DMBase(cfg, dataset, device)
