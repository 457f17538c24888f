"""DDM is stable with its default settings at every resolution (docs/guide/stability.md).

Two causes, two settings. (1) The released form's Gram term on the convolution's output is
quartic in the pixels' scale, so its gradient grows as scale^3 and a large step feeds itself;
``correlation="cosine"`` (the released default) compares the Gram matrices' shapes, which
is scale-free. (2) DDM's weights were calibrated against L_MMD on CIFAR-10, whose ConvNet
embedding has D = 2,048 dimensions; the style terms are means over each map while L_MMD sums
over D dimensions, so their pull per pixel grows as 2,048 / D: 16x on 8 x 8 images (D = 128).
``weights_by_embedding`` (the default) scales the DDM terms' weights by D / 2,048, exactly 1
wherever D = 2,048.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch

from ddm.augment import sample_params
from ddm.bases import _new_net
from ddm.condense import NonFiniteLossError, _Run, condense
from ddm.config import CondenseConfig
from ddm.data import Dataset, Split, load_dataset
from ddm.losses import (
    correlation_from_stats,
    correlation_loss,
    gram_cosine_gap,
    gram_gap,
    mean_gram,
)
from ddm.models import build_model
from ddm.objective import Weights as _Weights
from ddm.objective import objective, real_statistics
from ddm.runtime import generator, seed_for

NOGRAD = torch.autocast("cpu", enabled=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _probe(run: _Run, dataset: Dataset, nets: int = 2, batch: int = 32) -> float:
    """The matching objective of the current set on ``nets`` fixed random networks, real
    batches and DSA draws (the same at every call; each iteration's own loss is measured on
    a new network, so over a few iterations it is too noisy to show a trend)."""
    cfg, size, per = run.cfg, (dataset.image_size, dataset.image_size), run.per_class
    syn, _ = run.base.expand(run.images.detach(), run.labels)
    total = 0.0
    for k in range(nets):
        net = _new_net(cfg, dataset, seed_for(cfg.seed, 78, k), run.device)
        net.train().requires_grad_(False)
        gens = [generator(cfg.seed, 78, k, c) for c in range(dataset.num_classes)]
        batches = [dataset.class_batch(c, batch, g) for c, g in enumerate(gens)]
        params = [sample_params(run.strategy, per, size, g, siamese=True) for g in gens]
        stats = real_statistics(net, batches, params, run.weights, 0, run.device, NOGRAD, False)
        with torch.no_grad():
            sizes = [per] * dataset.num_classes
            total += float(objective(net, stats, syn, sizes, params, run.weights, NOGRAD, False)[0])
    return total / nets


def _assert_finite_and_falling(
    cfg: CondenseConfig, dataset: Dataset, iterations: int, probe_batch: int = 32
) -> None:
    """Every iteration's loss is finite and the probe of the set falls."""
    run = _Run(cfg.resolved(), dataset, None)
    before = _probe(run, dataset, batch=probe_batch)
    losses = [run.step()[0] for _ in range(iterations)]  # NonFiniteLossError on NaN / inf
    after = _probe(run, dataset, batch=probe_batch)
    assert all(math.isfinite(v) for v in losses) and math.isfinite(after), losses
    assert after < before, (before, after, losses)


# --- the scale-free Gram distance, by hand ------------------------------------------------------


def test_gram_cosine_gap_hand_value():
    """G_T = I, G_S = diag(2, 0): 2 - 2 cos = 2 - 2 (2 / (2 sqrt 2)) = 2 - sqrt 2."""
    real, syn = torch.eye(2), torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    assert gram_cosine_gap(syn, real).item() == pytest.approx(2 - math.sqrt(2), rel=1e-6)
    assert gram_gap(syn, real).item() == pytest.approx(2.0)  # (2 - 1)^2 + (0 - 1)^2
    assert gram_cosine_gap(real * 3.0, real).item() == pytest.approx(0.0, abs=1e-7)
    # invariant to either side's scale (the published distance is not)
    assert gram_cosine_gap(syn * 7.0, real * 0.1).item() == pytest.approx(2 - math.sqrt(2))
    assert gram_gap(syn * 7.0, real).item() != pytest.approx(2.0)


