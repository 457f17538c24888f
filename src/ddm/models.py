"""Networks of the dataset-condensation field: the ConvNet backbone and the evaluation models.

`ConvNet` is the embedding network of DM/IDM/DDM (docs/method.md, 'Networks'). Besides `forward` it
exposes `embed` (flattened output of the last block), `feature_maps` (each block's activation
after the non-linearity and before pooling -- or, with ``tap="conv"``, each block's convolution
output before the norm -- used by DDM's style terms) and `embed_and_maps` (both from one pass).
The cross-architecture models (AlexNet, VGG11, ResNet18, LeNet, MLP)
follow the field's 32x32 variants and size their classifier to `image_size` arithmetically,
so 1x28x28 and 3x64x64 inputs work too. Every model has `embed`, `embed_dim` and a final
`nn.Linear` named `classifier`. Parameters keep PyTorch's default initialisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "NORMS",
    "POOLINGS",
    "AlexNet",
    "ConvNet",
    "LeNet",
    "MLP",
    "ResNet18",
    "VGG11",
    "available_models",
    "build_model",
    "default_depth",
    "uses_batchnorm",
]

# --------------------------------------------------------------------------------------------
# Options: string -> layer factory. `None` means "no layer".
# --------------------------------------------------------------------------------------------

NORMS: dict[str, Callable[[int], nn.Module] | None] = {
    # One group per channel: per-sample, per-channel statistics over H, W (instance norm).
    "instancenorm": lambda c: nn.GroupNorm(c, c, affine=True),
    "batchnorm": lambda c: nn.BatchNorm2d(c),
    # One group: per-sample statistics over C, H, W, like the reference's LayerNorm([C, H, W]),
    # but with per-channel (not per-pixel) affine terms, so the layer is not tied to a size.
    "layernorm": lambda c: nn.GroupNorm(1, c, affine=True),
    "groupnorm": lambda c: nn.GroupNorm(4, c, affine=True),
    "none": None,
}

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),  # its input (a norm or conv output) is not reused
    "sigmoid": nn.Sigmoid,
    "leakyrelu": lambda: nn.LeakyReLU(negative_slope=0.01),
    "swish": nn.SiLU,
}


class _DepthwisePool2x2(torch.autograd.Function):
    """2x2 average pooling, stride 2, as a depthwise convolution; its input gradient in closed
    form (each input pixel gets a quarter of its output's gradient) for bf16/fp16 gradients,
    where oneDNN's depthwise-convolution backward is slow (measured on a 2-core bf16 CPU,
    100 x 128 x 32 x 32 maps: 73 ms against 9 ms; bitwise the same gradient, since x 0.25
    is exact). Float32 gradients keep the convolution's own backward (as fast there)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight = torch.full((c, 1, 2, 2), 0.25, dtype=x.dtype, device=x.device)
        ctx.save_for_backward(weight)
        return F.conv2d(x, weight, stride=2, groups=c)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (weight,) = ctx.saved_tensors
        n, c, h, w = grad.shape
        if grad.dtype in (torch.bfloat16, torch.float16):
            quarter = (grad * 0.25).reshape(n, c, h, 1, w, 1)
            return quarter.expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)
        return torch.nn.grad.conv2d_input(
            (n, c, 2 * h, 2 * w), weight.to(grad.dtype), grad, stride=2, groups=c
        )


