"""Contract tests over every registered model, plus the ConvNet properties DM/DDM rely on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddm.models import (
    ACTIVATIONS,
    MODELS,
    NORMS,
    POOLINGS,
    AvgPool2x2,
    ConvNet,
    available_models,
    build_model,
    default_depth,
    uses_batchnorm,
)

BIG_INPUT_MODELS = {"convnet", "convnet_bn", "convnet_ln", "convnet_gn", "convnet_nn"}
BIG_INPUT_MODELS |= {"resnet18", "mlp"}

CASES = [(name, 3, 32) for name in MODELS] + [(name, 1, 28) for name in MODELS]
CASES += [(name, 3, 64) for name in MODELS if name in BIG_INPUT_MODELS]


def _batch(channels: int, size: int, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g)


# --------------------------------------------------------------------------------------------
# Contract: every registered model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "channels", "size"), CASES, ids=lambda v: str(v))
def test_model_contract(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, channels, 10, size)
    x = _batch(channels, size, n=2)

    model.train()  # BN in train mode (batch > 1), as when training an evaluation model
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        if p.ndim > 1:  # weights (biases right before a norm legitimately get ~0)
            assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"

    with torch.no_grad():  # same mode, same batch: forward is the classifier on `embed`
        emb = model.embed(x)
    assert emb.shape == (2, model.embed_dim)
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(model.classifier(emb), out.detach())


def test_registry_lists_every_model() -> None:
    expected = {"convnet", "convnet_bn", "convnet_ln", "convnet_gn", "convnet_nn", "alexnet"}
    expected |= {"alexnet_bn", "vgg11", "vgg11_bn", "resnet18", "resnet18_bn", "lenet", "mlp"}
    assert set(available_models()) == expected == set(MODELS)


@pytest.mark.parametrize(
    ("name", "count"),
    [  # follow from the reference layer lists (3x32x32 input, 10 classes)
        ("convnet", 320_010),
        ("alexnet", 1_872_202),
        ("vgg11", 9_231_114),
        ("vgg11_bn", 9_231_114),
        ("resnet18", 11_173_962),  # the well-known CIFAR ResNet18 size
        ("resnet18_bn", 11_173_962),
        ("lenet", 62_006),
        ("mlp", 411_146),
    ],
)
def test_parameter_counts(name: str, count: int) -> None:
    model = build_model(name, 3, 10, 32)
    assert sum(p.numel() for p in model.parameters()) == count


# --------------------------------------------------------------------------------------------
# ConvNet
# --------------------------------------------------------------------------------------------


def test_convnet_default_shapes_and_params() -> None:
    model = ConvNet(3, 10)
    assert sum(p.numel() for p in model.parameters()) == 320_010
    assert model.embed_dim == 2048
    x = _batch(3, 32)
    assert model.embed(x).shape == (4, 2048)
    maps = model.feature_maps(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(128, 32, 32), (128, 16, 16), (128, 8, 8)]


def test_convnet_maps_after_relu_before_pooling() -> None:
    torch.manual_seed(0)
    model = ConvNet(3, 10).eval()
    x = _batch(3, 32)
    with torch.no_grad():
        maps = model.feature_maps(x)
        assert all((m >= 0).all() for m in maps)  # after ReLU
        conv, norm = model.features[0], model.features[1]
        torch.testing.assert_close(maps[0], F.relu(norm(conv(x))))
        # block 2 consumes the pooled block-1 map: so maps are taken before pooling
        conv2, norm2 = model.features[4], model.features[5]
        torch.testing.assert_close(maps[1], F.relu(norm2(conv2(F.avg_pool2d(maps[0], 2)))))
        torch.testing.assert_close(model.embed(x), F.avg_pool2d(maps[-1], 2).flatten(1))


def test_convnet_embed_and_maps_is_one_consistent_pass() -> None:
    torch.manual_seed(0)
    model = ConvNet(3, 10)
    x = _batch(3, 32)
    emb, maps = model.embed_and_maps(x)
    torch.testing.assert_close(emb, model.embed(x))
    for a, b in zip(maps, model.feature_maps(x), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(model(x), model.classifier(emb))
    # both outputs share one graph: one backward reaches the input through both
    x.requires_grad_(True)
    emb, maps = model.embed_and_maps(x)
    (emb.sum() + sum(m.sum() for m in maps)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_convnet_28x28_single_channel_pads_to_32() -> None:
    model = build_model("ConvNet", 1, 10, 28)
    assert model.features[0].padding == (3, 3)
    maps = model.feature_maps(_batch(1, 28))
    assert maps[0].shape[-2:] == (32, 32)
    assert model.embed_dim == 2048
    # only 1-channel 28x28 gets the extra padding
    assert build_model("convnet", 3, 10, 28).features[0].padding == (1, 1)
    assert build_model("convnet", 1, 10, 32).features[0].padding == (1, 1)


def test_convnet_depth_by_resolution() -> None:
    assert [default_depth(s) for s in (8, 28, 32, 64, 128, 256)] == [3, 3, 3, 4, 5, 6]
    assert default_depth(4) == 2 and default_depth(1) == 1
    model = build_model("convnet", 3, 10, 64)
    assert model.embed_dim == 128 * 4 * 4
    assert model.embed(_batch(3, 64, n=2)).shape == (2, 2048)
    assert len(build_model("convnet", 3, 10, 64, depth=3).feature_maps(_batch(3, 64, n=1))) == 3


def test_convnet_digits_8x8() -> None:
    model = build_model("convnet", 1, 10, 8)
    assert model.embed_dim == 128  # 8 -> 4 -> 2 -> 1
    assert model(_batch(1, 8)).shape == (4, 10)


def test_convnet_too_deep_raises() -> None:
    with pytest.raises(ValueError, match="below 1x1"):
        ConvNet(3, 10, image_size=32, depth=6)
    with pytest.raises(ValueError, match="below 1x1"):
        build_model("convnet", 1, 10, 8, depth=4)


def test_instancenorm_is_per_sample_batchnorm_is_not() -> None:
    x = _batch(3, 32, n=4, seed=0)
    y = x.clone()
    y[1:] = _batch(3, 32, n=3, seed=1) * 3 + 1  # change the rest of the batch
    torch.manual_seed(0)
    inorm = build_model("convnet", 3, 10, 32).train()
    torch.testing.assert_close(inorm(x)[0], inorm(y)[0])
    torch.testing.assert_close(inorm.embed(x)[0], inorm.embed(y)[0])
    torch.manual_seed(0)
    bnorm = build_model("convnet_bn", 3, 10, 32).train()
    assert not torch.allclose(bnorm(x)[0], bnorm(y)[0])


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("pool", sorted(POOLINGS))
def test_convnet_every_option_runs(norm: str, act: str, pool: str) -> None:
    model = ConvNet(3, 5, image_size=16, width=8, depth=2, norm=norm, act=act, pool=pool)
    maps = model.feature_maps(_batch(3, 16))
    side = 16 if pool == "none" else 4  # two poolings: 16 -> 8 -> 4
    assert model.embed_dim == 8 * side * side
    out = model(_batch(3, 16))
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    assert [m.shape[-1] for m in maps] == [16, 16 if pool == "none" else 8]
    assert uses_batchnorm(model) == (norm == "batchnorm")


def test_layernorm_normalises_over_chw_per_sample() -> None:
    layer = ConvNet(3, 10, norm="layernorm").features[1]
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 1
    z = _batch(128, 8) * 5 + 2
    out = layer(z)
    torch.testing.assert_close(out, F.layer_norm(z, z.shape[1:]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("option", "bad", "known"),
    [("norm", "weightnorm", "instancenorm"), ("act", "gelu", "leakyrelu"), ("pool", "x", "none")],
)
def test_unknown_option_lists_known(option: str, bad: str, known: str) -> None:
    with pytest.raises(ValueError, match=known):
        ConvNet(3, 10, **{option: bad})
    with pytest.raises(ValueError, match=bad):
        build_model("convnet", 3, 10, 32, **{option: bad})


# --------------------------------------------------------------------------------------------
# Other models, factory, batchnorm detection
# --------------------------------------------------------------------------------------------


def test_unknown_model_lists_available() -> None:
    with pytest.raises(ValueError, match="available: .*convnet.*resnet18"):
        build_model("transformer", 3, 10, 32)


def test_vgg11_too_small_raises() -> None:
    with pytest.raises(ValueError, match=r"at least 32x32"):
        build_model("vgg11", 3, 10, 8)
    with pytest.raises(ValueError, match=r"VGG11"):
        build_model("vgg11_bn", 1, 10, 8)


def test_lenet_too_small_raises() -> None:
    with pytest.raises(ValueError, match=r"LeNet needs inputs of at least 16x16"):
        build_model("lenet", 3, 10, 8)


@pytest.mark.parametrize(
    ("field_name", "key", "bn"),
    [
        ("ConvNet", "convnet", False),
        ("ConvNetBN", "convnet_bn", True),
        ("ConvNetLN", "convnet_ln", False),
        ("ConvNetGN", "convnet_gn", False),
        ("ConvNetNN", "convnet_nn", False),
        ("AlexNet", "alexnet", False),
        ("AlexNetBN", "alexnet_bn", True),
        ("VGG11", "vgg11", False),
        ("VGG11BN", "vgg11_bn", True),
        ("ResNet18", "resnet18", False),
        ("ResNet18BN", "resnet18_bn", True),
        ("LeNet", "lenet", False),
        ("MLP", "mlp", False),
    ],
)
def test_field_names_and_uses_batchnorm(field_name: str, key: str, bn: bool) -> None:
    torch.manual_seed(0)
    a = build_model(field_name, 3, 10, 32)
    torch.manual_seed(0)
    b = MODELS[key](3, 10, 32)
    assert type(a) is type(b)
    assert [n for n, _ in a.named_modules()] == [n for n, _ in b.named_modules()]
    assert uses_batchnorm(a) == bn


def test_build_model_passes_overrides() -> None:
    model = build_model("convnet_bn", 3, 10, 32, width=16, depth=2, act="sigmoid", pool="none")
    assert model.embed_dim == 16 * 32 * 32
    assert isinstance(model.features[2], nn.Sigmoid)
    assert uses_batchnorm(model)
    assert not uses_batchnorm(build_model("ConvNet", 3, 10, 32, norm="layernorm"))


def test_default_init_is_pytorch_default() -> None:
    torch.manual_seed(0)
    model = ConvNet(3, 10)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 128, 3, padding=1)
    torch.testing.assert_close(model.features[0].weight, conv.weight)
    torch.testing.assert_close(model.features[0].bias, conv.bias)


def test_convnet_conv_tap_is_the_convolution_output_before_the_norm() -> None:
    torch.manual_seed(0)
    model = ConvNet(3, 10, 32)
    x = _batch(3, 32, n=2)
    maps = model.feature_maps(x, tap="conv")
    assert [m.shape for m in maps] == [(2, 128, 32, 32), (2, 128, 16, 16), (2, 128, 8, 8)]
    f = model.features
    assert torch.allclose(maps[0], f[0](x), atol=1e-6)
    after_first_block = f[3](f[2](f[1](f[0](x))))
    assert torch.allclose(maps[1], f[4](after_first_block), atol=1e-5)
    # instance norm erases each channel's per-sample mean at the act tap's input, not here
    conv_means = maps[0].mean(dim=(2, 3))
    assert conv_means.abs().max() > 1e-3
    emb, maps2 = model.embed_and_maps(x, tap="conv")
    assert torch.allclose(emb, model.embed(x)) and torch.equal(maps2[2], maps[2])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_convnet_moments_from_its_own_instance_norm(precision: str) -> None:
    """Without autograd, the conv tap's per-sample moments come from the norm's own pass:
    equal to ``persample_moments`` of the maps and to the eps-explicit formula, and the pass
    itself (embedding, maps) is bitwise the plain one, also under bf16 autocast."""
    from ddm.losses import persample_moments

    torch.manual_seed(0)
    model = ConvNet(3, 10, 32)
    for p in model.parameters():  # non-trivial affine terms: they must not leak into moments
        p.data.normal_()
    x = _batch(3, 32, n=3)
    on = precision == "bf16"
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=on):
        emb0, maps0 = model.embed_and_maps(x, tap="conv")
        emb, maps, moments = model.embed_maps_and_moments(x, tap="conv")
    assert torch.equal(emb, emb0)
    assert all(torch.equal(a, b) for a, b in zip(maps, maps0, strict=True))
    assert len(moments) == 3 and all(m is not None for m in moments)
    for m, (mu, s) in zip(maps, moments, strict=True):
        assert mu.dtype == s.dtype == torch.float32 and mu.shape == s.shape == m.shape[:2]
        ref_mu, ref_s = persample_moments(m)
        assert torch.equal(mu, ref_mu) and torch.equal(s, ref_s)
        var, mean = torch.var_mean(m.double().flatten(2), dim=2, correction=0)
        assert torch.allclose(mu.double(), mean, atol=1e-5)
        assert torch.allclose(s.double(), (var + 1e-5).sqrt(), rtol=1e-4)
    # with autograd, another eps, the act tap, or another norm: no moments offered
    _, _, with_grad = model.embed_maps_and_moments(x, tap="conv")
    with torch.no_grad():
        _, _, other_eps = model.embed_maps_and_moments(x, tap="conv", eps=1e-3)
        _, _, act = model.embed_maps_and_moments(x, tap="act")
        _, _, layer_norm = ConvNet(3, 10, 32, norm="layernorm").embed_maps_and_moments(x)
    for missing in (with_grad, other_eps, act, layer_norm):
        assert missing == [None, None, None]


def test_convnet_conv_tap_survives_inplace_relu_without_norm() -> None:
    torch.manual_seed(0)
    model = ConvNet(3, 10, 32, norm="none")
    x = _batch(3, 32, n=2)
    conv0 = model.features[0](x)
    maps = model.feature_maps(x, tap="conv")
    assert (maps[0] < 0).any()  # not clipped by the in-place ReLU that follows
    assert torch.allclose(maps[0], conv0, atol=1e-6)


def test_convnet_unknown_tap() -> None:
    with pytest.raises(ValueError, match="unknown tap"):
        ConvNet(3, 10, 32).feature_maps(_batch(3, 32, n=1), tap="norm")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_avgpool2x2_equals_avg_pool2d_values_and_gradients(dtype: torch.dtype) -> None:
    """The CPU pooling (a depthwise convolution, its bf16 input gradient in closed form) gives
    nn.AvgPool2d's values and gradients, and the convolution's own gradient bitwise."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6, 8, dtype=dtype)
    g = torch.randn(3, 4, 3, 4, dtype=dtype)
    ours = x.clone().requires_grad_()
    out = AvgPool2x2()(ours)
    out.backward(g)
    ref = x.clone().requires_grad_()
    expected = nn.AvgPool2d(2, 2)(ref)
    expected.backward(g)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(ours.grad, ref.grad)
    conv = x.clone().requires_grad_()
    weight = torch.full((4, 1, 2, 2), 0.25, dtype=dtype)
    F.conv2d(conv, weight, stride=2, groups=4).backward(g)
    assert torch.equal(ours.grad, conv.grad)
    # a hand-checked entry: input pixel (0, 0, 1, 1) gets a quarter of output (0, 0, 0, 0)
    assert float(ours.grad[0, 0, 1, 1]) == float(g[0, 0, 0, 0]) * 0.25


def test_avgpool2x2_twice_differentiable_and_odd_sizes_fall_back() -> None:
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(AvgPool2x2(), (x,))
    assert torch.autograd.gradgradcheck(AvgPool2x2(), (x,))
    odd = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(AvgPool2x2()(odd), F.avg_pool2d(odd, 2, 2))