def test_cosine_correlation_mean_over_layers_and_gradient_shrinks_with_scale():
    """L_CM (cosine) = mean over layers; its gradient on the maps falls as 1 / scale, while
    the published distance's grows (as scale^3 for a target that does not grow with it)."""
    gen = torch.Generator().manual_seed(0)
    real = [torch.randn(6, 3, 4, 4, generator=gen), torch.randn(6, 5, 2, 2, generator=gen)]
    syn = [torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 5, 2, 2, generator=gen)]
    grams = [mean_gram(m) for m in real]
    by_hand = sum(gram_cosine_gap(mean_gram(s), g) for s, g in zip(syn, grams, strict=True)) / 2
    assert correlation_loss(real, syn, form="cosine").item() == pytest.approx(by_hand.item())
    with pytest.raises(ValueError, match="unknown correlation form"):
        correlation_loss(real, syn, form="abs")

    def grad(form: str, scale: float) -> float:
        maps = [(m * scale).requires_grad_(True) for m in syn]
        correlation_from_stats(grams, maps, form=form).backward()
        return sum(m.grad.norm() for m in maps).item()

    assert grad("cosine", 10.0) == pytest.approx(grad("cosine", 1.0) / 10, rel=1e-4)
    assert grad("sum", 10.0) > 500 * grad("sum", 1.0)


# --- the weight factor, by hand -------------------------------------------------------------


def test_term_scale_hand_values():
    on = _Weights(1.0, 1.0, 0.0, 0, True, by_embedding=True)
    off = dataclasses.replace(on, by_embedding=False)
    assert on.term_scale(128) == 0.0625  # 8 x 8 digits: 128 x 1 x 1
    assert on.term_scale(2048) == 1.0  # every ConvNet at 32 px or more: 128 x 4 x 4
    assert on.term_scale(512) == 0.25
    assert off.term_scale(128) == 1.0 and off.term_scale(2048) == 1.0


@pytest.mark.parametrize("form", ["paper", "released"])
def test_objective_scales_only_the_ddm_terms(digits, form):
    """On digits (D = 128) the objective is L_MMD + (128 / 2048) x the weighted DDM terms."""
    torch.manual_seed(0)
    net = build_model("convnet", 1, 10, 8).requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    batches = [digits.class_batch(c, 12, gen) for c in range(2)]
    params = [
        sample_params("color_crop_cutout_scale_rotate", 4, (8, 8), gen, siamese=True)
        for _ in range(2)
    ]
    syn = torch.randn(8, 1, 8, 8)
    cfg = CondenseConfig(dataset="digits", method="ddm", form=form).resolved()
    published = _Weights(
        cfg.w_mm,
        cfg.w_cm,
        cfg.w_icd,
        1,
        True,
        w_cd=cfg.w_cd,
        cd_rank=3,
        tap=cfg.style_tap,
        moments=cfg.moments,
        relative=cfg.moments_relative,
        correlation=cfg.correlation,
    )
    scaled = dataclasses.replace(published, by_embedding=True)
    out = {}
    for name, w in (("published", published), ("scaled", scaled)):
        stats = real_statistics(net, batches, params, w, 0, torch.device("cpu"), NOGRAD, False)
        out[name] = objective(net, stats, syn, [4, 4], params, w, NOGRAD, False)
    (total_p, terms_p), (total_s, terms_s) = out["published"], out["scaled"]
    assert terms_p == terms_s  # the logged (unweighted) terms do not change
    ddm_part = total_p.item() - terms_p["mmd"]
    assert abs(ddm_part) > 10 * terms_p["mmd"]  # the DDM terms dominate on digits
    assert total_s.item() == pytest.approx(terms_p["mmd"] + ddm_part / 16, rel=1e-5)