class AvgPool2x2(nn.AvgPool2d):
    """2x2 average pooling, stride 2; on CPU computed as a depthwise stride-2 convolution.

    Same values (to float rounding) and gradients as ``nn.AvgPool2d(2, 2)``. Measured on a
    2-core CPU: 512 x 128 x 32 x 32 maps pooled in 44 ms instead of 186 ms; under bf16 the
    input gradient is formed directly (`_DepthwisePool2x2`), which took a ConvNet's forward
    and backward of 100 synthetic CIFAR images from 242 to 129 ms.
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
            return super().forward(x)
        return _DepthwisePool2x2.apply(x)


POOLINGS: dict[str, Callable[[], nn.Module] | None] = {
    "avgpooling": AvgPool2x2,
    "maxpooling": lambda: nn.MaxPool2d(kernel_size=2, stride=2),
    "none": None,
}


def _option(table: dict, kind: str, name: str):
    """Look `name` up in an option table; unknown names raise a ValueError listing the known."""
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def _norm_layers(norm: str, channels: int) -> list[nn.Module]:
    """The norm layer for `channels` as a (possibly empty) list, ready to splice."""
    factory = _option(NORMS, "norm", norm)
    return [] if factory is None else [factory(channels)]


# --------------------------------------------------------------------------------------------
# Spatial-size arithmetic (no dummy passes)
# --------------------------------------------------------------------------------------------

Step = tuple[int, int, int]  # (kernel, stride, padding) of a conv or pooling layer
_POOL2: Step = (2, 2, 0)


def _out_size(size: int, steps: Sequence[Step]) -> int:
    """Side length after a chain of conv/pool layers (<= 0 when the chain does not fit)."""
    for kernel, stride, padding in steps:
        if size < 1:
            return 0
        size = (size + 2 * padding - kernel) // stride + 1
    return size


def _final_size(model: str, image_size: int, steps: Sequence[Step]) -> int:
    """Final side length for `image_size`, or a ValueError naming the smallest size that fits."""
    size = _out_size(image_size, steps)
    if size < 1:
        smallest = next(s for s in range(1, 4097) if _out_size(s, steps) >= 1)
        raise ValueError(
            f"{model} needs inputs of at least {smallest}x{smallest}; got {image_size}x{image_size}"
        )
    return size


def default_depth(image_size: int) -> int:
    """ConvNet depth for a resolution: 3 up to 32 px, then one block per doubling (4x4 last map).

    32 -> 3, 64 -> 4, 128 -> 5, 256 -> 6. Inputs smaller than 8 px get the deepest depth that
    still leaves a 1x1 map (min 1).
    """
    if image_size > 32:
        return (image_size // 4).bit_length() - 1  # floor(log2(size / 4))
    if image_size >= 8:
        return 3
    return max(1, image_size.bit_length() - 1)  # floor(log2(size))


# --------------------------------------------------------------------------------------------
# ConvNet
# --------------------------------------------------------------------------------------------


class ConvNet(nn.Module):
    """The field's ConvNet: `depth` x [Conv3x3(width) -> Norm -> Act -> Pool2], then Linear.

    Layers live in one flat `features` Sequential in the reference's order (conv, norm, act,
    pool; absent norm/pool layers are skipped), so state-dict keys line up with the reference
    for the instance/batch/no-norm variants. 1x28x28 inputs get padding 3 on the first conv
    so the map becomes 32x32 (the reference pads every 1-channel input so; here only 28x28,
    so e.g. 8x8 digits keep padding 1).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int = 32,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        act: str = "relu",
        pool: str = "avgpooling",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"ConvNet depth must be >= 1, got {depth}")
        act_factory = _option(ACTIVATIONS, "activation", act)
        pool_factory = _option(POOLINGS, "pooling", pool)
        _option(NORMS, "norm", norm)

        first_padding = 3 if channels == 1 and image_size == 28 else 1
        size = image_size + 2 * first_padding - 2  # after the first 3x3 conv
        layers: list[nn.Module] = []
        taps: list[int] = []  # indices in `features` after which the activation is read
        conv_taps: list[int] = []  # indices of the convolutions (the released DDM's tap)
        in_channels = channels
        for d in range(depth):
            padding = first_padding if d == 0 else 1
            conv_taps.append(len(layers))
            layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=padding))
            layers += _norm_layers(norm, width)
            layers.append(act_factory())
            taps.append(len(layers) - 1)
            if pool_factory is not None:
                layers.append(pool_factory())
                size //= 2
            if size < 1:
                raise ValueError(
                    f"ConvNet depth {depth} pools a {image_size}x{image_size} input below 1x1 "
                    f"(the map vanishes at block {d + 1}); use depth <= {d}"
                )
            in_channels = width

        self.features = nn.Sequential(*layers)
        self._taps = {"act": frozenset(taps), "conv": frozenset(conv_taps)}
        # A conv output read as a map must survive an in-place activation right after it
        # (norm "none"): those taps are copied.
        self._copy_taps = frozenset(
            i for i in conv_taps if i + 1 < len(layers) and getattr(layers[i + 1], "inplace", False)
        )
        self.embed_dim: int = width * size * size  # 128 * 4 * 4 = 2048 for 3x32x32, depth 3
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def _run(
        self, x: Tensor, tap: str | None, stats_eps: float | None = None
    ) -> tuple[Tensor, list[Tensor], list[tuple[Tensor, Tensor] | None]]:
        """One pass: the embedding, the maps at ``tap`` and, with ``stats_eps``, per map the
        statistics an instance norm with that eps computed of it (see
        `embed_maps_and_moments`), else None."""
        maps: list[Tensor] = []
        stats: list[tuple[Tensor, Tensor] | None] = []
        taps = self._taps[tap] if tap is not None else frozenset()
        for i, layer in enumerate(self.features):
            if stats_eps is not None and i - 1 in taps and _instance_norm(layer, x, stats_eps):
                n, c, h, w = x.shape
                x, mu, rstd = torch.ops.aten.native_group_norm(
                    x, layer.weight, layer.bias, n, c, h * w, c, layer.eps
                )
                stats[-1] = (mu.view(n, c).float(), rstd.view(n, c).float().reciprocal())
                continue
            x = layer(x)
            if i in taps:
                maps.append(x.clone() if i in self._copy_taps else x)
                stats.append(None)
        return x.flatten(1), maps, stats

    def _tap(self, tap: str) -> str:
        if tap not in self._taps:
            raise ValueError(f"unknown tap {tap!r}; known: {', '.join(sorted(self._taps))}")
        return tap

    def embed(self, x: Tensor) -> Tensor:
        """N x embed_dim: the flattened output of the last block."""
        return self._run(x, tap=None)[0]

    def feature_maps(self, x: Tensor, tap: str = "act") -> list[Tensor]:
        """Each block's map: ``act`` after Act, before Pool (CIFAR 128x32x32, x16x16, x8x8);
        ``conv`` the convolution's output, before the norm (same shapes)."""
        return self._run(x, tap=self._tap(tap))[1]

    def embed_and_maps(self, x: Tensor, tap: str = "act") -> tuple[Tensor, list[Tensor]]:
        """`embed(x)` and `feature_maps(x, tap)` from one forward pass."""
        emb, maps, _ = self._run(x, tap=self._tap(tap))
        return emb, maps

    def embed_maps_and_moments(
        self, x: Tensor, tap: str = "conv", eps: float = 1e-5
    ) -> tuple[Tensor, list[Tensor], list[tuple[Tensor, Tensor] | None]]:
        """`embed_and_maps(x, tap)` plus, per map, its per-sample moments (mu, s), N x C each
        in float32: spatial mean and sqrt(population variance + ``eps``) (released DDM).

        Without autograd (the real batch), a map that an instance norm with this ``eps``
        reads next (the ``conv`` tap) comes with that norm's own statistics -- group norm's
        kernel computes exactly these -- so its moments cost no second pass over the maps.
        Elsewhere (autograd, another norm or tap) the entry is None: compute them from the
        map (``ddm.losses.persample_moments``). The outputs equal `embed_and_maps`' bitwise.
        """
        stats_eps = None if torch.is_grad_enabled() else eps
        return self._run(x, tap=self._tap(tap), stats_eps=stats_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


def _instance_norm(layer: nn.Module, x: Tensor, eps: float) -> bool:
    """Whether ``layer`` is an affine instance norm (one group per channel) with this ``eps``,
    applied to a contiguous 4-d ``x``: then its kernel's statistics are x's moments."""
    return (
        isinstance(layer, nn.GroupNorm)
        and layer.num_groups == layer.num_channels
        and layer.affine
        and layer.eps == eps
        and x.dim() == 4
        and x.is_contiguous()
    )


# --------------------------------------------------------------------------------------------
# Cross-architecture evaluation models
# --------------------------------------------------------------------------------------------


class AlexNet(nn.Module):
    """The field's 32x32 AlexNet: five convs (128, 192, 256, 192, 192), three max-pools, Linear.

    `norm` ("none" by default; "batchnorm" is the field's AlexNetBN) goes after every conv.
    1-channel inputs get padding 4 on the first conv (28 -> 32).
    """

    def __init__(
        self, channels: int, num_classes: int, image_size: int = 32, norm: str = "none"
    ) -> None:
        super().__init__()
        pad = 4 if channels == 1 else 2
        spec = [  # (in, out, kernel, padding, max-pool after)
            (channels, 128, 5, pad, True),
            (128, 192, 5, 2, True),
            (192, 256, 3, 1, False),
            (256, 192, 3, 1, False),
            (192, 192, 3, 1, True),
        ]
        layers: list[nn.Module] = []
        steps: list[Step] = []
        for c_in, c_out, kernel, padding, pooled in spec:
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=kernel, padding=padding))
            layers += _norm_layers(norm, c_out)
            layers.append(nn.ReLU())
            steps.append((kernel, 1, padding))
            if pooled:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                steps.append(_POOL2)
        self.features = nn.Sequential(*layers)
        size = _final_size("AlexNet", image_size, steps)
        self.embed_dim: int = 192 * size * size  # 3072 for 32x32
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