def _random_dataset(size: int, classes: int = 2, per_class: int = 6) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, 3, size, size), generator=gen)
    labels = torch.arange(classes).repeat_interleave(per_class)
    split = Split(images.to(torch.uint8), labels, classes)
    return Dataset.from_splits("random", [str(c) for c in range(classes)], split, split)


@pytest.mark.parametrize("form", ["paper", "released"])
def test_bit_identical_where_the_embedding_has_2048_dimensions(form):
    """Where D = 2048 the set is bitwise the one the published weights give (here 32 x 32)."""
    data = _random_dataset(32)
    cfg = CondenseConfig(
        dataset="random",
        ipc=2,
        method="ddm",
        form=form,
        iterations=2,
        batch_real=4,
        precision="fp32",
        device="cpu",
    )
    scaled = condense(cfg, dataset=data, progress=False)
    published = condense(
        dataclasses.replace(cfg, weights_by_embedding=False), dataset=data, progress=False
    )
    assert torch.equal(scaled.images, published.images)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 64), (3, 128)])
def test_convnet_embedding_has_2048_dimensions_from_28_pixels_up(channels, size):
    """MNIST (28, padded to 32), CIFAR-10 (32), Tiny-ImageNet (64), ImageNette (128): every
    default ConvNet ends on a 128 x 4 x 4 map, so the factor is exactly 1 there."""
    net = build_model("convnet", channels, 10, size)
    with torch.no_grad():
        assert net.embed(torch.zeros(1, channels, size, size)).shape[1] == 2048


# --- the published weights' divergence, and the fix -------------------------------------------


def test_published_weights_diverge_on_digits(digits):
    """The published released form, kept selectable, blows up on 8 x 8 digits."""
    cfg = CondenseConfig(
        dataset="digits",
        ipc=1,
        method="ddm",
        form="released",
        iterations=12,
        batch_real=32,
        precision="fp32",
        correlation="sum",
        weights_by_embedding=False,
    )
    assert cfg.resolved().w_cm == 1e4
    with pytest.raises(NonFiniteLossError):
        condense(cfg, dataset=digits, progress=False)


@pytest.mark.parametrize(("ipc", "base"), [(1, "dm"), (4, "dm"), (1, "idm")])
@pytest.mark.parametrize("form", ["paper", "released"])
def test_digits_finite_and_falling(digits, ipc, form, base):
    cfg = CondenseConfig(
        dataset="digits",
        ipc=ipc,
        method="ddm",
        form=form,
        base=base,
        batch_real=32,
        precision="fp32",
        model_batch=32,
        model_train_steps=1,
    )
    _assert_finite_and_falling(cfg, digits, 8)


@functools.cache
def _three_classes(name: str, root: str) -> Dataset:
    """Three classes of a real dataset, loaded once for both forms' tests."""
    return load_dataset(name, root).subset_classes([0, 1, 2], relabel=True)


@pytest.mark.parametrize("form", ["paper", "released"])
def test_mnist_finite_and_falling(mnist_root, form):
    data = _three_classes("mnist", str(mnist_root))
    cfg = CondenseConfig(
        dataset="mnist", ipc=1, method="ddm", form=form, batch_real=16, precision="fp32"
    )
    _assert_finite_and_falling(cfg, data, 6)


@pytest.mark.parametrize("form", ["paper", "released"])
def test_cifar10_finite_and_falling(cifar_root, form):
    data = _three_classes("cifar10", str(cifar_root))
    cfg = CondenseConfig(
        dataset="cifar10", ipc=1, method="ddm", form=form, batch_real=16, precision="fp32"
    )
    _assert_finite_and_falling(cfg, data, 6)


@pytest.mark.parametrize("form", ["paper", "released"])
def test_tiny_imagenet_finite_and_falling(tiny_root, form):
    data = _three_classes("tiny-imagenet", str(tiny_root))
    cfg = CondenseConfig(
        dataset="tiny-imagenet", ipc=1, method="ddm", form=form, batch_real=8, precision="fp32"
    )
    _assert_finite_and_falling(cfg, data, 4, probe_batch=8)