_VGG11_CFG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG11(nn.Module):
    """The field's 32x32 VGG11: [Conv3x3 -> Norm -> ReLU] with five max-pools, then Linear.

    Default norm is instance norm (GroupNorm(C, C)); "batchnorm" is the field's VGG11BN.
    1-channel inputs get padding 3 on the first conv (28 -> 32), as in the reference.
    Inputs too small for five poolings raise a ValueError naming the minimum size.
    """

    def __init__(
        self, channels: int, num_classes: int, image_size: int = 32, norm: str = "instancenorm"
    ) -> None:
        super().__init__()
        first_padding = 3 if channels == 1 else 1
        layers: list[nn.Module] = []
        steps: list[Step] = []
        in_channels = channels
        for item in _VGG11_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                steps.append(_POOL2)
                continue
            padding = first_padding if not steps else 1
            layers.append(nn.Conv2d(in_channels, int(item), kernel_size=3, padding=padding))
            layers += _norm_layers(norm, int(item))
            layers.append(nn.ReLU())
            steps.append((3, 1, padding))
            in_channels = int(item)
        self.features = nn.Sequential(*layers)
        size = _final_size("VGG11", image_size, steps)
        self.embed_dim: int = 512 * size * size  # 512 for 32x32, 2048 for 64x64
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with norms, identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.Sequential(*_norm_layers(norm, planes))
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.Sequential(*_norm_layers(norm, planes))
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                *_norm_layers(norm, planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The field's 32x32 ResNet18: 3x3 stem (stride 1, no max-pool), BasicBlocks [2, 2, 2, 2].

    Widths 64/128/256/512, adaptive average pooling to 1x1, Linear(512). Default norm is
    instance norm (GroupNorm(C, C)); "batchnorm" is the field's ResNet18BN. `image_size` is
    accepted for a uniform signature; any size works.
    """

    def __init__(
        self, channels: int, num_classes: int, image_size: int = 32, norm: str = "instancenorm"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.Sequential(*_norm_layers(norm, 64))
        blocks: list[nn.Module] = []
        in_planes = 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [
                BasicBlock(in_planes, planes, stride, norm),
                BasicBlock(planes, planes, 1, norm),
            ]
            in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.embed_dim: int = 512
        self.classifier = nn.Linear(512, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class LeNet(nn.Module):
    """LeNet-5: conv5x5(6) -> pool -> conv5x5(16) -> pool -> 120 -> 84 -> classes (ReLU).

    1-channel inputs get padding 2 on the first conv, as in the reference. `embed` = the 84
    features after their ReLU.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int = 32) -> None:
        super().__init__()
        pad = 2 if channels == 1 else 0
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        steps: list[Step] = [(5, 1, pad), _POOL2, (5, 1, 0), _POOL2]
        size = _final_size("LeNet", image_size, steps)
        self.fc_1 = nn.Linear(16 * size * size, 120)  # 16 * 5 * 5 for 32x32
        self.fc_2 = nn.Linear(120, 84)
        self.embed_dim: int = 84
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        x = self.features(x).flatten(1)
        return F.relu(self.fc_2(F.relu(self.fc_1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class MLP(nn.Module):
    """Three-layer perceptron on the flattened image: 128 -> ReLU -> 128 -> ReLU -> classes."""

    def __init__(self, channels: int, num_classes: int, image_size: int = 32) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(channels * image_size * image_size, 128)
        self.fc_2 = nn.Linear(128, 128)
        self.embed_dim: int = 128
        self.classifier = nn.Linear(128, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return F.relu(self.fc_2(F.relu(self.fc_1(x.flatten(1)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


# --------------------------------------------------------------------------------------------
# Registry and factory
# --------------------------------------------------------------------------------------------


def _convnet(norm: str) -> Callable[..., nn.Module]:
    """ConvNet factory with `norm` as default and depth chosen from the resolution."""

    def make(channels: int, num_classes: int, image_size: int = 32, **kwargs) -> nn.Module:
        kwargs.setdefault("norm", norm)
        kwargs.setdefault("depth", default_depth(image_size))
        return ConvNet(channels, num_classes, image_size, **kwargs)

    make.__name__ = make.__qualname__ = f"convnet_{norm}"
    return make


def _with_norm(cls: type[nn.Module], norm: str) -> Callable[..., nn.Module]:
    """Factory for `cls` with `norm` as default."""

    def make(channels: int, num_classes: int, image_size: int = 32, **kwargs) -> nn.Module:
        kwargs.setdefault("norm", norm)
        return cls(channels, num_classes, image_size, **kwargs)

    make.__name__ = make.__qualname__ = f"{cls.__name__.lower()}_{norm}"
    return make


MODELS: dict[str, Callable[..., nn.Module]] = {
    "convnet": _convnet("instancenorm"),
    "convnet_bn": _convnet("batchnorm"),
    "convnet_ln": _convnet("layernorm"),
    "convnet_gn": _convnet("groupnorm"),
    "convnet_nn": _convnet("none"),
    "alexnet": _with_norm(AlexNet, "none"),
    "alexnet_bn": _with_norm(AlexNet, "batchnorm"),
    "vgg11": _with_norm(VGG11, "instancenorm"),
    "vgg11_bn": _with_norm(VGG11, "batchnorm"),
    "resnet18": _with_norm(ResNet18, "instancenorm"),
    "resnet18_bn": _with_norm(ResNet18, "batchnorm"),
    "lenet": LeNet,
    "mlp": MLP,
}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


_LOOKUP: dict[str, str] = {_key(name): name for name in MODELS}  # "convnetbn" -> "convnet_bn"


def available_models() -> list[str]:
    """Registered model names (the keys of `MODELS`)."""
    return sorted(MODELS)


def build_model(name: str, channels: int, num_classes: int, image_size: int, **kwargs) -> nn.Module:
    """A freshly initialised model by name ("convnet", "ConvNetBN", "resnet18_bn", ...).

    Matching ignores case, underscores and dashes, so the field's names work. ConvNet
    variants take width/depth/norm/act/pool overrides; depth defaults to
    `default_depth(image_size)`.
    """
    key = _LOOKUP.get(_key(name))
    if key is None:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return MODELS[key](channels, num_classes, image_size, **kwargs)


def uses_batchnorm(model: nn.Module) -> bool:
    """True if any BatchNorm layer is inside (its outputs then depend on the batch make-up)."""
    # _BatchNorm is the common base of BatchNorm1d/2d/3d, SyncBatchNorm and the lazy variants
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
